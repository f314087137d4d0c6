//! The runs this process has in flight and their live progress, by export: written by whoever runs them (the
//! daemon), read by whoever shows them (the API's run view, `/status`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::Progress;

#[derive(Debug, Default)]
pub struct Live {
    runs: Mutex<HashMap<i64, Arc<Progress>>>,
}

impl Live {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Progress>>> {
        self.runs.lock().expect("live runs lock")
    }

    /// A run of export `export_id` started here.
    pub fn insert(&self, export_id: i64, progress: Arc<Progress>) {
        self.map().insert(export_id, progress);
    }

    /// The run of export `export_id` ended here, its end recorded.
    pub fn remove(&self, export_id: i64) {
        self.map().remove(&export_id);
    }

    /// The progress of export `export_id`'s run in flight here.
    pub fn of_export(&self, export_id: i64) -> Option<Arc<Progress>> {
        self.map().get(&export_id).cloned()
    }

    /// The progress of run `run_id`, while it is in flight here.
    pub fn of_run(&self, run_id: i64) -> Option<Arc<Progress>> {
        self.map().values().find(|p| p.run_id() == Some(run_id)).cloned()
    }

    /// The exports with a run in flight here.
    pub fn exports(&self) -> Vec<i64> {
        self.map().keys().copied().collect()
    }
}
