use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use diesel::connection::SimpleConnection;
use diesel::{Connection, MysqlConnection, PgConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use tempfile::TempDir;
use tokenmanager::actors::db::{Database, DbOperation};
use tokenmanager::config::{Backend, DatabaseUrl};
use tokenmanager::crypto::{KeyringFile, SharedKeyring};
use tokenmanager::db::{CredentialVersion, DbError, PoolOptions, StoredToken, TokenUpdate};
use tokenmanager::domain::{NewToken, Secret, unix_now};
use tokenmanager::metrics::Metrics;

fn admin_url(backend: Backend) -> String {
    let (var, default) = match backend {
        Backend::Postgres => (
            "TOKENMANAGER_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        ),
        Backend::Mysql => (
            "TOKENMANAGER_TEST_MYSQL_URL",
            "mysql://root@127.0.0.1:3306/test",
        ),
        Backend::Sqlite => unreachable!("SQLite needs no server"),
    };
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a server URL names a database");
    format!("{base}/{name}")
}

/// A database of its own for one test, dropped afterwards; on SQLite a file in a temp dir.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub dir: TempDir,
    server_database: Option<String>,
}

impl TestDb {
    pub fn new(backend: Backend) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::tempdir().unwrap();
        let name = format!(
            "tm_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let (url, server_database) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("tm.sqlite").display()),
                None,
            ),
            Backend::Postgres | Backend::Mysql => {
                let admin = admin_url(backend);
                run_admin(backend, &admin, &format!("CREATE DATABASE {name}"));
                (replace_database(&admin, &name), Some(name))
            }
        };
        Self {
            backend,
            url,
            dir,
            server_database,
        }
    }

    pub fn database_url(&self) -> DatabaseUrl {
        DatabaseUrl::parse(&self.url).unwrap()
    }

    /// Runs SQL on this test's database directly, as an attacker with database access would.
    pub fn execute_raw(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let path = self.url.trim_start_matches("sqlite://");
                let mut conn = diesel::SqliteConnection::establish(path).unwrap();
                conn.batch_execute(sql).unwrap();
            }
            backend => run_admin(backend, &self.url, sql),
        }
    }

    /// Reverts the newest migrations down to and including `version` (its directory name's
    /// date part, e.g. `2026-11-30-000001`): the database as the release before it left it.
    pub fn revert_migrations_through(&self, version: &str) {
        const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
        const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
        const MYSQL: EmbeddedMigrations = embed_migrations!("migrations/mysql");
        let digits = |v: &str| v.chars().filter(char::is_ascii_digit).collect::<String>();
        let wanted = digits(version);
        loop {
            let reverted = match self.backend {
                Backend::Sqlite => {
                    let path = self.url.trim_start_matches("sqlite://");
                    let mut conn = diesel::SqliteConnection::establish(path).unwrap();
                    conn.revert_last_migration(SQLITE).map(|v| v.to_string())
                }
                Backend::Postgres => PgConnection::establish(&self.url)
                    .unwrap()
                    .revert_last_migration(POSTGRES)
                    .map(|v| v.to_string()),
                Backend::Mysql => MysqlConnection::establish(&self.url)
                    .unwrap()
                    .revert_last_migration(MYSQL)
                    .map(|v| v.to_string()),
            };
            if digits(&reverted.unwrap()) == wanted {
                return;
            }
        }
    }

    /// The backend's own dump of this database, as an operator would take a backup.
    pub fn dump(&self) -> Vec<u8> {
        let output = match self.backend {
            Backend::Sqlite => {
                let path = self.url.trim_start_matches("sqlite://");
                std::process::Command::new("sqlite3")
                    .arg(path)
                    .arg(".dump")
                    .output()
            }
            Backend::Postgres => std::process::Command::new("pg_dump")
                .arg(&self.url)
                .output(),
            Backend::Mysql => {
                let name = self.server_database.as_deref().unwrap();
                std::process::Command::new("mariadb-dump")
                    .args(["-h", "127.0.0.1", "-u", "root", name])
                    .output()
            }
        }
        .expect("the backend's dump tool is installed (.ci/run installs it)");
        assert!(
            output.status.success(),
            "dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }
}

fn run_admin(backend: Backend, url: &str, sql: &str) {
    let result = match backend {
        Backend::Postgres => PgConnection::establish(url).map(|mut c| c.batch_execute(sql)),
        Backend::Mysql => MysqlConnection::establish(url).map(|mut c| c.batch_execute(sql)),
        Backend::Sqlite => unreachable!(),
    };
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{sql}: {e}"),
        Err(e) => panic!("{} server unreachable at {url}: {e}", backend.name()),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.server_database {
            let sql = match self.backend {
                Backend::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                _ => format!("DROP DATABASE IF EXISTS {name}"),
            };
            run_admin(self.backend, &admin_url(self.backend), &sql);
        }
    }
}

/// How many migrations `backend` has.
pub fn migrations_of(backend: Backend) -> usize {
    let dir = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
        Backend::Mysql => "mysql",
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    std::fs::read_dir(root.join(dir)).unwrap().count()
}

/// A migrated test database with a keyring and a running DB actor.
pub struct TestStore {
    pub db: TestDb,
    pub keyring_file: KeyringFile,
    pub database: Database,
}

impl TestStore {
    pub async fn new(backend: Backend) -> Self {
        let db = TestDb::new(backend);
        let keyring_file = KeyringFile::new(db.dir.path().join("keyring"));
        keyring_file.create().unwrap();
        let database = Self::open_database(&db, &keyring_file);
        let applied = database.migrate().await.unwrap();
        assert_eq!(
            applied.len(),
            migrations_of(backend),
            "a fresh database gets every migration"
        );
        Self {
            db,
            keyring_file,
            database,
        }
    }

    /// Another handle on the same database with its own view of the keyring, as a second
    /// process (a replica, or `rotate-key`) would have.
    pub fn open_database(db: &TestDb, keyring_file: &KeyringFile) -> Database {
        let keyring = Arc::new(SharedKeyring::load(keyring_file.path()).unwrap());
        let metrics = Arc::new(Metrics::unexported());
        Database::open(&db.database_url(), keyring, PoolOptions::default(), metrics).unwrap()
    }
}

/// Stores a token as `updateToken` does; returns the credential it replaced.
pub async fn store_token(database: &Database, token: NewToken) -> Option<StoredToken> {
    update_token(database, token, unix_now()).await.unwrap()
}

pub async fn update_token(
    database: &Database,
    token: NewToken,
    now: i64,
) -> Result<Option<StoredToken>, DbError> {
    database
        .run(DbOperation::UpdateToken, move |store, conn| {
            store.update_token(conn, &token, now)
        })
        .await
}

pub async fn get_credential(
    database: &Database,
    user_id: &str,
    provider: &str,
) -> Result<Option<StoredToken>, DbError> {
    let (user_id, provider) = (user_id.to_owned(), provider.to_owned());
    database
        .run(DbOperation::Credential, move |store, conn| {
            store.credential(conn, &user_id, &provider)
        })
        .await
}

pub async fn tokens_by_user_id(
    database: &Database,
    user_id: &str,
) -> Result<Vec<StoredToken>, DbError> {
    let user_id = user_id.to_owned();
    database
        .run(DbOperation::TokensByUserId, move |store, conn| {
            store.tokens_by_user_id(conn, &user_id)
        })
        .await
}

pub async fn remove_tokens(database: &Database, user_id: &str) -> Result<usize, DbError> {
    let user_id = user_id.to_owned();
    database
        .run(DbOperation::RemoveTokens, move |store, conn| {
            store.remove_tokens(conn, &user_id)
        })
        .await
}

/// Writes a refresh's result as the token path does: compare-and-set on `expected`.
pub async fn store_refreshed(
    database: &Database,
    expected: CredentialVersion,
    user_id: &str,
    provider: &str,
    update: TokenUpdate,
) -> Result<StoredToken, DbError> {
    let (user_id, provider) = (user_id.to_owned(), provider.to_owned());
    database
        .run(DbOperation::StoreRefreshed, move |store, conn| {
            store.store_refreshed(conn, expected, &user_id, &provider, &update, unix_now())
        })
        .await
}

/// A token as `updateToken` would store it, with recognisable token values.
pub fn new_token(user_id: &str, provider: &str, refresh: &str, access: &str) -> NewToken {
    let now = unix_now();
    NewToken {
        user_id: user_id.to_owned(),
        provider: provider.to_owned(),
        refresh_token: Secret::new(refresh),
        rt_expires_at: now + 86_400,
        access_token: Some(Secret::new(access)),
        expires_at: now + 3600,
        expires_in: 3600,
        token_type: Some("Bearer".into()),
        scope: "openid profile".into(),
        client_id: Some("tm-client".into()),
        issued_at: now,
    }
}

/// Generates one `#[actix::test]` per backend for each listed scenario `async fn name(Backend)`.
#[macro_export]
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $( #[actix::test] async fn $scenario() { super::$scenario(tokenmanager::config::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[actix::test] async fn $scenario() { super::$scenario(tokenmanager::config::Backend::Postgres).await } )*
        }
        mod mariadb {
            $( #[actix::test] async fn $scenario() { super::$scenario(tokenmanager::config::Backend::Mysql).await } )*
        }
    };
}
