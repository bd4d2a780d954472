//! The stored-credential gauges, counted in the background (`/metrics` never waits for the
//! database).

use crate::actors::db::DbOperation;
use crate::db::DbError;
use crate::domain::CredentialState;

use super::Service;

/// The windows of `tokenmanager_expiring_credentials`.
const EXPIRY_WINDOWS: [(&str, i64); 2] = [("24h", 86_400), ("7d", 7 * 86_400)];

impl Service {
    /// Counts the stored credentials by provider and state, and those expiring soon; every
    /// configured IdP has every series, at 0 while nothing is stored.
    pub async fn count_credentials(&self) -> Result<(), DbError> {
        let (database, metrics) = (self.database(), self.metrics());
        let now = crate::domain::unix_now();
        let before = EXPIRY_WINDOWS.map(|(_, seconds)| now + seconds);
        let counts = database
            .run(DbOperation::CountCredentials, move |store, conn| {
                store.count_credentials(conn, now, before)
            })
            .await?;
        let idps: Vec<String> = self
            .settings()
            .idps
            .iter()
            .map(|idp| idp.name().to_owned())
            .collect();
        metrics.stored_credentials.reset();
        metrics.expiring_credentials.reset();
        for idp in &idps {
            for state in CredentialState::ALL {
                metrics
                    .stored_credentials
                    .with_label_values(&[idp, state.as_str()])
                    .set(0);
            }
            for (window, _) in EXPIRY_WINDOWS {
                metrics
                    .expiring_credentials
                    .with_label_values(&[idp, window])
                    .set(0);
            }
        }
        for count in counts {
            metrics
                .stored_credentials
                .with_label_values(&[&count.provider, &count.state])
                .set(count.stored);
            // Only usable credentials expire in a window: the other states count 0 there.
            if count.state == CredentialState::Active.as_str() {
                for ((window, _), expiring) in EXPIRY_WINDOWS.iter().zip(count.expiring) {
                    metrics
                        .expiring_credentials
                        .with_label_values(&[count.provider.as_str(), window])
                        .set(expiring);
                }
            }
        }
        *self
            .gauges_counted
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        Ok(())
    }

    /// Time since the stored-credential gauges were counted, or since start if never.
    pub fn database_gauges_age(&self) -> std::time::Duration {
        self.gauges_counted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or_else(
                || self.started.elapsed().unwrap_or_default(),
                |at| at.elapsed(),
            )
    }
}
