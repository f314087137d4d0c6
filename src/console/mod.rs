//! The web console: the product's screens in a browser, served by the daemon at `/` beside the API.
//!
//! Pages are rendered here as frames (`pages`): the navigation, the forms with their labels, the places the data
//! goes; a small script of our own (`assets/app.js`, in the binary) fills them from `/api/v1` and sends every
//! change through it, with the session cookie and its CSRF token. So the console holds no rule of its own: what a
//! user may see or do is what the API, through `crate::access`, lets them. The server checks only what decides
//! which frame to send: signed in or not (else the sign-in page), an administrator's page (else "not found", as
//! the API answers), an export the user may see. Nothing is loaded from anywhere but this service, which the
//! Content-Security-Policy of every page says to the browser too.

mod pages;

use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::access::{self, Actor, Verdict};
use crate::api::{ApiError, ApiState, Caller};

pub use pages::Page;

/// The console's routes (pages and their assets), merged into the listener's router by `crate::api::router`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/exports") }))
        .route("/sign-in", get(sign_in))
        .route("/exports", get(exports))
        .route("/exports/new", get(new_export))
        .route("/exports/{name}", get(export))
        .route("/connections", get(connections))
        .route("/connections/new", get(new_connection))
        .route("/connections/{name}", get(connection))
        .route("/users", get(users))
        .route("/notifications", get(notifications))
        .route("/audit", get(audit))
        .route("/account", get(account))
        .route("/assets/app.js", get(|| asset("text/javascript; charset=utf-8", include_str!("assets/app.js"))))
        .route("/assets/app.css", get(|| asset("text/css; charset=utf-8", include_str!("assets/app.css"))))
        .with_state(state)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary only; a day's cache spares the browser a request on every page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=86400"));
    r
}

/// What every page is sent with: nothing outside this service may be loaded or framed, and no page is cached
/// (they show what the signed-in user may see).
fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The signed-in caller, or the answer to send instead: the sign-in page (back here afterwards) when there is
/// no valid session, the error page for anything else (too many attempts, say).
fn signed_in(caller: Result<Caller, ApiError>, uri: &Uri) -> Result<Caller, Box<Response>> {
    caller.map_err(|e| {
        Box::new(if e.status == StatusCode::UNAUTHORIZED {
            let next = uri.path_and_query().map_or("/exports", |p| p.as_str());
            let to =
                format!("/sign-in?next={}", url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>());
            Redirect::to(&to).into_response()
        } else {
            secured((e.status, pages::message(None, "Something went wrong", &e.message)).into_response())
        })
    })
}

/// The page for what the caller may not see, worded as the API's 404: it does not say whether it exists.
fn not_found(c: &Caller, what: &str) -> Response {
    let text = format!("There is no {what} here, or it is not open to you. Ask an administrator if you need it.");
    secured((StatusCode::NOT_FOUND, pages::message(Some(c), "Not found", &text)).into_response())
}

fn page(c: &Caller, p: Page) -> Response {
    secured(pages::frame(c, p).into_response())
}

/// A page for those `allowed` lets in (administrators); others get the not-found page.
fn admin_page(caller: Result<Caller, ApiError>, uri: Uri, p: Page, allowed: fn(&Actor) -> Verdict) -> Response {
    match signed_in(caller, &uri) {
        Err(r) => *r,
        Ok(c) if allowed(&c.actor) == Verdict::Allow => page(&c, p),
        Ok(c) => not_found(&c, "such page"),
    }
}

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

async fn sign_in(
    State(s): State<ApiState>,
    caller: Result<Caller, ApiError>,
    Query(q): Query<Next>,
    parts: Parts,
) -> Response {
    let client = s.client(&parts);
    let origin = format!("{}://{}/", if client.https { "https" } else { "http" }, client.host.as_deref().unwrap_or(""));
    let next = q.next.and_then(|next| path_on_origin(&next, &origin)).unwrap_or_else(|| "/exports".into());
    if caller.is_ok() {
        return Redirect::to(&next).into_response();
    }
    secured(pages::sign_in(&next).into_response())
}

/// Where the browser goes after signing in: `next` as a path of this service (`/exports/x?y`), when a browser on
/// `origin` would read it as a place on that origin; None for anywhere else. It is read as browsers read a URL
/// (the WHATWG URL standard: tabs and newlines dropped, `\` as `/`, `.` and `..` resolved), not by its spelling,
/// and what is answered is that reading, so the browser cannot read it otherwise.
fn path_on_origin(next: &str, origin: &str) -> Option<String> {
    // A host that does not parse leaves no origin to compare with: only a path is then accepted.
    let base = url::Url::parse(origin).or_else(|_| url::Url::parse("http://host.invalid/")).ok()?;
    let target = base.join(next).ok()?;
    // A path that begins with `//` would be read as another host once it stands alone.
    if target.origin() != base.origin() || target.path().starts_with("//") {
        return None;
    }
    Some(target[url::Position::BeforePath..].to_string())
}

async fn account(caller: Result<Caller, ApiError>, uri: Uri) -> Response {
    signed_in(caller, &uri).map_or_else(|r| *r, |c| page(&c, Page::Account))
}

async fn exports(caller: Result<Caller, ApiError>, uri: Uri) -> Response {
    signed_in(caller, &uri).map_or_else(|r| *r, |c| page(&c, Page::Exports))
}

async fn new_export(caller: Result<Caller, ApiError>, uri: Uri) -> Response {
    signed_in(caller, &uri).map_or_else(|r| *r, |c| page(&c, Page::NewExport))
}

async fn export(
    State(s): State<ApiState>,
    caller: Result<Caller, ApiError>,
    uri: Uri,
    Path(name): Path<String>,
) -> Response {
    let c = match signed_in(caller, &uri) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if crate::api::visible_export(&s, &c, &name).await.is_ok() {
        page(&c, Page::Export(name))
    } else {
        not_found(&c, "such export")
    }
}

async fn connections(caller: Result<Caller, ApiError>, uri: Uri) -> Response {
    admin_page(caller, uri, Page::Connections, access::add_connection)
}

async fn new_connection(caller: Result<Caller, ApiError>, uri: Uri) -> Response {
    admin_page(caller, uri, Page::NewConnection, access::add_connection)
}

async fn connection(
    State(s): State<ApiState>,
    caller: Result<Caller, ApiError>,
    uri: Uri,
    Path(name): Path<String>,
) -> Response {
    let c = match signed_in(caller, &uri) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let exists = s.store.connection(&name).await.is_ok();
    if exists && access::see_connection_key(&c.actor) == Verdict::Allow {
        page(&c, Page::Connection(name))
    } else {
        not_found(&c, "such connection")
    }
}

async fn users(caller: Result<Caller, ApiError>, uri: Uri) -> Response {
    admin_page(caller, uri, Page::Users, access::manage_users)
}

async fn notifications(caller: Result<Caller, ApiError>, uri: Uri) -> Response {
    admin_page(caller, uri, Page::Notifications, access::manage_channels)
}

async fn audit(caller: Result<Caller, ApiError>, uri: Uri) -> Response {
    admin_page(caller, uri, Page::Audit, access::read_audit)
}
