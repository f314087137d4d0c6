//! Opening a PostgreSQL store: the connection settings (the URL, its password from the environment or a file),
//! setting up an empty database (once, under a lock, however many daemons start together), and the schema check
//! every process makes: a schema older than this version needs (`store migrate`), or newer than it knows (another
//! release migrated it), is refused, never changed behind the operators' backs. Migrations of an existing schema
//! run only through `store migrate`.
//!
//! It owns the PostgreSQL side of opening and migrating; queries live with their tables.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Executor as _};

use super::db::Db;
use super::{Result, StoreError};
use crate::config::{redacted_url, StoreConfig};

/// The PostgreSQL migrations; their versions are the SQLite migrations' (a version is one schema on both).
pub(crate) static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// One key for the advisory lock that serialises setting up and migrating a store.
const SETUP_LOCK: i64 = 0x5345_5450_5354_4f52; // "SETPSTOR"

/// How a store's schema stands against this version of segment-exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The newest migration applied to the store.
    pub store: i64,
    /// The newest migration this version knows.
    pub known: i64,
    /// Migrations this version knows that the store lacks.
    pub pending: Vec<i64>,
}

impl SchemaStatus {
    /// Whether the store is newer than this version knows.
    pub fn ahead(&self) -> bool {
        self.store > self.known
    }
}

/// The newest migration this version knows.
pub fn known_version() -> i64 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Connection settings from the URL, with the password from `password_env` or `password_file` when the URL has
/// none. Errors name the URL without its password.
pub(crate) fn connect_options(config: &StoreConfig, url: &str) -> Result<PgConnectOptions> {
    let shown = redacted_url(url);
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::PostgresUrl { url: shown.clone(), problem: e.to_string() })?;
    let has_password = url::Url::parse(url).map(|u| u.password().is_some()).unwrap_or(false);
    if !has_password {
        if let Some(var) = &config.password_env {
            let password = std::env::var(var).map_err(|_| StoreError::PostgresUrl {
                url: shown.clone(),
                problem: format!(
                    "store.password_env names {var}, which is not set in this process's environment; set it (for \
                     systemd: Environment= or LoadCredential=)"
                ),
            })?;
            options = options.password(&password);
        } else if let Some(path) = &config.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| StoreError::PostgresUrl {
                url: shown.clone(),
                problem: format!("cannot read store.password_file {}: {e}", path.display()),
            })?;
            options = options.password(text.lines().next().unwrap_or_default());
        }
    }
    // Statements that quote a value (a member's email in a failed insert) are logged by sqlx at debug only.
    Ok(options
        .application_name(&format!("segment-exporter {}", std::process::id()))
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5)))
}

/// How long a session of ours may sit inside a transaction doing nothing before the server ends it: our
/// transactions take milliseconds, so only a frozen process (a long pause, SIGSTOP) sits there, and the row locks
/// it holds (a run's fence) would keep the daemon taking its run over waiting. A third of the lease's life.
pub(crate) fn idle_in_transaction_limit(config: &StoreConfig) -> Duration {
    (config.lease_ttl / 3).clamp(Duration::from_secs(2), Duration::from_secs(20))
}

/// A pool on the store: sessions use UTC and end a transaction left idle (`idle_in_transaction_limit`), and
/// broken connections (a restarted server, a terminated backend) are found before use and replaced.
pub(crate) async fn pool(config: &StoreConfig, url: &str) -> Result<PgPool> {
    let options = connect_options(config, url)?;
    let idle_ms = idle_in_transaction_limit(config).as_millis();
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .test_before_acquire(true)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute("SET TIME ZONE 'UTC'").await?;
                conn.execute(format!("SET idle_in_transaction_session_timeout = {idle_ms}").as_str()).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|source| StoreError::PostgresOpen { url: redacted_url(url), source })
}

/// Opens a PostgreSQL store: an empty database is set up; an existing one must have the schema this version needs,
/// and this process's master key must be the store's.
pub(crate) async fn open(config: &StoreConfig, url: &str) -> Result<Db> {
    let pool = pool(config, url).await?;
    let status = set_up_or_check(&pool, url).await?;
    if !status.pending.is_empty() {
        return Err(StoreError::SchemaBehind { have: status.store, need: status.known });
    }
    if status.ahead() {
        return Err(StoreError::SchemaAhead { have: status.store, know: status.known });
    }
    check_master_key(&pool, config).await?;
    Ok(Db::Postgres(pool, None))
}

/// Every process on a PostgreSQL store needs the store's master key, and none ever creates one (two daemons
/// starting on an empty store would make two): the store keeps a check value sealed with the key it was set up
/// with, and a process whose key does not open it is refused.
async fn check_master_key(pool: &PgPool, config: &StoreConfig) -> Result<()> {
    let path = config.master_key_path();
    let key = crate::secrets::MasterKey::load(&path, false).map_err(|e| StoreError::MasterKey {
        problem: format!(
            "this process has no usable master key ({e}). Every daemon and command on a PostgreSQL store needs the \
             store's master key: set {} (64 hex characters) or store.master_key_file, the same for every replica",
            crate::secrets::MASTER_KEY_ENV
        ),
    })?;
    let fresh = key.seal_check();
    sqlx::query("INSERT INTO store_meta (key, value) VALUES ('master_key_check', $1) ON CONFLICT (key) DO NOTHING")
        .bind(&fresh)
        .execute(pool)
        .await?;
    let kept: Vec<u8> =
        sqlx::query_scalar("SELECT value FROM store_meta WHERE key = 'master_key_check'").fetch_one(pool).await?;
    if !key.opens_check(&kept) {
        let from = match std::env::var_os(crate::secrets::MASTER_KEY_ENV) {
            Some(_) => crate::secrets::MASTER_KEY_ENV.to_string(),
            None => path.display().to_string(),
        };
        return Err(StoreError::MasterKey {
            problem: format!(
                "the master key of this process ({from}) is not the store's: it does not open the check value the \
                 store was set up with, so it could not read the API keys and passwords sealed there. Give this \
                 process the same master key as the other replicas"
            ),
        });
    }
    Ok(())
}

/// Under the setup lock: an empty database gets the whole schema; otherwise says how the schema stands.
async fn set_up_or_check(pool: &PgPool, url: &str) -> Result<SchemaStatus> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(SETUP_LOCK).execute(&mut *conn).await?;
    let result = async {
        let tracked: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut *conn).await?;
        if !tracked {
            let tables: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename NOT LIKE '\\_%'",
            )
            .fetch_one(&mut *conn)
            .await?;
            if tables > 0 {
                return Err(StoreError::NotAStore { url: redacted_url(url), tables });
            }
            tracing::info!(url = %redacted_url(url), "Setting up an empty PostgreSQL store.");
            MIGRATIONS
                .run_direct(&mut *conn)
                .await
                .map_err(|source| StoreError::Migrate { path: redacted_url(url).into(), source })?;
        }
        schema_status(&mut conn).await
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(SETUP_LOCK).execute(&mut *conn).await;
    result
}

/// How the schema of the store behind `conn` stands against this version.
pub(crate) async fn schema_status(conn: &mut sqlx::PgConnection) -> Result<SchemaStatus> {
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&mut *conn)
        .await?;
    let store = applied.iter().copied().max().unwrap_or(0);
    let pending = MIGRATIONS.iter().map(|m| m.version).filter(|v| !applied.contains(v)).collect();
    Ok(SchemaStatus { store, known: known_version(), pending })
}

/// `store migrate`: applies the migrations this version knows that the store lacks, under the setup lock (so
/// two operators migrating at once apply each once). Returns the versions applied.
pub async fn migrate(config: &StoreConfig, url: &str) -> Result<Vec<i64>> {
    let pool = pool(config, url).await?;
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(SETUP_LOCK).execute(&mut *conn).await?;
    let result = async {
        let before = schema_status(&mut conn).await?;
        if before.ahead() && before.pending.is_empty() {
            return Err(StoreError::SchemaAhead { have: before.store, know: before.known });
        }
        MIGRATIONS
            .run_direct(&mut *conn)
            .await
            .map_err(|source| StoreError::Migrate { path: redacted_url(url).into(), source })?;
        Ok(before.pending)
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(SETUP_LOCK).execute(&mut *conn).await;
    pool.close().await;
    result
}
