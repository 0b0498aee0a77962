//! A tenant's audit chains: list them, read one with its verification, verify all
//! (with [`crate::audit::verify_chain`], the reference verifier's rules).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::{AdminResult, reply, store_error, tenant_access};
use crate::audit::verify_chain;
use crate::http::AppState;
use crate::http::error::ApiError;

/// `GET /admin/v1/tenants/{tenant}/audit/chains`.
pub async fn list_chains(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let chains = state
        .store
        .audit_chains(&scope)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    let items: Vec<Value> = chains
        .iter()
        .map(|(agent, connection)| json!({"agentDid": agent, "connectionId": connection}))
        .collect();
    Ok(reply(StatusCode::OK, json!({"chains": items})))
}

/// `GET /admin/v1/tenants/{tenant}/audit/chains/{agent}/{connection}`: the entries (the
/// reference's fields) and the verification report. 404 `unknown_chain` when the tenant
/// has no such chain.
pub async fn get_chain(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, agent, connection)): Path<(String, String, String)>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let entries = state
        .store
        .audit_chain(&scope, &agent, &connection)
        .await
        .map_err(|error| store_error(error, "unknown_chain", "conflict"))?;
    if entries.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_chain",
            "no audit chain for this agent and connection",
        ));
    }
    let report = verify_chain(&entries);
    Ok(reply(
        StatusCode::OK,
        json!({
            "agentDid": agent,
            "connectionId": connection,
            "entries": entries,
            "verify": report,
        }),
    ))
}

/// `GET /admin/v1/tenants/{tenant}/audit/verify`: every chain's report; `valid` when all
/// hold.
pub async fn verify(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let chains = state
        .store
        .audit_chains(&scope)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    let mut all_valid = true;
    let mut items = Vec::with_capacity(chains.len());
    for (agent, connection) in chains {
        let entries = state
            .store
            .audit_chain(&scope, &agent, &connection)
            .await
            .map_err(|error| store_error(error, "unknown_chain", "conflict"))?;
        let report = verify_chain(&entries);
        all_valid &= report.valid;
        items.push(json!({"agentDid": agent, "connectionId": connection, "verify": report}));
    }
    Ok(reply(
        StatusCode::OK,
        json!({"valid": all_valid, "chains": items}),
    ))
}
