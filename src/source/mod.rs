//! Where segment members come from. This module owns the `--source` text ([`SourceSpec`]), the errors a
//! source can raise ([`SourceError`]) and the one entry point, [`read`], that turns a source plus an
//! optional SQL query into a [`RowStream`]: column names first, then rows in bounded batches. Each kind
//! lives in its own file (`sqlite`, `postgres`, `csv`, `jsonl`); all of them produce rows on a background
//! task that feeds a small bounded channel, so memory stays flat however many rows a segment has, and the
//! task stops as soon as the consumer drops the stream. What a source may reach on this host ([`Reach`]: a segment
//! saved over the HTTP API reads only files inside `[sources] allowed_dirs`, never through a link, and no socket) is
//! enforced here, at every read (`confine`). Nothing here knows about Iterable, the store or the sync engine, and
//! nothing here ever writes to a source.

mod confine;
mod csv;
mod jsonl;
mod postgres;
mod sqlite;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{ready, Context, Poll};

use futures::stream::{BoxStream, Stream, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use confine::{check_reach, for_saving, lies_within, sqlite_confinement_available, Reach, Refusal};

/// Rows per batch sent down a [`RowStream`]; big enough to amortise channel hand-offs, small enough that a
/// batch of wide rows stays well under a megabyte.
const BATCH_ROWS: usize = 1000;

/// Batches a reader may run ahead of its consumer. This bound is what keeps memory flat.
const CHANNEL_BATCHES: usize = 4;

/// The forms [`SourceSpec::from_str`] accepts, for error messages.
const ACCEPTED_FORMS: &str = "sqlite:PATH, postgres://USER:PASSWORD@HOST:PORT/DATABASE (or postgresql://...), \
                              csv:PATH, jsonl:PATH";

/// Where a segment's rows come from, parsed from the user's `--source` text.
#[derive(Clone)]
pub enum SourceSpec {
    /// A SQLite database file, opened read-only.
    Sqlite { path: PathBuf },
    /// A PostgreSQL server: its connection URL without any password (safe to store and to show), and the
    /// password apart, when there is one.
    Postgres { url: String, password: Option<SecretString> },
    /// A CSV file with a header row.
    Csv { path: PathBuf },
    /// A JSON Lines file: one JSON object per line.
    Jsonl { path: PathBuf },
}

impl SourceSpec {
    /// The same source with a relative file path made absolute, so it still resolves when the daemon runs with
    /// another working directory.
    pub fn absolute(self) -> SourceSpec {
        let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        match self {
            SourceSpec::Sqlite { path } => SourceSpec::Sqlite { path: abs(path) },
            SourceSpec::Csv { path } => SourceSpec::Csv { path: abs(path) },
            SourceSpec::Jsonl { path } => SourceSpec::Jsonl { path: abs(path) },
            pg @ SourceSpec::Postgres { .. } => pg,
        }
    }

    /// A short, stable name for the kind of source.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Sqlite { .. } => "sqlite",
            SourceSpec::Postgres { .. } => "postgres",
            SourceSpec::Csv { .. } => "csv",
            SourceSpec::Jsonl { .. } => "jsonl",
        }
    }

    /// Whether rows are chosen by a SQL query (`true`) or are simply the rows of a file (`false`).
    pub fn takes_query(&self) -> bool {
        matches!(self, SourceSpec::Sqlite { .. } | SourceSpec::Postgres { .. })
    }

    /// The text to store and later parse back with [`SourceSpec::from_str`]. Never holds a password: a
    /// PostgreSQL source's password is kept apart (sealed, or a reference), see `crate::secrets`. Paths that
    /// are not valid UTF-8 are stored lossily.
    pub fn to_stored(&self) -> String {
        match self {
            SourceSpec::Sqlite { path } => format!("sqlite:{}", path.display()),
            SourceSpec::Postgres { url, .. } => url.clone(),
            SourceSpec::Csv { path } => format!("csv:{}", path.display()),
            SourceSpec::Jsonl { path } => format!("jsonl:{}", path.display()),
        }
    }

    /// The database password given with the source (in its URL, or set with [`SourceSpec::with_password`]).
    pub fn password(&self) -> Option<&SecretString> {
        match self {
            SourceSpec::Postgres { password, .. } => password.as_ref(),
            _ => None,
        }
    }

    /// The same source with this database password, when one is given (a PostgreSQL source's password kept
    /// apart, resolved at use); `None` leaves the source as it is. Other kinds take no password.
    pub fn with_password(self, given: Option<SecretString>) -> SourceSpec {
        match (self, given) {
            (SourceSpec::Postgres { url, .. }, Some(password)) => {
                SourceSpec::Postgres { url, password: Some(password) }
            }
            (other, _) => other,
        }
    }

    /// The source for messages when its password may be kept elsewhere (`password_elsewhere`): a PostgreSQL
    /// URL then shows `***` where the password goes, as it does when the password is in the spec.
    pub fn shown(&self, password_elsewhere: bool) -> String {
        match self {
            SourceSpec::Postgres { url, password } => shown_url(url, password.is_some() || password_elsewhere),
            other => other.to_stored(),
        }
    }

    /// Secrets that must never appear in a message: the database password.
    fn secrets(&self) -> Vec<String> {
        self.password().map(|p| p.expose_secret().to_owned()).into_iter().filter(|p| !p.is_empty()).collect()
    }
}

/// A PostgreSQL URL split into the URL without any password and the password (percent-decoded). The password
/// is the user-info one or the `password` parameter (giving both is refused); other parameters naming a
/// password are dropped, as the driver ignores them (and would log their value). The `url` crate parses it the
/// way the driver does, so what is kept apart is exactly what the driver would have used.
fn split_password(text: &str) -> Result<(String, Option<SecretString>), String> {
    let mut url = url::Url::parse(text).map_err(|e| format!("it is not a valid URL ({e})"))?;
    let mut found: Vec<String> = Vec::new();
    let mut changed = false;
    if let Some(password) = url.password() {
        found.push(percent_decode(password));
        url.set_password(None).map_err(|()| "its password cannot be taken out of it".to_string())?;
        changed = true;
    }
    let secret_param = |key: &str| key.to_ascii_lowercase().contains("password");
    let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if pairs.iter().any(|(key, _)| secret_param(key)) {
        found.extend(pairs.iter().filter(|(key, _)| key == "password").map(|(_, value)| value.clone()));
        let kept: Vec<&(String, String)> = pairs.iter().filter(|(key, _)| !secret_param(key)).collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        changed = true;
    }
    if found.len() > 1 {
        return Err("it gives the password twice (in the user part and as a parameter); give it once".into());
    }
    let password = found.pop().filter(|p| !p.is_empty()).map(SecretString::from);
    // The text as written when nothing was taken out of it.
    Ok((if changed { url.to_string() } else { text.to_owned() }, password))
}

/// A PostgreSQL URL (without password) as shown: `***` in the password's place when it has one.
fn shown_url(url: &str, has_password: bool) -> String {
    if !has_password {
        return url.to_owned();
    }
    let Ok(mut parsed) = url::Url::parse(url) else { return format!("{url} (password ***)") };
    if parsed.set_password(Some("***")).is_err() {
        parsed.query_pairs_mut().append_pair("password", "***");
    }
    parsed.to_string()
}

impl FromStr for SourceSpec {
    type Err = SourceError;

    /// Accepts `sqlite:PATH` (also `sqlite://PATH`, as sqlx writes it), a whole `postgres://` or
    /// `postgresql://` URL, `csv:PATH` and `jsonl:PATH`. Surrounding whitespace is ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let invalid = |problem: &str| SourceError::InvalidSpec { text: redact_url(text), problem: problem.to_owned() };
        let file_path = |rest: &str| {
            if rest.is_empty() {
                Err(invalid("the path after the prefix is empty"))
            } else {
                Ok(PathBuf::from(rest))
            }
        };
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            Ok(SourceSpec::Sqlite { path: file_path(rest)? })
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            // Parse now so a typo is reported when the source is configured, not at the first run.
            if let Err(error) = sqlx::postgres::PgConnectOptions::from_str(text) {
                let cause = scrub(&error.to_string(), &url_secrets(text));
                return Err(invalid(&format!("it is not a valid PostgreSQL URL ({cause})")));
            }
            let (url, password) =
                split_password(text).map_err(|problem| invalid(&scrub(&problem, &url_secrets(text))))?;
            Ok(SourceSpec::Postgres { url, password })
        } else if let Some(rest) = text.strip_prefix("csv:") {
            Ok(SourceSpec::Csv { path: file_path(rest)? })
        } else if let Some(rest) = text.strip_prefix("jsonl:") {
            Ok(SourceSpec::Jsonl { path: file_path(rest)? })
        } else {
            Err(invalid("it does not start with a known prefix"))
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Postgres { url, password } => f.write_str(&shown_url(url, password.is_some())),
            other => f.write_str(&other.to_stored()),
        }
    }
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            SourceSpec::Postgres { url, password } => {
                f.debug_struct("Postgres").field("url", &shown_url(url, password.is_some())).finish()
            }
            SourceSpec::Csv { path } => f.debug_struct("Csv").field("path", path).finish(),
            SourceSpec::Jsonl { path } => f.debug_struct("Jsonl").field("path", path).finish(),
        }
    }
}

/// Everything that can go wrong while opening or reading a source. Every message names the source by its
/// redacted `Display`, so none of them can carry a password.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("The source \"{text}\" is not valid: {problem}. Write it as one of: {accepted}.", accepted = ACCEPTED_FORMS)]
    InvalidSpec { text: String, problem: String },

    #[error("Cannot open {spec}: {cause}. {hint}")]
    Open { spec: String, cause: String, hint: &'static str },

    /// A source of a segment saved over the HTTP API reaching beyond what it may (see [`Reach`]).
    #[error("{spec} may not be read: {problem}.")]
    Confined { spec: String, problem: String },

    #[error("{spec} is a SQL source and needs a query; give the segment one, such as `SELECT email FROM customers`.")]
    MissingQuery { spec: String },

    #[error("{spec} is a file source and takes no query; remove the query from the segment (its members are the file's rows).")]
    UnexpectedQuery { spec: String },

    #[error("The query on {spec} failed: {cause}. Fix the SQL: it runs as written on that database.")]
    Query { spec: String, cause: String },

    #[error("{}", missing_column_message(.column, .available))]
    MissingColumn { column: String, available: Vec<String> },

    #[error("Line {line} of {spec} is malformed: {cause}. Fix or remove that line and run again.")]
    Malformed { spec: String, line: u64, cause: String },

    #[error("Column \"{column}\" of {spec} holds a value of type {type_name}, which cannot be exported; convert it in the query, for example `{cast_example}`.")]
    UnsupportedType { spec: String, column: String, type_name: String, cast_example: String },

    #[error("Row {row}, column \"{column}\" of {spec} holds a value that cannot be read ({cause}); convert or filter it in the query.")]
    BadValue { spec: String, row: u64, column: String, cause: String },

    #[error("Reading {spec} failed: {source}. Check that the file is readable and is not replaced while it is read.")]
    Io {
        spec: String,
        #[source]
        source: std::io::Error,
    },

    #[error("Reading {spec} stopped unexpectedly ({cause}); the rows read so far are incomplete and must not be used. This is a bug in segment-exporter; please report it.")]
    ReaderFailed { spec: String, cause: String },
}

/// A database's error text without the data values it quotes. PostgreSQL and SQLite echo the offending value
/// (`invalid input syntax for type date: "bob@example.com"`), and these texts reach WARN logs, the run history and
/// the CLI: a quoted literal after a colon, or one holding an `@`, is replaced by `"…"`. Identifiers quoted
/// elsewhere (`column "tier" does not exist`) stay. The full text is logged at debug level only.
pub(crate) fn redact_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut redacted = false;
    while let Some(start) = rest.find(['"', '\'']) {
        let quote = rest[start..].chars().next().expect("found a quote");
        let Some(len) = rest[start + 1..].find(quote) else { break };
        let literal = &rest[start + 1..start + 1 + len];
        let after_colon = rest[..start].trim_end().ends_with(':');
        out.push_str(&rest[..start]);
        if after_colon || literal.contains('@') {
            out.push(quote);
            out.push('…');
            out.push(quote);
            redacted = true;
        } else {
            out.push_str(&rest[start..start + len + 2]);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    if redacted {
        tracing::debug!(error = %text, "Source error with its values.");
        out.push_str(" (values hidden; RUST_LOG=debug logs them)");
    }
    out
}

fn missing_column_message(column: &str, available: &[String]) -> String {
    let listed = if available.is_empty() {
        "none".to_owned()
    } else {
        available.iter().map(|name| format!("\"{name}\"")).collect::<Vec<_>>().join(", ")
    };
    let near = available
        .iter()
        .find(|name| name.eq_ignore_ascii_case(column))
        .map(|name| format!(" (did you mean \"{name}\"? names are case-sensitive)"))
        .unwrap_or_default();
    format!(
        "The source has no column \"{column}\"{near}; its columns are: {listed}. Fix the segment's column \
         list, or name the column in the query (`... AS {column}`)."
    )
}

/// One member: its values, in the order of [`RowStream::columns`].
pub type Row = Vec<serde_json::Value>;

/// Which columns to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Columns {
    /// Every column the source has, in the source's order.
    All,
    /// Exactly these columns, in this order; each must exist in the source.
    Only(Vec<String>),
}

/// A source being read: the column names, then the rows in batches.
pub struct RowStream {
    /// Names, in the order of each [`Row`]'s values.
    pub columns: Vec<String>,
    /// Batches of up to 1000 rows. After an `Err` the stream ends; a stream that ends without
    /// an `Err` has delivered every row. Dropping it stops the reader.
    pub batches: BoxStream<'static, Result<Vec<Row>, SourceError>>,
}

impl fmt::Debug for RowStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowStream").field("columns", &self.columns).finish_non_exhaustive()
    }
}

/// Open the source and start streaming, reaching only what `reach` allows. `query` is required for sqlite/postgres
/// and must be `None` for files. With `Columns::Only(names)`, each row holds exactly those columns in that order; a
/// name the source does not have is reported as [`SourceError::MissingColumn`] before any row is read.
pub async fn read(
    spec: &SourceSpec,
    query: Option<&str>,
    columns: Columns,
    reach: &Reach,
) -> Result<RowStream, SourceError> {
    let label = spec.to_string();
    let query = query.filter(|sql| !sql.trim().is_empty());
    let sql = || query.ok_or_else(|| SourceError::MissingQuery { spec: label.clone() });
    let no_sql = || match query {
        Some(_) => Err(SourceError::UnexpectedQuery { spec: label.clone() }),
        None => Ok(()),
    };
    let stream = match spec {
        SourceSpec::Sqlite { path } => sqlite::read(label.clone(), path, sql()?, columns, reach).await?,
        SourceSpec::Postgres { url, password } => {
            postgres::read(label.clone(), url, password.as_ref(), &spec.secrets(), sql()?, columns, reach).await?
        }
        SourceSpec::Csv { path } => {
            no_sql()?;
            csv::read(label.clone(), path.clone(), columns, reach.clone()).await?
        }
        SourceSpec::Jsonl { path } => {
            no_sql()?;
            jsonl::read(label.clone(), path.clone(), columns, reach.clone()).await?
        }
    };
    tracing::debug!(source = %spec, columns = ?stream.columns, "Source opened.");
    Ok(stream)
}

/// The first `limit` rows with all columns, for the `segment preview` command. Stops the reader as soon
/// as it has them.
pub async fn preview(
    spec: &SourceSpec,
    query: Option<&str>,
    limit: usize,
    reach: &Reach,
) -> Result<(Vec<String>, Vec<Row>), SourceError> {
    let mut stream = read(spec, query, Columns::All, reach).await?;
    let mut rows = Vec::new();
    while rows.len() < limit {
        let Some(batch) = stream.batches.next().await else {
            break;
        };
        let wanted = limit - rows.len();
        rows.extend(batch?.into_iter().take(wanted));
    }
    Ok((stream.columns, rows))
}

/// Resolve the wanted columns against the source's: the names to report and, for each, its index in the
/// source's columns. The first of duplicate source names wins.
fn select_columns(available: &[String], wanted: Columns) -> Result<(Vec<String>, Vec<usize>), SourceError> {
    match wanted {
        Columns::All => Ok((available.to_vec(), (0..available.len()).collect())),
        Columns::Only(names) => {
            let indices = names
                .iter()
                .map(|name| {
                    available.iter().position(|have| have == name).ok_or_else(|| SourceError::MissingColumn {
                        column: name.clone(),
                        available: available.to_vec(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((names, indices))
        }
    }
}

/// The JSON form of a float. JSON has no NaN or infinity, and turning them into `null` would silently
/// erase a value, so they become the strings PostgreSQL uses for them.
fn float_value(value: f64) -> serde_json::Value {
    if value.is_finite() {
        serde_json::Value::from(value)
    } else if value.is_nan() {
        serde_json::Value::from("NaN")
    } else if value > 0.0 {
        serde_json::Value::from("Infinity")
    } else {
        serde_json::Value::from("-Infinity")
    }
}

/// The `Open` error for a file that cannot be opened, with a plainer cause for the common "not there".
fn file_open_error(spec: String, path: &Path, error: &std::io::Error) -> SourceError {
    let cause = if error.kind() == std::io::ErrorKind::NotFound {
        format!("the file {} does not exist", path.display())
    } else {
        error.to_string()
    };
    SourceError::Open { spec, cause, hint: "Check the path and that this user may read the file." }
}

type Batch = Result<Vec<Row>, SourceError>;

/// The consumer's end of a reader task: batches from the channel, then the task's own outcome, so a reader
/// that panicked shows up as an error instead of a silently short segment. Dropping it aborts an async
/// reader at its next await; a blocking reader notices at its next send, which fails once the receiver is
/// gone.
struct ReaderStream {
    spec: String,
    batches: mpsc::Receiver<Batch>,
    task: Option<JoinHandle<()>>,
}

impl ReaderStream {
    fn boxed(spec: String, batches: mpsc::Receiver<Batch>, task: JoinHandle<()>) -> BoxStream<'static, Batch> {
        ReaderStream { spec, batches, task: Some(task) }.boxed()
    }
}

impl Stream for ReaderStream {
    type Item = Batch;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        let this = &mut *self;
        if let Some(batch) = ready!(this.batches.poll_recv(cx)) {
            return Poll::Ready(Some(batch));
        }
        // Every sender is gone: the task has finished, one way or another.
        let Some(task) = this.task.as_mut() else {
            return Poll::Ready(None);
        };
        let outcome = ready!(Pin::new(task).poll(cx));
        this.task = None;
        Poll::Ready(match outcome {
            Ok(()) => None,
            Err(error) => Some(Err(SourceError::ReaderFailed { spec: this.spec.clone(), cause: error.to_string() })),
        })
    }
}

impl Drop for ReaderStream {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Collects rows into batches and sends them, reporting `false` once the consumer has gone away.
struct Batcher {
    tx: mpsc::Sender<Batch>,
    batch: Vec<Row>,
}

impl Batcher {
    fn new(tx: mpsc::Sender<Batch>) -> Self {
        Batcher { tx, batch: Vec::with_capacity(BATCH_ROWS) }
    }

    fn take(&mut self) -> Vec<Row> {
        std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_ROWS))
    }

    async fn push(&mut self, row: Row) -> bool {
        self.batch.push(row);
        if self.batch.len() < BATCH_ROWS {
            return true;
        }
        let batch = self.take();
        self.tx.send(Ok(batch)).await.is_ok()
    }

    /// Forwards converted rows until the first error or the end, then finishes. Returns false when the
    /// consumer went away (the reader should stop without finishing).
    async fn forward<S>(mut self, mut rows: S) -> bool
    where
        S: futures::Stream<Item = Result<Row, SourceError>> + Unpin,
    {
        use futures::StreamExt;
        let mut failure = None;
        while let Some(row) = rows.next().await {
            match row {
                Ok(values) => {
                    if !self.push(values).await {
                        return false;
                    }
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        drop(rows);
        self.finish(failure).await;
        true
    }

    /// Send what is left, then the error if there is one; nothing may follow an error.
    async fn finish(mut self, error: Option<SourceError>) {
        if !self.batch.is_empty() {
            let batch = self.take();
            if self.tx.send(Ok(batch)).await.is_err() {
                return;
            }
        }
        if let Some(error) = error {
            let _ = self.tx.send(Err(error)).await;
        }
    }

    fn blocking_push(&mut self, row: Row) -> bool {
        self.batch.push(row);
        if self.batch.len() < BATCH_ROWS {
            return true;
        }
        let batch = self.take();
        self.tx.blocking_send(Ok(batch)).is_ok()
    }

    fn blocking_finish(mut self, error: Option<SourceError>) {
        if !self.batch.is_empty() {
            let batch = self.take();
            if self.tx.blocking_send(Ok(batch)).is_err() {
                return;
            }
        }
        if let Some(error) = error {
            let _ = self.tx.blocking_send(Err(error));
        }
    }
}

/// A URL with any password replaced by `***`: the one in the user-info part and any query parameter
/// whose name mentions a password. When unsure where the user-info ends (an unencoded `@` in the
/// password), it hides too much rather than too little.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (head, mut rest) = url.split_at(scheme_end + 3);
    let mut out = String::from(head);
    if let Some(at) = rest.rfind('@') {
        let user_info = &rest[..at];
        match user_info.find(':') {
            Some(colon) => {
                out.push_str(&user_info[..colon]);
                out.push_str(":***");
            }
            None => out.push_str(user_info),
        }
        out.push('@');
        rest = &rest[at + 1..];
    }
    match rest.split_once('?') {
        Some((path, params)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = params
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                        format!("{key}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(rest),
    }
    out
}

/// The password texts in a URL (as written and percent-decoded), found the same way [`redact_url`]
/// finds them, so that error text from a driver can be scrubbed of them.
fn url_secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Some(scheme_end) = url.find("://") else {
        return found;
    };
    let rest = &url[scheme_end + 3..];
    if let Some(at) = rest.rfind('@') {
        if let Some((_, password)) = rest[..at].split_once(':') {
            found.push(password.to_owned());
        }
    }
    if let Some((_, params)) = rest.split_once('?') {
        for param in params.split('&') {
            if let Some((key, value)) = param.split_once('=') {
                if key.to_ascii_lowercase().contains("password") {
                    found.push(value.to_owned());
                }
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|text| percent_decode(text)).collect();
    found.extend(decoded);
    found.retain(|secret| !secret.is_empty());
    found.sort();
    found.dedup();
    // Longest first, so a password that contains another is replaced whole.
    found.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    found
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|pair| std::str::from_utf8(pair).ok());
        match (bytes[i], hex.and_then(|pair| u8::from_str_radix(pair, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` with every secret replaced by `***`; a last guard for driver messages we do not control.
fn scrub(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), "***"))
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by the per-kind tests.

    use super::*;

    /// Read every batch; the first error stops it.
    pub async fn collect(stream: RowStream) -> Result<Vec<Row>, SourceError> {
        let mut rows = Vec::new();
        let mut batches = stream.batches;
        while let Some(batch) = batches.next().await {
            rows.extend(batch?);
        }
        Ok(rows)
    }

    pub fn only(names: &[&str]) -> Columns {
        Columns::Only(names.iter().map(|name| name.to_string()).collect())
    }

    /// Whether this process holds an open file descriptor on `path` (Linux only), to check that a reader
    /// let go of its file.
    pub fn holds_open(path: &Path) -> bool {
        let wanted = std::fs::canonicalize(path).expect("the file exists");
        std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd is readable")
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .any(|target| target == wanted)
    }

    /// Wait up to five seconds for the process to let go of `path`.
    pub async fn released(path: &Path) -> bool {
        for _ in 0..100 {
            if !holds_open(path) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redact_values;

    #[test]
    fn quoted_values_are_hidden_and_identifiers_kept() {
        assert_eq!(
            redact_values("invalid input syntax for type date: \"bob.private@example.com\""),
            "invalid input syntax for type date: \"…\" (values hidden; RUST_LOG=debug logs them)"
        );
        assert_eq!(redact_values("column \"tier\" does not exist"), "column \"tier\" does not exist");
        assert_eq!(
            redact_values("near 'x': value 'ann@x.io' and \"unterminated"),
            "near 'x': value '…' and \"unterminated (values hidden; RUST_LOG=debug logs them)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::source::Reach;
    use serde_json::json;

    #[test]
    fn each_file_and_sql_form_parses_to_its_kind_and_stores_back_unchanged() {
        for (text, kind, takes_query) in [
            ("sqlite:data/customers.db", "sqlite", true),
            ("postgres://app@db.internal:5432/crm", "postgres", true),
            ("postgresql://app@db.internal/crm?sslmode=require&application_name=x%20y", "postgres", true),
            ("csv:/srv/exports/vip.csv", "csv", false),
            ("jsonl:members.jsonl", "jsonl", false),
        ] {
            let spec: SourceSpec = text.parse().unwrap();
            assert_eq!(spec.kind(), kind, "{text}");
            assert_eq!(spec.takes_query(), takes_query, "{text}");
            assert_eq!(spec.to_stored(), text);
            let again: SourceSpec = spec.to_stored().parse().unwrap();
            assert_eq!(again.to_stored(), text);
        }
    }

    #[test]
    fn the_sqlx_style_sqlite_url_is_read_as_a_plain_path() {
        let relative: SourceSpec = "sqlite://customers.db".parse().unwrap();
        let absolute: SourceSpec = "sqlite:///var/lib/crm.db".parse().unwrap();
        assert_eq!(relative.to_stored(), "sqlite:customers.db");
        assert_eq!(absolute.to_stored(), "sqlite:/var/lib/crm.db");
    }

    #[test]
    fn unknown_text_is_rejected_with_the_text_and_every_accepted_form() {
        let error = "mysql://root@localhost/crm".parse::<SourceSpec>().unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, SourceError::InvalidSpec { .. }));
        assert!(message.contains("mysql://root@localhost/crm"), "{message}");
        for form in ["sqlite:PATH", "postgres://", "postgresql://", "csv:PATH", "jsonl:PATH"] {
            assert!(message.contains(form), "{form} missing from: {message}");
        }
    }

    #[test]
    fn a_file_spec_without_a_path_is_rejected() {
        for text in ["csv:", "jsonl:", "sqlite:"] {
            let error = text.parse::<SourceSpec>().unwrap_err();
            assert!(error.to_string().contains("path"), "{text}: {error}");
        }
    }

    #[test]
    fn a_malformed_postgres_url_is_rejected_without_showing_its_password() {
        let error = "postgres://app:s3cr3t-pw@db:notaport/crm".parse::<SourceSpec>().unwrap_err();
        let message = error.to_string();
        assert!(message.contains("not a valid PostgreSQL URL"), "{message}");
        assert!(!message.contains("s3cr3t-pw"), "{message}");
    }

    #[test]
    fn the_postgres_password_never_appears_in_display_or_debug() {
        let spec: SourceSpec = "postgres://app:s3cr3t-pw@db:5432/crm?sslpassword=other-s3cr3t".parse().unwrap();
        let shown = format!("{spec} {spec:?} {:?}", Some(&spec));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(spec.to_string(), "postgres://app:***@db:5432/crm");
    }

    #[test]
    fn the_password_is_kept_apart_from_the_stored_form() {
        let spec: SourceSpec = "postgres://app:s3cr%40t-pw@db:5432/crm?sslmode=prefer".parse().unwrap();
        assert_eq!(spec.to_stored(), "postgres://app@db:5432/crm?sslmode=prefer");
        assert_eq!(spec.password().unwrap().expose_secret(), "s3cr@t-pw", "percent-decoded, as the driver reads it");
        let by_param: SourceSpec = "postgres://app@db/crm?password=p4ss&sslmode=require".parse().unwrap();
        assert_eq!(by_param.to_stored(), "postgres://app@db/crm?sslmode=require");
        assert_eq!(by_param.password().unwrap().expose_secret(), "p4ss");
        assert_eq!(by_param.to_string(), "postgres://app:***@db/crm?sslmode=require");

        let stored: SourceSpec = spec.to_stored().parse().unwrap();
        assert!(stored.password().is_none());
        assert_eq!(stored.shown(true), "postgres://app:***@db:5432/crm?sslmode=prefer", "a password kept elsewhere");
        assert_eq!(stored.shown(false), "postgres://app@db:5432/crm?sslmode=prefer");
        let again = stored.with_password(Some(SecretString::from("other".to_string())));
        assert_eq!(again.password().unwrap().expose_secret(), "other");
        assert_eq!(again.secrets(), vec!["other".to_string()], "error texts are scrubbed of it");
    }

    #[test]
    fn a_password_given_twice_is_refused_without_showing_either() {
        let error = "postgres://app:first-s3cr3t@db/crm?password=second-s3cr3t".parse::<SourceSpec>().unwrap_err();
        let message = error.to_string();
        assert!(message.contains("password twice"), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    #[test]
    fn a_mistyped_scheme_does_not_leak_the_password_either() {
        let error = "postgress://app:s3cr3t-pw@db/crm".parse::<SourceSpec>().unwrap_err();
        assert!(!error.to_string().contains("s3cr3t"), "{error}");
        assert!(!format!("{error:?}").contains("s3cr3t"), "{error:?}");
    }

    #[test]
    fn an_unencoded_at_sign_in_the_password_is_hidden_too() {
        assert_eq!(redact_url("postgres://app:p@ss@db/crm"), "postgres://app:***@db/crm");
        assert_eq!(url_secrets("postgres://app:p@ss@db/crm"), vec!["p@ss".to_owned()]);
    }

    #[test]
    fn scrubbing_removes_both_the_encoded_and_the_decoded_password() {
        let secrets = url_secrets("postgres://app:a%2Fb%40c@db/crm");
        let scrubbed = scrub("failed for a%2Fb%40c and a/b@c", &secrets);
        assert_eq!(scrubbed, "failed for *** and ***");
    }

    #[test]
    fn only_columns_come_back_in_the_requested_order() {
        let available = vec!["id".to_owned(), "email".to_owned(), "name".to_owned()];
        let (names, indices) = select_columns(&available, only(&["name", "id"])).unwrap();
        assert_eq!(names, vec!["name", "id"]);
        assert_eq!(indices, vec![2, 0]);
    }

    #[test]
    fn a_missing_column_error_lists_what_exists_and_suggests_a_case_fix() {
        let available = vec!["id".to_owned(), "email".to_owned()];
        let error = select_columns(&available, only(&["Email"])).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, SourceError::MissingColumn { column, available: have }
                if column == "Email" && have == &available),
            "{error:?}"
        );
        assert!(message.contains("\"id\", \"email\""), "{message}");
        assert!(message.contains("did you mean \"email\""), "{message}");
    }

    #[test]
    fn non_finite_floats_become_strings_instead_of_null() {
        assert_eq!(float_value(f64::NAN), json!("NaN"));
        assert_eq!(float_value(f64::NEG_INFINITY), json!("-Infinity"));
        assert_eq!(float_value(2.5), json!(2.5));
    }

    #[tokio::test]
    async fn a_sql_source_without_a_query_is_refused_before_opening_anything() {
        let spec: SourceSpec = "sqlite:/nonexistent/db.sqlite".parse().unwrap();
        let error = read(&spec, Some("  "), Columns::All, &Reach::Anywhere).await.unwrap_err();
        assert!(matches!(error, SourceError::MissingQuery { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_file_source_with_a_query_is_refused() {
        let spec: SourceSpec = "csv:/nonexistent/file.csv".parse().unwrap();
        let error = read(&spec, Some("SELECT 1"), Columns::All, &Reach::Anywhere).await.unwrap_err();
        assert!(matches!(error, SourceError::UnexpectedQuery { .. }), "{error:?}");
        assert!(error.to_string().contains("csv:/nonexistent/file.csv"), "{error}");
    }

    #[tokio::test]
    async fn preview_returns_at_most_the_limit_with_all_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.csv");
        let mut text = String::from("email,name\n");
        for i in 0..2500 {
            text.push_str(&format!("u{i}@example.com,User {i}\n"));
        }
        std::fs::write(&path, text).unwrap();
        let spec = SourceSpec::Csv { path };
        let (columns, rows) = preview(&spec, None, 1001, &Reach::Anywhere).await.unwrap();
        assert_eq!(columns, vec!["email", "name"]);
        assert_eq!(rows.len(), 1001);
        assert_eq!(rows[1000], vec![json!("u1000@example.com"), json!("User 1000")]);
    }
}
