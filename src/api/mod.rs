//! The HTTP API under `/api/v1`, served on the daemon's listener: JSON in and out, `Authorization: Bearer TOKEN`
//! or the web console's session cookie (`session`: sign-in, CSRF).
//!
//! Handlers authenticate the caller (`Caller`), ask `crate::access` whether it may act, and call the same library
//! code as the CLI (`crate::access::ops`, the store, the run queue `crate::queue`). They hold no rules of their own.
//! Statuses: 401 without valid credentials (for everyone while no account exists), 404 for what the caller may not
//! see, 403 for what it may see but not do, 409 for conflicts, 422 for invalid input, 429 after repeated failed
//! authentication; errors are `{"error": {"kind", "message"}}` and never name what the caller may not see.

mod auth;
mod channels;
mod client;
mod error;
mod handlers;
pub mod openapi;
mod segments;
mod session;
mod throttle;
mod users;
pub mod views;

use std::sync::Arc;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::queue::RunQueue;
use crate::store::Store;

pub use auth::{metrics_readers_only, Caller};
pub use client::Client;
pub use error::ApiError;
pub(crate) use handlers::visible_export;
pub use session::{COOKIE as SESSION_COOKIE, CSRF_HEADER, TLS_COOKIE as TLS_SESSION_COOKIE};
pub use throttle::Throttle;

/// What every handler reaches.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    /// The configuration in force: the daemon sends each one it reloads (SIGHUP), so requests follow it.
    pub config: tokio::sync::watch::Receiver<Arc<Config>>,
    /// On-demand runs are asked for here; the live progress of runs in flight is read here.
    pub queue: RunQueue,
    pub throttle: Arc<Throttle>,
    /// Whether the listener serves HTTPS (the session cookie is then Secure).
    pub tls: bool,
    /// The hash of `daemon.metrics_token_file`'s token, which reads `/metrics` and `/status` only.
    pub metrics_token: Option<String>,
}

impl ApiState {
    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Who sent the request and the host it addressed, behind the trusted proxies of the configuration in force.
    pub fn client(&self, parts: &axum::http::request::Parts) -> Client {
        auth::client(parts, self)
    }
}

/// The `/api/v1` routes.
pub fn router(state: ApiState) -> Router {
    let (api, _) = routes().split_for_parts();
    let api =
        api.fallback(handlers::not_found).layer(axum::middleware::map_response(error::json_errors)).with_state(state);
    Router::new().nest("/api/v1", api)
}

/// Every documented route, relative to `/api/v1`: each `routes!` registers handlers and their OpenAPI description
/// together.
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(handlers::me))
        .routes(routes!(session::current, session::sign_in, session::sign_out))
        .routes(routes!(handlers::connections, handlers::create_connection))
        .routes(routes!(handlers::check_connection))
        .routes(routes!(handlers::connection, handlers::edit_connection, handlers::remove_connection))
        .routes(routes!(handlers::become_export_user, handlers::leave_export_user))
        .routes(routes!(handlers::exports, handlers::create_export))
        .routes(routes!(handlers::export, handlers::edit_export, handlers::remove_export))
        .routes(routes!(handlers::export_users, handlers::add_export_user))
        .routes(routes!(handlers::remove_export_user))
        .routes(routes!(handlers::run_export))
        .routes(routes!(handlers::verify_export))
        .routes(routes!(segments::segments, segments::create_segment))
        .routes(routes!(segments::segment, segments::edit_segment, segments::remove_segment))
        .routes(routes!(handlers::runs))
        .routes(routes!(handlers::run))
        .routes(routes!(handlers::audit))
        .routes(routes!(users::users, users::add_user))
        .routes(routes!(users::user, users::change_user, users::remove_user))
        .routes(routes!(users::set_password))
        .routes(routes!(users::rotate_token))
        .routes(routes!(users::sessions, users::end_sessions))
        .routes(routes!(users::end_session))
        .routes(routes!(channels::channels, channels::add_channel))
        .routes(routes!(channels::channel, channels::remove_channel))
        .routes(routes!(channels::test_channel))
        .routes(routes!(channels::deliveries))
        .routes(routes!(openapi::serve))
}
