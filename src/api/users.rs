//! `/api/v1/users`: the accounts, for administrators (the web console's Users screen). Every change goes through
//! `crate::access::accounts`, as the CLI's `user` commands do; a new or rotated token is in the answer once.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::handlers::{body, ops_caller};
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

pub async fn users(State(s): State<ApiState>, c: Caller) -> ApiResult {
    access::manage_users(&c.actor).check("accounts")?;
    Ok(Json(json!(s.store.users().await?)).into_response())
}

pub async fn user(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    access::manage_users(&c.actor).check("accounts")?;
    Ok(Json(json!(s.store.user(&name).await?)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    role: String,
}

pub async fn add_user(State(s): State<ApiState>, c: Caller, b: Result<Json<NewUser>, JsonRejection>) -> ApiResult {
    let b = body(b)?;
    let role = role(&b.role)?;
    let (user, token) = accounts::add_user(&s.store, &s.config, &ops_caller(&c), b.name.trim(), role).await?;
    let answer = json!({ "user": user, "token": token.expose_secret() });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    role: String,
}

pub async fn change_user(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Json<UserChange>, JsonRejection>,
) -> ApiResult {
    let b = body(b)?;
    let (_, user) = accounts::set_role(&s.store, &s.config, &ops_caller(&c), &name, role(&b.role)?).await?;
    Ok(Json(json!(user)).into_response())
}

pub async fn remove_user(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let user = accounts::remove_user(&s.store, &s.config, &ops_caller(&c), &name).await?;
    Ok(Json(json!({ "removed": user.name })).into_response())
}

pub async fn rotate_token(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let (user, token) = accounts::rotate_token(&s.store, &s.config, &ops_caller(&c), &name).await?;
    Ok(Json(json!({ "user": user, "token": token.expose_secret() })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    password: SecretString,
}

pub async fn set_password(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Json<NewPassword>, JsonRejection>,
) -> ApiResult {
    // serde's message may quote the value, and the value is a password: say what is expected instead.
    let Ok(Json(b)) = b else {
        return Err(ApiError::invalid("the body must be JSON {\"password\": PASSWORD}"));
    };
    let user = accounts::set_password(&s.store, &s.config, &ops_caller(&c), &name, b.password).await?;
    Ok(Json(json!({ "user": user.name, "password_set": true })).into_response())
}
