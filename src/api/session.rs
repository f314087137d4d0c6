//! Web console sessions: sign-in with a user name and password (`POST /api/v1/session`), the session cookie that
//! then stands for a token, its CSRF protection, `GET /api/v1/session` (who, and the CSRF token again after a page
//! reload) and sign-out (`DELETE /api/v1/session`).
//!
//! The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it), Path=/, and under
//! TLS Secure with the `__Host-` prefix (a browser then takes it only from this host over HTTPS). Every request that
//! may change something and comes with the cookie must also name this host in its Origin (or, without one, its
//! Referer) and carry the session's CSRF token in `X-CSRF-Token`; a request with a bearer token needs neither, as a
//! browser never adds one by itself. Passwords are checked by `crate::access::credentials`, in a blocking thread
//! (argon2id is slow on purpose), once `super::throttle` has counted the attempt and admitted it; the store keeps
//! only hashes of session ids.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use cookie::{Cookie, SameSite};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::{client, origin_of, Caller};
use super::client::Client;
use super::throttle::{client_key, FAILED_SIGN_IN_AUDIT_WINDOW, SIGN_IN_PACES};
use super::views::{ErrorBody, Me, SessionView};
use super::{ApiError, ApiState};
use crate::access::{self, credentials, Actor};
use crate::store::{StoreError, User};

/// The cookie's name over plain HTTP, and under TLS, where the `__Host-` prefix makes browsers refuse it unless
/// it is Secure, for Path=/ and without Domain, so no sibling host can plant or widen it.
pub const COOKIE: &str = "segment_exporter_session";
pub const TLS_COOKIE: &str = "__Host-segment_exporter_session";
/// The header that carries the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A session's last use is written at most this often (or a quarter of the idle timeout, when shorter), not on
/// every request (the console polls progress). The idle timeout is therefore exact to within this much.
const TOUCH_EVERY: ChronoDuration = ChronoDuration::seconds(60);

/// The session a caller came with.
pub struct SessionInfo {
    pub id: i64,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
    /// Whether it came over HTTPS (its cookie then has the `__Host-` name).
    pub https: bool,
}

/// The cookie's name for a browser that reached us over HTTPS (`https`) or not.
fn cookie_name(https: bool) -> &'static str {
    if https {
        TLS_COOKIE
    } else {
        COOKIE
    }
}

/// The session id the request's cookies hold, if any.
fn session_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
        .filter(|v| !v.is_empty())
}

fn session_ended() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the session has ended (signed out, unused for daemon.session_idle_timeout, or older than \
         daemon.session_lifetime); sign in again",
    )
}

fn csrf_refused(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "csrf", message)
}

/// The caller of a request that came with the session cookie; None when it has none. Session ids are 256 random
/// bits, so unlike tokens and passwords a wrong one is not throttled: nobody guesses one.
pub(super) async fn caller(parts: &Parts, state: &ApiState, client: &Client) -> Result<Option<Caller>, ApiError> {
    let Some(id) = session_cookie(&parts.headers, cookie_name(client.https)) else { return Ok(None) };
    let Some(session) = state.store.session(&credentials::session_hash(&id)).await? else {
        return Err(session_ended());
    };
    let now = Utc::now();
    let idle = state.config().daemon.session_idle();
    if now >= session.expires_at || now >= session.last_seen_at + idle {
        state.store.remove_session(session.id).await?;
        return Err(session_ended());
    }
    let Some(user) = state.store.user_by_id(session.user_id).await? else { return Err(session_ended()) };
    if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        check_origin(&parts.headers, client.host.as_deref(), true)?;
        let presented = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !credentials::csrf_matches(&id, presented) {
            return Err(csrf_refused(
                "a change made with the session cookie needs the session's CSRF token in the X-CSRF-Token header \
                 (sign-in and GET /api/v1/session answer it)",
            ));
        }
    }
    if now - session.last_seen_at >= TOUCH_EVERY.min(idle / 4) {
        state.store.touch_session(session.id).await?;
    }
    let info = SessionInfo {
        id: session.id,
        csrf_token: credentials::csrf_token(&id),
        expires_at: session.expires_at,
        https: client.https,
    };
    Ok(Some(Caller { actor: Actor::User(user), origin: origin_of(client.address), session: Some(info) }))
}

/// A URL's host and port, the default ports (80, 443) left out so that a TLS proxy in front (browser on 443,
/// `Host` without a port) compares equal.
fn authority(url: &url::Url) -> Option<(String, Option<u16>)> {
    Some((url.host_str()?.to_ascii_lowercase(), url.port_or_known_default().filter(|p| *p != 80 && *p != 443)))
}

/// Refuses a request whose Origin (or, without one, Referer) names another host than `host`, the one it was sent
/// to. `required`: whether a request naming neither is refused too (changes with the cookie); a sign-in without them
/// is let through, as curl sends neither.
fn check_origin(headers: &HeaderMap, host: Option<&str>, required: bool) -> Result<(), ApiError> {
    let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
    let claimed = text(header::ORIGIN).or_else(|| text(header::REFERER));
    let Some(claimed) = claimed else {
        return if required {
            Err(csrf_refused(
                "a change made with the session cookie must say where it comes from (an Origin or Referer header)",
            ))
        } else {
            Ok(())
        };
    };
    let ours = host.and_then(|h| url::Url::parse(&format!("http://{h}")).ok()).and_then(|u| authority(&u));
    let theirs = url::Url::parse(&claimed).ok().and_then(|u| authority(&u));
    match (ours, theirs) {
        (Some(a), Some(b)) if a == b => Ok(()),
        _ => Err(csrf_refused("the request comes from another site than this service; refused")),
    }
}

/// The Set-Cookie header for a browser that reached us over HTTPS (`https`) or not.
fn set_cookie(https: bool, value: &str, clear: bool) -> HeaderValue {
    let mut c = Cookie::build((cookie_name(https), value.to_string()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .secure(https)
        .build();
    if clear {
        c.make_removal();
    }
    // The cookie's parts are all ASCII (the id is base64url).
    HeaderValue::from_str(&c.to_string()).expect("a cookie header is ASCII")
}

fn session_view(user: &User, info: &SessionInfo, state: &ApiState) -> SessionView {
    SessionView {
        user: Me { name: user.name.clone(), role: user.role.as_str().to_string() },
        csrf_token: info.csrf_token.clone(),
        expires_at: info.expires_at,
        idle_timeout_seconds: state.config().daemon.session_idle_timeout.as_secs(),
    }
}

/// A sign-in.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    user: String,
    #[schema(value_type = String)]
    password: SecretString,
}

/// `POST /api/v1/session`: a user name and password for a session cookie. Every answer but success is the same
/// 401, whether the name exists or not, and takes as long.
#[utoipa::path(post, path = "/session", tag = "account", request_body = SignIn, security(()),
    responses((status = 200, description = "Signed in; the session cookie is set", body = SessionView),
        (status = 401, description = "Wrong user name or password", body = ErrorBody),
        (status = 403, description = "Posted from another site", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn sign_in(State(s): State<ApiState>, parts: Parts, b: Result<Json<SignIn>, JsonRejection>) -> Response {
    match sign_in_inner(&s, &parts, b).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn sign_in_inner(
    s: &ApiState,
    parts: &Parts,
    b: Result<Json<SignIn>, JsonRejection>,
) -> Result<Response, ApiError> {
    // A sign-in posted by another site would sign the browser into that site's choice of account.
    let client = client(parts, s);
    check_origin(&parts.headers, client.host.as_deref(), false)?;
    // serde's message may quote a value, and a value here may be a password: say what is expected instead.
    let Ok(Json(b)) = b else {
        return Err(ApiError::invalid(
            "the body must be JSON {\"user\": NAME, \"password\": PASSWORD}, with Content-Type: application/json",
        ));
    };
    let address = client.address;
    let origin = origin_of(address);
    let name = b.user.trim();
    let (from, name_key) = (client_key(address), credentials::sign_in_name_key(name));
    let permit = s.throttle.admit_sign_in(&s.store, &name_key, &from).await?;
    let user = match s.store.user(name).await {
        Ok(u) => Some(u),
        Err(StoreError::NotFound { .. } | StoreError::InvalidName { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let stored = match &user {
        Some(u) => s.store.user_password_hash(u.id).await?,
        None => None,
    };
    let password = b.password;
    let verified = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        match stored {
            Some(hash) => credentials::verify_password(&password, &hash),
            None => {
                credentials::verify_no_password(&password);
                false
            }
        }
    })
    .await
    .map_err(ApiError::internal)?;
    let user = match user {
        Some(u) if verified => u,
        other => {
            s.store.sign_in_failed(&from).await?;
            let audit_key = format!("session.sign_in.failed {name_key} {from}");
            return Err(failed_sign_in(s, other.map(|u| u.name), &audit_key, &origin, address).await?);
        }
    };
    s.store.sign_in_succeeded(&name_key, &from, &SIGN_IN_PACES).await?;
    let idle = s.config().daemon.session_idle();
    s.store.prune_sessions(Utc::now() - idle).await?;
    let lifetime = ChronoDuration::from_std(s.config().daemon.session_lifetime).unwrap_or(ChronoDuration::MAX);
    let expires_at = Utc::now().checked_add_signed(lifetime).unwrap_or(DateTime::<Utc>::MAX_UTC);
    let new = credentials::new_session();
    let session = s.store.add_session(&new.hash, user.id, expires_at, &origin).await?;
    let actor = Actor::User(user.clone());
    access::audit(&s.store, &s.config(), &actor, &origin, "session.sign_in", None, None).await?;
    // A session this browser held before ends: each sign-in starts from a fresh id.
    if let Some(old) = session_cookie(&parts.headers, cookie_name(client.https)) {
        if let Some(previous) = s.store.session(&credentials::session_hash(&old)).await? {
            s.store.remove_session(previous.id).await?;
        }
    }
    // The account's id, not its name: a name may be an email address, which stays out of logs above debug.
    tracing::info!(account = user.id, address = ?address, "Signed in.");
    let id = new.id.expose_secret();
    let info = SessionInfo { id: session.id, csrf_token: credentials::csrf_token(id), expires_at, https: client.https };
    let mut response = Json(session_view(&user, &info, s)).into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie(client.https, id, false));
    no_store(&mut response);
    Ok(response)
}

/// Audits a failed sign-in and answers it. The audit names the account when it exists; a name that matches no
/// account is not kept, since people type their password into the name field. One row a minute per `key` (the name
/// typed, hashed, and the client) counts them.
async fn failed_sign_in(
    s: &ApiState,
    account: Option<String>,
    key: &str,
    origin: &str,
    address: Option<std::net::IpAddr>,
) -> Result<ApiError, ApiError> {
    let (actor, detail) = match &account {
        Some(name) => (name.as_str(), "wrong password, or none set"),
        None => ("unknown", "no such account"),
    };
    let event = crate::store::AuditEvent {
        actor,
        origin,
        action: "session.sign_in.failed",
        target: None,
        detail: Some(detail.to_string()),
    };
    let retention = s.config().store.audit_retention;
    s.store.record_audit_counted(key, &event, FAILED_SIGN_IN_AUDIT_WINDOW, retention).await?;
    tracing::info!(address = ?address, "Sign-in failed.");
    Ok(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the user name or password is wrong"))
}

/// Session answers hold the CSRF token: no cache keeps them.
fn no_store(response: &mut Response) {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn no_session() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "no session: sign in with POST /api/v1/session (a bearer token has no session)",
    )
}

/// `GET /api/v1/session`: who is signed in, and the CSRF token again (after a page reload).
#[utoipa::path(get, path = "/session", tag = "account",
    responses((status = 200, body = SessionView),
        (status = 401, description = "No session (a bearer token has none)", body = ErrorBody)))]
pub async fn current(State(s): State<ApiState>, c: Caller) -> Result<Response, ApiError> {
    let (Some(info), Actor::User(user)) = (&c.session, &c.actor) else { return Err(no_session()) };
    let mut response = Json(session_view(user, info, &s)).into_response();
    no_store(&mut response);
    Ok(response)
}

/// `DELETE /api/v1/session`: signs out; the session ends on the server, and the cookie is cleared.
#[utoipa::path(delete, path = "/session", tag = "account",
    responses((status = 204, description = "Signed out"),
        (status = 401, description = "No session (a bearer token has none)", body = ErrorBody),
        (status = 403, description = "Without the CSRF token or the Origin", body = ErrorBody)))]
pub async fn sign_out(State(s): State<ApiState>, c: Caller) -> Result<Response, ApiError> {
    let Some(info) = &c.session else { return Err(no_session()) };
    s.store.remove_session(info.id).await?;
    access::audit(&s.store, &s.config(), &c.actor, &c.origin, "session.sign_out", None, None).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie(info.https, "", true));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn the_origin_must_name_the_host_the_request_was_sent_to() {
        let ours = Some("127.0.0.1:9185");
        let same = headers(&[(header::ORIGIN, "http://127.0.0.1:9185")]);
        assert!(check_origin(&same, ours, true).is_ok());
        let proxied = headers(&[(header::ORIGIN, "https://exports.example.com")]);
        assert!(check_origin(&proxied, Some("exports.example.com"), true).is_ok(), "a TLS proxy on 443 in front");
        let referer = headers(&[(header::REFERER, "http://127.0.0.1:9185/exports/a")]);
        assert!(check_origin(&referer, ours, true).is_ok());
        for bad in [
            headers(&[(header::ORIGIN, "http://evil.example")]),
            headers(&[(header::ORIGIN, "http://127.0.0.1:9186")]),
            headers(&[(header::ORIGIN, "null")]),
            headers(&[(header::REFERER, "http://evil.example/127.0.0.1:9185")]),
        ] {
            assert_eq!(check_origin(&bad, ours, false).unwrap_err().status, StatusCode::FORBIDDEN, "{bad:?}");
        }
        let unknown_host = headers(&[(header::ORIGIN, "http://127.0.0.1:9185")]);
        assert!(check_origin(&unknown_host, None, true).is_err(), "without a host nothing matches");
        let neither = HeaderMap::new();
        assert!(check_origin(&neither, ours, true).is_err(), "a change with the cookie must say where it is from");
        assert!(check_origin(&neither, ours, false).is_ok(), "a sign-in from curl says nothing");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[(header::COOKIE, "a=1; segment_exporter_session=abc; b=2")]);
        assert_eq!(session_cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(session_cookie(&h, TLS_COOKIE), None);
        assert_eq!(session_cookie(&headers(&[(header::COOKIE, "segment_exporter_session=")]), COOKIE), None);
    }
}
