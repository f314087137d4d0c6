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
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into() }
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
        (self.status, Json(body)).into_response()
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
            OpError::Busy(m) => ApiError::new(StatusCode::CONFLICT, "running", m),
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
