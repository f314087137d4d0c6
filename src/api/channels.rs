//! `/api/v1/channels`: notification channels, for administrators (the web console's Notifications screen), through
//! `crate::access::ops::channels` as the CLI's `notify` commands. A channel's URL and signing secret are never in
//! an answer, apart from a signing secret made for a new webhook, in the answer that creates it, once.
//! Contributors list the channels open to them (to subscribe their exports) and nothing more.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::handlers::{body, created, ok, ops_caller};
use super::views::ErrorBody;
use super::{ApiError, ApiState};
use crate::access::ops::channels::{self as ops, ChannelRequest, ChannelTarget, SigningSecret};
use crate::access::{self, Verdict};
use crate::store::{Channel, ChannelAudience, ChannelKind, Delivery, EventKind};

type ApiResult = Result<Response, ApiError>;

/// A channel, never with its URL or secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelView {
    pub name: String,
    pub kind: ChannelKind,
    /// Who may subscribe exports to it.
    pub usable_by: ChannelAudience,
    /// Administrators only: the addresses of an email channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// Administrators only: where a webhook's signing secret comes from (`env`, `file` or `stored`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret_from: Option<String>,
    /// Administrators only: the exports that tell it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exports: Option<Vec<String>>,
}

impl ChannelView {
    fn new(c: &Channel, exports: Option<Vec<String>>) -> ChannelView {
        let admin = exports.is_some();
        ChannelView {
            name: c.name.clone(),
            kind: c.kind,
            usable_by: c.usable_by,
            addresses: (admin && c.kind == ChannelKind::Email).then(|| c.addresses.clone()),
            signing_secret_from: admin.then(|| c.secret.as_ref().map(|s| s.kind().to_string())).flatten(),
            exports,
        }
    }
}

/// A channel just added, with the signing secret made for a webhook (shown this once).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelCreated {
    pub channel: ChannelView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelRemoved {
    pub removed: String,
}

/// What a test message met.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelTested {
    pub delivered: bool,
    /// What the receiver answered (an HTTP or SMTP status), or why it could not be reached.
    pub answer: String,
}

/// One delivery of a notification.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryView {
    pub event: EventKind,
    /// The same on every retry and every channel of one event.
    pub event_id: String,
    pub channel: String,
    pub export: Option<String>,
    pub run_id: Option<i64>,
    /// `pending`, `delivered` or `given_up`.
    pub state: String,
    pub attempts: u32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// While pending: when it is tried next.
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What the receiver answered last.
    pub last_answer: Option<String>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        DeliveryView {
            event: d.event,
            event_id: d.event_id,
            channel: d.channel,
            export: d.export,
            run_id: d.run_id,
            state: d.state,
            attempts: d.attempts,
            created_at: d.created_at,
            next_attempt_at: d.next_attempt_at,
            finished_at: d.finished_at,
            last_answer: d.last_answer,
        }
    }
}

/// Channels: every one for administrators; for contributors, those open to them (to subscribe their exports).
#[utoipa::path(get, path = "/channels", tag = "notifications",
    responses((status = 200, body = Vec<ChannelView>), (status = 401, body = ErrorBody)))]
pub async fn channels(State(s): State<ApiState>, c: Caller) -> ApiResult {
    let admin = access::manage_channels(&c.actor) == Verdict::Allow;
    let mut out = Vec::new();
    for channel in s.store.channels().await? {
        if access::use_channel(&c.actor, &channel) != Verdict::Allow {
            continue;
        }
        let exports = if admin { Some(s.store.channel_exports(channel.id).await?) } else { None };
        out.push(ChannelView::new(&channel, exports));
    }
    ok(out)
}

#[utoipa::path(get, path = "/channels/{name}", tag = "notifications", params(("name" = String, Path)),
    responses((status = 200, body = ChannelView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn channel(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    access::manage_channels(&c.actor).check("notification channels")?;
    let channel = s.store.channel(&name).await?;
    let exports = s.store.channel_exports(channel.id).await?;
    ok(ChannelView::new(&channel, Some(exports)))
}

/// A new channel: exactly one of `webhook`, `slack` and `email`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    name: String,
    /// POST each event, signed, to this URL (https; plain http to the daemon's host only). Stored sealed.
    #[serde(default)]
    webhook: Option<String>,
    /// A Slack incoming webhook URL. Stored sealed.
    #[serde(default)]
    slack: Option<String>,
    /// Email these addresses through `[smtp]`.
    #[serde(default)]
    email: Option<Vec<String>>,
    /// Webhooks: the environment variable the signing secret is read from at each delivery.
    #[serde(default)]
    secret_env: Option<String>,
    /// Webhooks: the file the signing secret is read from at each delivery.
    #[serde(default)]
    secret_file: Option<String>,
    /// `admins` (default) or `contributors`.
    #[serde(default)]
    usable_by: Option<ChannelAudience>,
}

impl std::fmt::Debug for NewChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewChannel").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Adds a channel; a webhook without `secret_env` or `secret_file` gets a signing secret made for it, in this
/// answer only.
#[utoipa::path(post, path = "/channels", tag = "notifications", request_body = NewChannel,
    responses((status = 201, body = ChannelCreated), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "A channel of that name exists", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn add_channel(
    State(s): State<ApiState>,
    c: Caller,
    b: Result<Json<NewChannel>, JsonRejection>,
) -> ApiResult {
    access::manage_channels(&c.actor).check("notification channels")?;
    let b = body(b)?;
    let target = match (b.webhook, b.slack, b.email) {
        (Some(url), None, None) => ChannelTarget::Webhook(SecretString::from(url)),
        (None, Some(url), None) => ChannelTarget::Slack(SecretString::from(url)),
        (None, None, Some(addresses)) => ChannelTarget::Email(addresses),
        _ => return Err(ApiError::invalid("give exactly one of webhook, slack and email")),
    };
    let secret = match (b.secret_env, b.secret_file) {
        (Some(var), None) => SigningSecret::Env(var),
        (None, Some(path)) => SigningSecret::File(path),
        (None, None) => SigningSecret::Generate,
        (Some(_), Some(_)) => return Err(ApiError::invalid("give secret_env or secret_file, not both")),
    };
    let request = ChannelRequest {
        name: b.name.trim().to_string(),
        target,
        secret,
        usable_by: b.usable_by.unwrap_or(ChannelAudience::Admins),
    };
    let (channel, made) = ops::add_channel(&s.store, &s.config(), &ops_caller(&c), request).await?;
    created(ChannelCreated {
        channel: ChannelView::new(&channel, Some(vec![])),
        signing_secret: made.map(|m| m.expose_secret().to_string()),
    })
}

/// Removes a channel, its subscriptions and what it had still to deliver.
#[utoipa::path(delete, path = "/channels/{name}", tag = "notifications", params(("name" = String, Path)),
    responses((status = 200, body = ChannelRemoved), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn remove_channel(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    ops::remove_channel(&s.store, &s.config(), &ops_caller(&c), &name).await?;
    ok(ChannelRemoved { removed: name })
}

/// Sends a test message now; what the receiver answered (200 either way).
#[utoipa::path(post, path = "/channels/{name}/test", tag = "notifications", params(("name" = String, Path)),
    responses((status = 200, body = ChannelTested), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn test_channel(State(s): State<ApiState>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let answer = ops::test_channel(&s.store, &s.config(), &ops_caller(&c), &name).await?;
    ok(ChannelTested {
        delivered: matches!(answer, crate::notify::Answer::Delivered(_)),
        answer: answer.text().to_string(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// How many, newest first (default 50, at most 500).
    limit: Option<u32>,
}

/// A channel's deliveries, newest first: event, attempts, the receiver's last answer.
#[utoipa::path(get, path = "/channels/{name}/deliveries", tag = "notifications",
    params(("name" = String, Path), DeliveriesQuery),
    responses((status = 200, body = Vec<DeliveryView>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn deliveries(
    State(s): State<ApiState>,
    c: Caller,
    Path(name): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> ApiResult {
    access::manage_channels(&c.actor).check("notification channels")?;
    s.store.channel(&name).await?;
    let limit = q.limit.unwrap_or(50).min(500);
    let log = s.store.delivery_log(Some(&name), limit).await?;
    ok(log.into_iter().map(DeliveryView::from).collect::<Vec<_>>())
}
