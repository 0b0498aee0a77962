//! A tenant's policies: upload (admission off the async reactor and time-bounded, then
//! the tenant's own test cases), list the immutable versions, activate one (rollback is
//! activating an earlier one).
//!
//! Why a switch never fails or mixes a request: an upload is compiled into the server's
//! [`crate::pdp::PolicyRegistry`] before it is stored; activation first makes sure the
//! version is compiled there, then changes the tenant's active digest in one statement.
//! Each decision reads the active digest once and runs that version to the end, so every
//! request is decided wholly by the old version or wholly by the new one. A refused upload
//! stores nothing and leaves the active version alone.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::tenants::tenant_limits;
use super::{AdminResult, RawBody, body_bytes, json_body, reply, store_error, tenant_access};
use crate::audit::format_timestamp;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::pdp::{AdmissionError, CompiledPolicy, PolicyRegistry, digest_of};
use crate::runner::{self, Case};
use crate::store::TenantScope;

/// Most test cases an upload may carry: they run on the upload's request, each bounded by
/// the tenant's deadline.
pub const MAX_UPLOAD_CASES: usize = 1000;

/// The JSON form of an upload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadBody {
    /// The component, base64 (standard alphabet, padded or not).
    component: String,
    /// A case file as JSON (the `policy test` formats); every case must pass.
    #[serde(default)]
    cases: Option<Value>,
}

/// Why an upload was refused after admission started.
enum Refusal {
    Admission(AdmissionError),
    Cases(Vec<Value>, usize),
    Task(String),
}

fn admission_error(error: &AdmissionError) -> ApiError {
    let status = match error {
        AdmissionError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, error.code(), error.to_string())
}

/// `PUT /admin/v1/tenants/{tenant}/policies`: 201 `{digest, sizeBytes, cases}`. Refusals:
/// 413 `component_too_large`, 422 with the admission reason code (`not_wasm`,
/// `not_a_component`, `unsupported_world`, `forbidden_import`, `compile_timeout`, ...),
/// 422 `cases_failed` (with each case's outcome), 400 `invalid_body` / `invalid_cases`.
pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: RawBody,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let (bytes, cases) = if is_json {
        let upload: UploadBody = json_body(body)?;
        let bytes = decode_base64(&upload.component)?;
        let cases = upload.cases.map(|cases| parse_cases(&cases)).transpose()?;
        (bytes, cases)
    } else {
        let bytes = body_bytes(body).map_err(|error| {
            if error.status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(error.status, "component_too_large", error.detail)
            } else {
                error
            }
        })?;
        (bytes.to_vec(), None)
    };
    if bytes.len() > state.admin.max_component_bytes {
        return Err(admission_error(&AdmissionError::TooLarge {
            size: bytes.len(),
            limit: state.admin.max_component_bytes,
        }));
    }
    let limits = tenant_limits(&state, &scope)
        .await?
        .apply(state.admin.default_limits);
    let _slot = admission_slot(&state).await?;
    let registry = state.admin.registry.clone();
    let size = bytes.len();
    let case_count = cases.as_ref().map_or(0, Vec::len);
    let checked = tokio::task::spawn_blocking(move || {
        let was_loaded = registry.get(&digest_of(&bytes)).is_some();
        let policy = registry.load(&bytes).map_err(Refusal::Admission)?;
        if let Some(cases) = &cases {
            let outcomes = runner::run_cases(registry.engine(), &policy, &limits, cases);
            let failed = outcomes.iter().filter(|o| !o.passed()).count();
            if failed > 0 {
                // Not stored, so not kept compiled either (unless it was loaded before:
                // the same component may be another tenant's active version).
                if !was_loaded {
                    registry.forget(&policy.digest);
                }
                let report = outcomes
                    .iter()
                    .map(|o| {
                        json!({
                            "name": o.name,
                            "passed": o.passed(),
                            "effect": o.decision.effect.as_str(),
                            "mismatches": o.mismatches,
                        })
                    })
                    .collect();
                return Err(Refusal::Cases(report, failed));
            }
        }
        Ok((policy, bytes))
    })
    .await
    .map_err(|error| Refusal::Task(error.to_string()))
    .and_then(|result| result);
    let (policy, bytes) = match checked {
        Ok(done) => done,
        Err(Refusal::Admission(error)) => return Err(admission_error(&error)),
        Err(Refusal::Cases(report, failed)) => {
            let mut error = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "cases_failed",
                format!("{failed} of {case_count} test cases failed"),
            );
            error.extra = Some(json!({"cases": report}));
            return Err(error);
        }
        Err(Refusal::Task(detail)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "admission_failed",
                detail,
            ));
        }
    };
    state
        .store
        .put_policy_version(&scope, &policy.digest, &bytes)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    tracing::info!(
        tenantId = scope.tenant_id(),
        digest = policy.digest,
        size,
        cases = case_count,
        "policy version stored"
    );
    Ok(reply(
        StatusCode::CREATED,
        json!({"digest": policy.digest, "sizeBytes": size, "casesPassed": case_count}),
    ))
}

fn decode_base64(text: &str) -> Result<Vec<u8>, ApiError> {
    let trimmed = text.trim().trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("component is not base64: {error}"),
            )
        })
}

fn parse_cases(cases: &Value) -> Result<Vec<Case>, ApiError> {
    let cases = runner::parse_cases(&cases.to_string(), "cases").map_err(|error| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_cases", error.to_string())
    })?;
    if cases.len() > MAX_UPLOAD_CASES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_cases",
            format!(
                "{} cases, over the limit of {MAX_UPLOAD_CASES}",
                cases.len()
            ),
        ));
    }
    Ok(cases)
}

async fn active_digest(state: &AppState, scope: &TenantScope) -> Result<Option<String>, ApiError> {
    state
        .store
        .active_policy_digest(scope)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))
}

/// `GET /admin/v1/tenants/{tenant}/policies`: versions oldest first, and the active one
/// (`null`: the host's default policy).
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let versions = state
        .store
        .policy_versions(&scope)
        .await
        .map_err(|error| store_error(error, "unknown_tenant", "conflict"))?;
    let active = active_digest(&state, &scope).await?;
    let items: Vec<Value> = versions
        .iter()
        .map(|version| {
            json!({
                "digest": version.digest,
                "sizeBytes": version.size_bytes,
                "createdAt": format_timestamp(version.created_at_ms).ok(),
                "active": active.as_deref() == Some(version.digest.as_str()),
            })
        })
        .collect();
    Ok(reply(
        StatusCode::OK,
        json!({
            "versions": items,
            "active": active,
            "defaultPolicy": state.default_policy_digest,
        }),
    ))
}

/// `GET /admin/v1/tenants/{tenant}/policies/active`.
pub async fn get_active(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let active = active_digest(&state, &scope).await?;
    Ok(reply(
        StatusCode::OK,
        json!({
            "active": active,
            "effective": active.clone().unwrap_or_else(|| state.default_policy_digest.clone()),
        }),
    ))
}

/// `PUT .../policies/active` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    digest: String,
}

/// `PUT /admin/v1/tenants/{tenant}/policies/active`: makes a stored version active (404
/// `unknown_policy_version` otherwise). The version is compiled first, so the switch
/// itself is one statement.
pub async fn activate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: RawBody,
) -> AdminResult {
    let (_, scope) = tenant_access(&state, &headers, &tenant).await?;
    let ActivateBody { digest } = json_body(body)?;
    let previous = active_digest(&state, &scope).await?;
    if state.admin.registry.get(&digest).is_none() {
        let bytes = state
            .store
            .policy_bytes(&scope, &digest)
            .await
            .map_err(|error| store_error(error, "unknown_policy_version", "conflict"))?;
        let _slot = admission_slot(&state).await?;
        compile(state.admin.registry.clone(), bytes).await?;
    }
    state
        .store
        .activate_policy(&scope, &digest)
        .await
        .map_err(|error| store_error(error, "unknown_policy_version", "conflict"))?;
    // Dispatch on this host sees the change at once (other hosts within a second).
    state
        .dispatcher
        .cache()
        .invalidate_tenant(scope.tenant_id());
    tracing::info!(
        tenantId = scope.tenant_id(),
        digest,
        previous = previous.as_deref().unwrap_or("default"),
        "policy version activated"
    );
    Ok(reply(
        StatusCode::OK,
        json!({"active": digest, "previous": previous}),
    ))
}

/// A slot of the host's admission capacity (429 `admission_busy` after waiting
/// [`super::ADMISSION_QUEUE_WAIT`]).
async fn admission_slot(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let busy = || {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "admission_busy",
            "other uploads are being admitted; retry later",
        )
    };
    match tokio::time::timeout(
        super::ADMISSION_QUEUE_WAIT,
        state.admin.admissions.clone().acquire_owned(),
    )
    .await
    {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(busy()),
    }
}

/// Compiles stored bytes into the registry off the async reactor.
async fn compile(
    registry: Arc<PolicyRegistry>,
    bytes: Vec<u8>,
) -> Result<Arc<CompiledPolicy>, ApiError> {
    match tokio::task::spawn_blocking(move || registry.load(&bytes)).await {
        Ok(Ok(policy)) => Ok(policy),
        Ok(Err(error)) => Err(admission_error(&error)),
        Err(error) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "admission_failed",
            error.to_string(),
        )),
    }
}
