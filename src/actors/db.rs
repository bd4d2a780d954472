//! The DB actor: the only code that holds the pool. It runs on a `SyncArbiter` (one thread per
//! pooled connection), because diesel is blocking; async code talks to it through [`Database`].

use actix::prelude::*;

use std::sync::Arc;

use crate::crypto::SharedKeyring;
use crate::config::DatabaseUrl;
use crate::db::{ClientTokenKey, CredentialVersion, DbError, DbPool, ImportOutcome, PoolOptions, ReencryptPass, StoredClientToken, StoredToken, TokenStore, TokenUpdate, build_pool, run_migrations};
use crate::domain::{NewToken, Secret};
use crate::metrics;

pub struct DbActor {
    pool: DbPool,
    store: TokenStore,
}

impl Actor for DbActor {
    type Context = SyncContext<Self>;
}

/// Declares each message with its reply type and the store call that answers it.
macro_rules! db_messages {
    ($(
        $(#[$doc:meta])*
        $name:ident { $($field:ident : $ty:ty),* $(,)? } -> $out:ty =
            |$store:ident, $conn:ident, $msg:ident| $body:expr;
    )*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name { $(pub $field: $ty),* }

        impl Message for $name {
            type Result = Result<$out, DbError>;
        }

        impl Handler<$name> for DbActor {
            type Result = Result<$out, DbError>;

            fn handle(&mut self, $msg: $name, _: &mut SyncContext<Self>) -> Self::Result {
                let $store = &self.store;
                let waited = std::time::Instant::now();
                let mut pooled = self.pool.get()?;
                metrics::DB_POOL_WAIT.observe(waited.elapsed().as_secs_f64());
                let $conn = &mut *pooled;
                $body
            }
        }
    )*};
}

db_messages! {
    /// Applies pending migrations; returns the versions applied.
    Migrate {} -> Vec<String> = |_store, conn, _msg| run_migrations(conn);
    /// A trivial query: is the database reachable?
    Ping {} -> () = |_store, conn, _msg| {
        use diesel::connection::SimpleConnection;
        conn.batch_execute("SELECT 1").map_err(DbError::Query)
    };
    UpdateToken { token: NewToken, now: i64 } -> Option<StoredToken> =
        |store, conn, msg| store.update_token(conn, &msg.token, msg.now);
    /// `import-dirac-tokendb`: one DIRAC credential, stored unless we hold one of our own.
    ImportToken { token: NewToken, now: i64, dry_run: bool } -> ImportOutcome =
        |store, conn, msg| store.import_token(conn, &msg.token, msg.now, msg.dry_run);
    StoreRefreshed {
        expected: CredentialVersion,
        user_id: String,
        provider: String,
        update: TokenUpdate,
        now: i64,
    } -> StoredToken = |store, conn, msg| {
        store.store_refreshed(conn, msg.expected, &msg.user_id, &msg.provider, &msg.update, msg.now)
    };
    MarkNeedsRedelegation { expected: CredentialVersion, now: i64 } -> () =
        |store, conn, msg| store.mark_needs_redelegation(conn, msg.expected, msg.now);
    GetCredential { user_id: String, provider: String } -> Option<StoredToken> =
        |store, conn, msg| store.credential(conn, &msg.user_id, &msg.provider);
    TokensByUserId { user_id: String } -> Vec<StoredToken> =
        |store, conn, msg| store.tokens_by_user_id(conn, &msg.user_id);
    RemoveTokens { user_id: String } -> usize =
        |store, conn, msg| store.remove_tokens(conn, &msg.user_id);
    PurgeExpired { now: i64 } -> usize = |store, conn, msg| store.purge_expired(conn, msg.now);
    RowsUnderOldKeys {} -> i64 = |store, conn, _msg| store.rows_under_old_keys(conn);
    ReencryptBatch { limit: i64 } -> ReencryptPass =
        |store, conn, msg| store.reencrypt_pass(conn, msg.limit);
    /// Takes (or renews) a credential's refresh lease; false if another owner holds a live one.
    TakeLease { version: CredentialVersion, owner: String, now: i64, until: i64 } -> bool =
        |store, conn, msg| store.take_lease(conn, msg.version, &msg.owner, msg.now, msg.until);
    ReleaseLease { id: i64, owner: String } -> () =
        |store, conn, msg| store.release_lease(conn, msg.id, &msg.owner);
    CredentialVersionOf { user_id: String, provider: String } -> Option<CredentialVersion> =
        |store, conn, msg| store.credential_version(conn, &msg.user_id, &msg.provider);
    /// The shared row of a client-token key (created on first use).
    ClientToken { key: ClientTokenKey, now: i64 } -> StoredClientToken =
        |store, conn, msg| store.client_token(conn, &msg.key, msg.now);
    TakeClientLease { version: CredentialVersion, owner: String, now: i64, until: i64 } -> bool =
        |store, conn, msg| store.take_client_lease(conn, msg.version, &msg.owner, msg.now, msg.until);
    ReleaseClientLease { id: i64, owner: String } -> () =
        |store, conn, msg| store.release_client_lease(conn, msg.id, &msg.owner);
    StoreClientToken {
        key: ClientTokenKey,
        expected: CredentialVersion,
        access_token: Secret,
        token_type: String,
        expires_at: i64,
        expires_in: i64,
        granted_scope: String,
        now: i64,
    } -> CredentialVersion = |store, conn, msg| {
        store.store_client_token(
            conn, &msg.key, msg.expected, &msg.access_token, &msg.token_type,
            msg.expires_at, msg.expires_in, &msg.granted_scope, msg.now,
        )
    };
    /// Stored credentials by (provider, state), for metrics.
    CountCredentials {} -> Vec<(String, String, i64)> =
        |store, conn, _msg| store.count_credentials(conn);
    /// Usable credentials expiring within `seconds` of `now`, by provider, for metrics.
    CountExpiring { now: i64, seconds: i64 } -> Vec<(String, i64)> =
        |store, conn, msg| store.count_expiring(conn, msg.now, msg.now + msg.seconds);
}

/// The async face of the DB actor: what the rest of the service holds.
#[derive(Clone)]
pub struct Database {
    addr: Addr<DbActor>,
    pool: DbPool,
}

impl Database {
    /// Builds the pool for `url` and starts the actor on it. Needs a running actix system; does
    /// not wait for the database (send [`Ping`] for that).
    pub fn open(
        url: &DatabaseUrl,
        keyring: Arc<SharedKeyring>,
        options: PoolOptions,
    ) -> Result<Self, DbError> {
        Ok(Self::start(
            build_pool(url, options)?,
            TokenStore::new(keyring),
        ))
    }

    /// Starts the actor's threads, one per pooled connection.
    fn start(pool: DbPool, store: TokenStore) -> Self {
        let threads = pool.max_size() as usize;
        let actor_pool = pool.clone();
        let addr = SyncArbiter::start(threads, move || DbActor {
            pool: actor_pool.clone(),
            store: store.clone(),
        });
        Self { addr, pool }
    }

    pub async fn call<M>(&self, message: M) -> Result<<M::Result as ResultValue>::Value, DbError>
    where
        M: Message + Send + 'static,
        M::Result: ResultValue + Send,
        DbActor: Handler<M>,
    {
        self.addr
            .send(message)
            .await
            .map_err(|_| DbError::Unavailable)?
            .into_result()
    }

    /// Publishes the pool's open and idle connections to the metrics.
    pub fn export_pool_state(&self) {
        let state = self.pool.state();
        metrics::DB_POOL_CONNECTIONS.set(i64::from(state.connections));
        metrics::DB_POOL_IDLE.set(i64::from(state.idle_connections));
    }
}

/// Lets [`Database::call`] flatten the actor's `Result<T, DbError>` replies.
pub trait ResultValue {
    type Value;
    fn into_result(self) -> Result<Self::Value, DbError>;
}

impl<T> ResultValue for Result<T, DbError> {
    type Value = T;
    fn into_result(self) -> Result<T, DbError> {
        self
    }
}
