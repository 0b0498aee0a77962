//! A tenant's agents (with their well-known documents, from [`crate::provision`]) and
//! connections (from connection tokens), and the owner actions on a connection: suspend,
//! resume and revoke, each audited in the connection's chain and announced to the agent.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminResult, RawBody, json_body, reply, store_error, tenant_access};
use crate::audit::{AuditDecision, NewAuditEntry, format_timestamp};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::provision;
use crate::store::{Agent, Connection, ConnectionStatus, TenantScope};

fn agent_json(agent: &Agent) -> Value {
    json!({
        "did": agent.did,
        "publicKeyMultibase": agent.public_key_multibase,
        "didDocument": agent.did_document,
        "agentCard": agent.agent_card,
        "arpJson": agent.arp_json,
    })
}

fn connection_json(connection: &Connection) -> Value {
    json!({
        "connectionId": connection.connection_id,
        "agentDid": connection.agent_did,
        "peerDid": connection.peer_did,
        "status": connection.status.as_str(),
        "cedarPolicies": connection.cedar_policies,
        "obligations": connection.obligations,
        "expiresAt": connection.expires_at_ms.and_then(|ms| format_timestamp(ms).ok()),
        "token": connection.token_json,
    })
}

/// `POST .../agents` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewAgentBody {
    did: String,
    owner: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    public_key_multibase: Option<String>,
}

/// `POST /admin/v1/tenants/{tenant}/agents`: 201 with the agent and its documents, and
/// `secretKeyHex` (the Ed25519 seed) when the key was generated here — shown only once.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: RawBody,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let body: NewAgentBody = json_body(body)?;
    let new = provision::new_agent(
        &body.did,
        &body.owner,
        body.name.as_deref(),
        body.public_key_multibase.as_deref(),
    )
    .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, "invalid_agent", error.to_string()))?;
    state
        .store
        .create_agent(&scope, &new.agent)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "agent_exists"))?;
    Ok(reply(
        StatusCode::CREATED,
        json!({
            "agent": agent_json(&new.agent),
            "secretKeyHex": new.secret_seed.map(hex::encode),
        }),
    ))
}

/// `GET /admin/v1/tenants/{tenant}/agents`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let agents = state
        .store
        .agents(&scope)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    let items: Vec<Value> = agents.iter().map(agent_json).collect();
    Ok(reply(StatusCode::OK, json!({"agents": items})))
}

/// `GET /admin/v1/tenants/{tenant}/agents/{did}`.
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, did)): Path<(String, String)>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let agent = state
        .store
        .agent(&scope, &did)
        .await
        .map_err(|error| store_error(error, "unknown_agent", "conflict"))?;
    Ok(reply(StatusCode::OK, json!({"agent": agent_json(&agent)})))
}

/// `POST .../connections` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewConnectionBody {
    token: Value,
    #[serde(default)]
    agent: Option<String>,
}

/// `POST /admin/v1/tenants/{tenant}/connections`: stores the connection a token describes
/// (its hosted side is `agent`, or whichever of subject and audience the tenant hosts).
/// 404 `unknown_agent` when the tenant does not host that side.
pub async fn create_connection(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: RawBody,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let body: NewConnectionBody = json_body(body)?;
    let mut hosted = Vec::new();
    for side in ["subject", "audience"] {
        if let Some(did) = body.token.get(side).and_then(Value::as_str)
            && state.store.agent(&scope, did).await.is_ok()
        {
            hosted.push(did.to_owned());
        }
    }
    let connection = provision::connection_from_token(body.token, body.agent.as_deref(), |did| {
        hosted.iter().any(|h| h == did)
    })
    .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, "invalid_token", error.to_string()))?;
    state
        .store
        .agent(&scope, &connection.agent_did)
        .await
        .map_err(|error| store_error(error, "unknown_agent", "conflict"))?;
    state
        .store
        .create_connection(&scope, &connection)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "connection_exists"))?;
    // Dispatch on this host sees the change at once (other hosts within a second).
    state
        .dispatcher
        .cache()
        .invalidate_tenant(scope.tenant_id());
    Ok(reply(
        StatusCode::CREATED,
        json!({"connection": connection_json(&connection)}),
    ))
}

/// `GET /admin/v1/tenants/{tenant}/connections`.
pub async fn list_connections(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let connections = state
        .store
        .connections(&scope)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    let items: Vec<Value> = connections.iter().map(connection_json).collect();
    Ok(reply(StatusCode::OK, json!({"connections": items})))
}

/// `GET /admin/v1/tenants/{tenant}/connections/{connection}`.
pub async fn get_connection(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, connection_id)): Path<(String, String)>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let connection = state
        .store
        .connection(&scope, &connection_id)
        .await
        .map_err(|error| store_error(error, "unknown_connection", "conflict"))?;
    Ok(reply(
        StatusCode::OK,
        json!({"connection": connection_json(&connection)}),
    ))
}

/// Body of the owner actions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// Recorded as the audit entry's `reason` (else `null`).
    #[serde(default)]
    reason: Option<String>,
}

/// `POST .../connections/{connection}/suspend`: active → suspended.
pub async fn suspend(
    state: State<AppState>,
    headers: HeaderMap,
    path: Path<(String, String)>,
    body: RawBody,
) -> AdminResult {
    owner_action(state, headers, path, body, AuditDecision::Suspend).await
}

/// `POST .../connections/{connection}/resume`: suspended → active.
pub async fn resume(
    state: State<AppState>,
    headers: HeaderMap,
    path: Path<(String, String)>,
    body: RawBody,
) -> AdminResult {
    owner_action(state, headers, path, body, AuditDecision::Resume).await
}

/// `POST .../connections/{connection}/revoke`: active or suspended → revoked (final; the
/// connection is also listed in the agent's `revocations.json`).
pub async fn revoke(
    state: State<AppState>,
    headers: HeaderMap,
    path: Path<(String, String)>,
    body: RawBody,
) -> AdminResult {
    owner_action(state, headers, path, body, AuditDecision::Revoke).await
}

/// The statuses an action may start from, and where it leads.
fn transition(action: AuditDecision) -> (&'static [ConnectionStatus], ConnectionStatus) {
    match action {
        AuditDecision::Suspend => (&[ConnectionStatus::Active], ConnectionStatus::Suspended),
        AuditDecision::Resume => (&[ConnectionStatus::Suspended], ConnectionStatus::Active),
        _ => (
            &[ConnectionStatus::Active, ConnectionStatus::Suspended],
            ConnectionStatus::Revoked,
        ),
    }
}

/// One owner action: the status change and its audit entry (`suspend` / `resume` /
/// `revoke`, ARP-PROTOCOL §3) commit together; then the agent is told. 409
/// `invalid_transition` when the connection is not in a status the action starts from.
async fn owner_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, connection_id)): Path<(String, String)>,
    body: RawBody,
    action: AuditDecision,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let ActionBody { reason } = json_body(body)?;
    let (from, to) = transition(action);
    let entry = NewAuditEntry {
        timestamp: format_timestamp(crate::clock::now_ms()).map_err(|error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "clock_error",
                error.to_string(),
            )
        })?,
        msg_id: format!("owner-{}", uuid::Uuid::new_v4()),
        decision: action,
        policies_fired: Vec::new(),
        obligations: Vec::new(),
        spend_delta_cents: 0,
        reason: reason.clone(),
    };
    let (before, entry) = state
        .store
        .transition_connection(&scope, &connection_id, from, to, entry)
        .await
        .map_err(|error| store_error(error, "unknown_connection", "invalid_transition"))?;
    // Dispatch on this host sees the change at once (other hosts within a second).
    state
        .dispatcher
        .cache()
        .invalidate_tenant(scope.tenant_id());
    announce_connection_change(
        &state,
        &scope,
        &before.agent_did,
        &connection_id,
        to,
        reason.as_deref().unwrap_or(to.as_str()),
    )
    .await;
    Ok(reply(
        StatusCode::OK,
        json!({
            "connectionId": connection_id,
            "status": to.as_str(),
            "previousStatus": before.status.as_str(),
            "audit": entry,
        }),
    ))
}

/// Tells the agent's live WebSocket session, on this host or another, that a connection
/// was suspended or revoked (the `revocation {connectionId, reason}` event of
/// ARP-PROTOCOL §4). A resume is not announced.
async fn announce_connection_change(
    state: &AppState,
    scope: &TenantScope,
    agent_did: &str,
    connection_id: &str,
    to: ConnectionStatus,
    reason: &str,
) {
    tracing::info!(
        tenantId = scope.tenant_id(),
        agentDid = agent_did,
        connectionId = connection_id,
        status = to.as_str(),
        reason,
        "connection changed"
    );
    if matches!(to, ConnectionStatus::Suspended | ConnectionStatus::Revoked) {
        state
            .hub
            .connection_changed(agent_did, connection_id, reason)
            .await;
    }
}
