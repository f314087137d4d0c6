//! Who may run an export now: on SQLite, the OS file lock beside the store (`RunLock`); on PostgreSQL, a lease in
//! the store (`crate::store` leases), renewed while the run goes and fenced, so that a daemon on another host can
//! take the run over when this one is lost, and a holder that lost its lease writes and sends nothing more.
//!
//! A lease holder sends a request only while at least `iterable.timeout` plus `store.lease_renew` of its lease is
//! left by its own monotonic clock (the gate), and a holder that took a lease another lost sends nothing until
//! `iterable.timeout` has passed since it was lost (`settle`): together, no request of an old holder can land at
//! Iterable after the new holder planned. It owns the guard's life: taking, renewing, publishing progress, letting
//! go; never what the run does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::lock::{LockError, RunLock};
use super::Progress;
use crate::config::Config;
use crate::iterable::SendGate;
use crate::store::{Fence, Kind, Store};

/// The right to run one export, held until dropped or `release`d.
pub struct RunGuard {
    export_id: i64,
    hold: Hold,
}

enum Hold {
    File(#[allow(dead_code)] RunLock),
    Lease(Lease),
}

/// A lease held on a PostgreSQL store, renewed in the background.
struct Lease {
    store: Store,
    fence: Fence,
    state: Arc<LeaseState>,
    renewer: tokio::task::JoinHandle<()>,
    /// Let go already (`release`).
    released: bool,
}

/// What the renewer and the gate share.
struct LeaseState {
    /// When the lease ends by this process's monotonic clock, as of its last renewal.
    valid_until: Mutex<Instant>,
    /// Nothing is sent before this (the previous holder lost the lease without letting go).
    settle_until: Instant,
    /// Requests may start only while this much of the lease is left: `iterable.timeout` + `store.lease_renew`.
    margin: Duration,
    /// Cancelled once the lease is lost or nearly so: the run must stop.
    lost: CancellationToken,
    progress: Mutex<Option<Arc<Progress>>>,
    run_id: Mutex<Option<i64>>,
}

/// Who holds this process's leases: the process's own owner token (pid and a random part).
pub fn holder() -> String {
    format!("{} {}", hostname(), crate::store::process_owner())
}

/// This host's name, as `/status` shows it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl RunGuard {
    /// Takes export `export_id` for a run, or says it is busy (another process runs it).
    pub async fn take(store: &Store, config: &Config, export_id: i64) -> Result<RunGuard, LockError> {
        match store.kind() {
            Kind::Sqlite => {
                let lock = RunLock::try_acquire(&config.store.lock_dir(), export_id)?;
                Ok(RunGuard { export_id, hold: Hold::File(lock) })
            }
            Kind::Postgres => {
                let (ttl, renew, timeout) = (config.store.lease_ttl, config.store.lease_renew, config.iterable.timeout);
                let asked = Instant::now();
                let grant = store
                    .take_lease(export_id, &holder(), ttl, timeout)
                    .await
                    .map_err(|e| LockError::Store { cause: e.to_string() })?
                    .ok_or_else(|| LockError::Busy { held_by: format!("its lease, export #{export_id}") })?;
                if grant.taken_over {
                    tracing::warn!(
                        export_id, settle_ms = grant.settle.as_millis() as u64,
                        "Took over an export whose daemon lost its lease; sending nothing until a request of that daemon can no longer land."
                    );
                }
                let state = Arc::new(LeaseState {
                    valid_until: Mutex::new(asked + ttl),
                    settle_until: Instant::now() + grant.settle,
                    margin: timeout + renew,
                    lost: CancellationToken::new(),
                    progress: Mutex::new(None),
                    run_id: Mutex::new(None),
                });
                let renewer =
                    tokio::spawn(renew_until_lost(store.clone(), grant.fence.clone(), state.clone(), renew, ttl));
                Ok(RunGuard {
                    export_id,
                    hold: Hold::Lease(Lease {
                        store: store.clone(),
                        fence: grant.fence,
                        state,
                        renewer,
                        released: false,
                    }),
                })
            }
        }
    }

    /// Whether some process runs export `export_id` now. Never takes anything.
    pub async fn is_held(store: &Store, config: &Config, export_id: i64) -> bool {
        match store.kind() {
            Kind::Sqlite => RunLock::is_held(&config.store.lock_dir(), export_id),
            Kind::Postgres => match store.lease_holder(export_id).await {
                Ok(holder) => holder.is_some(),
                Err(e) => {
                    tracing::warn!(export_id, error = %e, "Cannot ask whether the export is running; assuming it is.");
                    true
                }
            },
        }
    }

    pub fn export_id(&self) -> i64 {
        self.export_id
    }

    /// The store the run writes through: fenced by the lease on PostgreSQL.
    pub fn store_for_run(&self, store: &Store) -> Store {
        match &self.hold {
            Hold::File(_) => store.clone(),
            Hold::Lease(l) => store.fenced(l.fence.clone()),
        }
    }

    /// What every Iterable request of the run must pass first (PostgreSQL: the lease's margin).
    pub fn gate(&self) -> Option<Arc<dyn SendGate>> {
        match &self.hold {
            Hold::File(_) => None,
            Hold::Lease(l) => Some(Arc::new(LeaseGate(l.state.clone()))),
        }
    }

    /// Cancelled when the lease is lost or about to be: the run must stop. Never, for a file lock.
    pub fn lost(&self) -> CancellationToken {
        match &self.hold {
            Hold::File(_) => CancellationToken::new(),
            Hold::Lease(l) => l.state.lost.clone(),
        }
    }

    /// Publishes the run's progress (and id, once known) with each renewal, for the other daemons.
    pub fn publish(&self, progress: Arc<Progress>) {
        if let Hold::Lease(l) = &self.hold {
            *l.state.progress.lock().expect("lease progress lock") = Some(progress);
        }
    }

    /// Records which run holds the lease, for every daemon's `/status` and run views.
    pub async fn set_run(&self, run_id: i64) {
        if let Hold::Lease(l) = &self.hold {
            *l.state.run_id.lock().expect("lease run lock") = Some(run_id);
            if let Err(e) = l.store.set_lease_run(&l.fence, run_id).await {
                tracing::debug!(run_id, error = %e, "Could not record the run with its lease; the next renewal does.");
            }
        }
    }

    /// Lets the export go. `clean`: no request of the run is in flight, so the next holder may send at once.
    pub async fn release(self, clean: bool) {
        if let Hold::Lease(mut l) = self.hold {
            l.released = true;
            l.renewer.abort();
            if !l.state.lost.is_cancelled() {
                if let Err(e) = l.store.release_lease(&l.fence, clean).await {
                    tracing::warn!(export_id = self.export_id, error = %e, "Could not let the lease go; it expires by itself.");
                }
                // A follow-up of the export may wait on any daemon.
                let _ = l.store.notify_queue().await;
            }
        }
    }
}

impl Drop for Lease {
    /// A guard dropped without `release` (its run task was stopped, an error left early) lets go as best it can:
    /// as if lost, so the next holder still waits out a request of this one that may be in flight. When no runtime
    /// is left to do it, the lease expires by itself.
    fn drop(&mut self) {
        self.renewer.abort();
        if self.released || self.state.lost.is_cancelled() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, fence) = (self.store.clone(), self.fence.clone());
            runtime.spawn(async move {
                let _ = store.release_lease(&fence, false).await;
                let _ = store.notify_queue().await;
            });
        }
    }
}

/// Renews the lease every `renew` until it is lost (or nearly: less than the margin left and the store does not
/// answer), publishing progress with each renewal.
async fn renew_until_lost(store: Store, fence: Fence, state: Arc<LeaseState>, renew: Duration, ttl: Duration) {
    let mut tick = tokio::time::interval(renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let progress = state.progress.lock().expect("lease progress lock").clone().map(|p| progress_json(&p));
        let sent = Instant::now();
        match store.renew_lease(&fence, ttl, progress.as_deref()).await {
            Ok(true) => {
                *state.valid_until.lock().expect("lease clock lock") = sent + ttl;
                let run_id = *state.run_id.lock().expect("lease run lock");
                if let Some(run_id) = run_id {
                    let _ = store.set_lease_run(&fence, run_id).await;
                }
            }
            Ok(false) => {
                tracing::error!(export_id = fence.export_id, "The run's lease was lost (it expired before it could be renewed); stopping the run, which records nothing more. Another daemon takes it over.");
                state.lost.cancel();
                return;
            }
            Err(e) => {
                let left =
                    state.valid_until.lock().expect("lease clock lock").saturating_duration_since(Instant::now());
                tracing::warn!(export_id = fence.export_id, error = %e, left_ms = left.as_millis() as u64, "Cannot renew the run's lease; trying again.");
                if left.is_zero() {
                    state.lost.cancel();
                    return;
                }
            }
        }
    }
}

/// The live progress a holder publishes: what `GET /runs/ID` shows on the other daemons.
pub fn progress_json(p: &Progress) -> String {
    let (done, planned, per_second, seconds_left) = p.snapshot();
    let (phase, list) = p.phase();
    serde_json::json!({
        "phase": phase, "list": list, "done": done, "planned": planned, "per_second": per_second,
        "seconds_left": seconds_left,
    })
    .to_string()
}

struct LeaseGate(Arc<LeaseState>);

impl SendGate for LeaseGate {
    fn admit(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let s = &self.0;
            if Instant::now() < s.settle_until {
                tokio::select! {
                    _ = tokio::time::sleep_until(s.settle_until.into()) => {}
                    _ = s.lost.cancelled() => {}
                }
            }
            let left = s.valid_until.lock().expect("lease clock lock").saturating_duration_since(Instant::now());
            if s.lost.is_cancelled() || left < s.margin {
                s.lost.cancel();
                return Err(format!(
                    "the run's lease has {}s left, less than iterable.timeout plus store.lease_renew: no request may \
                     start that could land after another daemon takes the export over",
                    left.as_secs()
                ));
            }
            Ok(())
        })
    }
}
