//! What a failed command prints: the human `error: ...` line on stderr and, with `--json`, one error document on
//! stdout. The error's `kind` is derived here and nowhere else, from the error's type, so scripts can branch on a
//! small, stable vocabulary instead of parsing messages. The message is the error's own text, the same as on
//! stderr: the library's errors already name sources by their redacted form and never carry an API key or an
//! email address, so nothing is added or taken away here.

use serde::Serialize;
use serde_json::json;

use super::{exit, Exit};
use crate::config::ConfigError;
use crate::daemon::DaemonError;
use crate::iterable::IterableError;
use crate::secrets::SecretError;
use crate::source::SourceError;
use crate::store::StoreError;
use crate::sync::empty::EmptyError;
use crate::sync::{ChangeRefused, LockError, SyncError};

/// The `kind` of a JSON error document. The names are part of the CLI's interface (the README lists them): add
/// new ones if needed, never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The command line is wrong (exit 2).
    Usage,
    /// The configuration file is invalid or cannot be run (exit 78).
    Config,
    /// A named connection, segment, export or run does not exist.
    NotFound,
    /// A connection, segment or export of that name exists already.
    Exists,
    /// A value given on the command line is refused (a name, a field, a source, a schedule, ...).
    InvalidInput,
    /// The request contradicts what is stored (a segment still sent by an export, a list managed by another
    /// export, an export that cannot run as it is).
    Conflict,
    /// The export is running elsewhere; try again later (exit 75).
    Busy,
    /// An API key or the master key cannot be read or does not fit.
    Secret,
    /// Iterable refused a request or could not be reached.
    Iterable,
    /// A segment's source could not be opened or read.
    Source,
    /// The store could not be opened, upgraded or queried.
    Store,
    /// Stopped at once by a second SIGTERM or SIGINT (exit 130).
    Aborted,
    /// Anything else: the command could not do what was asked; the message says why.
    Failed,
}

impl ErrorKind {
    /// The kind of `error`: that of the first error in its chain that says more than "failed".
    pub fn of(error: &anyhow::Error) -> ErrorKind {
        error.chain().map(of_cause).find(|k| *k != ErrorKind::Failed).unwrap_or(ErrorKind::Failed)
    }
}

fn of_cause(e: &(dyn std::error::Error + 'static)) -> ErrorKind {
    if let Some(e) = e.downcast_ref::<Exit>() {
        e.kind.unwrap_or(match e.code {
            exit::USAGE => ErrorKind::Usage,
            exit::CONFIG => ErrorKind::Config,
            exit::BUSY => ErrorKind::Busy,
            exit::ABORTED => ErrorKind::Aborted,
            _ => ErrorKind::Failed,
        })
    } else if e.is::<ConfigError>() {
        ErrorKind::Config
    } else if let Some(e) = e.downcast_ref::<StoreError>() {
        of_store(e)
    } else if let Some(e) = e.downcast_ref::<SyncError>() {
        of_sync(e)
    } else if let Some(e) = e.downcast_ref::<ChangeRefused>() {
        match e {
            ChangeRefused::Running { .. } | ChangeRefused::StillRunning { .. } => ErrorKind::Busy,
            ChangeRefused::Store(e) => of_store(e),
            ChangeRefused::Lock(e) => of_lock(e),
        }
    } else if let Some(e) = e.downcast_ref::<EmptyError>() {
        match e {
            EmptyError::Iterable { .. } => ErrorKind::Iterable,
            EmptyError::Sync(e) => of_sync(e),
            EmptyError::Store(e) => of_store(e),
        }
    } else if let Some(e) = e.downcast_ref::<SourceError>() {
        of_source(e)
    } else if e.is::<IterableError>() {
        ErrorKind::Iterable
    } else if e.is::<SecretError>() {
        ErrorKind::Secret
    } else if let Some(e) = e.downcast_ref::<LockError>() {
        of_lock(e)
    } else if let Some(e) = e.downcast_ref::<DaemonError>() {
        match e {
            DaemonError::Config(_) => ErrorKind::Config,
            DaemonError::Store(e) => of_store(e),
            DaemonError::Listen { .. } | DaemonError::Scheduler(_) => ErrorKind::Failed,
        }
    } else if e.is::<clap::Error>() {
        ErrorKind::Usage
    } else if e.is::<sqlx::Error>() {
        ErrorKind::Store
    } else {
        ErrorKind::Failed
    }
}

fn of_store(e: &StoreError) -> ErrorKind {
    match e {
        StoreError::NotFound { .. } => ErrorKind::NotFound,
        StoreError::Exists { .. } => ErrorKind::Exists,
        StoreError::InvalidName { .. } => ErrorKind::InvalidInput,
        StoreError::Conflict(_) | StoreError::ListManaged { .. } | StoreError::RunNotRunning { .. } => {
            ErrorKind::Conflict
        }
        StoreError::SchemaBehind { .. } | StoreError::SchemaAhead { .. } | StoreError::MasterKey { .. } => {
            ErrorKind::Config
        }
        StoreError::Open { .. }
        | StoreError::Migrate { .. }
        | StoreError::UnknownValue { .. }
        | StoreError::Sql(_)
        | StoreError::PostgresUrl { .. }
        | StoreError::PostgresOpen { .. }
        | StoreError::NotAStore { .. } => ErrorKind::Store,
    }
}

fn of_sync(e: &SyncError) -> ErrorKind {
    match e {
        SyncError::NotRunnable { .. }
        | SyncError::MassRemoval { .. }
        | SyncError::MassAddition { .. }
        | SyncError::ListNotStandard { .. } => ErrorKind::Conflict,
        SyncError::AlreadyRunning { .. } => ErrorKind::Busy,
        SyncError::Source { error, .. } => of_source(error),
        SyncError::Iterable { .. } | SyncError::IterableSetup(_) => ErrorKind::Iterable,
        SyncError::Secret(_) => ErrorKind::Secret,
        SyncError::Store(e) => of_store(e),
        SyncError::Lock(e) => of_lock(e),
        SyncError::ListLock(_) | SyncError::Interrupted | SyncError::LeaseLost | SyncError::Cancelled => {
            ErrorKind::Failed
        }
    }
}

fn of_source(e: &SourceError) -> ErrorKind {
    match e {
        SourceError::InvalidSpec { .. } | SourceError::MissingQuery { .. } | SourceError::UnexpectedQuery { .. } => {
            ErrorKind::InvalidInput
        }
        _ => ErrorKind::Source,
    }
}

fn of_lock(e: &LockError) -> ErrorKind {
    match e {
        LockError::Busy { .. } => ErrorKind::Busy,
        LockError::Io { .. } => ErrorKind::Failed,
        LockError::Store { .. } => ErrorKind::Store,
    }
}

/// The JSON error document: `{"error": {"kind": ..., "message": ...}}`, plus `problems` (every problem found)
/// for configuration errors.
pub fn document(kind: ErrorKind, message: &str, problems: Option<&[String]>) -> serde_json::Value {
    let mut error = json!({ "kind": kind, "message": message });
    if let Some(problems) = problems {
        error["problems"] = json!(problems);
    }
    json!({ "error": error })
}

/// The error document of a failed command.
pub fn document_of(error: &anyhow::Error) -> serde_json::Value {
    let kind = ErrorKind::of(error);
    let message = format!("{error:#}");
    let problems = (kind == ErrorKind::Config).then(|| config_problems(error, &message));
    document(kind, &message, problems.as_deref())
}

/// Every problem of a configuration error: those the file check listed, or the one the message states.
pub fn config_problems(error: &anyhow::Error, message: &str) -> Vec<String> {
    match error.chain().find_map(|e| e.downcast_ref::<ConfigError>()) {
        Some(ConfigError::Invalid { problems, .. }) => problems.clone(),
        _ => vec![message.to_string()],
    }
}

/// A clap error as the first paragraph of its rendering, without clap's own `error: ` prefix or the usage lines
/// that follow (they are on stderr).
pub fn usage_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or_default().trim();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_export_is_not_found_and_a_busy_export_is_busy() {
        let e: anyhow::Error = StoreError::NotFound { what: "export", name: "x".into(), cmd: "export list" }.into();
        assert_eq!(ErrorKind::of(&e), ErrorKind::NotFound);
        let e: anyhow::Error = SyncError::AlreadyRunning { export: "x".into(), run_id: None }.into();
        assert_eq!(ErrorKind::of(&e), ErrorKind::Busy);
        let e: anyhow::Error = SyncError::Store(StoreError::Exists { what: "export", name: "x".into() }).into();
        assert_eq!(ErrorKind::of(&e), ErrorKind::Exists);
    }

    #[test]
    fn an_exit_error_takes_its_kind_from_its_code_unless_it_names_one() {
        assert_eq!(ErrorKind::of(&Exit::error(exit::CONFIG, "x")), ErrorKind::Config);
        assert_eq!(ErrorKind::of(&Exit::error(exit::BUSY, "x")), ErrorKind::Busy);
        assert_eq!(ErrorKind::of(&Exit::error(exit::FAILED, "x")), ErrorKind::Failed);
        assert_eq!(ErrorKind::of(&Exit::invalid("x")), ErrorKind::InvalidInput);
    }

    #[test]
    fn context_added_around_an_error_keeps_its_kind() {
        let e = anyhow::Error::from(StoreError::NotFound { what: "segment", name: "s".into(), cmd: "segment list" })
            .context("while editing");
        assert_eq!(ErrorKind::of(&e), ErrorKind::NotFound);
        assert_eq!(document_of(&e)["error"]["kind"], "not_found");
    }

    #[test]
    fn a_config_error_lists_every_problem() {
        let e: anyhow::Error =
            ConfigError::Invalid { path: "c.toml".into(), problems: vec!["a: bad".into(), "b: bad".into()] }.into();
        let doc = document_of(&e);
        assert_eq!(doc["error"]["kind"], "config");
        assert_eq!(doc["error"]["problems"], json!(["a: bad", "b: bad"]));
    }
}
