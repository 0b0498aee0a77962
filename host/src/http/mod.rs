//! The HTTP surface: `app(state)` builds the router, `serve` runs it until shutdown.

use std::future::Future;
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::pdp::{CompiledPolicy, Pdp, PolicyRegistry};

/// Everything request handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Runs decisions.
    pub pdp: Arc<Pdp>,
    /// Compiled policies by digest.
    pub registry: Arc<PolicyRegistry>,
    /// The policy of tenants that have not uploaded one (`cedar`).
    pub default_policy: Arc<CompiledPolicy>,
}

/// The router of the whole server.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .with_state(state)
}

async fn health(axum::extract::State(state): axum::extract::State<AppState>) -> Json<Value> {
    Json(json!({ "ok": true, "defaultPolicy": state.default_policy.digest }))
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
