//! Who is calling: the bearer token, checked by `crate::access::credentials`, or else the web console's session
//! cookie (`super::session`); failed token and password attempts are throttled per account and per address (a
//! `governor` keyed limiter; once one runs out, that key is answered 429 until it refills, before any token or
//! password is checked). Also the guard that keeps `/metrics` and `/status` for administrators off loopback.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Instant;

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use super::client::Client;
use super::{ApiError, ApiState};
use crate::access::{credentials, Actor};

/// Failed authentications allowed per account and per address (an address may hold several people): a burst of
/// this many, then one every `FAILURE_REFILL`.
const ACCOUNT_BURST: u32 = 20;
const ADDRESS_BURST: u32 = 50;
const FAILURE_REFILL: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Account(i64),
    Address(IpAddr),
}

/// Throttles failed authentication.
pub struct Throttle {
    accounts: DefaultKeyedRateLimiter<Key>,
    addresses: DefaultKeyedRateLimiter<Key>,
    blocked: Mutex<HashMap<Key, Instant>>,
}

fn quota(burst: u32) -> Quota {
    Quota::with_period(FAILURE_REFILL).expect("non-zero period").allow_burst(NonZeroU32::new(burst).expect("non-zero"))
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            accounts: RateLimiter::keyed(quota(ACCOUNT_BURST)),
            addresses: RateLimiter::keyed(quota(ADDRESS_BURST)),
            blocked: Mutex::new(HashMap::new()),
        }
    }
}

impl Throttle {
    /// The keys a failed authentication counts against: the address, and the account when one is named.
    pub(super) fn keys(address: Option<IpAddr>, account: Option<i64>) -> Vec<Key> {
        address.map(Key::Address).into_iter().chain(account.map(Key::Account)).collect()
    }

    pub(super) fn is_blocked(&self, keys: &[Key]) -> bool {
        let now = Instant::now();
        let mut blocked = self.blocked.lock();
        blocked.retain(|_, until| *until > now);
        keys.iter().any(|k| blocked.contains_key(k))
    }

    pub(super) fn failed(&self, keys: &[Key]) {
        let clock = DefaultClock::default();
        for key in keys {
            let limiter = match key {
                Key::Account(_) => &self.accounts,
                Key::Address(_) => &self.addresses,
            };
            if let Err(not_until) = limiter.check_key(key) {
                // At least one refill period: a key that ran out stays out for a while, whatever the clock's
                // rounding says.
                let wait = not_until.wait_time_from(clock.now()).max(FAILURE_REFILL);
                self.blocked.lock().insert(key.clone(), Instant::now() + wait);
            }
        }
    }
}

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

/// The answer to a key whose failed authentications ran out.
pub(super) fn too_many_attempts() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        "too many failed authentications from this address or for this account; wait a minute",
    )
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
        let keys = Throttle::keys(address, credentials::token_account(token));
        if state.throttle.is_blocked(&keys) {
            return Err(too_many_attempts());
        }
        match credentials::authenticate(&state.store, token).await.map_err(ApiError::internal)? {
            Some(user) => Ok(Caller { actor: Actor::User(user), origin: origin_of(address), session: None }),
            None => {
                tracing::info!(address = ?address, "API authentication failed.");
                state.throttle.failed(&keys);
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
