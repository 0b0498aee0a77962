//! The HTTP surface: `app(state)` builds the router, `serve` runs it until shutdown.
//!
//! Routes: `POST /didcomm` ([`didcomm`]), the per-agent `/.well-known/*` documents
//! ([`well_known`]), the agents' `GET /ws` and `GET /agent-connections` ([`agent`]),
//! `GET /health` (the process is up), `GET /ready` (the store answers), `GET /metrics`
//! (Prometheus text), and the tenant administration API under `/admin/v1` ([`admin`]).
//! Errors are [`error::ApiError`] JSON bodies.

pub mod admin;
pub mod agent;
pub mod didcomm;
pub mod error;
pub mod well_known;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::delivery::Hub;
use crate::dispatch::Dispatcher;
use crate::metrics::{self, Metrics};
use crate::store::Store;
use error::ApiError;
use well_known::Document;

/// The default request body limit: the largest envelope worth accepting (a generous
/// multiple of the 8 KiB bodies real agents send).
pub const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

/// Everything request handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Runs `POST /didcomm`.
    pub dispatcher: Arc<Dispatcher>,
    /// The store (documents, readiness).
    pub store: Arc<dyn Store>,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Digest of the policy of tenants without their own (shown by `/health`).
    pub default_policy_digest: String,
    /// Largest accepted request body, in bytes (413 above).
    pub body_limit: usize,
    /// The agents' live sessions.
    pub hub: Arc<Hub>,
    /// A fixed clock for bearer checks, for tests replaying recorded bearers; `None`: the
    /// system clock.
    pub bearer_clock_ms: Option<i64>,
    /// The admin API's settings (operator token, policy registry, limits).
    pub admin: Arc<admin::AdminConfig>,
}

/// The router of the whole server.
pub fn app(state: AppState) -> Router {
    let body_limit = state.body_limit;
    let admin = admin::router(&state);
    Router::new()
        .route("/didcomm", post(didcomm::post))
        .route(
            "/.well-known/did.json",
            get(|s, q, h| well_known::document(s, q, h, Document::Did)),
        )
        .route(
            "/.well-known/agent-card.json",
            get(|s, q, h| well_known::document(s, q, h, Document::AgentCard)),
        )
        .route(
            "/.well-known/arp.json",
            get(|s, q, h| well_known::document(s, q, h, Document::Arp)),
        )
        .route(
            "/.well-known/revocations.json",
            get(well_known::revocations),
        )
        .route("/ws", get(agent::ws))
        .route("/agent-connections", get(agent::connections))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(body_limit))
        // After the layer above: the admin routes have their own body limit.
        .merge(admin)
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "ok": true, "defaultPolicy": state.default_policy_digest }))
}

async fn ready(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({ "ok": true, "store": state.store.backend() })).into_response(),
        Err(error) => ApiError::store_unavailable(error.to_string()).into_response(),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    // A failing store leaves the last depth in place: the scrape still answers.
    if let Ok(depth) = state.store.queue_depth().await {
        state.metrics.set_queue_depth(depth);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// Serves `app(state)` on `listener` until `shutdown` completes, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
