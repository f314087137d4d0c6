//! The JSON shapes the sandbox reads and writes, named and spelled as in Iterable's Swagger spec
//! (`CreateListRequest`, `SubscribeRequest`, `UserBulkUpdateListResponse`, the `{msg, code, params}`
//! envelope). Only shapes live here; what they mean is decided in `api` and `project`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Iterable's standard envelope, used for errors and for plain successes such as list deletion, with the
/// HTTP status it is sent with. Small enough to be the error type of every handler.
#[derive(Debug, Serialize)]
pub(crate) struct Envelope {
    #[serde(skip)]
    pub status: StatusCode,
    pub msg: String,
    pub code: &'static str,
    pub params: Value,
}

impl IntoResponse for Envelope {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

pub(crate) fn envelope(status: StatusCode, code: &'static str, msg: impl Into<String>, params: Value) -> Envelope {
    Envelope { status, msg: msg.into(), code, params }
}

pub(crate) fn bad_params(msg: impl Into<String>) -> Envelope {
    envelope(StatusCode::BAD_REQUEST, "BadParams", msg, Value::Null)
}

/// Iterable's answer for an unknown (or not yet propagated) list on subscribe/unsubscribe: HTTP 400 but
/// `code: "Success"`, exactly as a real project answers.
pub(crate) fn invalid_list_id(project_id: i64, list_id: i64) -> Envelope {
    envelope(
        StatusCode::BAD_REQUEST,
        "Success",
        format!("error.lists.invalidListId({list_id})"),
        serde_json::json!({ "projectId": project_id, "listId": list_id }),
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateListRequest {
    pub name: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateListResponse {
    pub list_id: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListDetails {
    pub id: i64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
    pub list_type: &'static str,
}

#[derive(Debug, Serialize)]
pub(crate) struct GetListsResponse {
    pub lists: Vec<ListDetails>,
}

/// `updateExistingUsersOnly` is honoured by hybrid and userID-based sandboxes only, as Iterable honours it only
/// there; a subscriber's `preferUserId` makes a hybrid sandbox look its userId up first.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SubscribeRequest {
    pub list_id: Option<i64>,
    pub subscribers: Option<Vec<Subscriber>>,
    pub update_existing_users_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Subscriber {
    pub email: Option<String>,
    pub user_id: Option<String>,
    pub prefer_user_id: Option<bool>,
    pub data_fields: Option<Map<String, Value>>,
    pub merge_nested_objects: Option<bool>,
}

/// `campaignId` is accepted and ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UnsubscribeRequest {
    pub list_id: Option<i64>,
    pub subscribers: Option<Vec<Unsubscriber>>,
    pub channel_unsubscribe: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Unsubscriber {
    pub email: Option<String>,
    pub user_id: Option<String>,
}

/// The answer to both `lists/subscribe` and `lists/unsubscribe`. The deprecated top-level
/// `invalidEmails`/`invalidUserIds` copies are still filled, as Iterable still sends them.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserBulkUpdateListResponse {
    pub success_count: u64,
    pub fail_count: u64,
    pub created_fields: Vec<String>,
    pub filtered_out_fields: Vec<String>,
    pub failed_updates: FailedUpdates,
    pub invalid_emails: Vec<String>,
    pub invalid_user_ids: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FailedUpdates {
    pub invalid_emails: Vec<String>,
    pub invalid_user_ids: Vec<String>,
    pub not_found_emails: Vec<String>,
    pub not_found_user_ids: Vec<String>,
    pub forgotten_emails: Vec<String>,
    pub forgotten_user_ids: Vec<String>,
    pub conflict_emails: Vec<String>,
    pub conflict_user_ids: Vec<String>,
    pub invalid_data_emails: Vec<String>,
    pub invalid_data_user_ids: Vec<String>,
}

/// Which identity a per-subscriber failure is reported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// Lowercased, syntactically valid address.
    Email(String),
    UserId(String),
}

impl UserBulkUpdateListResponse {
    pub(crate) fn succeeded(&mut self) {
        self.success_count += 1;
    }

    pub(crate) fn invalid_email(&mut self, email: String) {
        self.fail_count += 1;
        self.invalid_emails.push(email.clone());
        self.failed_updates.invalid_emails.push(email);
    }

    pub(crate) fn invalid_user_id(&mut self, user_id: String) {
        self.fail_count += 1;
        self.invalid_user_ids.push(user_id.clone());
        self.failed_updates.invalid_user_ids.push(user_id);
    }

    pub(crate) fn forgotten_email(&mut self, email: String) {
        self.fail_count += 1;
        self.failed_updates.forgotten_emails.push(email);
    }

    pub(crate) fn not_found(&mut self, identity: Identity) {
        self.fail_count += 1;
        match identity {
            Identity::Email(email) => self.failed_updates.not_found_emails.push(email),
            Identity::UserId(id) => self.failed_updates.not_found_user_ids.push(id),
        }
    }

    pub(crate) fn conflict(&mut self, identity: Identity) {
        self.fail_count += 1;
        match identity {
            Identity::Email(email) => self.failed_updates.conflict_emails.push(email),
            Identity::UserId(id) => self.failed_updates.conflict_user_ids.push(id),
        }
    }

    pub(crate) fn invalid_data(&mut self, identity: Identity) {
        self.fail_count += 1;
        match identity {
            Identity::Email(email) => self.failed_updates.invalid_data_emails.push(email),
            Identity::UserId(id) => self.failed_updates.invalid_data_user_ids.push(id),
        }
    }
}
