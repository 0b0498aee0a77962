//! Assembles a server from its settings: the engine, the compiled default policy, the
//! store, the delivery hub, the dispatcher and the admin API, ready for
//! [`crate::http::serve`]. `arp-host serve` and `arp-host demo` both start here.

use std::sync::Arc;
use std::time::Duration;

use crate::cli::{CliError, ServeArgs};
use crate::delivery::{DeliveryConfig, Hub};
use crate::did_web::{DidWebConfig, DidWebResolver};
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::pdp::{self, AdmissionLimits, EngineConfig, Pdp, PolicyEngine, PolicyRegistry};
use crate::peers::PeerResolver;

/// How long shutdown waits for agent sessions to close after `shutdown` was sent.
pub const SESSION_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A server ready to serve: its state and the delivery hub (to shut sessions down).
pub struct Prepared {
    /// What the router needs.
    pub state: AppState,
    /// The delivery hub, already running its host-event and expiry tasks.
    pub hub: Arc<Hub>,
}

/// Builds everything `serve` needs from `args`. Must run inside a multi-threaded tokio
/// runtime: it spawns the hub's background tasks. Compiling the default policy takes a
/// few seconds the first time (then it is cached in the data dir).
pub async fn prepare(args: &ServeArgs) -> Result<Prepared, CliError> {
    let data_dir = &args.store.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| CliError::Io {
        what: format!("cannot create the data dir {}", data_dir.display()),
        source,
    })?;
    let engine = Arc::new(PolicyEngine::new(EngineConfig::default())?);
    let registry = Arc::new(PolicyRegistry::new(
        engine.clone(),
        AdmissionLimits::default(),
        Some(data_dir.join("policy-cache")),
    ));
    tracing::info!("loading the default policy (compiled once, then cached in the data dir)");
    let default_policy = {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || registry.load(pdp::DEFAULT_POLICY))
            .await
            .map_err(|error| CliError::Invalid(format!("loading the default policy: {error}")))?
            .map_err(|source| CliError::Refused {
                path: "the embedded default policy".into(),
                source,
            })?
    };
    let mut did_web = DidWebConfig {
        timeout: Duration::from_millis(args.did_web_timeout_ms),
        connect_to: args.did_web_connect_to,
        ..DidWebConfig::default()
    };
    if let Some(path) = &args.did_web_ca_file {
        did_web
            .extra_root_certificates_pem
            .push(std::fs::read(path).map_err(|source| CliError::Read {
                path: path.display().to_string(),
                source,
            })?);
    }
    let peers = PeerResolver::new(
        DidWebResolver::new(did_web).map_err(|error| CliError::Invalid(error.to_string()))?,
    );
    let metrics = Arc::new(Metrics::new(args.metrics_log_samples));
    let config = DispatchConfig {
        clock_window: Duration::from_secs(args.clock_window_secs),
        message_ttl: Duration::from_secs(args.message_ttl_secs),
        ..DispatchConfig::default()
    };
    let delivery = DeliveryConfig {
        ack_timeout: Duration::from_millis(args.ack_timeout_ms.max(1)),
        ping_interval: Duration::from_millis(args.ping_interval_ms.max(1)),
        rescan_interval: Duration::from_millis(args.rescan_interval_ms.max(1)),
        ..DeliveryConfig::default()
    };
    let store = args.store.open().await?;
    let hub = Arc::new(Hub::new(store.clone(), delivery));
    tokio::spawn(hub.clone().run_host_events());
    tokio::spawn(
        hub.clone()
            .run_expiry(Duration::from_secs(args.expiry_interval_secs.max(1))),
    );
    let admin = http::admin::AdminConfig::new(
        args.operator_token.as_deref(),
        registry.clone(),
        config.policy_limits,
    );
    let dispatcher = Dispatcher::new(
        store.clone(),
        Arc::new(Pdp::new(engine, None)),
        registry,
        default_policy.clone(),
        peers,
        metrics.clone(),
        config,
    )
    .with_delivery(hub.clone());
    let state = AppState {
        dispatcher: Arc::new(dispatcher),
        store,
        metrics,
        default_policy_digest: default_policy.digest.clone(),
        body_limit: args.body_limit,
        hub: hub.clone(),
        bearer_clock_ms: args.bearer_clock_ms,
        admin: Arc::new(admin),
    };
    Ok(Prepared { state, hub })
}
