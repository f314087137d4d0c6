//! Who is calling: the bearer token, checked by `crate::access::credentials`, or else the web console's session
//! cookie (`super::session`); a client whose wrong tokens ran out (`super::throttle`) is answered 429 before its
//! token is looked at. Also the guard that keeps `/metrics` and `/status` for administrators off loopback.

use std::net::IpAddr;

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use super::client::Client;
use super::throttle::{client_key, too_many_attempts};
use super::{ApiError, ApiState};
use crate::access::{credentials, Actor};

/// An authenticated caller: who, and from where (for the audit).
pub struct Caller {
    pub actor: Actor,
    pub origin: String,
    /// The web console session it came with, when it came with the session cookie rather than a token.
    pub session: Option<super::session::SessionInfo>,
}

/// The audit's "from where" of a request from `address`.
pub(super) fn origin_of(address: Option<IpAddr>) -> String {
    address.map_or_else(|| "api".to_string(), |a| format!("api {a}"))
}

/// Who sent the request, behind the trusted proxies of the configuration in force.
pub(super) fn client(parts: &Parts, state: &ApiState) -> Client {
    // Checked when the configuration was loaded: a bad entry cannot get here.
    let proxies = state.config().daemon.trusted_proxies().unwrap_or_default();
    Client::of(parts, &proxies, state.tls)
}

impl<S> FromRequestParts<S> for Caller
where
    ApiState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Caller, ApiError> {
        let state = ApiState::from_ref(state);
        let client = client(parts, &state);
        let address = client.address;
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        // A token wins over a cookie: it is not sent by a browser on its own, so it needs no CSRF check.
        let Some(token) = token else {
            return match super::session::caller(parts, &state, &client).await? {
                Some(caller) => Ok(caller),
                None => Err(ApiError::unauthorized()),
            };
        };
        let from = client_key(address);
        if let Some(wait) = state.throttle.tokens.blocked_for(&from) {
            return Err(too_many_attempts("too many wrong tokens from this client", wait));
        }
        match credentials::authenticate(&state.store, token).await.map_err(ApiError::internal)? {
            Some(user) => Ok(Caller { actor: Actor::User(user), origin: origin_of(address), session: None }),
            None => {
                tracing::info!(address = ?address, "API authentication failed.");
                state.throttle.tokens.failed(&from);
                Err(ApiError::unauthorized())
            }
        }
    }
}

/// Guards `/metrics` and `/status` when the listener is not on loopback: they name every export and its state,
/// which contributors may not all see. They open to the metrics token (`daemon.metrics_token_file`), made for a
/// scraper so that it holds no account's power, and to an administrator's token or session.
pub async fn metrics_readers_only(
    State(state): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let bearer =
        parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if let (Some(presented), Some(stored)) = (bearer, &state.metrics_token) {
        if credentials::metrics_token_matches(presented.trim(), stored) {
            return Ok(next.run(axum::extract::Request::from_parts(parts, body)).await);
        }
    }
    // Anything else is an account's token or session, throttled like any other when wrong.
    let caller = Caller::from_request_parts(&mut parts, &state).await?;
    if !caller.actor.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "off loopback, /metrics and /status are for the metrics token and administrators only",
        ));
    }
    Ok(next.run(axum::extract::Request::from_parts(parts, body)).await)
}
