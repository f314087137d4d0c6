//! Reading a segment from a SQLite file. Owns the read-only connection, the check of the query's columns
//! before any row is read, and the mapping of SQLite values to JSON. SQLite types belong to values, not
//! columns, so each value is mapped by its own runtime type: INTEGER and REAL become numbers, TEXT a
//! string, NULL null; a BLOB is refused with a hint to convert it in the query. The file is never written. Under
//! [`Reach::Within`] the connection is opened from a thread the kernel confines to the file's folder (see
//! `confine`), so that whatever SQLite opens by name, then or later, is a file in that folder.

use std::path::Path;

use futures::StreamExt;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow, SqliteValueRef};
use sqlx::{Column, ConnectOptions, Connection, Decode, Executor, Row as _, Sqlite, Statement};
use sqlx::{TypeInfo, ValueRef};
use tokio::sync::mpsc;

use super::confine::{self, Reach};
use super::{
    float_value, select_columns, Batcher, Columns, ReaderStream, Row, RowStream, SourceError, CHANNEL_BATCHES,
};

const OPEN_HINT: &str = "Check the path and that the file is a SQLite database this user may read.";

/// Rows the SQLite worker thread may hand over ahead of us. With sqlx's default (50) the two threads
/// wake each other far more often; on a 1M-row read this buffer halved the system time.
const WORKER_ROW_BUFFER: usize = 1024;

pub(super) async fn read(
    spec: String,
    path: &Path,
    query: &str,
    columns: Columns,
    reach: &Reach,
) -> Result<RowStream, SourceError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .row_buffer_size(WORKER_ROW_BUFFER);
    let open_error = |cause: String| SourceError::Open { spec: spec.clone(), cause, hint: OPEN_HINT };
    let mut conn = match reach {
        Reach::Anywhere => {
            // SQLite's own message for a missing file ("unable to open database file") does not say which.
            if let Err(error) = std::fs::metadata(path) {
                return Err(super::file_open_error(spec, path, &error));
            }
            options.connect().await.map_err(|error| open_error(error.to_string()))?
        }
        Reach::Within(dirs) => {
            // Opened by us first, for the plain refusals (outside, a link, not a file); what SQLite then opens is
            // the kernel's to confine. Temporary tables stay in memory: it may create no file elsewhere.
            let confined = confine::open_within(&spec, path, dirs)?;
            let options = options.pragma("temp_store", "memory");
            connect_confined(options, confined.folder).await.map_err(|cause| match cause {
                Confinement::Unavailable(problem) => SourceError::Confined { spec: spec.clone(), problem },
                Confinement::Open(cause) => open_error(cause),
            })?
        }
    };

    // Preparing gives the column names even when the query returns no rows; sqlx caches the statement,
    // so the fetch below does not parse it again.
    let query_error = |cause: String| SourceError::Query { spec: spec.clone(), cause: super::redact_values(&cause) };
    let statement = match conn.prepare(query).await {
        Ok(statement) => statement,
        // SQLITE_NOTADB: SQLite reads the file header only when a query first needs the schema.
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("26") => {
            return Err(SourceError::Open { spec, cause: error.message().to_owned(), hint: OPEN_HINT });
        }
        Err(error) => return Err(query_error(error.to_string())),
    };
    if let Some(sqlx::Either::Right(count @ 1..)) = statement.parameters() {
        return Err(query_error(format!("it has {count} parameter(s), but a segment query takes none")));
    }
    let available: Vec<String> = statement.columns().iter().map(|c| c.name().to_owned()).collect();
    if available.is_empty() {
        return Err(query_error("it returns no columns; a segment query must be a SELECT".into()));
    }
    let (names, indices) = select_columns(&available, columns)?;

    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let task = tokio::spawn(pump(conn, query.to_owned(), names.clone(), indices, spec.clone(), Batcher::new(tx)));
    Ok(RowStream { columns: names, batches: ReaderStream::boxed(spec, rx, task) })
}

enum Confinement {
    /// This system cannot confine the thread: the source is not read.
    Unavailable(String),
    /// SQLite could not open the database (a file outside the folder is refused like a missing one).
    Open(String),
}

/// Opens the connection from a thread of its own, confined to `folder` before sqlx starts the connection's worker
/// thread from it (which inherits the confinement for the connection's whole life). The thread ends once the
/// connection is open; it is never a pooled one, since the confinement cannot be undone.
async fn connect_confined(
    options: SqliteConnectOptions,
    folder: std::os::fd::OwnedFd,
) -> Result<SqliteConnection, Confinement> {
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("confined-sqlite-open".into())
        .spawn(move || {
            let opened = confine::confine_this_thread(&folder)
                .map_err(Confinement::Unavailable)
                .and_then(|()| runtime.block_on(options.connect()).map_err(|e| Confinement::Open(e.to_string())));
            let _ = tx.send(opened);
        })
        .map_err(|e| Confinement::Open(format!("no thread to open it from ({e})")))?;
    rx.await.unwrap_or_else(|_| Err(Confinement::Open("the thread opening it stopped unexpectedly".into())))
}

async fn pump(
    mut conn: SqliteConnection,
    query: String,
    names: Vec<String>,
    indices: Vec<usize>,
    spec: String,
    out: Batcher,
) {
    let mut row_number = 0u64;
    let rows = sqlx::query(&query).fetch(&mut conn).map(|row| {
        row_number += 1;
        match row {
            Ok(row) => convert_row(&row, &indices, &names, &spec, row_number),
            Err(error) => {
                Err(SourceError::Query { spec: spec.clone(), cause: super::redact_values(&error.to_string()) })
            }
        }
    });
    if out.forward(rows).await {
        let _ = conn.close().await;
    }
}

fn convert_row(
    row: &SqliteRow,
    indices: &[usize],
    names: &[String],
    spec: &str,
    row_number: u64,
) -> Result<Row, SourceError> {
    indices
        .iter()
        .zip(names)
        .map(|(&index, name)| {
            let bad_value = |cause: String| SourceError::BadValue {
                spec: spec.to_owned(),
                row: row_number,
                column: name.clone(),
                cause: super::redact_values(&cause),
            };
            let value = row.try_get_raw(index).map_err(|e| bad_value(e.to_string()))?;
            convert_value(value).map_err(|problem| match problem {
                Problem::Unsupported(type_name) => SourceError::UnsupportedType {
                    spec: spec.to_owned(),
                    column: name.clone(),
                    type_name,
                    cast_example: format!("hex({name})` or `CAST({name} AS TEXT)"),
                },
                Problem::Undecodable(cause) => bad_value(cause),
            })
        })
        .collect()
}

enum Problem {
    Unsupported(String),
    Undecodable(String),
}

/// One value by its runtime storage class; the declared column type is only a hint in SQLite.
fn convert_value(value: SqliteValueRef<'_>) -> Result<Value, Problem> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    let undecodable = |error: sqlx::error::BoxDynError| Problem::Undecodable(error.to_string());
    let type_info = value.type_info();
    match type_info.name() {
        "INTEGER" => Ok(Value::from(<i64 as Decode<Sqlite>>::decode(value).map_err(undecodable)?)),
        "REAL" => Ok(float_value(<f64 as Decode<Sqlite>>::decode(value).map_err(undecodable)?)),
        "TEXT" => Ok(Value::from(<&str as Decode<Sqlite>>::decode(value).map_err(undecodable)?)),
        other => Err(Problem::Unsupported(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{read, SourceSpec};
    use super::*;
    use crate::source::Reach;
    use serde_json::json;
    use std::path::PathBuf;

    /// A fresh database file in its own temp dir, built with the given SQL.
    async fn database(sql: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.db");
        let mut conn = SqliteConnectOptions::new().filename(&path).create_if_missing(true).connect().await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        (dir, path)
    }

    const CUSTOMERS: &str = "
        CREATE TABLE customers (id INTEGER, email TEXT, score REAL, note ANY, photo BLOB) STRICT;
        INSERT INTO customers VALUES
            (1, 'ada@example.com', 9.5, 'vip', NULL),
            (2, 'bob@example.com', NULL, 42, NULL),
            (3, NULL, -0.25, 1.5, x'00ff');";

    #[tokio::test]
    async fn every_row_is_read_with_each_value_mapped_by_its_runtime_type() {
        let (_dir, path) = database(CUSTOMERS).await;
        let spec = SourceSpec::Sqlite { path };
        let sql = "SELECT id, email, score, note FROM customers ORDER BY id";
        let stream = read(&spec, Some(sql), Columns::All, &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.columns, vec!["id", "email", "score", "note"]);
        let rows = collect(stream).await.unwrap();
        assert_eq!(
            rows,
            vec![
                vec![json!(1), json!("ada@example.com"), json!(9.5), json!("vip")],
                vec![json!(2), json!("bob@example.com"), json!(null), json!(42)],
                vec![json!(3), json!(null), json!(-0.25), json!(1.5)],
            ]
        );
        assert!(rows[1][3].is_i64(), "an integer stored in an ANY column stays an integer");
    }

    #[tokio::test]
    async fn only_columns_come_back_in_the_requested_order() {
        let (_dir, path) = database(CUSTOMERS).await;
        let spec = SourceSpec::Sqlite { path };
        let sql = "SELECT id, email, score FROM customers WHERE id = 1";
        let stream = read(&spec, Some(sql), only(&["email", "id"]), &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.columns, vec!["email", "id"]);
        assert_eq!(collect(stream).await.unwrap(), vec![vec![json!("ada@example.com"), json!(1)]]);
    }

    #[tokio::test]
    async fn a_missing_column_is_reported_even_when_the_query_returns_no_rows() {
        let (_dir, path) = database(CUSTOMERS).await;
        let spec = SourceSpec::Sqlite { path };
        let sql = "SELECT id, email FROM customers WHERE 0";
        let error = read(&spec, Some(sql), only(&["email", "phone"]), &Reach::Anywhere).await.unwrap_err();
        match error {
            SourceError::MissingColumn { column, available } => {
                assert_eq!(column, "phone");
                assert_eq!(available, vec!["id", "email"]);
            }
            other => panic!("expected MissingColumn, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_blob_is_refused_with_a_hint_to_convert_it_in_the_query() {
        let (_dir, path) = database(CUSTOMERS).await;
        let spec = SourceSpec::Sqlite { path };
        let stream = read(&spec, Some("SELECT id, photo FROM customers ORDER BY id"), Columns::All, &Reach::Anywhere)
            .await
            .unwrap();
        let error = collect(stream).await.unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, SourceError::UnsupportedType { column, type_name, .. }
                if column == "photo" && type_name == "BLOB"),
            "{error:?}"
        );
        assert!(message.contains("CAST(photo AS TEXT)"), "{message}");
    }

    #[tokio::test]
    async fn a_missing_file_is_an_open_error_naming_the_path_and_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.db");
        let spec = SourceSpec::Sqlite { path: path.clone() };
        let error = read(&spec, Some("SELECT 1 AS one"), Columns::All, &Reach::Anywhere).await.unwrap_err();
        assert!(matches!(error, SourceError::Open { .. }), "{error:?}");
        assert!(error.to_string().contains("does not exist"), "{error}");
        assert!(error.to_string().contains("absent.db"), "{error}");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.db");
        std::fs::write(&path, "this is plain text, not a database file at all........").unwrap();
        let spec = SourceSpec::Sqlite { path };
        let error = read(&spec, Some("SELECT id FROM customers"), Columns::All, &Reach::Anywhere).await.unwrap_err();
        assert!(matches!(error, SourceError::Open { .. }), "{error:?}");
        assert!(error.to_string().contains("not a database"), "{error}");
    }

    #[tokio::test]
    async fn bad_sql_is_a_query_error_that_says_the_sql_is_run_as_written() {
        let (_dir, path) = database(CUSTOMERS).await;
        let spec = SourceSpec::Sqlite { path };
        let error = read(&spec, Some("SELEC id FROM customers"), Columns::All, &Reach::Anywhere).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, SourceError::Query { .. }), "{error:?}");
        assert!(message.contains("syntax error"), "{message}");
        assert!(message.contains("Fix the SQL"), "{message}");
    }

    #[tokio::test]
    async fn a_statement_that_writes_is_refused_because_the_file_is_opened_read_only() {
        let (_dir, path) = database(CUSTOMERS).await;
        let spec = SourceSpec::Sqlite { path: path.clone() };
        let sql = "DELETE FROM customers RETURNING id";
        let outcome = match read(&spec, Some(sql), Columns::All, &Reach::Anywhere).await {
            Ok(stream) => collect(stream).await.map(|_| ()),
            Err(error) => Err(error),
        };
        assert!(outcome.is_err(), "the delete should fail");
        let spec_again = SourceSpec::Sqlite { path };
        let stream = read(&spec_again, Some("SELECT id FROM customers"), Columns::All, &Reach::Anywhere).await.unwrap();
        assert_eq!(collect(stream).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_query_with_parameters_is_refused() {
        let (_dir, path) = database(CUSTOMERS).await;
        let spec = SourceSpec::Sqlite { path };
        let error = read(&spec, Some("SELECT id FROM customers WHERE id = ?"), Columns::All, &Reach::Anywhere)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("parameter"), "{error}");
    }

    #[tokio::test]
    async fn two_hundred_thousand_rows_stream_through_in_full_batches() {
        let (_dir, path) = database(
            "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT);
             INSERT INTO people (id, email)
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
                 SELECT i, 'user' || i || '@example.com' FROM n;",
        )
        .await;
        let spec = SourceSpec::Sqlite { path };
        let stream = read(&spec, Some("SELECT email, id FROM people ORDER BY id"), Columns::All, &Reach::Anywhere)
            .await
            .unwrap();
        let mut batches = stream.batches;
        let (mut count, mut largest, mut last) = (0usize, 0usize, None);
        while let Some(batch) = batches.next().await {
            let batch = batch.unwrap();
            count += batch.len();
            largest = largest.max(batch.len());
            last = batch.last().cloned();
        }
        assert_eq!(count, 200_000);
        assert_eq!(largest, super::super::BATCH_ROWS);
        assert_eq!(last, Some(vec![json!("user200000@example.com"), json!(200000)]));
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_the_database_file() {
        let (_dir, path) = database(
            "CREATE TABLE people (id INTEGER PRIMARY KEY);
             INSERT INTO people (id)
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
                 SELECT i FROM n;",
        )
        .await;
        let spec = SourceSpec::Sqlite { path: path.clone() };
        let mut stream = read(&spec, Some("SELECT id FROM people"), Columns::All, &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.batches.next().await.unwrap().unwrap().len(), 1000);
        assert!(holds_open(&path), "the reader is still mid-way");
        drop(stream);
        assert!(released(&path).await, "the database file is still open");
    }

    /// Not a test of behaviour: prints the read rate. Run with
    /// `cargo test --release -- --ignored --nocapture sqlite_read_rate`.
    /// A folder allowed to segments saved over HTTP, holding `crm.db`; panics, saying why, where the kernel cannot
    /// confine (the project's machines can).
    async fn allowed_database(sql: &str) -> (tempfile::TempDir, PathBuf, Reach) {
        if let Err(why) = super::super::sqlite_confinement_available() {
            panic!("this test needs the kernel's Landlock: {why}");
        }
        let (dir, path) = database(sql).await;
        let reach = Reach::Within(vec![std::fs::canonicalize(dir.path()).unwrap()]);
        (dir, std::fs::canonicalize(path).unwrap(), reach)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_confined_read_sees_what_a_live_writer_left_in_the_write_ahead_log() {
        let (_dir, path, reach) = allowed_database("PRAGMA journal_mode = WAL; CREATE TABLE t (email TEXT);").await;
        // A writer that keeps its connection, so its rows stay in crm.db-wal, unchecked-pointed, with crm.db-shm.
        let mut writer = SqliteConnectOptions::new().filename(&path).connect().await.unwrap();
        sqlx::raw_sql("PRAGMA wal_autocheckpoint = 0; INSERT INTO t VALUES ('a@example.com'), ('b@example.com');")
            .execute(&mut writer)
            .await
            .unwrap();
        let wal = path.with_extension("db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0, "the rows are in the log");
        let spec = SourceSpec::Sqlite { path: path.clone() };
        let rows =
            collect(read(&spec, Some("SELECT email FROM t ORDER BY email"), Columns::All, &reach).await.unwrap())
                .await
                .unwrap();
        assert_eq!(rows, vec![vec![json!("a@example.com")], vec![json!("b@example.com")]]);
        sqlx::query("INSERT INTO t VALUES ('c@example.com')").execute(&mut writer).await.unwrap();
        let (_, rows) = super::super::preview(&spec, Some("SELECT email FROM t"), 10, &reach).await.unwrap();
        assert_eq!(rows.len(), 3, "a later read sees the later row");
        writer.close().await.unwrap();
    }

    /// On a current-thread runtime too: the confined thread drives the connect itself.
    #[tokio::test]
    async fn a_confined_read_sorts_and_groups_without_a_temporary_file() {
        let (_dir, path, reach) = allowed_database(
            "CREATE TABLE people (email TEXT, tier TEXT);
             INSERT INTO people WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
                 SELECT 'user' || i || '@example.com', 'tier' || (i % 7) FROM n;",
        )
        .await;
        let spec = SourceSpec::Sqlite { path };
        let sql = "SELECT DISTINCT email, tier FROM people ORDER BY tier DESC, email";
        let rows = collect(read(&spec, Some(sql), Columns::All, &reach).await.unwrap()).await.unwrap();
        assert_eq!(rows.len(), 200000);
        assert_eq!(rows[0], vec![json!("user100001@example.com"), json!("tier6")]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_confined_read_refuses_a_database_outside_the_allowed_folders_or_behind_a_link() {
        let (dir, path, reach) = allowed_database(CUSTOMERS).await;
        let (_other, outside) = database(CUSTOMERS).await;
        let link = path.with_file_name("link.db");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        for (file, why) in [(outside, "is not inside"), (link, "is a symbolic link")] {
            let spec = SourceSpec::Sqlite { path: file };
            let error = read(&spec, Some("SELECT email FROM customers"), Columns::All, &reach).await.unwrap_err();
            assert!(matches!(&error, SourceError::Confined { problem, .. } if problem.contains(why)), "{error}");
        }
        drop(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a timing probe, not a test: run with `cargo test --release -- --ignored sqlite_read_rate`"]
    async fn sqlite_read_rate_for_a_million_rows_is_printed() {
        let (_dir, path) = database(
            "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, first_name TEXT, score REAL);
             INSERT INTO people
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
                 SELECT i, 'user' || i || '@example.com', 'Name' || (i % 1000), i * 0.5 FROM n;",
        )
        .await;
        let spec = SourceSpec::Sqlite { path };
        let cpu_before = process_cpu_seconds();
        let started = std::time::Instant::now();
        let stream =
            read(&spec, Some("SELECT id, email, first_name, score FROM people"), Columns::All, &Reach::Anywhere)
                .await
                .unwrap();
        let rows = {
            let mut batches = stream.batches;
            let mut count = 0usize;
            while let Some(batch) = batches.next().await {
                count += batch.unwrap().len();
            }
            count
        };
        let elapsed = started.elapsed();
        let cpu = process_cpu_seconds() - cpu_before;
        assert_eq!(rows, 1_000_000);
        // CPU time too, because wall time on a shared machine mostly measures the neighbours.
        eprintln!(
            "sqlite: {rows} rows x 4 columns in {elapsed:?} wall ({:.0} rows/s), {cpu:.2} s CPU",
            rows as f64 / elapsed.as_secs_f64()
        );
    }

    /// User plus system time of this process so far, from `/proc/self/stat` (Linux, 100 ticks/s).
    fn process_cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th overall.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }
}
