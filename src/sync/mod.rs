//! The export engine: plan (stage the segment and diff it against what Iterable acknowledged), guard, resolve the
//! lists, send in paced concurrent batches, record progress as batches are acknowledged, finish.
//!
//! It owns the meaning of a run; it reads and writes state only through `store`, reaches Iterable only through
//! `iterable`, and reads segments only through `source`.

mod cancel;
mod email;
pub mod empty;
mod engine;
mod fields;
pub mod guard;
mod identity;
mod list_lock;
mod lock;
mod plan;
mod progress;
pub mod readiness;
mod send;
mod verify;

use serde::Serialize;

pub use cancel::{lock_for_change, ChangeRefused};
pub use email::normalize_email;
pub use engine::{Engine, RunOptions, RunReport};
pub use fields::{check_field_name, FieldEncoder};
pub use guard::RunGuard;
pub use identity::{check_export_identity, check_identity_settings};
pub use lock::{DaemonLock, LockError, RunLock};
pub use plan::ListReport;
pub use progress::{Phase, Progress};
pub use verify::{VerifyOptions, VerifyReport, VERIFY_EXAMPLES};

use crate::iterable::IterableError;
use crate::secrets::SecretError;
use crate::source::SourceError;
use crate::store::StoreError;

/// How the error of a run the mass-removal guard stopped begins, as recorded with the run.
pub const MASS_REMOVAL_STOP: &str = "stopped before removing anyone";

/// How the error of a run the mass-addition guard stopped begins, as recorded with the run.
pub const MASS_ADDITION_STOP: &str = "stopped before adding anyone";

/// A guard that stops a run before it changes a list, until someone lets the run through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    /// The run would unsubscribe more than `sync.mass_removal_share` of a list (`allow_mass_removal`).
    MassRemoval,
    /// The run would put more new members on a list than `sync.mass_addition_share` times those on it
    /// (`allow_mass_addition`).
    MassAddition,
}

/// Which guard stopped a run, read from its recorded error (other refusals, such as a connection without an export
/// user, are recorded `refused` too). The one place that tells a guard stop from other refusals.
pub fn stopped_by_guard(error: Option<&str>) -> Option<Guard> {
    let error = error?;
    if error.starts_with(MASS_REMOVAL_STOP) {
        Some(Guard::MassRemoval)
    } else if error.starts_with(MASS_ADDITION_STOP) {
        Some(Guard::MassAddition)
    } else {
        None
    }
}

/// Whether a run's recorded error says the mass-removal guard stopped it.
pub fn stopped_by_mass_removal_guard(error: Option<&str>) -> bool {
    stopped_by_guard(error) == Some(Guard::MassRemoval)
}

/// A run's end, as whoever tells people about it (`crate::notify`) needs it.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub export: crate::store::Export,
    pub run_id: i64,
    pub status: crate::store::RunStatus,
    pub error: Option<String>,
    /// Iterable refused the connection's key (revoked, replaced, or unable to write).
    pub key_refused: bool,
    /// Lists deleted in Iterable that this run recreated.
    pub recreated_lists: Vec<String>,
}

/// Decides what a run's end tells, to be written in the same transaction as the end itself. Set on the engine by
/// whoever composes it (the daemon, `export run`); this module never decides what to tell.
pub trait RunEndTeller: Send + Sync {
    fn tidings<'a>(
        &'a self,
        store: &'a crate::store::Store,
        end: &'a RunEnd,
    ) -> futures::future::BoxFuture<'a, Result<crate::store::Tidings, StoreError>>;

    /// A verify of `export` ended with a verdict on every list: `differing` members missing or lingering on
    /// `lists` and left so (0: none, or a repair fixed them), told as the `drift` event once per change of state.
    fn drift<'a>(
        &'a self,
        store: &'a crate::store::Store,
        export: &'a crate::store::Export,
        run_id: i64,
        differing: u64,
        lists: &'a [String],
    ) -> futures::future::BoxFuture<'a, Result<(), StoreError>>;
}

impl SyncError {
    /// Whether Iterable refused the connection's key: revoked, replaced, or unable to write lists.
    pub fn key_refused(&self) -> bool {
        matches!(self, SyncError::Iterable { error, .. } | SyncError::IterableSetup(error)
            if matches!(error, IterableError::BadApiKey { .. } | IterableError::CannotWrite { .. }))
    }
}

/// Why an export could not run, or why its run failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("export '{export}' cannot run: {why}")]
    NotRunnable { export: String, why: String },
    #[error("export '{export}' is already running{}; this run was refused. Wait for it to finish (see `segment-exporter runs --export {export}`).", .run_id.map(|id| format!(" (run #{id})")).unwrap_or_default())]
    AlreadyRunning { export: String, run_id: Option<i64> },
    #[error("segment '{segment}' could not be read from {source_name}: {error}")]
    Source { segment: String, source_name: String, error: SourceError },
    #[error("{}: {}. If the segments really shrank, run again with --allow-mass-removal; otherwise check their queries with `segment-exporter segment preview NAME`.", MASS_REMOVAL_STOP, .details.join("; "))]
    MassRemoval { details: Vec<String> },
    #[error("{}: {}. If the segments really grew, run again with --allow-mass-addition; otherwise check their queries with `segment-exporter segment preview NAME`.", MASS_ADDITION_STOP, .details.join("; "))]
    MassAddition { details: Vec<String> },
    #[error("list '{list}': {error}. What Iterable acknowledged is recorded: run the export again to resume.")]
    Iterable { list: String, error: IterableError },
    #[error("list '{list}': Iterable's list of that name (id {list_id}) is a {list_type} list, not a Standard (static) list this export can fill; nothing was sent. Rename that list in Iterable, or the segment (`segment-exporter segment add` under another name), so that they differ.")]
    ListNotStandard { list: String, list_id: i64, list_type: String },
    #[error(transparent)]
    IterableSetup(IterableError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    ListLock(#[from] list_lock::ListLockError),
    #[error("the run was interrupted by a shutdown; what Iterable acknowledged is recorded and the next run resumes from there")]
    Interrupted,
    #[error("the run stopped sending because its lease in the store was not renewed in time (the store answered too slowly or not at all), so another daemon may take the export over; what Iterable acknowledged is recorded and the next run resumes from there")]
    LeaseLost,
    #[error("the run was cancelled on request (a change or removal of its export or connection stopped it); what Iterable acknowledged before is recorded")]
    Cancelled,
}
