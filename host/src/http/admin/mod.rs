//! The tenant administration API under `/admin/v1` (issue #5): tenants, API keys, plans
//! and limits (operator), and each tenant's agents, connections, audit chains, usage and
//! policies (the tenant's own API key, or the operator).
//!
//! Where to start reading: [`ROUTES`] is the one table of routes; the router
//! ([`router`]) and the OpenAPI document ([`openapi::document`], served at
//! `/admin/v1/openapi.json`) are both made from it, so they cannot disagree.
//!
//! Authentication is `Authorization: Bearer <token>`: the operator token
//! (`--operator-token` / `ARP_OPERATOR_TOKEN`), or a tenant API key (created by the
//! operator, shown once, stored as its SHA-256, revocable). Every tenant-owned route names
//! its tenant in the path; a tenant key sees only its own tenant, and another tenant's
//! tenant or objects answer **404** (never 403: a probe learns nothing). 403
//! `operator_only` is only for a tenant key on an operator route of its *own* tenant, or
//! on a route outside any tenant. Errors are [`ApiError`] bodies with reason codes.

pub mod agents;
pub mod audit;
pub mod openapi;
pub mod policies;
pub mod tenants;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::pdp::{AdmissionLimits, LimitMaxima, PolicyLimits, PolicyRegistry};
use crate::store::{StoreError, TenantScope};

/// What the admin API needs beside the rest of [`AppState`].
#[derive(Debug)]
pub struct AdminConfig {
    /// SHA-256 of the operator token; `None` when the host runs without one (then every
    /// operator route answers 401).
    operator_token_sha256: Option<[u8; 32]>,
    /// The server's compiled policies: an upload is admitted and compiled here, so the
    /// first decision after an activation finds it ready.
    pub registry: Arc<PolicyRegistry>,
    /// The host's limits of every decision (a tenant's own limits override them).
    pub default_limits: PolicyLimits,
    /// The most an operator may grant a tenant.
    pub maxima: LimitMaxima,
    /// Largest component accepted by `PUT .../policies` (the admission size limit).
    pub max_component_bytes: usize,
    /// Admissions (compilation, pre-initialisation, test cases) that may run at once on
    /// this host: half the CPUs, so uploads never starve decisions. More uploads wait up
    /// to [`ADMISSION_QUEUE_WAIT`], then answer 429 `admission_busy`.
    pub admissions: Arc<tokio::sync::Semaphore>,
}

/// How long an upload waits for an admission slot before 429 `admission_busy`.
pub const ADMISSION_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl AdminConfig {
    /// The admin settings of a server; an empty `operator_token` counts as none.
    pub fn new(
        operator_token: Option<&str>,
        registry: Arc<PolicyRegistry>,
        default_limits: PolicyLimits,
    ) -> Self {
        Self {
            operator_token_sha256: operator_token
                .filter(|token| !token.is_empty())
                .map(|token| Sha256::digest(token.as_bytes()).into()),
            registry,
            default_limits,
            maxima: LimitMaxima::default(),
            max_component_bytes: AdmissionLimits::default().max_component_bytes,
            admissions: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            )),
        }
    }

    /// The request body limit of the admin routes: a component at the size limit, in
    /// base64 inside a JSON body with its test cases.
    fn body_limit(&self) -> usize {
        self.max_component_bytes / 3 * 4 + (4 << 20)
    }
}

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the OpenAPI document).
    Public,
    /// The operator only; the route names no tenant.
    Operator,
    /// The operator only, on the tenant in the path (a tenant key: 404 for another
    /// tenant, 403 for its own).
    TenantOperator,
    /// The tenant's own key, or the operator.
    Tenant,
}

/// What a route's request body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    None,
    /// A JSON object.
    Json,
    /// A component (`application/wasm`) or JSON `{component, cases}`.
    Component,
}

/// One route of the admin API: what the router serves and the OpenAPI document lists.
#[derive(Clone, Copy, Debug)]
pub struct RouteSpec {
    /// Lowercase HTTP method (`get`, `post`, `put`, `delete`).
    pub method: &'static str,
    /// The path, with `{param}` segments (axum and OpenAPI share this syntax).
    pub path: &'static str,
    /// The OpenAPI `operationId`.
    pub operation_id: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Its request body.
    pub body: BodyKind,
    /// One line for the document.
    pub summary: &'static str,
}

/// Declares [`ROUTES`] and the router serving exactly them, from one list.
macro_rules! admin_routes {
    ($( $method:ident $path:literal => $handler:path,
        $op:literal, $access:ident, $body:ident, $summary:literal; )*) => {
        /// Every route of the admin API.
        pub const ROUTES: &[RouteSpec] = &[$(
            RouteSpec {
                method: stringify!($method),
                path: $path,
                operation_id: $op,
                access: Access::$access,
                body: BodyKind::$body,
                summary: $summary,
            },
        )*];

        fn table_router() -> Router<AppState> {
            Router::new()$( .route($path, axum::routing::$method($handler)) )*
        }
    };
}

admin_routes! {
    get "/admin/v1/openapi.json" => openapi::serve,
        "getOpenApi", Public, None, "This document";
    post "/admin/v1/tenants" => tenants::create,
        "createTenant", Operator, Json, "Create a tenant: {id, plan?}";
    get "/admin/v1/tenants" => tenants::list,
        "listTenants", Operator, None, "List tenants";
    get "/admin/v1/tenants/{tenant}" => tenants::get,
        "getTenant", Tenant, None, "A tenant, its plan and limits";
    put "/admin/v1/tenants/{tenant}/plan" => tenants::set_plan,
        "setPlan", TenantOperator, Json, "Change the plan: {plan}";
    get "/admin/v1/tenants/{tenant}/limits" => tenants::get_limits,
        "getLimits", Tenant, None, "The tenant's limits, effective limits and host maxima";
    put "/admin/v1/tenants/{tenant}/limits" => tenants::set_limits,
        "setLimits", TenantOperator, Json,
        "Set the tenant's limits: {fuel?, deadlineMs?, memoryBytes?, concurrency?} (null: host default)";
    post "/admin/v1/tenants/{tenant}/keys" => tenants::create_key,
        "createKey", TenantOperator, Json, "Create an API key: {label?}; the key is shown once";
    get "/admin/v1/tenants/{tenant}/keys" => tenants::list_keys,
        "listKeys", TenantOperator, None, "List API keys (without the keys)";
    delete "/admin/v1/tenants/{tenant}/keys/{key}" => tenants::revoke_key,
        "revokeKey", TenantOperator, None, "Revoke an API key";
    get "/admin/v1/tenants/{tenant}/usage" => tenants::usage,
        "getUsage", Tenant, None, "Inbound messages counted in a month (?period=YYYY-MM)";
    post "/admin/v1/tenants/{tenant}/agents" => agents::create,
        "createAgent", Tenant, Json,
        "Host an agent: {did, owner, name?, publicKeyMultibase?}; a generated key is shown once";
    get "/admin/v1/tenants/{tenant}/agents" => agents::list,
        "listAgents", Tenant, None, "List the tenant's agents";
    get "/admin/v1/tenants/{tenant}/agents/{did}" => agents::get,
        "getAgent", Tenant, None, "An agent and its well-known documents";
    post "/admin/v1/tenants/{tenant}/connections" => agents::create_connection,
        "createConnection", Tenant, Json, "Store a connection from its token: {token, agent?}";
    get "/admin/v1/tenants/{tenant}/connections" => agents::list_connections,
        "listConnections", Tenant, None, "List the tenant's connections";
    get "/admin/v1/tenants/{tenant}/connections/{connection}" => agents::get_connection,
        "getConnection", Tenant, None, "A connection";
    post "/admin/v1/tenants/{tenant}/connections/{connection}/suspend" => agents::suspend,
        "suspendConnection", Tenant, Json, "Suspend an active connection (audited `suspend`): {reason?}";
    post "/admin/v1/tenants/{tenant}/connections/{connection}/resume" => agents::resume,
        "resumeConnection", Tenant, Json, "Resume a suspended connection (audited `resume`): {reason?}";
    post "/admin/v1/tenants/{tenant}/connections/{connection}/revoke" => agents::revoke,
        "revokeConnection", Tenant, Json, "Revoke a connection for good (audited `revoke`): {reason?}";
    get "/admin/v1/tenants/{tenant}/audit/chains" => audit::list_chains,
        "listAuditChains", Tenant, None, "List the tenant's audit chains";
    get "/admin/v1/tenants/{tenant}/audit/chains/{agent}/{connection}" => audit::get_chain,
        "getAuditChain", Tenant, None, "One chain's entries and its verification";
    get "/admin/v1/tenants/{tenant}/audit/verify" => audit::verify,
        "verifyAudit", Tenant, None, "Verify every chain of the tenant";
    get "/admin/v1/tenants/{tenant}/policies" => policies::list,
        "listPolicies", Tenant, None, "List policy versions and the active one";
    put "/admin/v1/tenants/{tenant}/policies" => policies::upload,
        "uploadPolicy", Tenant, Component,
        "Upload a component (application/wasm, or JSON {component: base64, cases?}); admitted, tested, stored by digest, not activated";
    get "/admin/v1/tenants/{tenant}/policies/active" => policies::get_active,
        "getActivePolicy", Tenant, None, "The active policy version";
    put "/admin/v1/tenants/{tenant}/policies/active" => policies::activate,
        "activatePolicy", Tenant, Json, "Activate a stored version (rollback: an earlier one): {digest}";
}

/// The admin router (merged into [`super::app`]), with its own body limit.
pub fn router(state: &AppState) -> Router<AppState> {
    table_router()
        .route("/admin/v1/{*rest}", axum::routing::any(unknown_route))
        .layer(DefaultBodyLimit::max(state.admin.body_limit()))
}

/// Any other path under `/admin/v1`.
async fn unknown_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        "no such admin route: see /admin/v1/openapi.json",
    )
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The operator token.
    Operator,
    /// A tenant API key.
    Tenant(TenantScope),
}

/// The caller of a request, from `Authorization: Bearer <token>` (401 `unauthorized`
/// when missing, unknown or revoked).
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <operator token or tenant API key>",
            )
        })?;
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if let Some(operator) = &state.admin.operator_token_sha256
        && constant_time_eq(operator, &digest)
    {
        return Ok(Caller::Operator);
    }
    match state.store.tenant_by_api_key(&hex::encode(digest)).await {
        Ok(scope) => Ok(Caller::Tenant(scope)),
        Err(StoreError::NotFound(_)) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown or revoked token",
        )),
        Err(error) => Err(store_error(error, "unauthorized", "conflict")),
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The tenant named in the path, if the caller may see it: the operator sees every
/// tenant, a key only its own; anything else is 404 `unknown_tenant`.
pub async fn visible_tenant(
    state: &AppState,
    caller: &Caller,
    tenant_id: &str,
) -> Result<TenantScope, ApiError> {
    match caller {
        Caller::Tenant(scope) if scope.tenant_id() == tenant_id => Ok(scope.clone()),
        Caller::Tenant(_) => Err(unknown_tenant()),
        Caller::Operator => state
            .store
            .tenant_scope(tenant_id)
            .await
            .map_err(|error| store_error(error, "unknown_tenant", "conflict")),
    }
}

/// Authenticates and resolves the path's tenant ([`Access::Tenant`] routes).
pub async fn tenant_access(
    state: &AppState,
    headers: &HeaderMap,
    tenant_id: &str,
) -> Result<(Caller, TenantScope), ApiError> {
    let caller = authenticate(state, headers).await?;
    let scope = visible_tenant(state, &caller, tenant_id).await?;
    Ok((caller, scope))
}

/// Authenticates, resolves the path's tenant, then requires the operator
/// ([`Access::TenantOperator`] routes: 404 before 403, so another tenant's key learns
/// nothing).
pub async fn operator_tenant_access(
    state: &AppState,
    headers: &HeaderMap,
    tenant_id: &str,
) -> Result<TenantScope, ApiError> {
    let (caller, scope) = tenant_access(state, headers, tenant_id).await?;
    require_operator(&caller)?;
    Ok(scope)
}

/// Authenticates and requires the operator ([`Access::Operator`] routes).
pub async fn operator_access(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    require_operator(&authenticate(state, headers).await?)
}

fn require_operator(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Operator => Ok(()),
        Caller::Tenant(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operator_only",
            "this route needs the operator token",
        )),
    }
}

/// 404 `unknown_tenant`.
pub fn unknown_tenant() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_tenant", "no such tenant")
}

/// A store failure as an answer: `NotFound` is 404 `not_found`, `Conflict` 409
/// `conflict`, an unreachable store 503, anything else 500.
pub fn store_error(error: StoreError, not_found: &'static str, conflict: &'static str) -> ApiError {
    match error {
        StoreError::NotFound(what) => ApiError::new(
            StatusCode::NOT_FOUND,
            not_found,
            format!("not found: {what}"),
        ),
        StoreError::Conflict(what) => ApiError::new(StatusCode::CONFLICT, conflict, what),
        StoreError::Unavailable(error) => ApiError::store_unavailable(error.to_string()),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            other.to_string(),
        ),
    }
}

/// A request body, or the reason it could not be read.
pub type RawBody = Result<Bytes, BytesRejection>;

/// The body's bytes (413 `payload_too_large` over the limit).
pub fn body_bytes(body: RawBody) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_body"
        };
        ApiError::new(status, code, rejection.body_text())
    })
}

/// A JSON body (an empty body reads as `{}`); 400 `invalid_body` when it does not parse.
pub fn json_body<T: DeserializeOwned>(body: RawBody) -> Result<T, ApiError> {
    let bytes = body_bytes(body)?;
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(text).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body is not the expected JSON: {error}"),
        )
    })
}

/// A success answer: `status` with the JSON `body` plus `"ok": true`.
pub fn reply(status: StatusCode, mut body: Value) -> Response {
    if let Value::Object(map) = &mut body {
        map.insert("ok".into(), Value::Bool(true));
    }
    (status, axum::Json(body)).into_response()
}

/// The handler type of every admin route.
pub type AdminResult = Result<Response, ApiError>;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_route_table_has_unique_operations_and_method_paths() {
        let mut ids = std::collections::BTreeSet::new();
        let mut routes = std::collections::BTreeSet::new();
        for route in ROUTES {
            assert!(ids.insert(route.operation_id), "{}", route.operation_id);
            assert!(routes.insert((route.method, route.path)), "{}", route.path);
            assert!(route.path.starts_with("/admin/v1/"));
            assert_eq!(
                route.path.contains("{tenant}"),
                matches!(route.access, Access::Tenant | Access::TenantOperator),
                "{}",
                route.path
            );
        }
    }

    #[test]
    fn token_comparison_is_exact() {
        let a: [u8; 32] = Sha256::digest(b"a").into();
        let b: [u8; 32] = Sha256::digest(b"b").into();
        assert!(constant_time_eq(&a, &a));
        assert!(!constant_time_eq(&a, &b));
    }
}
