//! Cancelling a run from another process: `--cancel-run` sets a flag on the run's row, and the process running it
//! polls that flag and stops the run as a shutdown would (batches in flight finish and are recorded, nothing new is
//! sent), so it ends within one batch and is recorded `cancelled`.
//!
//! It owns only the polling; it must not decide anything about the run itself (the engine does).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::SyncError;
use crate::store::Store;

/// How often a running run looks for a cancel request: well under the time one batch takes.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Watches one run's cancel flag while it runs; stop it when the run ends.
pub(crate) struct CancelWatch {
    requested: Arc<AtomicBool>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl CancelWatch {
    /// Polls the flag of `run_id`; when it is set, cancels `run_cancel` (the run's own token).
    pub(crate) fn start(store: Store, run_id: i64, run_cancel: CancellationToken) -> CancelWatch {
        let requested = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (requested, stop) = (requested.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(POLL_EVERY);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = run_cancel.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    match store.cancel_requested(run_id).await {
                        Ok(true) => {
                            tracing::warn!(
                                run_id,
                                "Cancel requested (--cancel-run): finishing the batches in flight and stopping."
                            );
                            requested.store(true, Ordering::SeqCst);
                            run_cancel.cancel();
                            return;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::debug!(run_id, error = %e, "Could not read the run's cancel flag; trying again.")
                        }
                    }
                }
            }
        });
        CancelWatch { requested, stop, task }
    }

    /// Stops watching; whether the run was cancelled on request.
    pub(crate) async fn stop(self) -> bool {
        self.stop.cancel();
        let _ = self.task.await;
        self.requested.load(Ordering::SeqCst)
    }
}

/// A run stopped by a cancel request ends `Cancelled`, not `Interrupted`. A run that finished or failed otherwise
/// keeps its outcome.
pub(crate) fn on_request(error: SyncError, requested: bool) -> SyncError {
    match error {
        SyncError::Interrupted if requested => SyncError::Cancelled,
        other => other,
    }
}

/// Why an export could not be changed now.
#[derive(Debug, thiserror::Error)]
pub enum ChangeRefused {
    #[error("export '{export}' is running now{}; nothing was changed. Wait for the run to finish, or stop it as part of the change: the run is recorded `cancelled`, and what it sent stays recorded.", run_text(.run_id))]
    Running { export: String, run_id: Option<i64> },
    #[error("export '{export}': run{} was asked to stop but was still running after {seconds}s; nothing was changed. Check it with `segment-exporter runs --export {export}` and try again.", run_text(.run_id))]
    StillRunning { export: String, run_id: Option<i64>, seconds: u64 },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Lock(#[from] super::LockError),
}

fn run_text(run_id: &Option<i64>) -> String {
    run_id.map(|id| format!(" (run #{id})")).unwrap_or_default()
}

/// Takes an export that is about to be changed or removed, so no run starts meanwhile. A run in flight (in any
/// process, on any host sharing the store) refuses the change, unless `cancel_run`: then the run is asked to stop
/// and this waits up to `wait` for the export.
pub async fn lock_for_change(
    store: &Store,
    config: &crate::config::Config,
    export: &crate::store::Export,
    cancel_run: bool,
    wait: Duration,
) -> Result<super::RunGuard, ChangeRefused> {
    use super::{LockError, RunGuard};
    if !RunGuard::is_held(store, config, export.id).await {
        match RunGuard::take(store, config, export.id).await {
            Ok(guard) => return Ok(guard),
            Err(LockError::Busy { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut run_id = store.running_run(export.id).await?;
    if !cancel_run {
        return Err(ChangeRefused::Running { export: export.name.clone(), run_id });
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut asked = false;
    loop {
        // A run that holds the export may not have recorded its row yet: ask as soon as it has.
        if !asked {
            run_id = store.running_run(export.id).await?;
            if let Some(id) = run_id {
                asked = store.request_cancel(id).await?;
                tracing::info!(export = %export.name, run_id = id, "Asked the run to stop.");
            }
        }
        match RunGuard::take(store, config, export.id).await {
            Ok(guard) => return Ok(guard),
            Err(LockError::Busy { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(LockError::Busy { .. }) => {
                return Err(ChangeRefused::StillRunning {
                    export: export.name.clone(),
                    run_id,
                    seconds: wait.as_secs(),
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
}
