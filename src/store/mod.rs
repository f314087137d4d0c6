//! The SQLite store: pool setup, migrations and every SQL statement the program runs against its own state.
//!
//! One file per table group. Queries are runtime-checked (`sqlx::query`) with static SQL; every one of them is
//! exercised by the tests. Nothing outside this module writes SQL against the store.

mod connections;
mod exports;
mod members;
pub mod names;
mod runs;
mod segments;
mod sessions;
mod users;
mod warnings;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use connections::{Connection, ConnectionUpdate, KeySource, NewConnection, ProjectType};
pub use exports::{Export, ExportChange, FieldMap, FieldType, NewExport, NullFields, OnLeave, Target};
pub use members::{
    AckedMember, AddKind, ComputeOptions, MemberCounts, PlanSession, PlannedAdd, StagedMember, TargetPlan,
};
pub use runs::{process_owner, Issue, IssueKind, Run, RunStatus, RunTarget, RunTargetCounts};
pub use segments::{Segment, SourcePassword};
pub use sessions::{Session, SessionListing};
pub use users::{AuditEntry, AuditEvent, Role, User};

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
    pool: SqlitePool,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and applies pending migrations.
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
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate { path: path.into(), source })?;
        Ok(Store { pool, path: path.to_path_buf() })
    }

    /// Opens the store as the program uses it: [`Store::open`], then the upgrade steps SQL cannot do. Database
    /// passwords that older versions kept in clear inside segments' sources are sealed with the master key, and the
    /// file is then rewritten so no old page keeps them. When that cannot be done yet (the master key is missing
    /// while other secrets are sealed with it, or is not theirs), nothing is changed or lost: those segments keep
    /// working as before, a warning says what to do, and the next open tries again.
    pub async fn open_configured(config: &crate::config::StoreConfig) -> Result<Store> {
        let store = Store::open(&config.path).await?;
        if let Err(error) = store.seal_passwords_in_sources(&config.master_key_path()).await {
            tracing::warn!(%error, "Could not finish upgrading the store (sealing source passwords an older version stored in clear); the next open tries again.");
        }
        Ok(store)
    }

    async fn seal_passwords_in_sources(&self, master_key_path: &Path) -> Result<()> {
        let in_clear = self.segments_with_password_in_source().await?;
        let sealed_some = !in_clear.is_empty();
        if sealed_some {
            let names = in_clear.iter().map(|s| format!("'{}'", s.name)).collect::<Vec<_>>().join(", ");
            let (connections, segments) = (self.connections().await?, self.segments().await?);
            let sealed = crate::secrets::sealed_secrets(&connections, &segments);
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
        if sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM upkeep WHERE task = 'vacuum'")
            .fetch_one(&self.pool)
            .await?
            > 0
        {
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
        let mut conn = self.pool.acquire().await?;
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
        Store { pool, path: path.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
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

pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
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
}
