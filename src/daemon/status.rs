//! The status listener: `/healthz` (the process answers), `/readyz` (started and not stopping), `/metrics`
//! (Prometheus text) and `/status` (JSON: each export's schedule, next run, last run and live progress).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::metrics::Metrics;
use crate::sync::Progress;

/// What the daemon knows about one export, kept current by the command loop.
#[derive(Debug, Clone, Serialize)]
pub struct ExportStatus {
    pub schedule: String,
    pub enabled: bool,
    pub next_run: Option<DateTime<Utc>>,
    pub last_run: Option<LastRun>,
    pub last_success: Option<DateTime<Utc>>,
    pub running: bool,
    pub follow_up_queued: bool,
    #[serde(skip)]
    pub progress: Option<Arc<Progress>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub id: i64,
    pub status: String,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
pub struct StatusState {
    pub ready: bool,
    pub stopping: bool,
    pub exports: BTreeMap<String, ExportStatus>,
    /// Why the store does not answer, while it does not: runs pause, `/readyz` answers 503.
    pub store_unreachable: Option<String>,
    /// Why this daemon takes no new runs (a store schema newer than it knows).
    pub paused: Option<String>,
    /// On a PostgreSQL store: the replicas sharing it, as `/status` shows them.
    pub cluster: Option<serde_json::Value>,
    /// On a PostgreSQL store: every run in flight on any replica, by export id.
    pub remote_runs: std::collections::HashMap<i64, crate::store::LeaseHolder>,
}

/// Shared between the command loop (writes) and the listener (reads).
#[derive(Debug, Default)]
pub struct Shared {
    pub metrics: Metrics,
    pub state: Mutex<StatusState>,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, StatusState> {
        self.state.lock().expect("status lock")
    }
}

/// `/healthz` and `/readyz`: open to anyone who reaches the listener (health checks carry no credentials).
pub fn open_router(shared: Arc<Shared>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(readyz)).with_state(shared)
}

/// `/metrics` and `/status`: they name every export; off loopback the caller guards them.
pub fn private_router(shared: Arc<Shared>) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/status", get(status)).with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let s = shared.lock();
    if let Some(why) = &s.store_unreachable {
        (StatusCode::SERVICE_UNAVAILABLE, format!("store unreachable: {why}\n")).into_response()
    } else if s.ready && !s.stopping {
        "ready\n".into_response()
    } else if s.stopping {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let now = Utc::now();
    let since: Vec<(String, Option<DateTime<Utc>>)> =
        shared.lock().exports.iter().map(|(n, e)| (n.clone(), e.last_success)).collect();
    for (name, last) in since {
        if let Some(t) = last {
            shared.metrics.set_since_success(&name, (now - t).num_milliseconds() as f64 / 1000.0);
        }
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shared.metrics.encode())
        .into_response()
}

#[derive(Serialize)]
struct ProgressView {
    phase: crate::sync::Phase,
    list: String,
    rows_read: u64,
    done: u64,
    planned: u64,
    per_second: f64,
    seconds_left: Option<f64>,
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let s = shared.lock();
    let exports: serde_json::Map<String, serde_json::Value> = s
        .exports
        .iter()
        .map(|(name, e)| {
            let mut v = serde_json::to_value(e).expect("serialisable");
            if let Some(p) = &e.progress {
                let (done, planned, per_second, seconds_left) = p.snapshot();
                let (phase, list) = p.phase();
                let rows_read = p.rows_read.load(std::sync::atomic::Ordering::Relaxed);
                v["progress"] = serde_json::to_value(ProgressView {
                    phase,
                    list,
                    rows_read,
                    done,
                    planned,
                    per_second,
                    seconds_left,
                })
                .expect("serialisable");
            }
            (name.clone(), v)
        })
        .collect();
    let in_flight = s.exports.values().filter(|e| e.running).count();
    let mut v = serde_json::json!({ "ready": s.ready, "stopping": s.stopping, "runs_in_flight": in_flight, "exports": exports });
    if let Some(cluster) = &s.cluster {
        v["cluster"] = cluster.clone();
    }
    if let Some(why) = &s.paused {
        v["paused"] = serde_json::json!(why);
    }
    if let Some(why) = &s.store_unreachable {
        v["store_unreachable"] = serde_json::json!(why);
    }
    Json(v)
}
