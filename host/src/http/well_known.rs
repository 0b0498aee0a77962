//! The per-agent documents (ARP-PROTOCOL §5), routed by host like `POST /didcomm`:
//! `/.well-known/did.json`, `agent-card.json`, `arp.json` and `revocations.json`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::didcomm::{TargetQuery, routing_host};
use super::error::ApiError;
use crate::audit::format_timestamp;
use crate::routing::agent_did_from_host;
use crate::store::{Agent, StoreError, TenantScope};

/// Which stored document.
#[derive(Clone, Copy, Debug)]
pub enum Document {
    /// `did.json`.
    Did,
    /// `agent-card.json`.
    AgentCard,
    /// `arp.json`.
    Arp,
}

/// `GET /.well-known/{did,agent-card,arp}.json`.
pub async fn document(
    state: State<AppState>,
    query: Result<Query<TargetQuery>, QueryRejection>,
    headers: HeaderMap,
    which: Document,
) -> Response {
    match hosted_agent(&state, query, &headers).await {
        Ok((_, agent)) => public_json(match which {
            Document::Did => agent.did_document,
            Document::AgentCard => agent.agent_card,
            Document::Arp => agent.arp_json,
        }),
        Err(error) => error.into_response(),
    }
}

/// `GET /.well-known/revocations.json`: what the agent has revoked, newest last.
pub async fn revocations(
    state: State<AppState>,
    query: Result<Query<TargetQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let (scope, agent) = hosted_agent(&state, query, &headers).await?;
        let revocations = state
            .store
            .revocations(&scope, &agent.did)
            .await
            .map_err(store_error)?;
        let items: Vec<Value> = revocations
            .into_iter()
            .map(|revocation| {
                json!({
                    "type": revocation.kind,
                    "id": revocation.id,
                    "revoked_at": format_timestamp(revocation.created_at_ms).ok(),
                })
            })
            .collect();
        Ok::<_, ApiError>(json!({ "did": agent.did, "revocations": items }))
    };
    match answer.await {
        Ok(body) => public_json(body),
        Err(error) => error.into_response(),
    }
}

async fn hosted_agent(
    state: &AppState,
    query: Result<Query<TargetQuery>, QueryRejection>,
    headers: &HeaderMap,
) -> Result<(TenantScope, Agent), ApiError> {
    let query = query.map(|Query(query)| query).unwrap_or_default();
    let did = routing_host(&query, headers)
        .and_then(agent_did_from_host)
        .ok_or_else(ApiError::unknown_agent)?;
    state.store.agent_by_did(&did).await.map_err(store_error)
}

fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::NotFound(_) => ApiError::unknown_agent(),
        StoreError::Unavailable(error) => ApiError::store_unavailable(error.to_string()),
        other => ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            other.to_string(),
        ),
    }
}

/// A public, briefly cacheable JSON document readable from any origin.
fn public_json(body: Value) -> Response {
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}
