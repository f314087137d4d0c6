//! API errors: a status and `{"error": {"kind": ..., "message": ...}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::access::ops::OpError;
use crate::access::Denied;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// Seconds after which to ask again, sent as `Retry-After` (with 429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into(), retry_after: None }
    }

    /// The same error, saying when to ask again.
    pub fn retry_after(self, seconds: u64) -> ApiError {
        ApiError { retry_after: Some(seconds), ..self }
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API token is required: send `Authorization: Bearer TOKEN` (an administrator makes one with \
             `segment-exporter user add NAME --role ROLE`), or sign in with POST /api/v1/session",
        )
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
    }

    /// A body over axum's limit, which every JSON body of the API has.
    pub fn too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the request body is larger than the API takes (2 MB)",
        )
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} does not exist"))
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "API request failed.");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed inside the service; see its log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The type the OpenAPI document describes every error with.
        let body = super::views::ErrorBody {
            error: super::views::ErrorDetail { kind: self.kind.to_string(), message: self.message },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        match d {
            Denied::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", d.to_string()),
            Denied::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", d.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match &e {
            StoreError::NotFound { what, name, .. } => ApiError::not_found(&format!("{what} '{name}'")),
            StoreError::Exists { .. } | StoreError::Conflict(_) | StoreError::RunNotRunning { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            // Names the other export: administrators only, so never through the API's generic path.
            StoreError::ListManaged { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", e.without_names()),
            StoreError::InvalidName { .. } => ApiError::invalid(e.to_string()),
            _ => ApiError::internal(e),
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        match e {
            OpError::Denied(d) => d.into(),
            OpError::Invalid(m) => ApiError::invalid(m),
            OpError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            OpError::Busy { message, cancellable: true } => ApiError::new(
                StatusCode::CONFLICT,
                "running",
                format!("{message} To stop it, ask again with cancel_run set to true."),
            ),
            OpError::Busy { message, cancellable: false } => ApiError::new(StatusCode::CONFLICT, "running", message),
            OpError::Failed(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "failed", m),
            OpError::Iterable { message, bad_key: true } => ApiError::invalid(message),
            OpError::Iterable { message, bad_key: false } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "iterable", message)
            }
            OpError::Secret(e) => ApiError::internal(e),
            // Only administrators change segments, so the source may be named.
            OpError::Source(e) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "source", e.to_string()),
            OpError::Unreadable { message, .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "source", message),
            OpError::Store(e) => e.into(),
        }
    }
}

/// The largest error text of axum's own that `json_errors` wraps (its rejections are a line or two).
const PLAIN_ERROR_LIMIT: usize = 16 * 1024;

/// Gives the answers that axum makes itself, before any handler of ours (a path or query that does not parse, a
/// method a path does not take, a body over the size limit), the API's error shape: a script reading
/// `{"error": ...}` never meets plain text. A path or query that does not parse is invalid input (422), as a
/// body that does not is.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, PLAIN_ERROR_LIMIT).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let error = match status {
        StatusCode::BAD_REQUEST => ApiError::invalid(format!("the request is not what was expected: {text}")),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            "this path does not take that method; see /api/v1/openapi.json for what each path takes",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(),
        _ if text.is_empty() => ApiError::new(status, "error", status.canonical_reason().unwrap_or("error")),
        _ => ApiError::new(status, "error", text),
    };
    let mut answer = error.into_response();
    // What the method-not-allowed answer says the path takes.
    if let Some(allow) = parts.headers.get(axum::http::header::ALLOW) {
        answer.headers_mut().insert(axum::http::header::ALLOW, allow.clone());
    }
    answer
}
