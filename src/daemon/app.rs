//! The HTTP app the daemon's listener serves, put together here and nowhere else: the status endpoints
//! (`/healthz`, `/readyz`, `/metrics`, `/status`), the API under `/api/v1` and the web console at `/`. Each part
//! is built by its own module; this one only decides which guards go where.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;

use super::status::{self, Shared};
use crate::api::{self, ApiState};

/// The whole app. Off loopback, `/metrics` and `/status` take an administrator's or the metrics token.
pub fn compose(api: ApiState, shared: Arc<Shared>, local: Option<SocketAddr>) -> Router {
    let mut private = status::private_router(shared.clone());
    if !local.is_some_and(|a| a.ip().is_loopback()) {
        private = private.route_layer(axum::middleware::from_fn_with_state(api.clone(), api::metrics_readers_only));
    }
    status::open_router(shared).merge(private).merge(api::router(api.clone())).merge(crate::console::router(api))
}
