//! The agent-facing routes, behind the agent bearer (ARP-PROTOCOL §4):
//! `GET /ws?did=&token=` upgrades to the delivery session, and `GET /agent-connections?did=`
//! lists the agent's connections. The bearer comes from the `token` query parameter or
//! from `Authorization: Bearer`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::delivery::bearer::{BearerError, verify_bearer};
use crate::delivery::{hosted_agent, ws};
use crate::store::{Connection, TenantScope};

/// The credentials of an agent request.
#[derive(Debug, Default, Deserialize)]
pub struct AgentQuery {
    did: Option<String>,
    token: Option<String>,
}

impl From<BearerError> for ApiError {
    fn from(error: BearerError) -> Self {
        let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        Self::new(status, error.code(), error.to_string())
    }
}

/// Authenticates the agent of `query` (bearer from the query or the header): its scope
/// and DID.
async fn authenticate(
    state: &AppState,
    query: &AgentQuery,
    headers: &HeaderMap,
) -> Result<(TenantScope, String), ApiError> {
    let bearer = query.token.clone().or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|token| token.trim().to_owned())
    });
    let (Some(did), Some(bearer)) = (&query.did, bearer) else {
        return Err(BearerError::MissingCredentials.into());
    };
    let agent = hosted_agent(state.store.as_ref(), did)
        .await
        .map_err(|error| ApiError::store_unavailable(error.to_string()))?;
    let now = state
        .bearer_clock_ms
        .unwrap_or_else(crate::delivery::now_ms);
    verify_bearer(
        did,
        agent.as_ref().map(|(_, key)| key.as_str()),
        &bearer,
        now,
    )?;
    let (scope, _) = agent.ok_or(BearerError::UnknownAgent)?;
    Ok((scope, did.clone()))
}

/// `GET /ws`.
pub async fn ws(
    State(state): State<AppState>,
    query: Result<Query<AgentQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let query = query.map(|Query(query)| query).unwrap_or_default();
    let (scope, did) = match authenticate(&state, &query, &headers).await {
        Ok(agent) => agent,
        Err(error) => return error.into_response(),
    };
    if state.hub.is_shutting_down() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_shutdown",
            "the server is shutting down",
        )
        .into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "websocket_required",
                rejection.body_text(),
            )
            .into_response();
        }
    };
    let hub = state.hub.clone();
    let dispatcher = state.dispatcher.clone();
    upgrade.on_upgrade(move |socket| ws::run(socket, hub, dispatcher, scope, did))
}

/// `GET /agent-connections`.
pub async fn connections(
    State(state): State<AppState>,
    query: Result<Query<AgentQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let query = query.map(|Query(query)| query).unwrap_or_default();
    let result = async {
        let (scope, did) = authenticate(&state, &query, &headers).await?;
        let connections = state
            .store
            .agent_connections(&scope, &did)
            .await
            .map_err(|error| ApiError::store_unavailable(error.to_string()))?;
        let connections: Vec<Value> = connections.iter().map(connection_json).collect();
        Ok::<_, ApiError>(json!({ "ok": true, "agentDid": did, "connections": connections }))
    }
    .await;
    match result {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}

/// A connection as the agent sees it.
pub fn connection_json(connection: &Connection) -> Value {
    json!({
        "connectionId": connection.connection_id,
        "agentDid": connection.agent_did,
        "peerDid": connection.peer_did,
        "status": connection.status.as_str(),
        "expiresAt": connection.expires_at_ms,
        "cedarPolicies": connection.cedar_policies,
        "obligations": connection.obligations,
        "token": connection.token_json,
    })
}
