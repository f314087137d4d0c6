//! Who is calling: the bearer token, checked by `crate::access::credentials`, with failed attempts throttled per
//! account and per address (a `governor` keyed limiter; once one runs out, that key is answered 429 until it
//! refills, before any token is checked).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use super::{ApiError, ApiState};
use crate::access::{credentials, Actor};

/// Failed authentications allowed per account and per address (an address may hold several people): a burst of
/// this many, then one every `FAILURE_REFILL`.
const ACCOUNT_BURST: u32 = 20;
const ADDRESS_BURST: u32 = 50;
const FAILURE_REFILL: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
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
    fn is_blocked(&self, keys: &[Key]) -> bool {
        let now = Instant::now();
        let mut blocked = self.blocked.lock();
        blocked.retain(|_, until| *until > now);
        keys.iter().any(|k| blocked.contains_key(k))
    }

    fn failed(&self, keys: &[Key]) {
        let clock = DefaultClock::default();
        for key in keys {
            let limiter = match key {
                Key::Account(_) => &self.accounts,
                Key::Address(_) => &self.addresses,
            };
            if let Err(not_until) = limiter.check_key(key) {
                let wait = not_until.wait_time_from(clock.now());
                self.blocked.lock().insert(key.clone(), Instant::now() + wait);
            }
        }
    }
}

/// An authenticated caller: who, and from where (for the audit).
pub struct Caller {
    pub actor: Actor,
    pub origin: String,
}

impl<S> FromRequestParts<S> for Caller
where
    ApiState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Caller, ApiError> {
        let state = ApiState::from_ref(state);
        let address = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else { return Err(ApiError::unauthorized()) };
        let mut keys = Vec::new();
        if let Some(a) = address {
            keys.push(Key::Address(a.ip()));
        }
        if let Some(id) = credentials::token_account(token) {
            keys.push(Key::Account(id));
        }
        if state.throttle.is_blocked(&keys) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                "too many failed authentications from this address or for this account; wait a minute",
            ));
        }
        match credentials::authenticate(&state.store, token).await.map_err(ApiError::internal)? {
            Some(user) => Ok(Caller {
                actor: Actor::User(user),
                origin: address.map_or_else(|| "api".to_string(), |a| format!("api {}", a.ip())),
            }),
            None => {
                tracing::info!(address = ?address.map(|a| a.ip()), "API authentication failed.");
                state.throttle.failed(&keys);
                Err(ApiError::unauthorized())
            }
        }
    }
}
