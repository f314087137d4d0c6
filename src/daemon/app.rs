//! The HTTP app the daemon's listener serves, put together here and nowhere else: the status endpoints
//! (`/healthz`, `/readyz`, `/metrics`, `/status`), the API under `/api/v1` and the web console at `/`. Each part
//! is built by its own module; this one only decides which guards go where.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;

use super::host_check;
use super::status::{self, Shared};
use crate::api::{self, ApiState};

/// The whole app. Off loopback, `/metrics` and `/status` take an administrator's or the metrics token. Health
/// checks answer whatever the `Host`; everything else only to the names the service is known by.
pub fn compose(api: ApiState, shared: Arc<Shared>, local: Option<SocketAddr>) -> Router {
    let mut private = status::private_router(shared.clone());
    if !local.is_some_and(|a| a.ip().is_loopback()) {
        private = private.route_layer(axum::middleware::from_fn_with_state(api.clone(), api::metrics_readers_only));
    }
    let named = private
        .merge(api::router(api.clone()))
        .merge(crate::console::router(api.clone()))
        .layer(axum::middleware::from_fn_with_state(api, host_check::known_hosts_only));
    status::open_router(shared).merge(named)
}
