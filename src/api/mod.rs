//! The HTTP API under `/api/v1`, served on the daemon's listener: JSON in and out, `Authorization: Bearer TOKEN`
//! or the web console's session cookie (`session`: sign-in, CSRF).
//!
//! Handlers authenticate the caller (`Caller`), ask `crate::access` whether it may act, and call the same library
//! code as the CLI (`crate::access::ops`, the store, the daemon's run queue). They hold no rules of their own.
//! Statuses: 401 without valid credentials (for everyone while no account exists), 404 for what the caller may not
//! see, 403 for what it may see but not do, 409 for conflicts, 422 for invalid input, 429 after repeated failed
//! authentication; errors are `{"error": {"kind", "message"}}` and never name what the caller may not see.

mod auth;
mod error;
mod handlers;
mod session;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::daemon::{Command, Shared};
use crate::store::Store;

pub use auth::{metrics_readers_only, Throttle};
pub use error::ApiError;
pub use session::{COOKIE as SESSION_COOKIE, CSRF_HEADER, TLS_COOKIE as TLS_SESSION_COOKIE};

/// What every handler reaches.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub config: Arc<Config>,
    /// The daemon's command channel: on-demand runs go through its queue.
    pub commands: mpsc::Sender<Command>,
    /// Live progress of the runs in flight.
    pub shared: Arc<Shared>,
    pub throttle: Arc<Throttle>,
    /// Whether the listener serves HTTPS (the session cookie is then Secure).
    pub tls: bool,
    /// The hash of `daemon.metrics_token_file`'s token, which reads `/metrics` and `/status` only.
    pub metrics_token: Option<String>,
}

/// The `/api/v1` routes.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/me", get(handlers::me))
        .route("/session", get(session::current).post(session::sign_in).delete(session::sign_out))
        .route("/connections", get(handlers::connections).post(handlers::create_connection))
        .route("/connections/check", post(handlers::check_connection))
        .route("/connections/{name}", get(handlers::connection).delete(handlers::remove_connection))
        .route("/connections/{name}/export-user", post(handlers::become_export_user))
        .route("/exports", get(handlers::exports).post(handlers::create_export))
        .route("/exports/{name}", get(handlers::export).delete(handlers::remove_export))
        .route("/exports/{name}/users", get(handlers::export_users).post(handlers::add_export_user))
        .route("/exports/{name}/users/{user}", axum::routing::delete(handlers::remove_export_user))
        .route("/exports/{name}/runs", post(handlers::run_export))
        .route("/segments", get(handlers::segments))
        .route("/runs", get(handlers::runs))
        .route("/runs/{id}", get(handlers::run))
        .route("/audit", get(handlers::audit))
        .fallback(handlers::not_found)
        .with_state(state);
    Router::new().nest("/api/v1", api)
}
