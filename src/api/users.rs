//! `/api/v1/users`: the accounts, for administrators (the web console's Users screen). Every change goes through
//! `crate::access::accounts`, as the CLI's `user` commands do; a new or rotated token is in the answer once. An
//! account's web console sessions (`/users/{name}/sessions`) are also its own to see and end.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::handlers::{body, created, ok, ops_caller};
use super::views::{ErrorBody, NewToken, PasswordSet, SessionListingView, SessionsEnded, UserRemoved, UserView};
use super::{ApiError, ApiState};
use crate::access::{self, accounts};
use crate::store::Role;

type ApiResult = Result<Response, ApiError>;

fn role(text: &str) -> Result<Role, ApiError> {
    match text {
        "admin" => Ok(Role::Admin),
        "contributor" => Ok(Role::Contributor),
        other => Err(ApiError::invalid(format!("role '{other}' is neither 'admin' nor 'contributor'"))),
    }
}

/// Every account (administrators only).
#[utoipa::path(get, path = "/users", tag = "accounts",
    responses((status = 200, body = Vec<UserView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn users(State(s): State<ApiState>, c: Caller) -> ApiResult {
    access::manage_users(&c.actor).check("accounts")?;
    ok(s.store.users().await?.iter().map(UserView::new).collect::<Vec<_>>())
}

#[utoipa::path(get, path = "/users/{name}", tag = "accounts", params(("name" = String, Path)),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn user(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    access::manage_users(&c.actor).check("accounts")?;
    ok(UserView::new(&s.store.user(&name).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    /// `admin` or `contributor`.
    role: String,
}

/// Adds an account; its API token is in the answer, once.
#[utoipa::path(post, path = "/users", tag = "accounts", request_body = NewUser,
    responses((status = 201, body = NewToken), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "An account of that name exists", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn add_user(State(s): State<ApiState>, c: Caller, b: Result<Json<NewUser>, JsonRejection>) -> ApiResult {
    // Who may comes before what is wrong with the body: a contributor learns nothing from a validation message.
    access::manage_users(&c.actor).check("accounts")?;
    let b = body(b)?;
    let role = role(&b.role)?;
    let (user, token) = accounts::add_user(&s.store, &s.config(), &ops_caller(&c), b.name.trim(), role).await?;
    created(NewToken { user: UserView::new(&user), token: token.expose_secret().to_string() })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    /// `admin` or `contributor`.
    role: String,
}

/// Changes an account's role. The last administrator stays one (409).
#[utoipa::path(patch, path = "/users/{name}", tag = "accounts", params(("name" = String, Path)),
    request_body = UserChange,
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn change_user(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Json<UserChange>, JsonRejection>,
) -> ApiResult {
    access::manage_users(&c.actor).check("accounts")?;
    let b = body(b)?;
    let (_, user) = accounts::set_role(&s.store, &s.config(), &ops_caller(&c), &name, role(&b.role)?).await?;
    ok(UserView::new(&user))
}

/// Removes an account: its token and sessions stop at once. The last administrator stays (409).
#[utoipa::path(delete, path = "/users/{name}", tag = "accounts", params(("name" = String, Path)),
    responses((status = 200, body = UserRemoved), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_user(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let user = accounts::remove_user(&s.store, &s.config(), &ops_caller(&c), &name).await?;
    ok(UserRemoved { removed: user.name })
}

/// A new API token for the account, once; the old one stops at once.
#[utoipa::path(post, path = "/users/{name}/token", tag = "accounts", params(("name" = String, Path)),
    responses((status = 200, body = NewToken), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn rotate_token(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let (user, token) = accounts::rotate_token(&s.store, &s.config(), &ops_caller(&c), &name).await?;
    ok(NewToken { user: UserView::new(&user), token: token.expose_secret().to_string() })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    /// At least 12 characters.
    #[schema(value_type = String, format = Password)]
    password: SecretString,
}

/// Sets the password the account signs in to the web console with; its sessions end.
#[utoipa::path(post, path = "/users/{name}/password", tag = "accounts", params(("name" = String, Path)),
    request_body = NewPassword,
    responses((status = 200, body = PasswordSet), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_password(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Json<NewPassword>, JsonRejection>,
) -> ApiResult {
    access::manage_users(&c.actor).check("accounts")?;
    // serde's message may quote the value, and the value is a password: say what is expected instead.
    let Ok(Json(b)) = b else {
        return Err(ApiError::invalid("the body must be JSON {\"password\": PASSWORD}"));
    };
    let user = accounts::set_password(&s.store, &s.config(), &ops_caller(&c), &name, b.password).await?;
    ok(PasswordSet { user: user.name, password_set: true })
}

/// The account's web console sessions that have not ended, newest first: administrators see anyone's, every account
/// its own ("does not exist" for another's).
#[utoipa::path(get, path = "/users/{name}/sessions", tag = "accounts", params(("name" = String, Path)),
    responses((status = 200, body = Vec<SessionListingView>), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn sessions(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let listed = accounts::sessions(&s.store, &s.config(), &ops_caller(&c), &name).await?;
    let current = c.session.as_ref().map(|info| info.id);
    let views: Vec<SessionListingView> = listed
        .into_iter()
        .map(|l| SessionListingView {
            current: current == Some(l.id),
            id: l.id,
            signed_in_at: l.created_at,
            last_seen_at: l.last_seen_at,
            expires_at: l.expires_at,
            origin: l.origin,
        })
        .collect();
    ok(views)
}

/// Signs the account out everywhere: every one of its sessions ends (its API token is not touched).
#[utoipa::path(delete, path = "/users/{name}/sessions", tag = "accounts", params(("name" = String, Path)),
    responses((status = 200, body = SessionsEnded), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn end_sessions(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let ended = accounts::end_sessions(&s.store, &s.config(), &ops_caller(&c), &name, None).await?;
    ok(SessionsEnded { user: name, ended })
}

/// Ends one session of the account (a browser left signed in elsewhere).
#[utoipa::path(delete, path = "/users/{name}/sessions/{id}", tag = "accounts",
    params(("name" = String, Path), ("id" = i64, Path)),
    responses((status = 200, body = SessionsEnded), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn end_session(State(s): State<ApiState>, c: Caller, Path((name, id)): Path<(String, i64)>) -> ApiResult {
    let ended = accounts::end_sessions(&s.store, &s.config(), &ops_caller(&c), &name, Some(id)).await?;
    ok(SessionsEnded { user: name, ended })
}
