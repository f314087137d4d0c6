//! Segments over HTTP: names, columns and sizes for everyone (to pick them for an export); sources, queries and
//! changes for administrators, through `crate::access::ops::segments`, which confines what a segment saved here
//! may read to `[sources] allowed_dirs` (and every read of it below too). Contributors never see a source, not even
//! inside an error.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::Utc;
use futures::StreamExt;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::handlers::{body, created, ok, ops_caller, ApiResult};
use super::views::{ErrorBody, SegmentRemoved, SegmentView};
use super::{ApiError, ApiState};
use crate::access::ops::segments::{self as ops, PasswordRef, SegmentAdd, SegmentEdit};
use crate::access::{self, Verdict};
use crate::source::{self, Columns, SourceSpec};
use crate::store::Segment;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CountQuery {
    /// `now`: read each segment whole to count its rows now, instead of the count of its last run.
    count: Option<String>,
}

impl CountQuery {
    fn now(&self) -> Result<bool, ApiError> {
        match self.count.as_deref() {
            None => Ok(false),
            Some("now") => Ok(true),
            Some(other) => Err(ApiError::invalid(format!("count '{other}' is not 'now' (or leave it out)"))),
        }
    }
}

/// The segment's source, ready to read (its password resolved), and what it may reach.
fn readable(s: &ApiState, seg: &Segment) -> Result<(SourceSpec, source::Reach), String> {
    let config = s.config();
    let spec: SourceSpec = seg.source.parse().map_err(|e: source::SourceError| e.to_string())?;
    let password =
        crate::secrets::resolve_source_password(seg, &config.store.master_key_path()).map_err(|e| e.to_string())?;
    Ok((spec.with_password(password), seg.reach(&config.sources)))
}

/// Its columns (a first row read) or its rows counted whole; an error names the source only to administrators.
async fn read_now(s: &ApiState, c: &Caller, seg: &Segment, count: bool) -> Result<(Vec<String>, Option<u64>), String> {
    let result = async {
        let (spec, reach) = readable(s, seg)?;
        if !count {
            let (columns, _) =
                source::preview(&spec, seg.query.as_deref(), 1, &reach).await.map_err(|e| e.to_string())?;
            return Ok((columns, None));
        }
        let mut stream =
            source::read(&spec, seg.query.as_deref(), Columns::All, &reach).await.map_err(|e| e.to_string())?;
        let mut rows = 0u64;
        while let Some(batch) = stream.batches.next().await {
            rows += batch.map_err(|e| e.to_string())?.len() as u64;
        }
        Ok((stream.columns, Some(rows)))
    }
    .await;
    result.map_err(|e: String| {
        if c.actor.is_admin() {
            e
        } else {
            "the segment's source could not be read now; an administrator can see why".to_string()
        }
    })
}

async fn segment_view(
    s: &ApiState,
    c: &Caller,
    seg: &Segment,
    columns: bool,
    count_now: bool,
) -> Result<SegmentView, ApiError> {
    let admin = access::see_segment_source(&c.actor) == Verdict::Allow;
    let (mut members, mut counted_at) = match s.store.segment_last_count(seg.id).await? {
        Some((n, at)) => (Some(n), Some(at)),
        None => (None, None),
    };
    let (mut cols, mut unreadable) = (None, None);
    if columns || count_now {
        match read_now(s, c, seg, count_now).await {
            Ok((read, count)) => {
                if columns {
                    cols = Some(read);
                }
                if let Some(n) = count {
                    (members, counted_at) = (Some(n), Some(Utc::now()));
                }
            }
            Err(e) => unreadable = Some(e),
        }
    }
    Ok(SegmentView {
        name: seg.name.clone(),
        created_at: seg.created_at,
        members,
        counted_at,
        columns: cols,
        unreadable,
        source: admin.then(|| seg.shown_source()),
        query: if admin { seg.query.clone() } else { None },
        password: admin.then(|| seg.password.describe()),
        saved_from: admin.then(|| seg.origin.into()),
    })
}

/// Every segment: names and last counts for everyone; sources and queries for administrators.
#[utoipa::path(get, path = "/segments", tag = "segments", params(CountQuery),
    responses((status = 200, body = Vec<SegmentView>), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn segments(State(s): State<ApiState>, c: Caller, Query(q): Query<CountQuery>) -> ApiResult {
    access::see_segments(&c.actor).check("segments")?;
    let now = q.now()?;
    let mut out = Vec::new();
    for seg in s.store.segments().await? {
        out.push(segment_view(&s, &c, &seg, false, now).await?);
    }
    ok(out)
}

/// One segment with its columns, read now (to pick the email column and the fields).
#[utoipa::path(get, path = "/segments/{name}", tag = "segments", params(("name" = String, Path), CountQuery),
    responses((status = 200, body = SegmentView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn segment(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    Query(q): Query<CountQuery>,
) -> ApiResult {
    access::see_segments(&c.actor).check("segments")?;
    let now = q.now()?;
    let seg = s.store.segment(&name).await?;
    ok(segment_view(&s, &c, &seg, true, now).await?)
}

/// A new segment (administrators). File sources must lie inside `[sources] allowed_dirs`, and a postgres URL may
/// name no file and no socket of the host.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentBody {
    /// The Iterable list gets exactly this name.
    name: String,
    /// `sqlite:PATH`, a `postgres://` URL, `csv:PATH` or `jsonl:PATH`.
    source: String,
    /// The SQL query selecting the members (sqlite and postgres only).
    #[serde(default)]
    query: Option<String>,
    /// A postgres source's database password, stored encrypted (or give it in the URL).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    password: Option<secrecy::SecretString>,
    /// Save without reading a first row.
    #[serde(default)]
    skip_check: bool,
}

#[utoipa::path(post, path = "/segments", tag = "segments", request_body = SegmentBody,
    responses((status = 201, body = SegmentView), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 409, description = "A segment of that name exists", body = ErrorBody),
        (status = 422, description = "Invalid, unreadable, a file outside [sources] allowed_dirs, or a postgres URL \
            naming a file or a socket", body = ErrorBody)))]
pub async fn create_segment(
    State(s): State<ApiState>,
    c: Caller,
    b: Result<Json<SegmentBody>, JsonRejection>,
) -> ApiResult {
    access::manage_segments(&c.actor).check("segments")?;
    let b = body(b)?;
    let request = SegmentAdd {
        name: b.name,
        source: b.source,
        password_ref: b.password.map(PasswordRef::Value),
        query: b.query,
        skip_check: b.skip_check,
    };
    let config = s.config();
    let saved = ops::add_segment(&s.store, &config, &ops_caller(&c), request).await?;
    created(segment_view(&s, &c, &saved.segment, false, false).await?)
}

/// A change to a segment; what is left out stays as it is.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentPatch {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    password: Option<secrecy::SecretString>,
    /// Drop the database password.
    #[serde(default)]
    no_password: bool,
    #[serde(default)]
    skip_check: bool,
}

#[utoipa::path(patch, path = "/segments/{name}", tag = "segments", params(("name" = String, Path)),
    request_body = SegmentPatch,
    responses((status = 200, body = SegmentView), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn edit_segment(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    b: Result<Json<SegmentPatch>, JsonRejection>,
) -> ApiResult {
    s.store.segment(&name).await?;
    access::manage_segments(&c.actor).check(&format!("segment '{name}'"))?;
    let b = body(b)?;
    let change = SegmentEdit {
        source: b.source,
        password_ref: b.password.map(PasswordRef::Value),
        no_password: b.no_password,
        query: b.query,
        skip_check: b.skip_check,
    };
    let config = s.config();
    let saved = ops::edit_segment(&s.store, &config, &ops_caller(&c), &name, change).await?;
    ok(segment_view(&s, &c, &saved.segment, false, false).await?)
}

/// Removes a segment no export sends.
#[utoipa::path(delete, path = "/segments/{name}", tag = "segments", params(("name" = String, Path)),
    responses((status = 200, body = SegmentRemoved), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "An export sends it", body = ErrorBody)))]
pub async fn remove_segment(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    ops::remove_segment(&s.store, &s.config(), &ops_caller(&c), &name).await?;
    ok(SegmentRemoved { removed: name })
}
