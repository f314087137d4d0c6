//! Live progress of one run, shared between the engine (which counts) and whoever shows it (a progress bar, plain
//! lines, the daemon's status endpoint).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Reading,
    Resolving,
    Sending,
    Done,
}

#[derive(Debug)]
pub struct Progress {
    started: Instant,
    phase: Mutex<(Phase, String)>,
    /// Source rows read so far (all segments).
    pub rows_read: AtomicU64,
    /// Members to subscribe or unsubscribe in this run.
    pub planned: AtomicU64,
    /// Members whose batch Iterable acknowledged.
    pub done: AtomicU64,
    /// The recorded run's id once its row exists (0 before), so whoever supervises the run can finish its row when
    /// the run itself cannot (it panicked, or was stopped at the end of a shutdown grace period).
    run_id: AtomicI64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            started: Instant::now(),
            phase: Mutex::new((Phase::Reading, String::new())),
            rows_read: AtomicU64::new(0),
            planned: AtomicU64::new(0),
            done: AtomicU64::new(0),
            run_id: AtomicI64::new(0),
        }
    }
}

impl Progress {
    pub fn set_phase(&self, phase: Phase, list: &str) {
        *self.phase.lock().expect("progress lock") = (phase, list.to_string());
    }

    pub fn phase(&self) -> (Phase, String) {
        self.phase.lock().expect("progress lock").clone()
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn set_run_id(&self, run_id: i64) {
        self.run_id.store(run_id, Ordering::Relaxed);
    }

    /// The recorded run's id, once it has one.
    pub fn run_id(&self) -> Option<i64> {
        Some(self.run_id.load(Ordering::Relaxed)).filter(|&id| id > 0)
    }

    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// (done, planned, members per second, seconds left) for display.
    pub fn snapshot(&self) -> (u64, u64, f64, Option<f64>) {
        let done = self.done.load(Ordering::Relaxed);
        let planned = self.planned.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let left = (rate > 0.0 && planned >= done).then(|| (planned - done) as f64 / rate);
        (done, planned, rate, left)
    }
}
