//! getTokenAudit: the audit trail, newest first — everyone's for callers allowed
//! `getTokenAuditForOtherUsers` (default ProxyManagement), otherwise the caller's own.

use serde_json::Value;

use super::{CallContext, ErrorCode, GetTokenAuditArgs, MethodError, Service};
use crate::config::Settings;
use crate::db::audit::AuditQuery;
use crate::domain::policy::{Authorized, CallerKind};

impl Service {
    pub(super) async fn token_audit(
        &self,
        settings: &Settings,
        context: &CallContext,
        caller: &Authorized,
        args: GetTokenAuditArgs,
    ) -> Result<Value, MethodError> {
        let GetTokenAuditArgs {
            user,
            provider,
            since,
            limit,
        } = args;
        let own = |user: &str| caller.kind == CallerKind::User && user == caller.username;
        let others_allowed = || {
            self.authorize(
                settings,
                context,
                GetTokenAuditArgs::OTHER_USERS_RULE,
                Some(&["ProxyManagement"]),
            )
            .is_ok()
        };
        let user = match user {
            Some(user) if own(&user) || others_allowed() => Some(user),
            None if others_allowed() => None,
            None if caller.kind == CallerKind::User => Some(caller.username.clone()),
            _ => {
                return Err(MethodError::new(
                    ErrorCode::Forbidden,
                    "You aren't allowed!",
                ));
            }
        };
        let mut query = AuditQuery {
            provider,
            since,
            limit,
            ..AuditQuery::default()
        };
        if let Some(user) = user {
            query.user_ids = super::user_ids(settings, &user)?
                .into_iter()
                .map(str::to_owned)
                .collect();
            query.usernames = vec![user];
        }
        let records = self.audit().read(query).await?;
        Ok(Value::Array(
            records
                .iter()
                .map(|stored| stored.record.to_json(stored.id))
                .collect(),
        ))
    }
}
