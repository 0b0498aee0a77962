//! `POST /didcomm`: one signed envelope in, 202 with the decision out (ARP-PROTOCOL §2).
//!
//! The body is the JWS compact string (any content type; surrounding whitespace is
//! ignored), or a JSON object `{"envelope": "<compact>"}`.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::dispatch::Outcome;
use crate::routing::select_host;

/// The routing query of every per-agent route.
#[derive(Debug, Default, Deserialize)]
pub struct TargetQuery {
    /// Overrides `X-Forwarded-Host` and `Host`.
    pub target: Option<String>,
}

/// The host to route by: query `target` ?? `X-Forwarded-Host` ?? `Host`.
pub fn routing_host<'a>(query: &'a TargetQuery, headers: &'a HeaderMap) -> Option<&'a str> {
    let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
    select_host(
        query.target.as_deref(),
        header("x-forwarded-host"),
        header(header::HOST.as_str()),
    )
}

/// The handler.
pub async fn post(
    State(state): State<AppState>,
    query: Result<Query<TargetQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let query = query.map(|Query(query)| query).unwrap_or_default();
    let response = match handle(&state, &query, &headers, body).await {
        Ok(reply) => (StatusCode::ACCEPTED, Json(reply)).into_response(),
        Err(error) => error.into_response(),
    };
    state
        .metrics
        .dispatch_latency(response.status().as_u16(), started.elapsed());
    response
}

async fn handle(
    state: &AppState,
    query: &TargetQuery,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_body"
        };
        ApiError::new(status, code, rejection.body_text())
    })?;
    let compact = envelope_text(&body).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_envelope",
            "the body is neither a JWS compact string nor {\"envelope\": \"...\"}",
        )
    })?;
    let outcome = state
        .dispatcher
        .dispatch(routing_host(query, headers), &compact)
        .await?;
    Ok(match outcome {
        Outcome::Queued { message_id } => {
            json!({"ok": true, "decision": "allow", "queued": true, "messageId": message_id})
        }
        Outcome::Denied { reason } => {
            json!({"ok": true, "decision": "deny", "queued": false, "reason": reason})
        }
    })
}

/// The compact string of a body: the text itself, or the `envelope` member of a JSON
/// object. `None` when the body is not UTF-8.
fn envelope_text(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.starts_with('{') {
        let value: Value = serde_json::from_str(text).ok()?;
        return value.get("envelope")?.as_str().map(str::to_owned);
    }
    Some(text.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::envelope_text;

    #[test]
    fn bodies_carry_the_compact_string_bare_or_wrapped() {
        assert_eq!(envelope_text(b" a.b.c\n").as_deref(), Some("a.b.c"));
        assert_eq!(
            envelope_text(br#"{"envelope": "a.b.c"}"#).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(envelope_text(br#"{"other": 1}"#), None);
        assert_eq!(envelope_text(b"{not json"), None);
        assert_eq!(envelope_text(&[0xff, 0xfe]), None);
    }
}
