//! One handler per route: authenticate (`Caller`), ask `crate::access`, call the library, shape the JSON.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{ApiError, ApiState};
use crate::access::ops::{self, ExportRequest};
use crate::access::{self, ExportFacts, Verdict};
use crate::daemon::{Command, RunQueued};
use crate::store::{Connection, Export, OnLeave};

type ApiResult = Result<Response, ApiError>;

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

pub(super) fn ops_caller(c: &Caller) -> ops::Caller<'_> {
    ops::Caller { actor: &c.actor, origin: &c.origin }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see the README's \"Team use\" section")
}

/// While no account exists no token is valid, so every route answers 401 until the first `user add`.
pub async fn me(c: Caller) -> ApiResult {
    let role = if c.actor.is_admin() { "admin" } else { "contributor" };
    ok(json!({ "name": c.actor.name(), "role": role }))
}

async fn connection_view(s: &ApiState, c: &Caller, conn: &Connection) -> Result<Value, ApiError> {
    let (export_user, _) = s.store.connection_export_user(conn.id).await?;
    let mut v = json!({
        "name": conn.name,
        "base_url": conn.base_url,
        "region": conn.region,
        "project_type": conn.project_type,
        "usable_by": conn.usable_by,
        "privacy_accepted_at": conn.privacy_accepted_at,
        "privacy_accepted_by": conn.privacy_accepted_by,
        "verified_at": conn.verified_at,
        "export_user": export_user,
        "created_at": conn.created_at,
    });
    if access::see_connection_key(&c.actor) == Verdict::Allow {
        v["api_key"] = json!(conn.key.describe());
        v["api_key_last4"] = json!(conn.key_last4);
    }
    Ok(v)
}

pub async fn connections(State(s): State<ApiState>, c: Caller) -> ApiResult {
    let mut out = Vec::new();
    for conn in s.store.connections().await? {
        if access::see_connection(&c.actor, &conn.usable_by) == Verdict::Allow {
            out.push(connection_view(&s, &c, &conn).await?);
        }
    }
    ok(json!(out))
}

pub async fn connection(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let conn = s.store.connection(&name).await?;
    access::see_connection(&c.actor, &conn.usable_by).check(&format!("connection '{name}'"))?;
    ok(connection_view(&s, &c, &conn).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionBody {
    name: String,
    api_key: secrecy::SecretString,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default = "admins")]
    usable_by: String,
    #[serde(default)]
    accept_data_privacy: bool,
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
    let conn = ops::add_connection(&s.store, &s.config, &ops_caller(&c), request).await?;
    Ok((StatusCode::CREATED, Json(connection_view(&s, &c, &conn).await?)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
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
pub async fn check_connection(
    State(s): State<ApiState>,
    c: Caller,
    b: Result<Json<CheckBody>, JsonRejection>,
) -> ApiResult {
    access::add_connection(&c.actor).check("connections")?;
    let b = body(b)?;
    let base_url = ops::base_url(region(b.region.as_deref())?, b.base_url.as_deref())?;
    match ops::check_key(&s.config, &base_url, &b.api_key).await? {
        Ok(lists) => ok(json!({ "ok": true, "base_url": base_url, "lists": lists })),
        Err(e) => {
            ok(json!({ "ok": false, "base_url": base_url, "bad_key": e.is_bad_api_key(), "error": e.to_string() }))
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct RemoveConnectionQuery {
    exports: Option<String>,
}

/// An admin may remove a destination at any time: runs in flight on it are cancelled first.
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
    let affected = ops::remove_connection(&s.store, &s.config, &ops_caller(&c), &name, detach, remove, true)
        .await
        .map_err(|e| match e {
            ops::OpError::Store(crate::store::StoreError::Conflict(_)) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("connection '{name}' is used by exports; ask again with ?exports=detach or ?exports=remove"),
            ),
            e => e.into(),
        })?;
    ok(json!({ "removed": name, "exports": affected, "exports_removed": remove }))
}

pub async fn become_export_user(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    ops::become_connection_export_user(&s.store, &s.config, &ops_caller(&c), &name).await?;
    ok(json!({ "connection": name, "export_user": c.actor.name() }))
}

/// An export the caller may see, with its facts; 404 otherwise.
async fn visible_export(s: &ApiState, c: &Caller, name: &str) -> Result<(Export, ExportFacts), ApiError> {
    let export = s.store.export(name).await?;
    let facts = ExportFacts::load(&s.store, &export).await?;
    access::see_export(&c.actor, &facts).check(&format!("export '{name}'"))?;
    Ok((export, facts))
}

async fn export_view(s: &ApiState, export: &Export) -> Result<Value, ApiError> {
    let mut v = serde_json::to_value(export).map_err(ApiError::internal)?;
    let users: Vec<String> = s.store.export_users(export.id).await?.into_iter().map(|u| u.name).collect();
    v["users"] = json!(users);
    // The last run whole (status, counts, times, error), the next scheduled one, and the run in flight, whose
    // progress `GET /runs/{id}` follows.
    v["last_run"] = json!(s.store.last_run(export.id).await?);
    v["next_run"] = json!(s.shared.lock().exports.get(&export.name).and_then(|e| e.next_run));
    let running = s.shared.in_flight.lock().expect("in-flight lock").get(&export.name).and_then(|p| p.run_id());
    v["running_run_id"] = json!(running);
    Ok(v)
}

pub async fn exports(State(s): State<ApiState>, c: Caller) -> ApiResult {
    let mut out = Vec::new();
    for export in s.store.exports().await? {
        let facts = ExportFacts::load(&s.store, &export).await?;
        if access::see_export(&c.actor, &facts) == Verdict::Allow {
            out.push(export_view(&s, &export).await?);
        }
    }
    ok(json!(out))
}

pub async fn export(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let (export, _) = visible_export(&s, &c, &name).await?;
    ok(export_view(&s, &export).await?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    name: String,
    connection: String,
    segments: Vec<String>,
    /// Optional in userID-based projects, where the user id identifies members.
    #[serde(default)]
    email_field: Option<String>,
    /// The user id column (userID-based and hybrid projects).
    #[serde(default)]
    user_id_field: Option<String>,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    on_leave: Option<String>,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    skip_check: bool,
    /// `clear` (default) or `skip`.
    #[serde(default)]
    null_fields: Option<String>,
    #[serde(default)]
    existing_users_only: bool,
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

pub(super) fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::invalid(format!("the request body is not what was expected: {}", e.body_text())))
}

pub async fn create_export(
    State(s): State<ApiState>,
    c: Caller,
    b: Result<Json<ExportBody>, JsonRejection>,
) -> ApiResult {
    let b = body(b)?;
    let on_leave = match b.on_leave.as_deref() {
        None | Some("remove") => OnLeave::Remove,
        Some("keep") => OnLeave::Keep,
        Some(other) => return Err(ApiError::invalid(format!("on_leave '{other}' is not 'remove' or 'keep'"))),
    };
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
    };
    let export = ops::create_export(&s.store, &s.config, &ops_caller(&c), &request).await?;
    Ok((StatusCode::CREATED, Json(export_view(&s, &export).await?)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct RemoveQuery {
    #[serde(default)]
    empty_lists: bool,
    #[serde(default)]
    cancel_run: bool,
}

pub async fn remove_export(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult {
    let emptied = ops::remove_export(&s.store, &s.config, &ops_caller(&c), &name, q.empty_lists, q.cancel_run).await?;
    ok(json!({ "removed": name, "emptied": emptied }))
}

pub async fn export_users(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let (export, _) = visible_export(&s, &c, &name).await?;
    let users: Vec<String> = s.store.export_users(export.id).await?.into_iter().map(|u| u.name).collect();
    ok(json!(users))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    user: String,
}

pub async fn add_export_user(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Json<UserBody>, JsonRejection>,
) -> ApiResult {
    let b = body(b)?;
    let users = ops::change_export_users(&s.store, &s.config, &ops_caller(&c), &name, &[b.user], &[]).await?;
    ok(json!(users.into_iter().map(|u| u.name).collect::<Vec<_>>()))
}

pub async fn remove_export_user(
    State(s): State<ApiState>,
    c: Caller,
    Path((name, user)): Path<(String, String)>,
) -> ApiResult {
    let users = ops::change_export_users(&s.store, &s.config, &ops_caller(&c), &name, &[], &[user]).await?;
    ok(json!(users.into_iter().map(|u| u.name).collect::<Vec<_>>()))
}

/// How long a run request waits for its run to get an id before answering with the queued state alone.
const RUN_ID_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Default, Deserialize)]
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
}

pub async fn run_export(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Option<Json<RunBody>>, JsonRejection>,
) -> ApiResult {
    let (export, facts) = visible_export(&s, &c, &name).await?;
    access::run_export(&c.actor, &facts).check(&format!("export '{name}'"))?;
    let b = b
        .map_err(|e| ApiError::invalid(format!("the request body is not what was expected: {}", e.body_text())))?
        .map(|Json(b)| b)
        .unwrap_or_default();
    let flags: Vec<&str> = [(b.dry_run, "dry run"), (b.full, "full"), (b.allow_mass_removal, "allow mass removal")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
    let detail = (!flags.is_empty()).then(|| flags.join(", "));
    let action = if b.dry_run { "export.run.dry" } else { "export.run" };
    access::audit(&s.store, &s.config, &c.actor, &c.origin, action, Some(&name), detail).await?;
    if b.dry_run {
        // A plan changes nothing and takes no lock: it runs here, not through the queue.
        let engine = crate::sync::Engine::new(s.store.clone(), s.config.clone());
        let opts = crate::sync::RunOptions { trigger: "api".into(), dry_run: true, full: b.full, ..Default::default() };
        let progress = std::sync::Arc::new(crate::sync::Progress::default());
        let planned = engine.run_export(&name, &opts, progress, tokio_util::sync::CancellationToken::new()).await;
        let mut report = match planned {
            Ok(report) => serde_json::to_value(report).map_err(ApiError::internal)?,
            Err(e) => json!({ "export": name, "status": "failed", "error": e.to_string() }),
        };
        hide_sources(&s, &c, export.id, &mut report).await?;
        return ok(report);
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = Command::RunNow {
        export: name.clone(),
        by: c.actor.name().to_string(),
        full: b.full,
        allow_mass_removal: b.allow_mass_removal,
        reply,
    };
    s.commands.send(command).await.map_err(|_| stopping())?;
    let queued = answer.await.map_err(|_| stopping())?;
    let (state, run_id) = match queued {
        RunQueued::Started(progress) => {
            let deadline = tokio::time::Instant::now() + RUN_ID_WAIT;
            while progress.run_id().is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ("started", progress.run_id())
        }
        RunQueued::FollowUp => ("queued_after_current_run", None),
        RunQueued::Waiting => ("waiting_for_a_free_slot", None),
        RunQueued::Elsewhere => ("queued_after_another_process", None),
        RunQueued::NotStarted => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("export '{name}' cannot run now: it has no connection (disabled), or the service is stopping"),
            ))
        }
    };
    Ok((StatusCode::ACCEPTED, Json(json!({ "export": name, "state": state, "run_id": run_id }))).into_response())
}

fn stopping() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the service is stopping; ask again once it is back")
}

#[derive(Debug, Deserialize)]
pub struct RunsQuery {
    export: Option<String>,
    limit: Option<u32>,
}

pub async fn runs(State(s): State<ApiState>, c: Caller, Query(q): Query<RunsQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(50).min(500);
    if let Some(name) = &q.export {
        visible_export(&s, &c, name).await?;
    }
    let mut out = Vec::new();
    for run in s.store.runs(q.export.as_deref(), limit).await? {
        if c.actor.is_admin() || may_see_run(&s, &c, run.export_id).await? {
            let mut v = serde_json::to_value(&run).map_err(ApiError::internal)?;
            hide_sources(&s, &c, run.export_id, &mut v).await?;
            out.push(v);
        }
    }
    ok(json!(out))
}

/// What names a segment's source in an error (its path or URL, the URL's host), for the export of `export_id`.
async fn source_names(s: &ApiState, export_id: i64) -> Result<Vec<String>, ApiError> {
    let export = s.store.export_by_id(export_id).await?;
    let mut names = Vec::new();
    for t in &export.targets {
        let Ok(seg) = s.store.segment(&t.segment_name).await else { continue };
        names.push(seg.source.clone());
        if let Ok(spec) = seg.source.parse::<crate::source::SourceSpec>() {
            names.push(spec.to_string());
        }
        if let Some((_, rest)) = seg.source.split_once(':') {
            names.push(rest.trim_start_matches('/').to_string());
        }
        if let Some(host) = reqwest::Url::parse(&seg.source).ok().and_then(|u| u.host_str().map(str::to_string)) {
            names.push(host);
        }
    }
    names.retain(|n| n.len() >= 3);
    Ok(names)
}

/// Contributors never see a segment's source: a run error that names one is replaced by a pointer to an admin.
async fn hide_sources(s: &ApiState, c: &Caller, export_id: i64, run: &mut Value) -> Result<(), ApiError> {
    if c.actor.is_admin() {
        return Ok(());
    }
    let Some(error) = run["error"].as_str().map(str::to_string) else { return Ok(()) };
    if source_names(s, export_id).await?.iter().any(|n| error.contains(n.as_str())) {
        run["error"] = json!(
            "the run could not read a segment's source; an administrator can see why (`segment-exporter runs show`)"
        );
    }
    Ok(())
}

async fn may_see_run(s: &ApiState, c: &Caller, export_id: i64) -> Result<bool, ApiError> {
    let export = s.store.export_by_id(export_id).await?;
    let facts = ExportFacts::load(&s.store, &export).await?;
    Ok(access::see_export(&c.actor, &facts) == Verdict::Allow)
}

pub async fn run(State(s): State<ApiState>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    let what = format!("run #{id}");
    let run = s.store.run(id).await.map_err(|_| ApiError::not_found(&what))?;
    if !c.actor.is_admin() && !may_see_run(&s, &c, run.export_id).await? {
        return Err(ApiError::not_found(&what));
    }
    let mut v = serde_json::to_value(&run).map_err(ApiError::internal)?;
    hide_sources(&s, &c, run.export_id, &mut v).await?;
    let progress = {
        let in_flight = s.shared.in_flight.lock().expect("in-flight lock");
        in_flight.get(&run.export_name).cloned().filter(|p| p.run_id() == Some(id))
    };
    if let Some(p) = progress {
        let (done, planned, per_second, seconds_left) = p.snapshot();
        let (phase, list) = p.phase();
        v["progress"] = json!({ "phase": phase, "list": list, "done": done, "planned": planned,
            "per_second": per_second, "seconds_left": seconds_left });
    }
    let issues = s.store.run_issues(id, 100).await?;
    v["rejected_and_invalid"] = serde_json::to_value(&issues).map_err(ApiError::internal)?;
    ok(v)
}

/// Segments' names for everyone (to pick them for an export); their sources and queries for admins only.
pub async fn segments(State(s): State<ApiState>, c: Caller) -> ApiResult {
    access::see_segments(&c.actor).check("segments")?;
    let sources = access::see_segment_source(&c.actor) == Verdict::Allow;
    let out: Vec<Value> = s
        .store
        .segments()
        .await?
        .iter()
        .map(|seg| {
            let mut v = json!({ "name": seg.name, "created_at": seg.created_at });
            if sources {
                v["source"] = json!(seg.shown_source());
                v["query"] = json!(seg.query);
            }
            v
        })
        .collect();
    ok(json!(out))
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    limit: Option<u32>,
    user: Option<String>,
}

pub async fn audit(State(s): State<ApiState>, c: Caller, Query(q): Query<AuditQuery>) -> ApiResult {
    access::read_audit(&c.actor).check("the audit trail")?;
    let rows = s.store.audit(q.user.as_deref(), q.limit.unwrap_or(100).min(1000)).await?;
    ok(serde_json::to_value(rows).map_err(ApiError::internal)?)
}
