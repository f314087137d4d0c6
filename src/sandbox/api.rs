//! The sandbox's HTTP layer: routes, and for every `/api` request the same gate in the same order
//! (count, latency, API key, rate limit, body size, injected failure), then the endpoint handler.
//! Bodies are read and parsed and identities validated before the project lock is taken, so the lock
//! covers only the O(batch) state change. Also the key-less `/_sandbox` control endpoints: `stats`,
//! `reset-stats`, `faults` (GET and POST a partial `Faults`), `reject` (POST `{"emails": [...]}`: the
//! members subscribe refuses with `invalidDataEmails`) and `lists` (POST `{"name", "listType"}`: a list of any
//! type, where Iterable's API creates only Standard ones).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::StreamExt;
use rand::seq::IteratorRandom;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tracing::debug;

use super::faults::{BadAnswer, Faults, Injected, RateLimited};
use super::project::{SubscriberUpdate, PROJECT_ID};
use super::stats::UNKNOWN_ENDPOINT;
use super::validation::{is_forgotten, is_valid_email, is_valid_user_id};
use super::wire::{
    bad_params, envelope, invalid_list_id, CreateListRequest, CreateListResponse, Envelope, GetListsResponse, Identity,
    SubscribeRequest, Subscriber, UnsubscribeRequest, Unsubscriber, UserBulkUpdateListResponse,
};
use super::Sandbox;

/// Iterable limits a list description to 140 characters.
const MAX_DESCRIPTION_CHARS: usize = 140;
/// `previewUsers` sample size when none is given, and the most it returns.
const DEFAULT_PREVIEW_SIZE: usize = 1000;
const MAX_PREVIEW_SIZE: usize = 5000;
/// After a body passes `max_body_bytes` we keep reading (and discarding) so the client can finish
/// sending and read our 400; past this many extra bytes we stop and let the connection break.
const MAX_DRAIN_BYTES: usize = 64 * 1024 * 1024;

/// Handler result: either way a response, so handlers can use `?` on refusals.
type Answer = Result<Response, Envelope>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    GetLists,
    CreateList,
    DeleteList,
    Subscribe,
    Unsubscribe,
    GetUsers,
    ListSize,
    PreviewUsers,
}

impl Endpoint {
    /// Whether it changes the project (a read-only key may not call it).
    fn writes(self) -> bool {
        match self {
            Self::CreateList | Self::DeleteList | Self::Subscribe | Self::Unsubscribe => true,
            Self::GetLists | Self::GetUsers | Self::ListSize | Self::PreviewUsers => false,
        }
    }

    /// Stable label used in stats and logs.
    fn label(self) -> &'static str {
        match self {
            Self::GetLists => "lists.get",
            Self::CreateList => "lists.create",
            Self::DeleteList => "lists.delete",
            Self::Subscribe => "lists.subscribe",
            Self::Unsubscribe => "lists.unsubscribe",
            Self::GetUsers => "lists.getUsers",
            Self::ListSize => "lists.size",
            Self::PreviewUsers => "lists.previewUsers",
        }
    }
}

pub(super) fn router(sandbox: Sandbox) -> Router {
    let api = |endpoint: Endpoint| {
        move |State(sandbox): State<Sandbox>, request: Request| async move { sandbox.answer(endpoint, request).await }
    };
    Router::new()
        .route("/api/lists", get(api(Endpoint::GetLists)).post(api(Endpoint::CreateList)))
        .route("/api/lists/{listId}", delete(api(Endpoint::DeleteList)))
        .route("/api/lists/subscribe", post(api(Endpoint::Subscribe)))
        .route("/api/lists/unsubscribe", post(api(Endpoint::Unsubscribe)))
        .route("/api/lists/getUsers", get(api(Endpoint::GetUsers)))
        .route("/api/lists/previewUsers", get(api(Endpoint::PreviewUsers)))
        .route("/api/lists/{listId}/size", get(api(Endpoint::ListSize)))
        .route("/_sandbox/stats", get(control_stats))
        .route("/_sandbox/faults", get(control_faults).post(control_set_faults))
        .route("/_sandbox/reset-stats", post(control_reset_stats))
        .route("/_sandbox/reject", post(control_reject))
        .route("/_sandbox/lists", post(control_create_list))
        .fallback(not_found)
        // Our own check against `max_body_bytes` decides, not axum's 2 MB default.
        .layer(DefaultBodyLimit::disable())
        .with_state(sandbox)
}

/// What became of an `/api` request.
enum Outcome {
    Answered(Response),
    /// The change was applied and the connection is to be dropped without an answer.
    Dropped,
}

impl Outcome {
    fn answered(answer: impl IntoResponse) -> Self {
        Self::Answered(answer.into_response())
    }
}

impl Sandbox {
    async fn answer(self, endpoint: Endpoint, request: Request) -> Response {
        let label = endpoint.label();
        self.inner.stats.lock().received(label);
        let (latency, injected) = {
            let faults = self.inner.faults.lock();
            (faults.latency(), faults.roll())
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let hold = self.inner.faults.lock().hold_wait();
        if let Some(lifted) = hold {
            self.inner.stats.lock().held += 1;
            lifted.await;
            let mut stats = self.inner.stats.lock();
            stats.held = stats.held.saturating_sub(1);
        }
        let (mut parts, body) = request.into_parts();
        match self.gate_then_handle(endpoint, &mut parts, body, injected).await {
            Outcome::Answered(response) => {
                let status = response.status().as_u16();
                self.inner.stats.lock().answered(label, status);
                debug!(endpoint = label, status, "Sandbox answered a request.");
                response
            }
            Outcome::Dropped => {
                self.inner.stats.lock().dropped_connections += 1;
                debug!(endpoint = label, "Sandbox applied a request, then dropped it.");
                dropped_connection()
            }
        }
    }

    async fn gate_then_handle(&self, endpoint: Endpoint, parts: &mut Parts, body: Body, injected: Injected) -> Outcome {
        if !self.authorized(&parts.headers) {
            return Outcome::answered(unauthorized(parts));
        }
        if self.inner.read_only_keys && endpoint.writes() {
            return Outcome::answered(read_only_key(parts.uri.path()));
        }
        let limited = {
            let mut faults = self.inner.faults.lock();
            let retry_after = faults.retry_after();
            let now = Instant::now();
            faults
                .take_token(now)
                .and_then(|()| faults.take_documented(endpoint.label(), now))
                .map_err(|refusal| (refusal, retry_after))
        };
        if let Err((refusal, retry_after)) = limited {
            return Outcome::answered(rate_limited(parts.uri.path(), refusal, retry_after));
        }
        let body = match read_body(body, self.inner.max_body_bytes).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return Outcome::answered(batch_too_large(self.inner.max_body_bytes)),
            Err(BodyError::Unreadable) => {
                return Outcome::answered(envelope(
                    StatusCode::BAD_REQUEST,
                    "BadJsonBody",
                    "Could not read the request body",
                    Value::Null,
                ))
            }
        };
        if injected == Injected::ServerError {
            return Outcome::answered(envelope(
                StatusCode::INTERNAL_SERVER_ERROR,
                "GenericError",
                "Sandbox fault injection: internal error, nothing was applied",
                Value::Null,
            ));
        }
        let bad_answer = match endpoint {
            Endpoint::Subscribe | Endpoint::Unsubscribe => self.inner.faults.lock().roll_answer(),
            _ => BadAnswer::None,
        };
        if bad_answer == BadAnswer::Miscount {
            self.inner.stats.lock().bad_answers += 1;
            return Outcome::answered(Json(UserBulkUpdateListResponse::default()));
        }
        if bad_answer == BadAnswer::SilentDrop {
            if let Some(sent) = subscribers_in(&body) {
                self.inner.stats.lock().bad_answers += 1;
                let outcome = UserBulkUpdateListResponse { success_count: sent, ..Default::default() };
                debug!(endpoint = endpoint.label(), sent, "Sandbox acknowledged a change and dropped it.");
                return Outcome::answered(Json(outcome));
            }
        }
        let path_param = Path::<String>::from_request_parts(parts, &()).await.ok().map(|Path(param)| param);
        let response =
            self.handle(endpoint, &parts.uri, path_param.as_deref(), &body).unwrap_or_else(IntoResponse::into_response);
        if injected == Injected::DropAfterApplying {
            return Outcome::Dropped;
        }
        if bad_answer == BadAnswer::Truncate && response.status() == StatusCode::OK {
            self.inner.stats.lock().bad_answers += 1;
            return Outcome::Answered(truncated(response).await);
        }
        Outcome::Answered(response)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let key = headers.get("api-key").or_else(|| headers.get("api_key"));
        key.and_then(|key| key.to_str().ok()).is_some_and(|key| self.inner.api_keys.iter().any(|known| known == key))
    }

    fn handle(&self, endpoint: Endpoint, uri: &Uri, path_param: Option<&str>, body: &[u8]) -> Answer {
        match endpoint {
            Endpoint::GetLists => Ok(self.get_lists()),
            Endpoint::CreateList => self.create_list(body),
            Endpoint::DeleteList => self.delete_list(list_id_from_path(path_param)?),
            Endpoint::Subscribe => self.subscribe(body),
            Endpoint::Unsubscribe => self.unsubscribe(body),
            Endpoint::GetUsers => self.get_users(uri),
            Endpoint::ListSize => self.size(list_id_from_path(path_param)?),
            Endpoint::PreviewUsers => self.preview_users(uri),
        }
    }

    fn get_lists(&self) -> Response {
        let lists = self.inner.project.lock().list_details();
        Json(GetListsResponse { lists }).into_response()
    }

    fn create_list(&self, body: &[u8]) -> Answer {
        let request: CreateListRequest = parse_json(body)?;
        let name = match request.name {
            Some(name) if !name.trim().is_empty() => name,
            _ => return Err(bad_params("name is required and must not be empty")),
        };
        if let Some(description) = &request.description {
            if description.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(bad_params(format!("description must be at most {MAX_DESCRIPTION_CHARS} characters")));
            }
        }
        let usable_from = Instant::now() + self.inner.list_propagation;
        let list_id = self.inner.project.lock().create_list(name, request.description, usable_from);
        Ok(Json(CreateListResponse { list_id }).into_response())
    }

    fn delete_list(&self, list_id: i64) -> Answer {
        if !self.inner.project.lock().delete_list(list_id) {
            return Err(unknown_list(list_id));
        }
        let deleted = envelope(StatusCode::OK, "Success", format!("Deleted list {list_id}"), Value::Null);
        Ok(deleted.into_response())
    }

    fn subscribe(&self, body: &[u8]) -> Answer {
        let request: SubscribeRequest = parse_json(body)?;
        let list_id = request.list_id.ok_or_else(|| bad_params("listId is required"))?;
        let subscribers = request.subscribers.ok_or_else(|| bad_params("subscribers is required"))?;
        self.inner.stats.lock().subscribers_received += subscribers.len() as u64;
        if self.inner.one_identifier_per_subscriber {
            if let Some(at) = subscribers.iter().position(|s| s.email.is_some() && s.user_id.is_some()) {
                return Err(bad_params(format!(
                    "subscribers[{at}] has both an email and a userId; the API specification says of a subscriber: \
                     \"Provide an email or a userId (but not both), depending on how your project identifies \
                     users\" (sandbox started with one identifier per subscriber)"
                )));
            }
        }
        let mut outcome = UserBulkUpdateListResponse::default();
        let mut updates = Vec::with_capacity(subscribers.len());
        for subscriber in subscribers {
            if let Some(update) = check_subscriber(subscriber, &mut outcome)? {
                updates.push(update);
            }
        }
        let rejected = self.inner.rejected.lock();
        if !rejected.is_empty() {
            updates.retain(|update| match &update.email {
                Some(email) if rejected.contains(email) => {
                    let identity = match &update.user_id {
                        Some(user_id) if self.inner.project_type != super::SandboxProjectType::Email => {
                            Identity::UserId(user_id.clone())
                        }
                        _ => Identity::Email(email.clone()),
                    };
                    outcome.invalid_data(identity);
                    false
                }
                _ => true,
            });
        }
        drop(rejected);
        let existing_only = request.update_existing_users_only == Some(true);
        let delay = self.inner.faults.lock().get_users_delay();
        let mut project = self.inner.project.lock();
        project.change_delay = delay;
        project.admit(&mut updates, existing_only, &mut outcome);
        project.check_field_types(&updates).map_err(types_mismatched)?;
        project
            .subscribe(list_id, Instant::now(), updates, &mut outcome)
            .map_err(|_| invalid_list_id(PROJECT_ID, list_id))?;
        drop(project);
        Ok(Json(outcome).into_response())
    }

    fn unsubscribe(&self, body: &[u8]) -> Answer {
        let request: UnsubscribeRequest = parse_json(body)?;
        let list_id = request.list_id.ok_or_else(|| bad_params("listId is required"))?;
        let subscribers = request.subscribers.ok_or_else(|| bad_params("subscribers is required"))?;
        // Real Iterable may treat a missing channelUnsubscribe as a global email unsubscribe; the sandbox
        // refuses it so that a client which forgets the flag fails its tests.
        if request.channel_unsubscribe != Some(false) {
            return Err(bad_params(
                "The sandbox requires an explicit \"channelUnsubscribe\": false on lists/unsubscribe; \
                 absent or true may unsubscribe the user from the whole email channel",
            ));
        }
        self.inner.stats.lock().unsubscribers_received += subscribers.len() as u64;
        let mut outcome = UserBulkUpdateListResponse::default();
        let mut identities = Vec::with_capacity(subscribers.len());
        for unsubscriber in subscribers {
            if let Some(identity) = check_unsubscriber(unsubscriber, &mut outcome)? {
                identities.push(identity);
            }
        }
        let delay = self.inner.faults.lock().get_users_delay();
        let mut project = self.inner.project.lock();
        project.change_delay = delay;
        project
            .unsubscribe(list_id, Instant::now(), identities, &mut outcome)
            .map_err(|_| invalid_list_id(PROJECT_ID, list_id))?;
        Ok(Json(outcome).into_response())
    }

    /// One member per line, each followed by a newline, in ascending order: emails, user ids in a userID-based
    /// project, and in a hybrid one with `preferUserId=true` a user's id where it has one.
    fn get_users(&self, uri: &Uri) -> Answer {
        let list_id = list_id_from_query(uri)?;
        let prefer_user_id = match query_param(uri, "preferUserId")?.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(bad_params(format!("preferUserId must be true or false, got {other:?}"))),
        };
        let (delay, cut) = {
            let mut faults = self.inner.faults.lock();
            (faults.get_users_delay(), faults.cut_get_users())
        };
        let project = self.inner.project.lock();
        let mut members = project
            .members_seen(list_id, prefer_user_id, Instant::now(), delay)
            .ok_or_else(|| unknown_list(list_id))?;
        if cut {
            members.truncate(members.len() / 2);
        }
        let mut text = String::with_capacity(members.len() * 32);
        for member in members {
            text.push_str(member);
            text.push('\n');
        }
        drop(project);
        Ok(plain_text(text))
    }

    fn size(&self, list_id: i64) -> Answer {
        let delay = self.inner.faults.lock().get_users_delay();
        let project = self.inner.project.lock();
        let members =
            project.members_seen(list_id, false, Instant::now(), delay).ok_or_else(|| unknown_list(list_id))?;
        Ok(plain_text(members.len().to_string()))
    }

    /// A random sample of at most `size` members (default 1000, capped at 5000), one per line.
    fn preview_users(&self, uri: &Uri) -> Answer {
        let list_id = list_id_from_query(uri)?;
        let size = match query_param(uri, "size")? {
            None => DEFAULT_PREVIEW_SIZE,
            Some(size) => size
                .parse::<usize>()
                .map_err(|_| bad_params(format!("size must be a whole number, got {size:?}")))?
                .min(MAX_PREVIEW_SIZE),
        };
        let sample: Vec<String> = {
            let project = self.inner.project.lock();
            let members = project.members(list_id, false).ok_or_else(|| unknown_list(list_id))?;
            members.into_iter().choose_multiple(&mut rand::thread_rng(), size).into_iter().map(str::to_owned).collect()
        };
        let mut text = String::with_capacity(sample.len() * 32);
        for email in sample {
            text.push_str(&email);
            text.push('\n');
        }
        Ok(plain_text(text))
    }
}

/// Validates one subscribe item outside the lock. `Ok(None)`: rejected and recorded in `outcome`.
/// `Err`: the whole request is malformed (an item with neither email nor userId).
fn check_subscriber(
    subscriber: Subscriber,
    outcome: &mut UserBulkUpdateListResponse,
) -> Result<Option<SubscriberUpdate>, Envelope> {
    let Subscriber { email, user_id, prefer_user_id, data_fields, merge_nested_objects } = subscriber;
    if let Some(user_id) = user_id.as_ref().filter(|id| !is_valid_user_id(id)) {
        outcome.invalid_user_id(user_id.clone());
        return Ok(None);
    }
    let email = match (email, &user_id) {
        (Some(email), _) => match check_email(email, outcome) {
            Some(email) => Some(email),
            None => return Ok(None),
        },
        (None, Some(_)) => None,
        (None, None) => return Err(missing_identity()),
    };
    Ok(Some(SubscriberUpdate {
        email,
        user_id,
        prefer_user_id: prefer_user_id.unwrap_or(false),
        data_fields,
        merge_nested_objects: merge_nested_objects.unwrap_or(false),
    }))
}

fn check_unsubscriber(
    unsubscriber: Unsubscriber,
    outcome: &mut UserBulkUpdateListResponse,
) -> Result<Option<Identity>, Envelope> {
    match (unsubscriber.email, unsubscriber.user_id) {
        (Some(email), None) => Ok(check_email(email, outcome).map(Identity::Email)),
        (_, Some(user_id)) if is_valid_user_id(&user_id) => Ok(Some(Identity::UserId(user_id))),
        (_, Some(user_id)) => {
            outcome.invalid_user_id(user_id);
            Ok(None)
        }
        (None, None) => Err(missing_identity()),
    }
}

/// Returns the lowercased address Iterable would store, or records why it is refused.
fn check_email(email: String, outcome: &mut UserBulkUpdateListResponse) -> Option<String> {
    if !is_valid_email(&email) {
        outcome.invalid_email(email);
        return None;
    }
    let mut email = email;
    if email.is_ascii() {
        email.make_ascii_lowercase();
    } else {
        email = email.to_lowercase();
    }
    if is_forgotten(&email) {
        outcome.forgotten_email(email);
        return None;
    }
    Some(email)
}

fn missing_identity() -> Envelope {
    bad_params("Each subscriber needs an email or a userId")
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Envelope> {
    serde_json::from_slice(body).map_err(|error| {
        envelope(StatusCode::BAD_REQUEST, "BadJsonBody", format!("Could not parse the JSON body: {error}"), Value::Null)
    })
}

fn query_param(uri: &Uri, name: &str) -> Result<Option<String>, Envelope> {
    let Query(mut params) = Query::<HashMap<String, String>>::try_from_uri(uri)
        .map_err(|error| bad_params(format!("Could not parse the query string: {error}")))?;
    Ok(params.remove(name))
}

fn list_id_from_query(uri: &Uri) -> Result<i64, Envelope> {
    let raw = query_param(uri, "listId")?.ok_or_else(|| bad_params("listId is required"))?;
    parse_list_id(&raw)
}

fn list_id_from_path(param: Option<&str>) -> Result<i64, Envelope> {
    parse_list_id(param.unwrap_or_default())
}

fn parse_list_id(raw: &str) -> Result<i64, Envelope> {
    raw.parse().map_err(|_| bad_params(format!("listId must be a whole number, got {raw:?}")))
}

/// Unknown list on the endpoints other than subscribe/unsubscribe. Iterable's exact answer there is not
/// documented; we keep the same `invalidListId` msg so clients can match one string, with `BadParams`.
fn unknown_list(list_id: i64) -> Envelope {
    envelope(
        StatusCode::BAD_REQUEST,
        "BadParams",
        format!("error.lists.invalidListId({list_id})"),
        json!({ "projectId": PROJECT_ID, "listId": list_id }),
    )
}

fn unauthorized(parts: &Parts) -> Envelope {
    let ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "127.0.0.1".to_owned(), |ConnectInfo(peer)| peer.ip().to_string());
    envelope(
        StatusCode::UNAUTHORIZED,
        "BadApiKey",
        "Invalid API key",
        json!({ "ip": ip, "endpoint": parts.uri.path() }),
    )
}

/// A write with a read-only key. Iterable does not document its answer: this one is an assumption (403, as its
/// specification gives for a key of the wrong type).
fn read_only_key(path: &str) -> Envelope {
    envelope(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "This API key is read-only and may not call {path} (the sandbox's answer; Iterable's is not documented)"
        ),
        json!({ "endpoint": path }),
    )
}

fn rate_limited(path: &str, refusal: RateLimited, retry_after: bool) -> Response {
    let mut response = envelope(
        StatusCode::TOO_MANY_REQUESTS,
        "RateLimitExceeded",
        format!("Exceeded rate limit for endpoint: {path}, project: {PROJECT_ID}"),
        json!({
            "rateLimitLimit": refusal.limit,
            "rateLimitRemaining": 0,
            "rateLimitReset": refusal.reset_secs,
        }),
    )
    .into_response();
    if retry_after {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(refusal.reset_secs));
    }
    response
}

/// Iterable refuses the whole request when one value's type conflicts with its field's; `validationErrors` names
/// each field with the type expected and the value refused.
fn types_mismatched(errors: serde_json::Map<String, Value>) -> Envelope {
    let fields = errors.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
    envelope(
        StatusCode::BAD_REQUEST,
        "RequestFieldsTypesMismatched",
        format!("Request fields types mismatched: {fields}"),
        json!({ "validationErrors": errors }),
    )
}

fn batch_too_large(limit: usize) -> Envelope {
    envelope(
        StatusCode::BAD_REQUEST,
        "BatchTooLarge",
        format!("Request body is larger than {limit} bytes"),
        Value::Null,
    )
}

/// The same answer with only the first half of its body, as a connection cut mid-answer might leave it.
/// How many subscribers a subscribe or unsubscribe body names; None when it cannot be read (the handler then
/// answers the error it finds).
fn subscribers_in(body: &[u8]) -> Option<u64> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("subscribers")?.as_array().map(|s| s.len() as u64)
}

async fn truncated(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(half))
}

fn plain_text(text: String) -> Response {
    ([(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// A response whose body fails before its first byte: hyper then aborts the connection without writing
/// anything, so the client sees a transport error rather than an answer.
fn dropped_connection() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, _>(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "sandbox fault injection: connection dropped on purpose",
        ))
    });
    Response::new(Body::from_stream(failing))
}

enum BodyError {
    TooLarge,
    Unreadable,
}

/// Reads the whole body, refusing it once it passes `limit`; a refused body is still drained (up to
/// `MAX_DRAIN_BYTES`) so the client gets to read the 400 instead of a reset.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::new();
    let mut received = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        received = received.saturating_add(chunk.len());
        if received > limit {
            buffer = Vec::new();
            if received - limit > MAX_DRAIN_BYTES {
                break;
            }
        } else {
            buffer.extend_from_slice(&chunk);
        }
    }
    if received > limit {
        Err(BodyError::TooLarge)
    } else {
        Ok(Bytes::from(buffer))
    }
}

/// Iterable answers unknown routes with a plain page, not an envelope.
async fn not_found(State(sandbox): State<Sandbox>, uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        let mut stats = sandbox.inner.stats.lock();
        stats.received(UNKNOWN_ENDPOINT);
        stats.answered(UNKNOWN_ENDPOINT, 404);
    }
    (
        StatusCode::NOT_FOUND,
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><body><h1>Action not found</h1></body></html>",
    )
        .into_response()
}

async fn control_stats(State(sandbox): State<Sandbox>) -> Json<super::SandboxStats> {
    Json(sandbox.stats())
}

async fn control_faults(State(sandbox): State<Sandbox>) -> Response {
    Json(sandbox.faults()).into_response()
}

async fn control_set_faults(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    let change: Faults = match parse_json(&body) {
        Ok(change) => change,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(problem) = change.validate() {
        return bad_params(problem).into_response();
    }
    sandbox.set_faults(change);
    Json(sandbox.faults()).into_response()
}

/// `{"emails": [...]}`: subscribe refuses exactly these members with `invalidDataEmails` from now on.
async fn control_reject(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Reject {
        emails: Vec<String>,
    }
    let change: Reject = match parse_json(&body) {
        Ok(change) => change,
        Err(refusal) => return refusal.into_response(),
    };
    sandbox.set_rejected(&change.emails);
    envelope(StatusCode::OK, "Success", format!("{} member(s) will be refused", change.emails.len()), Value::Null)
        .into_response()
}

/// `{"name": ..., "listType": "Standard"|"Dynamic"|"Suppression"|"Internal"}`: creates a list of that type, as
/// Iterable's UI can (its API creates only static, `Standard` lists). Answers `{"listId": N}`.
async fn control_create_list(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Create {
        name: String,
        list_type: String,
    }
    let create: Create = match parse_json(&body) {
        Ok(create) => create,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(list_type) =
        ["Standard", "Dynamic", "Suppression", "Internal"].into_iter().find(|t| *t == create.list_type)
    else {
        return bad_params("listType must be one of Standard, Dynamic, Suppression, Internal").into_response();
    };
    let list_id = sandbox.inner.project.lock().create_list_of_type(create.name, None, Instant::now(), list_type);
    Json(CreateListResponse { list_id }).into_response()
}

async fn control_reset_stats(State(sandbox): State<Sandbox>) -> Response {
    sandbox.reset_stats();
    envelope(StatusCode::OK, "Success", "Stats reset", Value::Null).into_response()
}
