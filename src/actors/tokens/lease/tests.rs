//! Every branch of the lease protocol against a fake store and a fake IdP, on tokio's paused
//! clock: waits, lease lapses and late replies take no real time and happen in a fixed order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::*;
use crate::actors::tokens::Subject;
use crate::db::{DbError, StoredClientToken};
use crate::domain::Secret;
use crate::metrics::{DbOperation, Metrics};

/// The fake clock's Unix time when a test starts.
const EPOCH: i64 = 1_700_000_000;
/// This replica, and another one on the same database.
const ME: &str = "replica-a";
const PEER: &str = "replica-b";
/// The fake IdP's `timeout`, and its `timeout + late_reply_wait`.
const TIMEOUT: Duration = Duration::from_secs(2);
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);
/// What the protocol derives from them: a user credential's lease (`refresh_timeout + 5`),
/// a client-token row's lease (`timeout + 5`), the caller's deadline (`timeout + 1`).
const USER_LEASE: i64 = 10;
const CLIENT_LEASE: i64 = 7;
/// An IdP reply after the caller's deadline (3 s).
const LATE: Duration = Duration::from_secs(4);

/// The database's rows and leases, as the store methods change them.
#[derive(Default)]
struct Rows {
    credential: Option<StoredToken>,
    client_row: Option<StoredClientToken>,
    /// The client row's lease: owner and expiry.
    client_lease: Option<(String, i64)>,
    /// Operations that fail as if the database were down.
    failing: Vec<DbOperation>,
    /// `take_lease` calls by this replica (first takes and renewals).
    my_lease_takes: usize,
    /// Lease owners whose processes are gone (their liveness locks lost).
    gone: Vec<String>,
}

#[derive(Clone)]
struct FakeStore {
    rows: Arc<Mutex<Rows>>,
    started: Instant,
}

impl FakeStore {
    fn new() -> Self {
        Self {
            rows: Arc::default(),
            started: Instant::now(),
        }
    }

    fn holding(credential: StoredToken) -> Self {
        let store = Self::new();
        store.rows().credential = Some(credential);
        store
    }

    fn rows(&self) -> MutexGuard<'_, Rows> {
        self.rows.lock().unwrap()
    }

    fn credential_now(&self) -> StoredToken {
        self.rows().credential.clone().expect("a stored credential")
    }

    fn fail(&self, operation: DbOperation) {
        self.rows().failing.push(operation);
    }

    fn check(&self, operation: DbOperation) -> Result<(), DbError> {
        if self.rows().failing.contains(&operation) {
            return Err(DbError::Unavailable);
        }
        Ok(())
    }

    /// Another replica's refresh or a new login: a new generation with a fresh access token,
    /// `after` from now.
    fn written_by_peer(&self, after: Duration, refresh: &'static str, access: &'static str) {
        let store = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let now = store.now();
            let mut rows = store.rows();
            let row = rows.credential.as_mut().expect("a stored credential");
            row.generation += 1;
            row.refresh_token = Secret::new(refresh);
            row.access_token = Some(Secret::new(access));
            row.expires_at = now + 60;
            row.expires_in = 60;
            row.scope = "openid compute.read".into();
            row.lease_owner = None;
            row.lease_expires_at = None;
        });
    }

    /// Another replica's client token in the shared row, `after` from now.
    fn client_token_obtained_by_peer(&self, after: Duration, access: &'static str) {
        let store = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let now = store.now();
            let mut rows = store.rows();
            let row = rows.client_row.as_mut().expect("a client-token row");
            row.version.generation += 1;
            row.access_token = Some(Secret::new(access));
            row.expires_at = now + 60;
            row.expires_in = 60;
            rows.client_lease = None;
        });
    }
}

/// The SQL rule of both leases: free when nobody holds it, when it lapsed, or when it is one's own.
fn lease_is_free(holder: Option<&str>, expires_at: Option<i64>, owner: &str, now: i64) -> bool {
    holder.is_none() || expires_at.is_some_and(|at| at < now) || holder == Some(owner)
}

fn conflict(expected: CredentialVersion) -> DbError {
    DbError::Conflict {
        expected: expected.generation,
    }
}

impl CredentialStore for FakeStore {
    fn now(&self) -> i64 {
        EPOCH + self.started.elapsed().as_secs() as i64
    }

    async fn dead_lease_holder(&self, row: LeasedRow) -> Result<Option<String>, DbError> {
        self.check(DbOperation::DeadLeaseHolder)?;
        let rows = self.rows();
        let lease = match row {
            LeasedRow::Credential(id) => rows
                .credential
                .as_ref()
                .filter(|r| r.id == id)
                .and_then(|r| r.lease_owner.clone().zip(r.lease_expires_at)),
            LeasedRow::ClientToken(id) => rows
                .client_row
                .as_ref()
                .filter(|r| r.version.id == id)
                .and(rows.client_lease.clone()),
        };
        Ok(lease
            .map(|(owner, _)| owner)
            .filter(|owner| rows.gone.contains(owner)))
    }

    async fn credential(
        &self,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<StoredToken>, DbError> {
        self.check(DbOperation::Credential)?;
        Ok(self
            .rows()
            .credential
            .clone()
            .filter(|row| row.user_id == user_id && row.provider == provider))
    }

    async fn take_lease(
        &self,
        version: CredentialVersion,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, DbError> {
        self.check(DbOperation::TakeLease)?;
        let mut rows = self.rows();
        if owner == ME {
            rows.my_lease_takes += 1;
        }
        let Some(row) = rows.credential.as_mut().filter(|r| r.version() == version) else {
            return Ok(false);
        };
        let free = lease_is_free(row.lease_owner.as_deref(), row.lease_expires_at, owner, now);
        if free {
            row.lease_owner = Some(owner.to_owned());
            row.lease_expires_at = Some(until);
        }
        Ok(free)
    }

    async fn release_lease(&self, id: i64, owner: &str) -> Result<(), DbError> {
        self.check(DbOperation::ReleaseLease)?;
        let mut rows = self.rows();
        if let Some(row) = rows.credential.as_mut()
            && row.id == id
            && row.lease_owner.as_deref() == Some(owner)
        {
            row.lease_owner = None;
            row.lease_expires_at = None;
        }
        Ok(())
    }

    async fn store_refreshed(
        &self,
        expected: CredentialVersion,
        user_id: &str,
        provider: &str,
        update: TokenUpdate,
        now: i64,
    ) -> Result<StoredToken, DbError> {
        self.check(DbOperation::StoreRefreshed)?;
        let mut rows = self.rows();
        let row = rows
            .credential
            .as_mut()
            .filter(|r| r.version() == expected && r.user_id == user_id && r.provider == provider)
            .ok_or_else(|| conflict(expected))?;
        row.generation += 1;
        row.refresh_token = update.refresh_token;
        row.rt_expires_at = update.rt_expires_at;
        row.access_token = update.access_token;
        row.expires_at = update.expires_at;
        row.expires_in = update.expires_in;
        row.token_type = update.token_type;
        row.scope = update.scope;
        row.audience = update.audience;
        row.updated_at = now;
        row.lease_owner = None;
        row.lease_expires_at = None;
        Ok(row.clone())
    }

    async fn mark_needs_redelegation(
        &self,
        expected: CredentialVersion,
        now: i64,
    ) -> Result<(), DbError> {
        self.check(DbOperation::MarkNeedsRedelegation)?;
        let mut rows = self.rows();
        let row = rows
            .credential
            .as_mut()
            .filter(|r| r.version() == expected)
            .ok_or_else(|| conflict(expected))?;
        row.state = CredentialState::NeedsRedelegation;
        row.generation += 1;
        row.updated_at = now;
        Ok(())
    }

    async fn client_token(
        &self,
        _key: &ClientTokenKey,
        _now: i64,
    ) -> Result<StoredClientToken, DbError> {
        self.check(DbOperation::ClientToken)?;
        Ok(self
            .rows()
            .client_row
            .get_or_insert_with(empty_client_row)
            .clone())
    }

    async fn take_client_lease(
        &self,
        version: CredentialVersion,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, DbError> {
        self.check(DbOperation::TakeClientLease)?;
        let mut rows = self.rows();
        if rows.client_row.as_ref().map(|r| r.version) != Some(version) {
            return Ok(false);
        }
        let (holder, expires_at) = match &rows.client_lease {
            Some((holder, expires_at)) => (Some(holder.as_str()), Some(*expires_at)),
            None => (None, None),
        };
        let free = lease_is_free(holder, expires_at, owner, now);
        if free {
            rows.client_lease = Some((owner.to_owned(), until));
        }
        Ok(free)
    }

    async fn release_client_lease(&self, id: i64, owner: &str) -> Result<(), DbError> {
        self.check(DbOperation::ReleaseClientLease)?;
        let mut rows = self.rows();
        let mine = rows.client_lease.as_ref().is_some_and(|(o, _)| o == owner);
        if mine && rows.client_row.as_ref().map(|r| r.version.id) == Some(id) {
            rows.client_lease = None;
        }
        Ok(())
    }

    async fn store_client_token(
        &self,
        _key: &ClientTokenKey,
        expected: CredentialVersion,
        token: &AccessToken,
        _now: i64,
    ) -> Result<CredentialVersion, DbError> {
        self.check(DbOperation::StoreClientToken)?;
        let mut rows = self.rows();
        let row = rows
            .client_row
            .as_mut()
            .filter(|r| r.version == expected)
            .ok_or_else(|| conflict(expected))?;
        row.version.generation += 1;
        row.access_token = Some(token.access_token.clone());
        row.token_type = Some(token.token_type.clone());
        row.expires_at = token.expires_at;
        row.expires_in = token.lifetime;
        row.scope = token.scope.to_string();
        let version = row.version;
        rows.client_lease = None;
        Ok(version)
    }
}

/// An IdP that answers each exchange with the next scripted reply, after its delay, and notes
/// what it was presented.
#[derive(Default)]
struct FakeIssuer {
    replies: Mutex<VecDeque<(Duration, Result<IssuedToken, IdpError>)>>,
    /// The refresh tokens presented, and `client_credentials` for each client-token request.
    presented: Mutex<Vec<String>>,
    /// `audience_narrowing = exchange`.
    narrowing_by_exchange: bool,
}

impl FakeIssuer {
    /// An IdP the test expects no call to.
    fn unused() -> Self {
        Self::default()
    }

    fn answering(after: Duration, reply: Result<IssuedToken, IdpError>) -> Self {
        let issuer = Self::default();
        issuer.replies.lock().unwrap().push_back((after, reply));
        issuer
    }

    fn presented(&self) -> Vec<String> {
        self.presented.lock().unwrap().clone()
    }

    async fn exchange(&self, presented: &str) -> Result<IssuedToken, IdpError> {
        self.presented.lock().unwrap().push(presented.to_owned());
        let next = self.replies.lock().unwrap().pop_front();
        let (after, reply) = next.expect("an IdP call the test did not expect");
        tokio::time::sleep(after).await;
        reply
    }
}

impl TokenIssuer for FakeIssuer {
    fn timeout(&self) -> Duration {
        TIMEOUT
    }

    fn refresh_timeout(&self) -> Duration {
        REFRESH_TIMEOUT
    }

    fn narrows_audiences_by_exchange(&self) -> bool {
        self.narrowing_by_exchange
    }

    async fn refresh(
        &self,
        refresh_token: &Secret,
        _scopes: &ScopeSet,
        _audience: Option<&str>,
    ) -> Result<IssuedToken, IdpError> {
        self.exchange(refresh_token.expose()).await
    }

    async fn client_credentials(
        &self,
        _scopes: &ScopeSet,
        _audience: Option<&str>,
    ) -> Result<IssuedToken, IdpError> {
        self.exchange("client_credentials").await
    }

    async fn token_exchange(
        &self,
        subject_token: &Secret,
        _scopes: &ScopeSet,
        audience: &str,
    ) -> Result<IssuedToken, IdpError> {
        self.exchange(&format!("{} for {audience}", subject_token.expose()))
            .await
    }
}

/// alice's credential at IAM, generation 1, with refresh token `rt-1` and no access token.
fn credential() -> StoredToken {
    StoredToken {
        id: 1,
        user_id: "alice".into(),
        provider: "IAM".into(),
        state: CredentialState::Active,
        generation: 1,
        key_id: "k1".into(),
        refresh_token: Secret::new("rt-1"),
        rt_expires_at: EPOCH + 86_400,
        access_token: None,
        expires_at: 0,
        expires_in: 0,
        token_type: None,
        scope: String::new(),
        audience: None,
        client_id: Some("tm-client".into()),
        issued_at: EPOCH - 3600,
        access_token_revoked_at: 0,
        refresh_token_revoked_at: 0,
        lease_owner: None,
        lease_expires_at: None,
        created_at: EPOCH - 3600,
        updated_at: EPOCH - 3600,
        grant_scope: "openid offline_access compute.read".into(),
    }
}

/// The credential with an access token for the test key that lives `lives` more seconds.
fn credential_with_access_token(lives: i64) -> StoredToken {
    StoredToken {
        access_token: Some(Secret::new("at-stored")),
        expires_at: EPOCH + lives,
        expires_in: lives,
        token_type: Some("Bearer".into()),
        scope: "openid compute.read".into(),
        ..credential()
    }
}

/// The credential while another replica holds its lease until `until` (seconds from EPOCH).
fn credential_leased_by_peer(until: i64) -> StoredToken {
    StoredToken {
        lease_owner: Some(PEER.into()),
        lease_expires_at: Some(EPOCH + until),
        ..credential()
    }
}

/// A client-token row as the database creates it on first use.
fn empty_client_row() -> StoredClientToken {
    StoredClientToken {
        version: CredentialVersion {
            id: 7,
            generation: 1,
        },
        access_token: None,
        token_type: None,
        expires_at: 0,
        expires_in: 0,
        scope: String::new(),
    }
}

/// A store whose client-token row another replica is obtaining a token for until `until`
/// (seconds from EPOCH).
fn client_row_leased_by_peer(until: i64) -> FakeStore {
    let store = FakeStore::new();
    let mut rows = store.rows();
    rows.client_row = Some(empty_client_row());
    rows.client_lease = Some((PEER.into(), EPOCH + until));
    drop(rows);
    store
}

fn issued(access: &str, rotated: Option<&str>) -> Result<IssuedToken, IdpError> {
    Ok(IssuedToken {
        access_token: Secret::new(access),
        token_type: "Bearer".into(),
        expires_in: Some(600),
        scope: None,
        refresh_token: rotated.map(Secret::new),
    })
}

fn reply_lost() -> Result<IssuedToken, IdpError> {
    Err(IdpError::ReplyLost {
        idp: "IAM".into(),
        reason: "connection reset".into(),
    })
}

fn unavailable() -> Result<IssuedToken, IdpError> {
    Err(IdpError::Unavailable {
        idp: "IAM".into(),
        reason: "503".into(),
    })
}

async fn refresh(
    issuer: &FakeIssuer,
    store: &FakeStore,
    required_time_left: i64,
) -> Result<AccessToken, TokenError> {
    refresh_counted(issuer, store, required_time_left, &Metrics::unexported()).await
}

async fn refresh_counted(
    issuer: &FakeIssuer,
    store: &FakeStore,
    required_time_left: i64,
    metrics: &Metrics,
) -> Result<AccessToken, TokenError> {
    let key = TokenKey::for_tests(Subject::User("alice".into()));
    let replica = Replica {
        lease_owner: ME,
        metrics,
        audit: None,
    };
    refresh_user_token(issuer, store, &replica, "alice", &key, required_time_left).await
}

/// A refresh for a key that asks for `scopes` instead of the test key's.
async fn refresh_scopes(
    issuer: &FakeIssuer,
    store: &FakeStore,
    scopes: &str,
) -> Result<AccessToken, TokenError> {
    let key = TokenKey {
        scopes: ScopeSet::parse(scopes),
        ..TokenKey::for_tests(Subject::User("alice".into()))
    };
    let replica = Replica {
        lease_owner: ME,
        metrics: &Metrics::unexported(),
        audit: None,
    };
    refresh_user_token(issuer, store, &replica, "alice", &key, 0).await
}

async fn client_token(
    issuer: &FakeIssuer,
    store: &FakeStore,
    required_time_left: i64,
) -> Result<AccessToken, TokenError> {
    let replica = Replica {
        lease_owner: ME,
        metrics: &Metrics::unexported(),
        audit: None,
    };
    shared_client_token(
        issuer,
        store,
        &replica,
        &TokenKey::for_tests(Subject::Client),
        required_time_left,
    )
    .await
}

/// The credential is untouched: still usable, same generation and refresh token, no lease.
fn assert_intact(store: &FakeStore) {
    let row = store.credential_now();
    assert_eq!(row.state, CredentialState::Active);
    assert_eq!(row.generation, 1);
    assert_eq!(row.refresh_token.expose(), "rt-1");
    assert_eq!(row.lease_owner, None, "the lease is released");
}

/// The credential is marked and its lease released.
fn assert_marked(store: &FakeStore) {
    let row = store.credential_now();
    assert_eq!(row.state, CredentialState::NeedsRedelegation);
    assert_eq!(row.generation, 2);
    assert_eq!(row.lease_owner, None, "the lease is released");
}

#[tokio::test(start_paused = true)]
async fn a_stored_token_that_lives_long_enough_is_served_without_the_idp() {
    let store = FakeStore::holding(credential_with_access_token(600));
    let issuer = FakeIssuer::unused();
    let token = refresh(&issuer, &store, 600).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-stored");
    assert_eq!(token.expires_at, EPOCH + 600);
    assert_eq!(token.credential, Some(store.credential_now().version()));
    assert!(issuer.presented().is_empty());
    assert_eq!(store.rows().my_lease_takes, 0, "no lease without a refresh");
}

#[test]
fn a_stored_access_token_serves_only_its_own_key_while_it_lives_long_enough() {
    let stored = credential_with_access_token(600);
    let key = TokenKey::for_tests(Subject::User("alice".into()));
    let fits = |key: &TokenKey, required: i64, peer_refreshed: bool, now: i64| {
        stored_access_token(&stored, key, required, peer_refreshed, now).is_some()
    };
    assert!(fits(&key, 600, false, EPOCH));
    assert!(!fits(&key, 601, false, EPOCH), "too short");
    assert!(
        fits(&key, 601, true, EPOCH),
        "too short, but what a peer just obtained"
    );
    assert!(!fits(&key, 0, true, EPOCH + 600), "expired");
    let other_audience = TokenKey {
        audience: Some("https://ce.example.org".into()),
        ..key.clone()
    };
    assert!(!fits(&other_audience, 0, false, EPOCH));
    let more_scopes = TokenKey {
        scopes: ScopeSet::parse("openid compute.read compute.modify"),
        ..key.clone()
    };
    assert!(!fits(&more_scopes, 0, false, EPOCH));
    let fewer_scopes = TokenKey {
        scopes: ScopeSet::parse("openid"),
        ..key.clone()
    };
    assert!(
        fits(&fewer_scopes, 0, false, EPOCH),
        "granted more than asked"
    );
    assert!(
        stored_access_token(&credential(), &key, 0, true, EPOCH).is_none(),
        "no access token stored"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_stores_the_rotated_refresh_token_before_the_access_token_is_handed_out() {
    let store = FakeStore::holding(credential_with_access_token(60));
    let issuer = FakeIssuer::answering(Duration::ZERO, issued("at-new", Some("rt-2")));
    let token = refresh(&issuer, &store, 600).await.unwrap();
    assert_eq!(issuer.presented(), ["rt-1"]);
    let row = store.credential_now();
    assert_eq!(row.refresh_token.expose(), "rt-2");
    assert_eq!(
        row.access_token.as_ref().map(Secret::expose),
        Some("at-new")
    );
    assert_eq!((row.expires_at, row.expires_in), (EPOCH + 600, 600));
    assert_eq!(row.scope, "compute.read openid", "the requested scopes");
    assert_eq!(row.lease_owner, None, "the write ends the lease");
    assert_eq!(token.access_token.expose(), "at-new");
    assert_eq!(
        token.credential,
        Some(row.version()),
        "handed out as the stored version"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_without_rotation_keeps_the_stored_refresh_token() {
    let store = FakeStore::holding(credential());
    let issuer = FakeIssuer::answering(Duration::ZERO, issued("at-new", None));
    refresh(&issuer, &store, 0).await.unwrap();
    let row = store.credential_now();
    assert_eq!(row.refresh_token.expose(), "rt-1");
    assert_eq!(row.rt_expires_at, EPOCH + 86_400);
    assert_eq!(row.generation, 2);
}

#[tokio::test(start_paused = true)]
async fn a_lost_reply_marks_the_credential_and_its_refresh_token_is_never_presented_again() {
    let store = FakeStore::holding(credential());
    let issuer = FakeIssuer::answering(Duration::ZERO, reply_lost());
    let first = refresh(&issuer, &store, 0).await;
    assert!(
        matches!(&first, Err(TokenError::NeedsRedelegation { user_id, provider })
            if user_id == "alice" && provider == "IAM"),
        "{first:?}"
    );
    assert_marked(&store);
    let again = refresh(&issuer, &store, 0).await;
    assert!(matches!(again, Err(TokenError::NeedsRedelegation { .. })));
    assert_eq!(issuer.presented(), ["rt-1"], "presented once");
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_marks_the_credential_and_returns_the_idps_refusal() {
    let store = FakeStore::holding(credential());
    let refused = Err(IdpError::InvalidGrant("token revoked".into()));
    let issuer = FakeIssuer::answering(Duration::ZERO, refused);
    let result = refresh(&issuer, &store, 0).await;
    assert!(
        matches!(result, Err(TokenError::Idp(IdpError::InvalidGrant(_)))),
        "{result:?}"
    );
    assert_marked(&store);
}

#[tokio::test(start_paused = true)]
async fn a_credential_that_needs_a_new_login_is_refused_without_the_idp() {
    let store = FakeStore::holding(StoredToken {
        state: CredentialState::NeedsRedelegation,
        ..credential_with_access_token(600)
    });
    let issuer = FakeIssuer::unused();
    let result = refresh(&issuer, &store, 0).await;
    assert!(matches!(result, Err(TokenError::NeedsRedelegation { .. })));
    assert!(issuer.presented().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_missing_credential_or_an_expired_refresh_token_is_no_credential() {
    let issuer = FakeIssuer::unused();
    let missing = refresh(&issuer, &FakeStore::new(), 0).await;
    assert!(matches!(missing, Err(TokenError::NoCredential(user)) if user == "alice"));
    let expired = FakeStore::holding(StoredToken {
        rt_expires_at: EPOCH,
        ..credential_with_access_token(600)
    });
    let result = refresh(&issuer, &expired, 0).await;
    assert!(
        matches!(result, Err(TokenError::NoCredential(_))),
        "{result:?}"
    );
    assert!(issuer.presented().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_reply_after_the_callers_deadline_is_stored_and_the_lease_renewed_meanwhile() {
    let store = FakeStore::holding(credential());
    let issuer = FakeIssuer::answering(LATE, issued("at-late", Some("rt-2")));
    let started = Instant::now();
    let token = refresh(&issuer, &store, 0).await.unwrap();
    assert!(started.elapsed() > caller_deadline(&issuer));
    assert_eq!(token.access_token.expose(), "at-late");
    assert_eq!(store.credential_now().refresh_token.expose(), "rt-2");
    // Taken at 0 s, renewed every third of the lease (3 s).
    assert_eq!(store.rows().my_lease_takes, 2);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_fails_releases_the_lease_and_keeps_the_credential() {
    let refused = Err(IdpError::Refused {
        context: "Invalid refresh token",
        error: "invalid_scope".into(),
        description: String::new(),
    });
    // A refusal at once, and an IdP still unavailable after the caller's deadline.
    for (after, reply) in [(Duration::ZERO, refused), (LATE, unavailable())] {
        let store = FakeStore::holding(credential());
        let issuer = FakeIssuer::answering(after, reply);
        let result = refresh(&issuer, &store, 0).await;
        assert!(
            matches!(
                result,
                Err(TokenError::Idp(
                    IdpError::Refused { .. } | IdpError::Unavailable { .. }
                ))
            ),
            "{result:?}"
        );
        assert_intact(&store);
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_that_raced_the_refresh_is_kept_and_the_refreshed_token_withheld() {
    let metrics = Metrics::unexported();
    let store = FakeStore::holding(credential());
    let issuer = FakeIssuer::answering(Duration::from_secs(1), issued("at-new", Some("rt-2")));
    // A new login (updateToken) while the IdP works on the refresh.
    store.written_by_peer(Duration::from_millis(500), "rt-login", "at-login");
    let result = refresh_counted(&issuer, &store, 0, &metrics).await;
    assert!(matches!(result, Err(TokenError::NotStored)), "{result:?}");
    assert_eq!(store.credential_now().refresh_token.expose(), "rt-login");
    assert_eq!(metrics.refresh_token_persist_failures.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refreshed_token_that_cannot_be_stored_is_withheld() {
    let metrics = Metrics::unexported();
    let store = FakeStore::holding(credential());
    store.fail(DbOperation::StoreRefreshed);
    let issuer = FakeIssuer::answering(Duration::ZERO, issued("at-new", Some("rt-2")));
    let result = refresh_counted(&issuer, &store, 0, &metrics).await;
    assert!(matches!(result, Err(TokenError::NotStored)), "{result:?}");
    assert_eq!(issuer.presented(), ["rt-1"]);
    assert_eq!(metrics.refresh_token_persist_failures.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn storage_failures_before_the_refresh_are_storage_errors_without_the_idp() {
    for operation in [DbOperation::Credential, DbOperation::TakeLease] {
        let store = FakeStore::holding(credential());
        store.fail(operation);
        let issuer = FakeIssuer::unused();
        let result = refresh(&issuer, &store, 0).await;
        assert!(
            matches!(result, Err(TokenError::Storage)),
            "{operation:?}: {result:?}"
        );
        assert!(issuer.presented().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_reported_even_when_it_cannot_be_recorded() {
    let store = FakeStore::holding(credential());
    store.fail(DbOperation::MarkNeedsRedelegation);
    store.fail(DbOperation::ReleaseLease);
    let issuer = FakeIssuer::answering(Duration::ZERO, reply_lost());
    let result = refresh(&issuer, &store, 0).await;
    assert!(
        matches!(result, Err(TokenError::NeedsRedelegation { .. })),
        "{result:?}"
    );
    assert_eq!(store.credential_now().lease_owner.as_deref(), Some(ME));
}

#[tokio::test(start_paused = true)]
async fn another_replicas_refresh_is_waited_for_and_its_result_served() {
    let store = FakeStore::holding(credential_leased_by_peer(USER_LEASE));
    store.written_by_peer(Duration::from_secs(1), "rt-2", "at-peer");
    let issuer = FakeIssuer::unused();
    let started = Instant::now();
    // The peer's token lives 60 s only: obtained for this caller, it serves all the same.
    let token = refresh(&issuer, &store, 3600).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-peer");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(issuer.presented().is_empty());
}

#[tokio::test(start_paused = true)]
async fn another_replicas_refresh_that_never_finishes_is_given_up_after_twice_the_lease() {
    let store = FakeStore::holding(credential_leased_by_peer(1_000));
    let issuer = FakeIssuer::unused();
    let started = Instant::now();
    let result = refresh(&issuer, &store, 0).await;
    assert!(
        matches!(result, Err(TokenError::Idp(IdpError::Unavailable { .. }))),
        "{result:?}"
    );
    let waited = started.elapsed();
    let bound = Duration::from_secs(2 * USER_LEASE as u64);
    assert!(
        waited >= bound && waited < bound + Duration::from_secs(1),
        "{waited:?}"
    );
    assert!(issuer.presented().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_lease_of_another_replica_is_taken_over() {
    let store = FakeStore::holding(credential_leased_by_peer(2));
    let issuer = FakeIssuer::answering(Duration::ZERO, issued("at-new", Some("rt-2")));
    let started = Instant::now();
    let token = refresh(&issuer, &store, 0).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-new");
    // Live through EPOCH + 2, lapsed once the clock reads EPOCH + 3.
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(issuer.presented(), ["rt-1"]);
    assert_eq!(store.credential_now().refresh_token.expose(), "rt-2");
}

#[tokio::test(start_paused = true)]
async fn the_lease_of_a_replica_that_is_gone_is_taken_over_once_the_idps_timeout_has_passed() {
    let store = FakeStore::holding(credential_leased_by_peer(USER_LEASE));
    store.rows().gone.push(PEER.into());
    let issuer = FakeIssuer::answering(Duration::ZERO, issued("at-new", Some("rt-2")));
    let metrics = Metrics::unexported();
    let started = Instant::now();
    let token = refresh_counted(&issuer, &store, 0, &metrics).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-new");
    // Seen gone at the first check (0.5 s), again 2 s later, long before the lease's expiry.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(issuer.presented(), ["rt-1"]);
    assert_eq!(store.credential_now().refresh_token.expose(), "rt-2");
    assert_eq!(
        metrics.lease_takeovers.with_label_values(&["user"]).get(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_takes_its_liveness_lock_again_keeps_its_lease() {
    let store = FakeStore::holding(credential_leased_by_peer(USER_LEASE));
    store.rows().gone.push(PEER.into());
    let back = store.clone();
    tokio::spawn(async move {
        // Its session broke (a database restart, say) and it locked again within a second.
        tokio::time::sleep(Duration::from_millis(2200)).await;
        back.rows().gone.clear();
    });
    store.written_by_peer(Duration::from_secs(6), "rt-2", "at-peer");
    let issuer = FakeIssuer::unused();
    let token = refresh(&issuer, &store, 0).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-peer");
    assert!(issuer.presented().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_client_token_lease_of_a_replica_that_is_gone_is_taken_over() {
    let store = client_row_leased_by_peer(CLIENT_LEASE);
    store.rows().gone.push(PEER.into());
    let issuer = FakeIssuer::answering(Duration::ZERO, issued("at-client", None));
    let started = Instant::now();
    let token = client_token(&issuer, &store, 0).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-client");
    assert!(started.elapsed() < Duration::from_secs(CLIENT_LEASE as u64));
    assert_eq!(issuer.presented(), ["client_credentials"]);
}

#[tokio::test(start_paused = true)]
async fn a_client_token_row_that_lives_long_enough_is_served_without_the_idp() {
    let store = FakeStore::new();
    store.rows().client_row = Some(StoredClientToken {
        access_token: Some(Secret::new("at-row")),
        token_type: Some("Bearer".into()),
        expires_at: EPOCH + 600,
        expires_in: 600,
        scope: "openid compute.read".into(),
        ..empty_client_row()
    });
    let issuer = FakeIssuer::unused();
    let token = client_token(&issuer, &store, 600).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-row");
    assert_eq!(token.expires_at, EPOCH + 600);
    assert!(issuer.presented().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_client_token_is_obtained_under_the_lease_and_shared() {
    let store = FakeStore::new();
    let issuer = FakeIssuer::answering(Duration::ZERO, issued("at-client", None));
    let token = client_token(&issuer, &store, 0).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-client");
    assert_eq!(issuer.presented(), ["client_credentials"]);
    let rows = store.rows();
    let row = rows.client_row.as_ref().unwrap();
    assert_eq!(
        row.access_token.as_ref().map(Secret::expose),
        Some("at-client")
    );
    assert_eq!((row.version.generation, row.expires_in), (2, 600));
    assert!(rows.client_lease.is_none(), "the write ends the lease");
}

#[tokio::test(start_paused = true)]
async fn a_client_token_another_replica_obtains_meanwhile_is_served() {
    let store = client_row_leased_by_peer(CLIENT_LEASE);
    store.client_token_obtained_by_peer(Duration::from_secs(1), "at-peer");
    let issuer = FakeIssuer::unused();
    let token = client_token(&issuer, &store, 3600).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-peer");
    assert!(issuer.presented().is_empty());
}

#[tokio::test(start_paused = true)]
async fn another_replicas_client_token_request_that_never_finishes_is_given_up() {
    let store = client_row_leased_by_peer(1_000);
    let issuer = FakeIssuer::unused();
    let started = Instant::now();
    let result = client_token(&issuer, &store, 0).await;
    assert!(matches!(
        result,
        Err(TokenError::Idp(IdpError::Unavailable { .. }))
    ));
    assert!(started.elapsed() >= Duration::from_secs(2 * CLIENT_LEASE as u64));
    assert!(issuer.presented().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_client_token_that_cannot_be_shared_is_handed_out_all_the_same() {
    let store = FakeStore::new();
    store.fail(DbOperation::StoreClientToken);
    let issuer = FakeIssuer::answering(Duration::ZERO, issued("at-client", None));
    let token = client_token(&issuer, &store, 0).await.unwrap();
    assert_eq!(token.access_token.expose(), "at-client");
    assert!(
        store
            .rows()
            .client_row
            .as_ref()
            .unwrap()
            .access_token
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn an_idp_error_for_a_client_token_releases_the_lease() {
    let store = FakeStore::new();
    let issuer = FakeIssuer::answering(Duration::ZERO, unavailable());
    let result = client_token(&issuer, &store, 0).await;
    assert!(matches!(
        result,
        Err(TokenError::Idp(IdpError::Unavailable { .. }))
    ));
    assert!(store.rows().client_lease.is_none());
    assert_eq!(issuer.presented(), ["client_credentials"]);
}

#[tokio::test(start_paused = true)]
async fn client_token_storage_failures_are_storage_errors_without_the_idp() {
    for operation in [DbOperation::ClientToken, DbOperation::TakeClientLease] {
        let store = FakeStore::new();
        store.fail(operation);
        let issuer = FakeIssuer::unused();
        let result = client_token(&issuer, &store, 0).await;
        assert!(
            matches!(result, Err(TokenError::Storage)),
            "{operation:?}: {result:?}"
        );
        assert!(issuer.presented().is_empty());
    }
}

#[test]
fn a_client_tokens_row_key_is_a_digest_of_everything_that_makes_the_token() {
    let key = TokenKey::for_tests(Subject::Client);
    let row_key = client_token_key(&key);
    assert_eq!(row_key.token_key.len(), 64);
    let same = TokenKey::for_tests(Subject::Client);
    assert_eq!(client_token_key(&same).token_key, row_key.token_key);
    let variants = [
        TokenKey {
            provider: "CheckIn".into(),
            ..key.clone()
        },
        TokenKey {
            client_id: "other".into(),
            ..key.clone()
        },
        TokenKey {
            scopes: ScopeSet::parse("openid"),
            ..key.clone()
        },
        TokenKey {
            audience: Some("https://ce.example.org".into()),
            ..key.clone()
        },
    ];
    for variant in variants {
        assert_ne!(
            client_token_key(&variant).token_key,
            row_key.token_key,
            "{variant:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn scopes_beyond_the_grant_are_refused_without_the_idp_or_a_lease() {
    let store = FakeStore::holding(credential());
    let issuer = FakeIssuer::unused();
    let result = refresh_scopes(&issuer, &store, "openid compute.read compute.modify wlcg").await;
    let Err(error @ TokenError::ScopeNotGranted { .. }) = &result else {
        panic!("{result:?}");
    };
    let message = error.to_string();
    assert!(
        message.contains("compute.modify wlcg") && !message.contains("compute.read"),
        "names the scopes not granted, only those: {message}"
    );
    assert!(!message.contains("rt-1"), "{message}");
    assert!(issuer.presented().is_empty());
    assert_eq!(store.rows().my_lease_takes, 0);
    assert_intact(&store);
}

#[tokio::test(start_paused = true)]
async fn a_narrowed_refresh_leaves_the_rest_of_the_grant_to_ask_the_idp_for() {
    let store = FakeStore::holding(StoredToken {
        grant_scope: "openid offline_access compute.read compute.modify".into(),
        ..credential()
    });
    let issuer = FakeIssuer::answering(
        Duration::ZERO,
        Ok(IssuedToken {
            scope: Some(ScopeSet::parse("openid compute.read")),
            ..issued("at-narrow", Some("rt-2")).unwrap()
        }),
    );
    refresh_scopes(&issuer, &store, "openid compute.read compute.modify")
        .await
        .unwrap();
    let row = store.credential_now();
    assert_eq!(row.scope, "compute.read openid", "what the IdP granted");
    assert_eq!(
        row.grant_scope, "openid offline_access compute.read compute.modify",
        "a refresh never changes the grant"
    );
    // Within the grant, not within the narrowed token: the IdP is asked.
    let reply = issued("at-modify", Some("rt-3"));
    issuer
        .replies
        .lock()
        .unwrap()
        .push_back((Duration::ZERO, reply));
    let token = refresh_scopes(&issuer, &store, "openid compute.modify")
        .await
        .unwrap();
    assert_eq!(token.access_token.expose(), "at-modify");
    assert_eq!(issuer.presented(), ["rt-1", "rt-2"]);
}

#[tokio::test(start_paused = true)]
async fn a_grant_whose_login_named_no_scope_refuses_nothing() {
    let store = FakeStore::holding(StoredToken {
        grant_scope: String::new(),
        ..credential()
    });
    let issuer = FakeIssuer::answering(Duration::ZERO, issued("at-new", Some("rt-2")));
    refresh_scopes(&issuer, &store, "openid storage.modify:/")
        .await
        .unwrap();
    assert_eq!(issuer.presented(), ["rt-1"]);
}

/// Audience narrowing by exchange (`super::super::exchange`), on the same fakes.
mod exchange {
    use super::*;
    use crate::actors::tokens::cache::TokenCache;
    use crate::actors::tokens::exchange::user_token;
    use crate::actors::tokens::sync::SyncState;

    const CE: &str = "https://ce.example.org";

    fn narrowed_key(audience: &str) -> TokenKey {
        TokenKey {
            audience: Some(audience.into()),
            ..TokenKey::for_tests(Subject::User("alice".into()))
        }
    }

    fn broad_key() -> TokenKey {
        TokenKey::for_tests(Subject::User("alice".into()))
    }

    fn scripted(replies: Vec<Result<IssuedToken, IdpError>>) -> FakeIssuer {
        let issuer = FakeIssuer {
            narrowing_by_exchange: true,
            ..FakeIssuer::default()
        };
        for reply in replies {
            issuer
                .replies
                .lock()
                .unwrap()
                .push_back((Duration::ZERO, reply));
        }
        issuer
    }

    async fn exchanged(
        issuer: &FakeIssuer,
        store: &FakeStore,
        cache: &TokenCache,
        audience: &str,
    ) -> Result<AccessToken, TokenError> {
        let replica = Replica {
            lease_owner: ME,
            metrics: &Metrics::unexported(),
            audit: None,
        };
        let key = narrowed_key(audience);
        let read_at = cache.sync().stamp();
        user_token(issuer, store, &replica, cache, read_at, "alice", &key, 0).await
    }

    fn cache() -> TokenCache {
        TokenCache::new(SyncState::new(Duration::from_secs(5)))
    }

    #[tokio::test(start_paused = true)]
    async fn one_refresh_without_audience_then_one_exchange_per_audience() {
        let store = FakeStore::holding(credential());
        let issuer = scripted(vec![
            issued("at-broad", Some("rt-2")),
            issued("at-ce", None),
            issued("at-fts", None),
        ]);
        let cache = cache();
        let token = exchanged(&issuer, &store, &cache, CE).await.unwrap();
        assert_eq!(token.access_token.expose(), "at-ce");
        let stored = store.credential_now();
        assert_eq!(token.credential, Some(stored.version()));
        assert_eq!(stored.refresh_token.expose(), "rt-2");
        assert_eq!(stored.audience, None, "the refresh asked for no audience");
        let broad = cache.get(&broad_key(), 0, store.now()).expect("cached");
        assert_eq!(broad.access_token.expose(), "at-broad");

        // The broad token (stored with the credential) serves the next audience: no refresh.
        let fts = "https://fts.example.org";
        let token = exchanged(&issuer, &store, &cache, fts).await.unwrap();
        assert_eq!(token.access_token.expose(), "at-fts");
        assert_eq!(
            issuer.presented(),
            [
                "rt-1",
                "at-broad for https://ce.example.org",
                "at-broad for https://fts.example.org"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn scopes_the_broad_token_lacks_are_refused_before_the_exchange() {
        let store = FakeStore::holding(credential());
        let mut narrower = issued("at-broad", Some("rt-2")).unwrap();
        narrower.scope = Some(ScopeSet::parse("openid"));
        let issuer = scripted(vec![Ok(narrower)]);
        let result = exchanged(&issuer, &store, &cache(), CE).await;
        match result {
            Err(TokenError::ScopeNotGranted { scopes, .. }) => {
                assert_eq!(scopes.to_string(), "compute.read");
            }
            other => panic!("expected ScopeNotGranted, got {other:?}"),
        }
        assert_eq!(issuer.presented(), ["rt-1"], "no exchange");
    }

    fn refused(error: &str) -> Result<IssuedToken, IdpError> {
        Err(IdpError::ExchangeRefused {
            idp: "IAM".into(),
            error: error.into(),
            description: String::new(),
        })
    }

    fn refused_with(result: &Result<AccessToken, TokenError>, expected: &str) -> bool {
        matches!(result, Err(TokenError::Idp(IdpError::ExchangeRefused { error, .. })) if error == expected)
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_exchange_fails_that_call_only() {
        let store = FakeStore::holding(credential_with_access_token(600));
        let issuer = scripted(vec![refused("invalid_target"), refused("invalid_scope")]);
        let cache = cache();
        for expected in ["invalid_target", "invalid_scope"] {
            let result = exchanged(&issuer, &store, &cache, CE).await;
            assert!(refused_with(&result, expected), "{result:?}");
            // Never marked: the refresh token was not presented.
            assert_intact(&store);
        }
        assert_eq!(
            issuer.presented(),
            [
                "at-stored for https://ce.example.org",
                "at-stored for https://ce.example.org"
            ]
        );
    }

    /// The IdP no longer knows the broad token (it was revoked): one refresh without audience
    /// replaces it, though the stored copy still lives, and it is exchanged once more.
    #[tokio::test(start_paused = true)]
    async fn a_broad_token_the_idp_no_longer_knows_is_replaced_once() {
        let store = FakeStore::holding(credential_with_access_token(600));
        let issuer = scripted(vec![
            refused("invalid_grant"),
            issued("at-fresh", Some("rt-2")),
            issued("at-ce", None),
            refused("invalid_grant"),
            issued("at-fresher", Some("rt-3")),
            refused("invalid_grant"),
        ]);
        let cache = cache();
        let token = exchanged(&issuer, &store, &cache, CE).await.unwrap();
        assert_eq!(token.access_token.expose(), "at-ce");
        let broad = cache.get(&broad_key(), 0, store.now()).expect("cached");
        assert_eq!(broad.access_token.expose(), "at-fresh");
        assert_eq!(store.credential_now().refresh_token.expose(), "rt-2");

        // Refused again after the refresh: that call fails, and nothing is marked.
        let result = exchanged(&issuer, &store, &cache, "https://fts.example.org").await;
        assert!(refused_with(&result, "invalid_grant"), "{result:?}");
        let row = store.credential_now();
        assert_eq!(row.state, CredentialState::Active);
        assert_eq!(row.refresh_token.expose(), "rt-3");
        assert_eq!(
            issuer.presented(),
            [
                "at-stored for https://ce.example.org",
                "rt-1",
                "at-fresh for https://ce.example.org",
                "at-fresh for https://fts.example.org",
                "rt-2",
                "at-fresher for https://fts.example.org",
            ]
        );
    }
}
