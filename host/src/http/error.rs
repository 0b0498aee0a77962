//! The one error type of the HTTP surface: a status and a stable JSON body
//! `{"ok":false,"error":"<reason code>","detail":"<for humans>"}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::dispatch::DispatchError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable reason code.
    pub code: &'static str,
    /// A sentence for humans (not stable).
    pub detail: String,
    /// More members of the body (e.g. the failed cases of a refused policy upload).
    pub extra: Option<serde_json::Value>,
}

impl ApiError {
    /// An answer with `status` and `code`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            extra: None,
        }
    }

    /// 404 `unknown_agent`: also the answer for another tenant's objects, never 403.
    pub fn unknown_agent() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_agent",
            "no agent is hosted at this host",
        )
    }

    /// 503 `store_unavailable`.
    pub fn store_unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", detail)
    }
}

impl From<DispatchError> for ApiError {
    fn from(error: DispatchError) -> Self {
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, error.code(), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), reason = self.code, detail = %self.detail, "request failed");
        }
        let mut body = json!({ "ok": false, "error": self.code, "detail": self.detail });
        if let (Some(serde_json::Value::Object(extra)), Some(map)) =
            (self.extra, body.as_object_mut())
        {
            for (key, value) in extra {
                map.entry(key).or_insert(value);
            }
        }
        (self.status, Json(body)).into_response()
    }
}
