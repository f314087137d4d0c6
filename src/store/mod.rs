//! The store: connections, segments, exports and what each has put on its lists, run history, accounts, sessions
//! and the audit; on SQLite (one file, embedded: the default) or PostgreSQL (shared by several daemons). Pool
//! setup, migrations and every SQL statement the program runs against its own state live here.
//!
//! One file per table group. Queries are runtime-checked with static SQL written once for both engines (`db`);
//! every one of them is exercised by the tests, on both. Nothing outside this module writes SQL against the store.

mod connections;
mod copy;
pub(crate) mod db;
mod exports;
mod leases;
mod members;
pub mod names;
mod notify;
mod postgres;
mod requests;
mod runs;
mod segments;
mod sessions;
mod sign_ins;
mod users;
mod verify;
mod warnings;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use copy::CopyReport;
use db::{sql, Db};
pub use db::{Fence, Kind};
pub use leases::{LeaseGrant, LeaseHolder, ListsLock, Replica};
pub use postgres::{known_version as known_schema_version, migrate as migrate_postgres, SchemaStatus};

pub use connections::{Connection, ConnectionUpdate, KeySource, NewConnection, ProjectType};
pub use exports::{Export, ExportChange, FieldMap, FieldType, NewExport, NullFields, OnLeave, Target};
pub use members::{
    AckedMember, AddKind, ComputeOptions, MemberCounts, PlanSession, PlannedAdd, StagedMember, TargetPlan,
};
pub use notify::{
    Channel, ChannelAudience, ChannelKind, Delivery, DeliveryOutcome, EventKind, NewChannel, NewNotification,
    Notification, NotifyState, SealedUrl, StateChange, Subscription, Tidings,
};
pub use requests::{NewRunRequest, RequestState, RunRequest, WaitingFor};
pub use runs::{process_owner, Issue, IssueKind, Run, RunFilter, RunStatus, RunTarget, RunTargetCounts};
pub use segments::{Segment, SegmentOrigin, SourcePassword};
pub use sessions::{Session, SessionListing};
pub use sign_ins::{Admission, Pace, SignInPaces};
pub use users::{AuditEntry, AuditEvent, Role, User};
pub use verify::{Category, DriftKind, ListVerify, RunKind, Verdict};

/// A failure of the store itself (not of the data in it).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {source}. Check that the directory exists and is writable, or set store.path in the config.")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error(
        "cannot bring the store {path} up to date: {source}. It may have been written by a newer segment-exporter."
    )]
    Migrate { path: PathBuf, source: sqlx::migrate::MigrateError },
    #[error("{what} '{name}' already exists. Pick another name or remove the existing one first.")]
    Exists { what: &'static str, name: String },
    #[error("{what} '{name}' does not exist. List them with `segment-exporter {cmd}`.")]
    NotFound { what: &'static str, name: String, cmd: &'static str },
    #[error("{0}")]
    Conflict(String),
    #[error("the store holds {value:?} in {table}.{column}, which this version of segment-exporter does not know. It may have been written by a newer segment-exporter; upgrade, or restore the store from a backup.")]
    UnknownValue { table: &'static str, column: &'static str, value: String },
    #[error("the {what} name {name:?} {problem}. Pick another name.")]
    InvalidName { what: &'static str, name: String, problem: String },
    /// A list is managed by one export. The message names the other export: show it to administrators only
    /// (`without_names` says the same without it).
    #[error(
        "list '{list}' is already managed by export '{other}' on this connection, and a list is managed by one export. \
         Remove the segment from one of the two exports (`segment-exporter export edit EXPORT --remove-segment SEGMENT`), \
         or send this segment through another connection."
    )]
    ListManaged { list: String, other: String },
    #[error(
        "run #{run_id} is no longer running (it was cancelled, or its export was removed); nothing more is recorded for it"
    )]
    RunNotRunning { run_id: i64 },
    #[error("the store URL {url} cannot be used: {problem}")]
    PostgresUrl { url: String, problem: String },
    #[error("cannot open the PostgreSQL store {url}: {source}. Check that the server answers, the database exists and the user may connect (store.url, store.password_env or store.password_file, or SEGMENT_EXPORTER_STORE_URL).")]
    PostgresOpen { url: String, source: sqlx::Error },
    #[error("the database {url} holds {tables} table(s) but no segment-exporter store. Give the store a database of its own (an empty one is set up at first use).")]
    NotAStore { url: String, tables: i64 },
    #[error("the store's schema is version {have}, older than this segment-exporter needs ({need}). Run `segment-exporter store migrate` with this version (the migrations keep the previous release working, so the other daemons may go on meanwhile), then start it again.")]
    SchemaBehind { have: i64, need: i64 },
    #[error("the store's schema is version {have}, newer than this segment-exporter knows ({know}): a newer release migrated it. Upgrade this one to the release that ran `store migrate`.")]
    SchemaAhead { have: i64, know: i64 },
    #[error("{problem}.")]
    MasterKey { problem: String },
    #[error("store query failed: {0}")]
    Sql(#[from] sqlx::Error),
}

impl StoreError {
    /// The message, without the names of other exports, for callers who may not see them.
    pub fn without_names(&self) -> String {
        match self {
            StoreError::ListManaged { list, .. } => format!(
                "list '{list}' is already managed by another export on this connection, and a list is managed by one \
                 export. Ask an administrator, or send this segment through another connection."
            ),
            other => other.to_string(),
        }
    }

    /// Whether this is the store being out of reach for a while (a server restarting, a connection cut), not a
    /// problem of the data or the query: what a run wrote before stands, and it may go on once the store answers.
    pub fn is_transient(&self) -> bool {
        let StoreError::Sql(e) = self else { return false };
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                true
            }
            sqlx::Error::Protocol(m) => m != db::FENCED,
            // Connection exceptions (08...) and operator interventions (57P01 admin shutdown, 57P02 crash
            // shutdown, 57P03 cannot connect now).
            sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    }

    /// A stored enum value that is not one of the known ones.
    pub(crate) fn unknown_value(table: &'static str, column: &'static str, value: &str) -> Self {
        StoreError::UnknownValue { table, column, value: value.to_string() }
    }

    fn not_found(what: &'static str, name: &str, cmd: &'static str) -> Self {
        StoreError::NotFound { what, name: name.to_string(), cmd }
    }

    /// Turns a UNIQUE violation into a readable "already exists".
    fn on_insert(e: sqlx::Error, what: &'static str, name: &str) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Exists { what, name: name.to_string() }
            }
            _ => StoreError::Sql(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Handle on the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// The SQLite file (empty for a PostgreSQL store).
    path: PathBuf,
}

/// The SQLite migrations, applied whenever a SQLite store is opened.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Store {
    /// Opens (creating if needed) the SQLite store at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open { path: path.into(), source: e.into() })?;
        }
        make_private(path).map_err(|e| StoreError::Open { path: path.into(), source: e.into() })?;
        let options = Self::connect_options(path);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { path: path.into(), source })?;
        SQLITE_MIGRATIONS.run(&pool).await.map_err(|source| StoreError::Migrate { path: path.into(), source })?;
        Ok(Store { db: Db::Sqlite(pool), path: path.to_path_buf() })
    }

    /// Which engine this store runs on.
    pub fn kind(&self) -> Kind {
        self.db.kind()
    }

    /// The SQLite pool, for code that only SQLite stores run (and tests).
    pub fn pool(&self) -> &SqlitePool {
        match &self.db {
            Db::Sqlite(pool) => pool,
            Db::Postgres(..) => panic!("a SQLite-only path was taken on a PostgreSQL store"),
        }
    }

    /// Opens the store as the program uses it: [`Store::open`] (or the PostgreSQL store `store.url` names), then
    /// the upgrade steps SQL cannot do.
    ///
    /// Segments saved before the store recorded how segments were saved are settled with the configuration in hand
    /// (see [`Store::settle_segment_origins`]). Database passwords that older versions kept in clear inside segments'
    /// sources are sealed with the master key, and the file is then rewritten so no old page keeps them. When that
    /// cannot be done yet (the master key is missing while other secrets are sealed with it, or is not theirs),
    /// nothing is changed or lost: those segments keep working as before, a warning says what to do, and the next
    /// open tries again.
    pub async fn open_configured(config: &crate::config::Config) -> Result<Store> {
        if let Some(url) = config.store.postgres_url() {
            let db = postgres::open(&config.store, &url).await?;
            return Ok(Store { db, path: PathBuf::new() });
        }
        let store = Store::open(&config.store.path).await?;
        store.settle_segment_origins(&config.sources.allowed_dirs).await?;
        if let Err(error) = store.seal_passwords_in_sources(&config.store.master_key_path()).await {
            tracing::warn!(%error, "Could not finish upgrading the store (sealing source passwords an older version stored in clear); the next open tries again.");
        }
        Ok(store)
    }

    /// Decides, once, how each segment saved before origins were recorded counts: saved over the HTTP API when the
    /// audit trail records its latest add or change as coming over the API, or when its file lies inside one of
    /// `allowed_dirs` now, judged by the path as stored (a link swapped in before the upgrade cannot carry it out of
    /// the folder, and so out of confinement); from the CLI otherwise.
    async fn settle_segment_origins(&self, allowed_dirs: &[PathBuf]) -> Result<()> {
        let unsettled = self.segments_without_origin().await?;
        if unsettled.is_empty() {
            return Ok(());
        }
        let settled: Vec<(i64, SegmentOrigin)> = unsettled
            .into_iter()
            .map(|(id, source, over_api)| {
                let inside = match source.parse::<crate::source::SourceSpec>() {
                    Ok(crate::source::SourceSpec::Sqlite { path })
                    | Ok(crate::source::SourceSpec::Csv { path })
                    | Ok(crate::source::SourceSpec::Jsonl { path }) => crate::source::lies_within(&path, allowed_dirs),
                    _ => false,
                };
                (id, if over_api || inside { SegmentOrigin::Http } else { SegmentOrigin::Cli })
            })
            .collect();
        let over_http = settled.iter().filter(|(_, origin)| *origin == SegmentOrigin::Http).count();
        let done = self.settle_origins(&settled).await?;
        tracing::info!(
            segments = done,
            over_http,
            "Recorded how segments saved by an older version count: those the audit trail shows were saved over the \
             HTTP API, or whose file lies inside [sources] allowed_dirs, as saved over HTTP (their sources are read \
             confined), the others as saved from the CLI."
        );
        Ok(())
    }

    async fn seal_passwords_in_sources(&self, master_key_path: &Path) -> Result<()> {
        let in_clear = self.segments_with_password_in_source().await?;
        let sealed_some = !in_clear.is_empty();
        if sealed_some {
            let names = in_clear.iter().map(|s| format!("'{}'", s.name)).collect::<Vec<_>>().join(", ");
            let (connections, segments, channels) =
                (self.connections().await?, self.segments().await?, self.channels().await?);
            let sealed = crate::secrets::sealed_secrets(&connections, &segments, &channels);
            let master = match crate::secrets::MasterKey::for_sealing(master_key_path, &sealed) {
                Ok(master) => master,
                Err(error) => {
                    tracing::warn!(
                        segments = %names,
                        "The database passwords of these segments are still stored in clear, as an older version \
                         stored them: {error} Or move them out of the store with `segment-exporter segment edit \
                         NAME --password-env VAR` (or --password-file PATH)."
                    );
                    return Ok(());
                }
            };
            let replaced: Vec<_> = in_clear
                .iter()
                .filter_map(|segment| {
                    let spec = segment.source.parse::<crate::source::SourceSpec>().ok()?;
                    let stored = spec.to_stored();
                    let password = master.seal_source_password(segment.id, &stored, spec.password()?);
                    Some((segment.id, segment.source.clone(), stored, password))
                })
                .collect();
            let done = self.replace_passwords_in_source(&replaced).await?;
            tracing::info!(segments = %names, sealed = done, "Sealed the database passwords an older version stored in clear.");
            if !self.segments_with_password_in_source().await?.is_empty() {
                return Ok(());
            }
        }
        if sql("SELECT COUNT(*) FROM upkeep WHERE task = 'vacuum'").scalar::<i64>(&self.db).await? > 0 {
            self.rewrite_file(sealed_some).await?;
        }
        Ok(())
    }

    /// Rewrites the store file (VACUUM) and empties the write-ahead log, so that no page of either keeps what was
    /// deleted or replaced. Another process reading the store at that moment may keep the log from being emptied;
    /// the task then stays due and the next open does it again. Logged at info when `sealed_some` passwords were
    /// just sealed or when it took a while (otherwise it is the instant rewrite of a new or small store: debug).
    async fn rewrite_file(&self, sealed_some: bool) -> Result<()> {
        let started = std::time::Instant::now();
        let mut conn = self.pool().acquire().await?;
        if let Err(error) = sqlx::query("VACUUM").execute(&mut *conn).await {
            tracing::warn!(%error, "Could not rewrite the store file yet (old pages may keep passwords an older version stored in clear); the next open tries again.");
            return Ok(());
        }
        let (busy, _, _): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&mut *conn).await?;
        if busy != 0 {
            tracing::warn!("Rewrote the store file, but another process kept its write-ahead log from being emptied; the next open tries again.");
            return Ok(());
        }
        sqlx::query("DELETE FROM upkeep WHERE task = 'vacuum'").execute(&mut *conn).await?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if sealed_some || elapsed_ms >= 1000 {
            tracing::info!(elapsed_ms, "Rewrote the store file, so that no old page keeps a database password.");
        } else {
            tracing::debug!(elapsed_ms, "Rewrote the store file, so that no old page keeps a database password.");
        }
        Ok(())
    }

    /// Settings go on the connect options so that every pooled connection gets them.
    fn connect_options(path: &Path) -> SqliteConnectOptions {
        SqliteConnectOptions::from_str("sqlite:")
            .expect("static sqlite url")
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30))
            .pragma("temp_store", "file")
    }

    /// Opens a store as it is, for tests that build an older schema.
    #[cfg(test)]
    pub(crate) async fn open_without_migrating(path: &Path) -> Store {
        let pool = SqlitePoolOptions::new().connect_with(Self::connect_options(path)).await.expect("test store opens");
        Store { db: Db::Sqlite(pool), path: path.to_path_buf() }
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}

/// The store holds every member's email: its files are the owner's alone, whatever the umask. The database file is
/// created 0600 before SQLite opens it, and SQLite gives its `-wal` and `-shm` files the database file's mode. Files
/// left readable by an older version are tightened.
fn make_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let file = PathBuf::from(name);
            match std::fs::metadata(&file) {
                Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                    let mode = meta.permissions().mode() & 0o700;
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The time the store records, to the microsecond: what PostgreSQL keeps, so a time reads back the same from
/// either engine (and after `store copy`).
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_store_files_are_private_even_when_an_older_version_left_them_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = Store::open(&path).await.unwrap();
        store.add_segment("s", "csv:/x.csv", None).await.unwrap();
        for file in ["store.db", "store.db-wal", "store.db-shm"] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        store.close().await;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open(&path).await.unwrap();
        assert_eq!(mode(&path), 0o600, "an old world-readable store is tightened");
        assert_eq!(store.segments().await.unwrap().len(), 1, "and keeps its data");
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.db")).await.unwrap();
        (dir, store)
    }

    /// A database of its own on the PostgreSQL server at `TEST_POSTGRES_URL`, dropped with this value, and a
    /// master key file for it.
    pub struct TempDatabase {
        pub url: String,
        pub master_key: std::path::PathBuf,
        _dir: tempfile::TempDir,
        server: String,
        name: String,
    }

    impl TempDatabase {
        pub async fn new() -> TempDatabase {
            let server = std::env::var("TEST_POSTGRES_URL")
                .expect("TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test); .ci/run sets it");
            let name = format!("se_test_{:016x}", rand::random::<u64>());
            let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&server).await.unwrap();
            // A language's collation, as most servers have by default (this machine's is C): where a comparison of
            // keys would mix collations, the tests find out.
            let icu = format!(
                "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            );
            if sqlx::query(&icu).execute(&mut admin).await.is_err() {
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
            }
            let mut url = url::Url::parse(&server).unwrap();
            url.set_path(&name);
            let dir = tempfile::tempdir().unwrap();
            let master_key = dir.path().join("master.key");
            std::fs::write(&master_key, hex::encode(rand::random::<[u8; 32]>())).unwrap();
            TempDatabase { url: url.to_string(), master_key, _dir: dir, server, name }
        }
    }

    impl Drop for TempDatabase {
        fn drop(&mut self) {
            let (server, name) = (self.server.clone(), self.name.clone());
            // A runtime of its own: the test's may be gone or busy.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    if let Ok(mut admin) = <sqlx::PgConnection as sqlx::Connection>::connect(&server).await {
                        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(&drop).execute(&mut admin).await;
                    }
                });
            })
            .join();
        }
    }

    /// A new PostgreSQL store in a database of its own.
    pub async fn temp_postgres_store() -> (TempDatabase, Store) {
        let db = TempDatabase::new().await;
        let mut config = crate::config::Config::default();
        config.store.url = Some(db.url.clone());
        config.store.master_key_file = Some(db.master_key.clone());
        let store = Store::open_configured(&config).await.unwrap();
        (db, store)
    }

    /// A store test, run once on SQLite and once on PostgreSQL (that one marked ignored, like every test that
    /// needs the server: `.ci/run` runs it).
    macro_rules! on_both {
        ($(#[$meta:meta])* async fn $name:ident($store:ident: Store) $body:block) => {
            mod $name {
                use super::*;

                async fn body($store: Store) $body

                #[tokio::test]
                async fn on_sqlite() {
                    let (_dir, store) = $crate::store::test_support::temp_store().await;
                    body(store).await;
                }

                #[tokio::test]
                #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
                async fn on_postgres() {
                    let (_db, store) = $crate::store::test_support::temp_postgres_store().await;
                    body(store).await;
                }
            }
        };
    }
    pub(crate) use on_both;

    /// A connection, a segment and an export `e` sending it (export id 1 in a new store).
    pub async fn an_export(store: &Store) -> crate::store::Export {
        let conn = store
            .add_connection(&super::NewConnection {
                name: "c".into(),
                base_url: "http://x".into(),
                region: None,
                project_type: super::ProjectType::Email,
                usable_by: "admins".into(),
                key: super::KeySource::Env("K".into()),
                key_last4: None,
                privacy_accepted_by: "t".into(),
                verified: false,
            })
            .await
            .unwrap();
        // Plain SQL: this also runs against stores of older schemas, whose segments lack later columns.
        let segment_id: i64 = sql(
            "INSERT INTO segments (name, source, created_at) VALUES ('s', 'csv:x.csv', '2026-01-01T00:00:00Z') RETURNING id",
        )
        .scalar(&store.db)
        .await
        .unwrap();
        let e = store
            .add_export(&super::NewExport {
                name: "e".into(),
                connection_id: conn.id,
                email_field: Some("email".into()),
                user_id_field: None,
                on_leave: super::OnLeave::Remove,
                null_fields: super::NullFields::Clear,
                existing_users_only: false,
                schedule: "off".into(),
                segment_ids: vec![segment_id],
                fields: vec![],
            })
            .await
            .unwrap();
        e
    }
}
