//! One handler per route: authenticate (`Caller`), ask `crate::access`, call the library, answer one of the types
//! of `views`. Each carries its `#[utoipa::path]`, from which the OpenAPI document is generated.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::views::*;
use super::{ApiError, ApiState};
use crate::access::ops::{self, ExportRequest};
use crate::access::{self, ExportFacts, Verdict};
use crate::queue::Answer;
use crate::store::WaitingFor;
use crate::store::{Connection, Export, OnLeave};

pub(super) type ApiResult = Result<Response, ApiError>;

pub(super) fn ok<T: Serialize>(value: T) -> ApiResult {
    Ok(Json(value).into_response())
}

pub(super) fn created<T: Serialize>(value: T) -> ApiResult {
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

pub(super) fn ops_caller(c: &Caller) -> ops::Caller<'_> {
    ops::Caller { actor: &c.actor, origin: &c.origin }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see the README's \"The HTTP API\" section")
}

/// The caller's name and role. While no account exists no token is valid, so every route answers 401 until the
/// first `user add`.
#[utoipa::path(get, path = "/me", tag = "account",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(c: Caller) -> ApiResult {
    let role = if c.actor.is_admin() { "admin" } else { "contributor" };
    ok(Me { name: c.actor.name().to_string(), role: role.to_string() })
}

async fn connection_view(s: &ApiState, c: &Caller, conn: &Connection) -> Result<ConnectionView, ApiError> {
    let (export_user, _) = s.store.connection_export_user(conn.id).await?;
    let admin = if access::see_connection_key(&c.actor) == Verdict::Allow {
        Some(ConnectionAdminFacts {
            export_user_problem: access::connection_export_user_problem(&s.store, conn).await?,
        })
    } else {
        None
    };
    Ok(ConnectionView::new(conn, export_user, admin))
}

/// The connections the caller may see: all for administrators, those usable by contributors for contributors.
#[utoipa::path(get, path = "/connections", tag = "connections",
    responses((status = 200, body = Vec<ConnectionView>), (status = 401, body = ErrorBody)))]
pub async fn connections(State(s): State<ApiState>, c: Caller) -> ApiResult {
    let mut out = Vec::new();
    for conn in s.store.connections().await? {
        if access::see_connection(&c.actor, &conn.usable_by) == Verdict::Allow {
            out.push(connection_view(&s, &c, &conn).await?);
        }
    }
    ok(out)
}

#[utoipa::path(get, path = "/connections/{name}", tag = "connections", params(("name" = String, Path)),
    responses((status = 200, body = ConnectionView), (status = 401, body = ErrorBody),
        (status = 404, description = "No such connection, or one the caller may not see", body = ErrorBody)))]
pub async fn connection(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let conn = s.store.connection(&name).await?;
    access::see_connection(&c.actor, &conn.usable_by).check(&format!("connection '{name}'"))?;
    ok(connection_view(&s, &c, &conn).await?)
}

/// A new connection (the "Connect" step, saved).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionBody {
    name: String,
    /// Checked with Iterable, then stored encrypted; never shown again.
    #[schema(value_type = String)]
    api_key: secrecy::SecretString,
    /// `us` (default) or `eu`.
    #[serde(default)]
    region: Option<String>,
    /// Overrides `region` (a proxy, the sandbox).
    #[serde(default)]
    base_url: Option<String>,
    /// `admins` (default) or `contributors`.
    #[serde(default = "admins")]
    usable_by: String,
    /// Must be true: consent that profiles leave this system for Iterable (recorded with your name and the time).
    #[serde(default)]
    accept_data_privacy: bool,
    /// Become its export user (default true).
    #[serde(default = "yes")]
    add_me_as_export_user: bool,
    #[serde(default)]
    skip_verify: bool,
    /// `email`, `userid` or `hybrid` (default, as for the CLI).
    #[serde(default)]
    project_type: Option<String>,
}

fn admins() -> String {
    "admins".into()
}

fn yes() -> bool {
    true
}

#[utoipa::path(post, path = "/connections", tag = "connections", request_body = ConnectionBody,
    responses((status = 201, body = ConnectionView), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 409, description = "A connection of that name exists", body = ErrorBody),
        (status = 422, description = "Invalid input, or Iterable refused the key", body = ErrorBody)))]
pub async fn create_connection(
    State(s): State<ApiState>,
    c: Caller,
    b: Result<Json<ConnectionBody>, JsonRejection>,
) -> ApiResult {
    access::add_connection(&c.actor).check("connections")?;
    let b = body(b)?;
    let region = region(b.region.as_deref())?;
    let request = ops::ConnectionRequest {
        name: b.name,
        key_source: crate::store::KeySource::Stored { ciphertext: vec![], nonce: vec![] },
        key: b.api_key,
        region,
        base_url: b.base_url,
        usable_by: b.usable_by,
        accept_data_privacy: b.accept_data_privacy,
        add_me_as_export_user: b.add_me_as_export_user,
        verify: !b.skip_verify,
        project_type: choice("project_type", b.project_type.as_deref(), crate::store::ProjectType::Hybrid)?,
    };
    let conn = ops::add_connection(&s.store, &s.config(), &ops_caller(&c), request).await?;
    created(connection_view(&s, &c, &conn).await?)
}

/// A change to a connection; what is left out stays as it is.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPatch {
    /// `admins` or `contributors`.
    #[serde(default)]
    usable_by: Option<String>,
    /// A new key: checked with Iterable first (unless skip_verify), then stored encrypted in place of the old one.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    api_key: Option<secrecy::SecretString>,
    /// `us` or `eu`.
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    /// `email`, `userid` or `hybrid`.
    #[serde(default)]
    project_type: Option<String>,
    #[serde(default)]
    skip_verify: bool,
}

#[utoipa::path(patch, path = "/connections/{name}", tag = "connections", params(("name" = String, Path)),
    request_body = ConnectionPatch,
    responses((status = 200, body = ConnectionView), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "Invalid input, or Iterable refused the key", body = ErrorBody)))]
pub async fn edit_connection(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Json<ConnectionPatch>, JsonRejection>,
) -> ApiResult {
    // Refuse (404/403) before saying anything about the body.
    let conn = s.store.connection(&name).await?;
    access::manage_connection(&c.actor, &conn.usable_by).check(&format!("connection '{name}'"))?;
    let b = body(b)?;
    let change = ops::ConnectionEdit {
        usable_by: b.usable_by,
        key: b.api_key,
        region: b.region.as_deref().map(|r| region(Some(r))).transpose()?,
        base_url: b.base_url,
        project_type: match b.project_type.as_deref() {
            None => None,
            Some(t) => Some(choice("project_type", Some(t), crate::store::ProjectType::Hybrid)?),
        },
        verify: !b.skip_verify,
    };
    let conn = ops::edit_connection(&s.store, &s.config(), &ops_caller(&c), &name, change).await?;
    ok(connection_view(&s, &c, &conn).await?)
}

/// Checks a key, saving nothing.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    #[schema(value_type = String)]
    api_key: secrecy::SecretString,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
}

fn region(name: Option<&str>) -> Result<crate::iterable::Region, ApiError> {
    match name {
        None | Some("us") => Ok(crate::iterable::Region::Us),
        Some("eu") => Ok(crate::iterable::Region::Eu),
        Some(other) => Err(ApiError::invalid(format!("region '{other}' is neither 'us' nor 'eu'"))),
    }
}

/// The "Connect" step alone: what Iterable says of a key, saving nothing.
#[utoipa::path(post, path = "/connections/check", tag = "connections", request_body = CheckBody,
    responses((status = 200, body = KeyCheck), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn check_connection(
    State(s): State<ApiState>,
    c: Caller,
    b: Result<Json<CheckBody>, JsonRejection>,
) -> ApiResult {
    access::add_connection(&c.actor).check("connections")?;
    let b = body(b)?;
    let base_url = ops::base_url(region(b.region.as_deref())?, b.base_url.as_deref())?;
    let check = match ops::check_key(&s.config(), &base_url, &b.api_key).await? {
        Ok(lists) => KeyCheck { ok: true, base_url, lists: Some(lists), bad_key: None, error: None },
        Err(e) => {
            KeyCheck { ok: false, base_url, lists: None, bad_key: Some(e.is_bad_api_key()), error: Some(e.to_string()) }
        }
    };
    ok(check)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveConnectionQuery {
    /// What becomes of the exports that use it: `detach` (kept, disabled) or `remove`. Without it, a connection
    /// that exports use is not removed (409).
    exports: Option<String>,
}

/// An admin may remove a destination at any time: runs in flight on it are cancelled first.
#[utoipa::path(delete, path = "/connections/{name}", tag = "connections",
    params(("name" = String, Path), RemoveConnectionQuery),
    responses((status = 200, body = ConnectionRemoved), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Exports use it: say ?exports=detach or ?exports=remove", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn remove_connection(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    Query(q): Query<RemoveConnectionQuery>,
) -> ApiResult {
    let (detach, remove) = match q.exports.as_deref() {
        None => (false, false),
        Some("detach") => (true, false),
        Some("remove") => (false, true),
        Some(other) => return Err(ApiError::invalid(format!("exports '{other}' is neither 'detach' nor 'remove'"))),
    };
    let affected = ops::remove_connection(&s.store, &s.config(), &ops_caller(&c), &name, detach, remove, true)
        .await
        .map_err(|e| match e {
            ops::OpError::Store(crate::store::StoreError::Conflict(_)) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("connection '{name}' is used by exports; ask again with ?exports=detach or ?exports=remove"),
            ),
            e => e.into(),
        })?;
    ok(ConnectionRemoved { removed: name, exports: affected, exports_removed: remove })
}

/// The caller (an administrator) becomes the connection's export user: its scheduled runs go on their behalf.
#[utoipa::path(post, path = "/connections/{name}/export-user", tag = "connections", params(("name" = String, Path)),
    responses((status = 200, body = ExportUserView), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn become_export_user(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    ops::become_connection_export_user(&s.store, &s.config(), &ops_caller(&c), &name).await?;
    ok(ExportUserView { connection: name, export_user: Some(c.actor.name().to_string()) })
}

/// The caller stops being the connection's export user; its scheduled runs refuse until an administrator adds
/// themselves.
#[utoipa::path(delete, path = "/connections/{name}/export-user", tag = "connections", params(("name" = String, Path)),
    responses((status = 200, body = ExportUserView), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The caller is not its export user", body = ErrorBody)))]
pub async fn leave_export_user(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    ops::leave_connection_export_user(&s.store, &s.config(), &ops_caller(&c), &name).await?;
    ok(ExportUserView { connection: name, export_user: None })
}

/// An export the caller may see, with its facts; 404 otherwise.
pub(crate) async fn visible_export(s: &ApiState, c: &Caller, name: &str) -> Result<(Export, ExportFacts), ApiError> {
    let export = s.store.export(name).await?;
    let facts = ExportFacts::load(&s.store, &export).await?;
    access::see_export(&c.actor, &facts).check(&format!("export '{name}'"))?;
    Ok((export, facts))
}

async fn export_view(s: &ApiState, c: &Caller, export: &Export) -> Result<ExportView, ApiError> {
    let users: Vec<String> = s.store.export_users(export.id).await?.into_iter().map(|u| u.name).collect();
    let last = s.store.last_run(export.id).await?;
    let mut view = ExportView::new(export, users, last.as_ref());
    view.next_run = crate::schedule::next_run(export, &s.config().daemon);
    view.running_run_id = match s.queue.live().of_export(export.id).and_then(|p| p.run_id()) {
        Some(id) => Some(id),
        None => s.store.lease_holder(export.id).await?.and_then(|lease| lease.run_id),
    };
    for sub in s.store.subscriptions(export.id).await? {
        let channel = s.store.channel_by_id(sub.channel_id).await?;
        if access::use_channel(&c.actor, &channel) == Verdict::Allow {
            view.notify.push(super::views::SubscriptionView { channel: sub.channel, events: sub.events });
        }
    }
    Ok(view)
}

/// The exports the caller may see: all for administrators, those it is an export user of for contributors.
#[utoipa::path(get, path = "/exports", tag = "exports",
    responses((status = 200, body = Vec<ExportView>), (status = 401, body = ErrorBody)))]
pub async fn exports(State(s): State<ApiState>, c: Caller) -> ApiResult {
    let mut out = Vec::new();
    for export in s.store.exports().await? {
        let facts = ExportFacts::load(&s.store, &export).await?;
        if access::see_export(&c.actor, &facts) == Verdict::Allow {
            out.push(export_view(&s, &c, &export).await?);
        }
    }
    ok(out)
}

#[utoipa::path(get, path = "/exports/{name}", tag = "exports", params(("name" = String, Path)),
    responses((status = 200, body = ExportView), (status = 401, body = ErrorBody),
        (status = 404, description = "No such export, or one the caller is not an export user of", body = ErrorBody)))]
pub async fn export(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let (export, _) = visible_export(&s, &c, &name).await?;
    ok(export_view(&s, &c, &export).await?)
}

/// A new export. Saving it does not run it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    name: String,
    connection: String,
    /// Each segment goes to the Iterable list of its name.
    segments: Vec<String>,
    /// The column holding the email address; optional in userID-based projects, where the user id identifies
    /// members.
    #[serde(default)]
    email_field: Option<String>,
    /// The user id column (userID-based and hybrid projects).
    #[serde(default)]
    user_id_field: Option<String>,
    /// COLUMN, COLUMN=ITERABLE_FIELD, either with :TYPE (string, long, double, boolean, date).
    #[serde(default)]
    fields: Vec<String>,
    /// `remove` (default) or `keep`.
    #[serde(default)]
    on_leave: Option<String>,
    /// `refresh` (default), `off` or a cron expression with seconds.
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    skip_check: bool,
    /// `clear` (default) or `skip`.
    #[serde(default)]
    null_fields: Option<String>,
    #[serde(default)]
    existing_users_only: bool,
    /// Channels to tell, as CHANNEL or CHANNEL:EVENT,EVENT (default events: failed,guard,recovered,key).
    #[serde(default)]
    notify: Vec<String>,
}

/// A value of one of the CLI's value enums, given as text in JSON.
fn choice<T: clap::ValueEnum>(field: &str, text: Option<&str>, default: T) -> Result<T, ApiError> {
    match text {
        None => Ok(default),
        Some(t) => T::from_str(t, true).map_err(|_| {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|p| p.get_name().to_string())
                .collect();
            ApiError::invalid(format!("{field} '{t}' is not one of {}", names.join(", ")))
        }),
    }
}

fn optional_choice<T: clap::ValueEnum + Copy>(field: &str, text: Option<&str>) -> Result<Option<T>, ApiError> {
    text.map(|t| {
        let first = *T::value_variants().first().expect("a value enum has values");
        choice(field, Some(t), first)
    })
    .transpose()
}

pub(super) fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(),
        _ => ApiError::invalid(format!("the request body is not what was expected: {}", e.body_text())),
    })
}

/// A body that may be left out: its default then.
fn optional_body<T: Default>(b: Result<Option<Json<T>>, JsonRejection>) -> Result<T, ApiError> {
    body(b.map(|b| Json(b.map(|Json(v)| v).unwrap_or_default())))
}

fn on_leave(text: Option<&str>) -> Result<OnLeave, ApiError> {
    match text {
        None | Some("remove") => Ok(OnLeave::Remove),
        Some("keep") => Ok(OnLeave::Keep),
        Some(other) => Err(ApiError::invalid(format!("on_leave '{other}' is not 'remove' or 'keep'"))),
    }
}

#[utoipa::path(post, path = "/exports", tag = "exports", request_body = ExportBody,
    responses((status = 201, body = ExportView), (status = 401, body = ErrorBody),
        (status = 404, description = "No such connection or segment, or a connection the caller may not use",
            body = ErrorBody),
        (status = 409, description = "An export of that name exists, or a list is another export's",
            body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create_export(
    State(s): State<ApiState>,
    c: Caller,
    b: Result<Json<ExportBody>, JsonRejection>,
) -> ApiResult {
    let b = body(b)?;
    let on_leave = on_leave(b.on_leave.as_deref())?;
    if b.segments.is_empty() {
        return Err(ApiError::invalid("segments is empty; name at least one segment to send"));
    }
    let request = ExportRequest {
        name: b.name,
        connection: b.connection,
        segments: b.segments,
        email_field: b.email_field,
        user_id_field: b.user_id_field,
        fields: b.fields,
        on_leave,
        schedule: b.schedule.unwrap_or_else(|| "refresh".into()),
        skip_check: b.skip_check,
        null_fields: choice("null_fields", b.null_fields.as_deref(), crate::store::NullFields::Clear)?,
        existing_users_only: b.existing_users_only,
        notify: b.notify,
    };
    let export = ops::create_export(&s.store, &s.config(), &ops_caller(&c), &request).await?;
    created(export_view(&s, &c, &export).await?)
}

/// A change to an export, as `export edit` makes it; what is left out stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportPatch {
    /// Segments to send too.
    #[serde(default)]
    add_segments: Vec<String>,
    /// Segments to stop sending; their lists stay in Iterable unless empty_removed_lists.
    #[serde(default)]
    remove_segments: Vec<String>,
    #[serde(default)]
    empty_removed_lists: bool,
    /// COLUMN, COLUMN=ITERABLE_FIELD, either with :TYPE.
    #[serde(default)]
    add_fields: Vec<String>,
    /// Columns to stop sending.
    #[serde(default)]
    remove_fields: Vec<String>,
    /// The email column (\"\" for none, where a user id identifies members). Refused where it would change who
    /// members are once some are on the lists (409).
    #[serde(default)]
    email_field: Option<String>,
    /// The user id column (\"\" for none), with the same refusal.
    #[serde(default)]
    user_id_field: Option<String>,
    /// Do not create users the project does not know yet (hybrid and userID-based projects).
    #[serde(default)]
    existing_users_only: Option<bool>,
    #[serde(default)]
    schedule: Option<String>,
    /// `remove` or `keep`.
    #[serde(default)]
    on_leave: Option<String>,
    /// `clear` or `skip`.
    #[serde(default)]
    null_fields: Option<String>,
    #[serde(default)]
    skip_check: bool,
    /// Stop a run in flight first; without it a running export is not changed (409).
    #[serde(default)]
    cancel_run: bool,
    /// Channels to tell, as CHANNEL or CHANNEL:EVENT,EVENT (events: failed, guard, recovered, rejected, key, list,
    /// drift; default failed,guard,recovered,key). A channel told already gets these events instead.
    #[serde(default)]
    notify: Vec<String>,
    /// Channels to stop telling.
    #[serde(default)]
    no_notify: Vec<String>,
}

#[utoipa::path(patch, path = "/exports/{name}", tag = "exports", params(("name" = String, Path)),
    request_body = ExportPatch,
    responses((status = 200, body = ExportEdited), (status = 401, body = ErrorBody),
        (status = 404, description = "No such export, or one the caller is not an export user of", body = ErrorBody),
        (status = 409, description = "It is running (ask again with cancel_run)", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn edit_export(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Json<ExportPatch>, JsonRejection>,
) -> ApiResult {
    // Refuse (404) before saying anything about the body.
    visible_export(&s, &c, &name).await?;
    let b = body(b)?;
    let change = ops::ExportEdit {
        add_segments: b.add_segments,
        remove_segments: b.remove_segments,
        empty_removed_lists: b.empty_removed_lists,
        add_fields: b.add_fields,
        remove_fields: b.remove_fields,
        email_field: b.email_field,
        user_id_field: b.user_id_field,
        existing_users_only: b.existing_users_only,
        schedule: b.schedule,
        on_leave: b.on_leave.as_deref().map(|t| on_leave(Some(t))).transpose()?,
        null_fields: optional_choice("null_fields", b.null_fields.as_deref())?,
        skip_check: b.skip_check,
        cancel_run: b.cancel_run,
        notify: b.notify,
        no_notify: b.no_notify,
    };
    let (export, emptied) = ops::edit_export(&s.store, &s.config(), &ops_caller(&c), &name, &change).await?;
    ok(ExportEdited { export: export_view(&s, &c, &export).await?, emptied: emptied_views(emptied) })
}

fn emptied_views(emptied: Vec<crate::sync::empty::Emptied>) -> Vec<EmptiedView> {
    emptied
        .into_iter()
        .map(|e| EmptiedView { list_name: e.list_name, list_id: e.list_id, unsubscribed: e.unsubscribed })
        .collect()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// First unsubscribe from its lists the members it put there.
    #[serde(default)]
    empty_lists: bool,
    /// Stop a run in flight first; without it a running export is not removed (409).
    #[serde(default)]
    cancel_run: bool,
}

#[utoipa::path(delete, path = "/exports/{name}", tag = "exports", params(("name" = String, Path), RemoveQuery),
    responses((status = 200, body = ExportRemoved), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "It is running (ask again with cancel_run)", body = ErrorBody)))]
pub async fn remove_export(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult {
    let emptied =
        ops::remove_export(&s.store, &s.config(), &ops_caller(&c), &name, q.empty_lists, q.cancel_run).await?;
    ok(ExportRemoved { removed: name, emptied: emptied_views(emptied) })
}

/// Its export users.
#[utoipa::path(get, path = "/exports/{name}/users", tag = "exports", params(("name" = String, Path)),
    responses((status = 200, body = Vec<String>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn export_users(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let (export, _) = visible_export(&s, &c, &name).await?;
    let users: Vec<String> = s.store.export_users(export.id).await?.into_iter().map(|u| u.name).collect();
    ok(users)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    /// The account to make an export user.
    user: String,
}

#[utoipa::path(post, path = "/exports/{name}/users", tag = "exports", params(("name" = String, Path)),
    request_body = UserBody,
    responses((status = 200, description = "Its export users now", body = Vec<String>),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn add_export_user(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Json<UserBody>, JsonRejection>,
) -> ApiResult {
    let b = body(b)?;
    let users = ops::change_export_users(&s.store, &s.config(), &ops_caller(&c), &name, &[b.user], &[]).await?;
    ok(users.into_iter().map(|u| u.name).collect::<Vec<_>>())
}

#[utoipa::path(delete, path = "/exports/{name}/users/{user}", tag = "exports",
    params(("name" = String, Path), ("user" = String, Path)),
    responses((status = 200, description = "Its export users now", body = Vec<String>),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn remove_export_user(
    State(s): State<ApiState>,
    c: Caller,
    Path((name, user)): Path<(String, String)>,
) -> ApiResult {
    let users = ops::change_export_users(&s.store, &s.config(), &ops_caller(&c), &name, &[], &[user]).await?;
    ok(users.into_iter().map(|u| u.name).collect::<Vec<_>>())
}

/// How long a run request waits at most for its run to get an id (its row, written before anything is read or
/// sent) before answering with the state alone. A run that ends without one (it could not start) ends the wait.
const RUN_ID_WAIT: Duration = Duration::from_secs(30);
/// How long a run request waits at most for a daemon to take it or say why it waits.
const DECIDE_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    /// Compute the plan and answer it (200); change nothing.
    #[serde(default)]
    dry_run: bool,
    /// Re-send every current member.
    #[serde(default)]
    full: bool,
    /// Let the run unsubscribe more than sync.mass_removal_share of a list (after the guard stopped one).
    #[serde(default)]
    allow_mass_removal: bool,
    /// Let the run put more new members on a list than sync.mass_addition_share times those on it (after the
    /// guard stopped one).
    #[serde(default)]
    allow_mass_addition: bool,
}

/// Runs an export on demand through the daemon's queue (one run per export, one follow-up).
#[utoipa::path(post, path = "/exports/{name}/runs", tag = "runs", params(("name" = String, Path)),
    request_body(content = Option<RunBody>, description = "Optional"),
    responses((status = 202, body = RunAccepted),
        (status = 200, description = "With dry_run: the plan, per list (nothing changed)", body = PlanView),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The connection is no longer open to contributors", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn run_export(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Option<Json<RunBody>>, JsonRejection>,
) -> ApiResult {
    let (export, facts) = visible_export(&s, &c, &name).await?;
    access::run_export(&c.actor, &facts).check(&format!("export '{name}'"))?;
    let b = optional_body(b)?;
    let flags: Vec<&str> = [
        (b.dry_run, "dry run"),
        (b.full, "full"),
        (b.allow_mass_removal, "allow mass removal"),
        (b.allow_mass_addition, "allow mass addition"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    let detail = (!flags.is_empty()).then(|| flags.join(", "));
    let action = if b.dry_run { "export.run.dry" } else { "export.run" };
    access::audit(&s.store, &s.config(), &c.actor, &c.origin, action, Some(&name), detail).await?;
    if b.dry_run {
        // A plan changes nothing and takes no lock: it runs here, not through the queue.
        let engine = crate::sync::Engine::new(s.store.clone(), s.config());
        let opts = crate::sync::RunOptions {
            trigger: "api".into(),
            dry_run: true,
            full: b.full,
            allow_mass_removal: b.allow_mass_removal,
            allow_mass_addition: b.allow_mass_addition,
            ..Default::default()
        };
        let progress = std::sync::Arc::new(crate::sync::Progress::default());
        let planned = engine.run_export(&name, &opts, progress, tokio_util::sync::CancellationToken::new()).await;
        let mut plan = match planned {
            Ok(report) => PlanView::new(report),
            Err(e) => PlanView {
                export: name.clone(),
                status: "failed".into(),
                error: Some(e.to_string()),
                stopped_by_guard: None,
                stopped_by_mass_removal_guard: false,
                lists: vec![],
            },
        };
        if let Some(error) = &plan.error {
            plan.error = Some(shown_error(&s, &c, export.id, error).await?);
        }
        return ok(plan);
    }
    let ask = crate::queue::Ask {
        export_id: export.id,
        trigger: crate::queue::Trigger::Api,
        requested_by: Some(c.actor.name()),
        full: b.full,
        allow_mass_removal: b.allow_mass_removal,
        allow_mass_addition: b.allow_mass_addition,
        verify: None,
    };
    queue_and_answer(&s, &c, export.id, name, &ask, "run").await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// Send the missing members again and correct the export's memory (also sends what the next run would).
    #[serde(default)]
    repair: bool,
    /// With `repair`: unsubscribe the lingering members too.
    #[serde(default)]
    remove_lingering: bool,
    /// With `repair`: let it unsubscribe more than sync.mass_removal_share of a list.
    #[serde(default)]
    allow_mass_removal: bool,
    /// With `repair`: let it put more new members on a list than sync.mass_addition_share times those on it.
    #[serde(default)]
    allow_mass_addition: bool,
}

/// Verifies an export's lists against Iterable (and repairs them on request) through the daemon's queue, like a
/// run: it waits for a run in flight. The result is a run of kind `verify` (`verify_repair`): `GET /runs/{id}`.
#[utoipa::path(post, path = "/exports/{name}/verify", tag = "runs", params(("name" = String, Path)),
    request_body(content = Option<VerifyBody>, description = "Optional"),
    responses((status = 202, body = RunAccepted),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The connection is no longer open to contributors", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn verify_export(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Option<Json<VerifyBody>>, JsonRejection>,
) -> ApiResult {
    let (export, facts) = visible_export(&s, &c, &name).await?;
    access::run_export(&c.actor, &facts).check(&format!("export '{name}'"))?;
    let b = optional_body(b)?;
    if (b.remove_lingering || b.allow_mass_removal) && !b.repair {
        return Err(ApiError::invalid(
            "remove_lingering and allow_mass_removal apply to a repair: add \"repair\": true",
        ));
    }
    let flags: Vec<&str> = [
        (b.repair, "repair"),
        (b.remove_lingering, "remove lingering"),
        (b.allow_mass_removal, "allow mass removal"),
        (b.allow_mass_addition, "allow mass addition"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    let detail = (!flags.is_empty()).then(|| flags.join(", "));
    access::audit(&s.store, &s.config(), &c.actor, &c.origin, "export.verify", Some(&name), detail).await?;
    let ask = crate::queue::Ask {
        export_id: export.id,
        trigger: crate::queue::Trigger::Api,
        requested_by: Some(c.actor.name()),
        full: false,
        allow_mass_removal: b.allow_mass_removal,
        allow_mass_addition: b.allow_mass_addition,
        verify: Some(crate::queue::VerifyAsk { repair: b.repair, remove_lingering: b.remove_lingering }),
    };
    queue_and_answer(&s, &c, export.id, name, &ask, "be verified").await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only this export's runs.
    export: Option<String>,
    /// At most this many (default 50, at most 500).
    limit: Option<u32>,
}

/// Runs, newest first, of the exports the caller may see.
#[utoipa::path(get, path = "/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = Vec<RunView>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn runs(State(s): State<ApiState>, c: Caller, Query(q): Query<RunsQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(50).min(500);
    if let Some(name) = &q.export {
        visible_export(&s, &c, name).await?;
    }
    let filter = crate::store::RunFilter {
        export: q.export.as_deref(),
        export_user: access::export_scope(&c.actor).export_user(),
        include_removed: false,
    };
    let mut out = Vec::new();
    for run in s.store.runs_matching(filter, limit).await? {
        out.push(run_view(&s, &c, &run).await?);
    }
    ok(out)
}

async fn run_view(s: &ApiState, c: &Caller, run: &crate::store::Run) -> Result<RunView, ApiError> {
    let mut v = RunView::new(run);
    if let Some(error) = &run.error {
        v.error = Some(shown_error(s, c, run.export_id, error).await?);
    }
    Ok(v)
}

/// Contributors never see a segment's source or the Iterable address (`access::wording`).
async fn shown_error(s: &ApiState, c: &Caller, export_id: i64, error: &str) -> Result<String, ApiError> {
    if c.actor.is_admin() {
        return Ok(error.to_string());
    }
    Ok(crate::access::wording::error_for_contributors(&s.store, export_id, error).await?)
}

async fn may_see_run(s: &ApiState, c: &Caller, export_id: i64) -> Result<bool, ApiError> {
    let export = s.store.export_by_id(export_id).await?;
    let facts = ExportFacts::load(&s.store, &export).await?;
    Ok(access::see_export(&c.actor, &facts) == Verdict::Allow)
}

/// One run with its live progress while it runs, and the members it did not send or Iterable refused.
#[utoipa::path(get, path = "/runs/{id}", tag = "runs", params(("id" = i64, Path)),
    responses((status = 200, body = RunView), (status = 401, body = ErrorBody),
        (status = 404, description = "No such run, or one of an export the caller may not see", body = ErrorBody)))]
pub async fn run(State(s): State<ApiState>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    let what = format!("run #{id}");
    // The live progress is taken before the row is read: a run that ends in between then shows its end (the engine
    // records it before it leaves the in-flight map), never "running" without progress.
    let progress = s.queue.live().of_run(id);
    let run = s.store.run(id).await.map_err(|_| ApiError::not_found(&what))?;
    // Seeing the run is seeing its export: export users and administrators only, so they alone get its members.
    if !c.actor.is_admin() && !may_see_run(&s, &c, run.export_id).await? {
        return Err(ApiError::not_found(&what));
    }
    let mut v = run_view(&s, &c, &run).await?;
    if run.status == crate::store::RunStatus::Running {
        v.progress = match progress {
            Some(p) => {
                let (done, planned, per_second, seconds_left) = p.snapshot();
                let (phase, list) = p.phase();
                let phase =
                    serde_json::to_value(phase).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                Some(ProgressView { phase, list, done, planned, per_second, seconds_left })
            }
            // On a store shared by several daemons, the run may go on another: its holder publishes its progress.
            None => s
                .store
                .lease_of_run(id)
                .await?
                .and_then(|lease| lease.progress)
                .and_then(|json| serde_json::from_str::<ProgressView>(&json).ok()),
        };
    }
    let issues = s.store.run_issues(id, 100).await?;
    v.rejected_and_invalid = Some(issues.into_iter().map(IssueView::from).collect());
    if run.kind != crate::store::RunKind::Run {
        v.verify = Some(s.store.run_verify(id).await?.iter().map(VerifyListView::new).collect());
    }
    ok(v)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many rows, newest first (default 100, at most 1000).
    limit: Option<u32>,
    /// Only this actor's rows.
    user: Option<String>,
}

/// The audit trail (administrators).
#[utoipa::path(get, path = "/audit", tag = "account", params(AuditQuery),
    responses((status = 200, body = Vec<AuditView>), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody)))]
pub async fn audit(State(s): State<ApiState>, c: Caller, Query(q): Query<AuditQuery>) -> ApiResult {
    access::read_audit(&c.actor).check("the audit trail")?;
    let rows = s.store.audit(q.user.as_deref(), q.limit.unwrap_or(100).min(1000)).await?;
    ok(rows.into_iter().map(AuditView::from).collect::<Vec<_>>())
}

/// Puts `ask` in the run queue and answers 202 with what became of it within the wait (started, with its run, or
/// waiting and why); a request that cannot start is 409, saying why as `c` may see it (`doing`: "run", ...).
async fn queue_and_answer(
    s: &ApiState,
    c: &Caller,
    export_id: i64,
    name: String,
    ask: &crate::queue::Ask<'_>,
    doing: &str,
) -> ApiResult {
    let request_id = s.queue.ask(ask).await?;
    let (state, run_id) = match s.queue.answer(request_id, DECIDE_WAIT, RUN_ID_WAIT).await? {
        Answer::Started { run_id } => (RunRequestState::Started, run_id),
        Answer::Waiting(WaitingFor::CurrentRun) => (RunRequestState::QueuedAfterCurrentRun, None),
        Answer::Waiting(WaitingFor::FreeSlot) => (RunRequestState::WaitingForAFreeSlot, None),
        Answer::Waiting(WaitingFor::AnotherProcess) => (RunRequestState::QueuedAfterAnotherProcess, None),
        Answer::Queued => (RunRequestState::Queued, None),
        Answer::NotStarted(why) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("export '{name}' cannot {doing} now: {}", shown_error(s, c, export_id, &why).await?),
            ))
        }
    };
    let accepted = RunAccepted { export: name, state, request_id, run_id };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}
