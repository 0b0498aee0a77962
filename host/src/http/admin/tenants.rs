//! Tenants (operator): create, list, plan, limits and API keys; and a tenant's own view
//! of itself, its limits and its usage.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    AdminResult, RawBody, json_body, operator_access, operator_tenant_access, reply, store_error,
    tenant_access,
};
use crate::audit::format_timestamp;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::pdp::{PolicyLimits, TenantLimits};
use crate::store::{ApiKey, Plan, Tenant, TenantScope};

/// `POST /admin/v1/tenants` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    #[serde(default)]
    plan: Option<String>,
}

/// Letters, digits, `-`, `_`, `.`; 1 to 64 of them (as `arp-host tenant create`).
fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn parse_plan(plan: &str) -> Result<Plan, ApiError> {
    Plan::parse(plan).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_plan",
            format!("unknown plan {plan:?}: use free, pro, team or internal"),
        )
    })
}

fn tenant_json(tenant: &Tenant) -> Value {
    json!({
        "id": tenant.id,
        "plan": tenant.plan.as_str(),
        "monthlyCap": tenant.plan.monthly_cap(),
        "createdAt": format_timestamp(tenant.created_at_ms).ok(),
    })
}

/// The limits as JSON (`null`: the host default).
pub fn limits_json(limits: &TenantLimits) -> Value {
    json!({
        "fuel": limits.fuel,
        "deadlineMs": limits.deadline_ms,
        "memoryBytes": limits.memory_bytes,
        "concurrency": limits.concurrency,
    })
}

fn effective_json(limits: &PolicyLimits, concurrency: Option<u32>) -> Value {
    json!({
        "fuel": limits.fuel,
        "deadlineMs": limits.deadline_ms,
        "memoryBytes": limits.memory_bytes,
        "concurrency": concurrency,
    })
}

/// `POST /admin/v1/tenants`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: RawBody,
) -> AdminResult {
    operator_access(&state, &headers).await?;
    let new: NewTenant = json_body(body)?;
    if !valid_tenant_id(&new.id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant_id",
            "a tenant id is 1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    let plan = parse_plan(new.plan.as_deref().unwrap_or("free"))?;
    let scope = state
        .store
        .create_tenant(&new.id, plan)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "tenant_exists"))?;
    let tenant = state
        .store
        .tenant(&scope)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    Ok(reply(
        StatusCode::CREATED,
        json!({"tenant": tenant_json(&tenant)}),
    ))
}

/// `GET /admin/v1/tenants`.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> AdminResult {
    operator_access(&state, &headers).await?;
    let tenants = state
        .store
        .tenants()
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    let items: Vec<Value> = tenants.iter().map(tenant_json).collect();
    Ok(reply(StatusCode::OK, json!({"tenants": items})))
}

/// `GET /admin/v1/tenants/{tenant}`.
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let tenant = state
        .store
        .tenant(&scope)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    let limits = tenant_limits(&state, &scope).await?;
    let mut body = tenant_json(&tenant);
    body["limits"] = limits_json(&limits);
    Ok(reply(StatusCode::OK, json!({"tenant": body})))
}

/// `PUT /admin/v1/tenants/{tenant}/plan` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanBody {
    plan: String,
}

/// `PUT /admin/v1/tenants/{tenant}/plan`.
pub async fn set_plan(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: RawBody,
) -> AdminResult {
    let scope = operator_tenant_access(&state, &headers, &tenant).await?;
    let PlanBody { plan } = json_body(body)?;
    let plan = parse_plan(&plan)?;
    state
        .store
        .set_plan(&scope, plan)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    // Dispatch on this host sees the change at once (other hosts within a second).
    state
        .dispatcher
        .cache()
        .invalidate_tenant(scope.tenant_id());
    Ok(reply(
        StatusCode::OK,
        json!({"tenant": scope.tenant_id(), "plan": plan.as_str()}),
    ))
}

/// The tenant's stored limits.
pub async fn tenant_limits(
    state: &AppState,
    scope: &TenantScope,
) -> Result<TenantLimits, ApiError> {
    state
        .store
        .tenant_limits(scope)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))
}

/// `GET /admin/v1/tenants/{tenant}/limits`: the tenant's own limits (`null`: the host
/// default), the limits its decisions run under, and the host maxima.
pub async fn get_limits(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let limits = tenant_limits(&state, &scope).await?;
    let maxima = state.admin.maxima;
    Ok(reply(
        StatusCode::OK,
        json!({
            "tenant": scope.tenant_id(),
            "limits": limits_json(&limits),
            "effective": effective_json(&limits.apply(state.admin.default_limits), limits.concurrency),
            "maxima": {
                "fuel": maxima.fuel,
                "deadlineMs": maxima.deadline_ms,
                "memoryBytes": maxima.memory_bytes,
                "concurrency": maxima.concurrency,
            },
        }),
    ))
}

/// `PUT /admin/v1/tenants/{tenant}/limits` body: every member optional, `null` or absent
/// restores the host default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LimitsBody {
    #[serde(default)]
    fuel: Option<u64>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    memory_bytes: Option<u64>,
    #[serde(default)]
    concurrency: Option<u32>,
}

/// `PUT /admin/v1/tenants/{tenant}/limits`: 400 `limit_out_of_range` above the host
/// maxima or at zero. Applies from the tenant's next decision.
pub async fn set_limits(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: RawBody,
) -> AdminResult {
    let scope = operator_tenant_access(&state, &headers, &tenant).await?;
    let body: LimitsBody = json_body(body)?;
    let limits = TenantLimits {
        fuel: body.fuel,
        deadline_ms: body.deadline_ms,
        memory_bytes: body.memory_bytes,
        concurrency: body.concurrency,
    };
    state
        .admin
        .maxima
        .check(&limits)
        .map_err(|detail| ApiError::new(StatusCode::BAD_REQUEST, "limit_out_of_range", detail))?;
    state
        .store
        .set_tenant_limits(&scope, &limits)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    // Dispatch on this host sees the change at once (other hosts within a second).
    state
        .dispatcher
        .cache()
        .invalidate_tenant(scope.tenant_id());
    Ok(reply(
        StatusCode::OK,
        json!({"tenant": scope.tenant_id(), "limits": limits_json(&limits)}),
    ))
}

/// `POST /admin/v1/tenants/{tenant}/keys` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    #[serde(default)]
    label: Option<String>,
}

/// A new API key: `arpk_` and 64 hex digits (256 bits from the OS generator).
fn new_api_key() -> (String, String) {
    let random = |n: usize| {
        (0..n)
            .map(|_| hex::encode(uuid::Uuid::new_v4().as_bytes()))
            .collect::<String>()
    };
    // A v4 UUID carries 122 random bits: three of them more than cover 256.
    let key = format!("arpk_{}", &random(3)[..64]);
    let id = format!("key_{}", &random(1)[..16]);
    (id, key)
}

/// The stored form of a key: lowercase hex SHA-256 of its text.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn key_json(key: &ApiKey) -> Value {
    json!({
        "id": key.id,
        "label": key.label,
        "createdAt": format_timestamp(key.created_at_ms).ok(),
        "revokedAt": key.revoked_at_ms.and_then(|ms| format_timestamp(ms).ok()),
    })
}

/// `POST /admin/v1/tenants/{tenant}/keys`: 201 with the key, shown only here.
pub async fn create_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: RawBody,
) -> AdminResult {
    let scope = operator_tenant_access(&state, &headers, &tenant).await?;
    let NewKey { label } = json_body(body)?;
    let (id, key) = new_api_key();
    state
        .store
        .create_api_key(&scope, &id, &key_digest(&key), label.as_deref())
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    Ok(reply(
        StatusCode::CREATED,
        json!({"tenant": scope.tenant_id(), "id": id, "key": key, "label": label}),
    ))
}

/// `GET /admin/v1/tenants/{tenant}/keys`.
pub async fn list_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> AdminResult {
    let scope = operator_tenant_access(&state, &headers, &tenant).await?;
    let keys = state
        .store
        .api_keys(&scope)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    let items: Vec<Value> = keys.iter().map(key_json).collect();
    Ok(reply(StatusCode::OK, json!({"keys": items})))
}

/// `DELETE /admin/v1/tenants/{tenant}/keys/{key}`: the key stops working at once.
pub async fn revoke_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, key_id)): Path<(String, String)>,
) -> AdminResult {
    let scope = operator_tenant_access(&state, &headers, &tenant).await?;
    state
        .store
        .revoke_api_key(&scope, &key_id)
        .await
        .map_err(|error| store_error(error, "unknown_key", "conflict"))?;
    Ok(reply(
        StatusCode::OK,
        json!({"id": key_id, "revoked": true}),
    ))
}

/// `GET /admin/v1/tenants/{tenant}/usage` query.
#[derive(Debug, Default, Deserialize)]
pub struct UsageQuery {
    /// `YYYY-MM` (UTC); default the current month.
    period: Option<String>,
}

/// `GET /admin/v1/tenants/{tenant}/usage`.
pub async fn usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let query = query.map(|Query(query)| query).unwrap_or_default();
    let period = match query.period {
        Some(period) => {
            let bytes = period.as_bytes();
            let valid = bytes.len() == 7
                && bytes[4] == b'-'
                && bytes
                    .iter()
                    .enumerate()
                    .all(|(i, b)| i == 4 || b.is_ascii_digit());
            if !valid {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_period",
                    "period is YYYY-MM",
                ));
            }
            period
        }
        None => current_period(),
    };
    let tenant = state
        .store
        .tenant(&scope)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    let inbound = state
        .store
        .usage(&scope, &period)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    Ok(reply(
        StatusCode::OK,
        json!({
            "tenant": scope.tenant_id(),
            "period": period,
            "inbound": inbound,
            "plan": tenant.plan.as_str(),
            "monthlyCap": tenant.plan.monthly_cap(),
        }),
    ))
}

/// The current UTC month, `YYYY-MM`.
fn current_period() -> String {
    format_timestamp(crate::clock::now_ms())
        .map(|timestamp| timestamp[..7].to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_distinct() {
        let (id_a, key_a) = new_api_key();
        let (id_b, key_b) = new_api_key();
        assert_ne!(key_a, key_b);
        assert_ne!(id_a, id_b);
        assert_eq!(key_a.len(), 5 + 64);
        assert!(key_a.starts_with("arpk_"));
        assert_eq!(key_digest(&key_a).len(), 64);
        assert!(valid_tenant_id("acme-1"));
        assert!(!valid_tenant_id("a/b"));
        assert_eq!(current_period().len(), 7);
    }
}
