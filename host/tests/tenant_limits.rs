//! A tenant's own limits reach the scheduler and the engine: its concurrency limit is how
//! many of its decisions run at once, its deadline is when each is cut off.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arp_host::pdp::{
    AdmissionLimits, EngineConfig, Pdp, PolicyEngine, PolicyFailure, PolicyLimits, PolicyRegistry,
    PolicyRequest, TenantLimits,
};

fn request(tenant: &str) -> PolicyRequest {
    serde_json::from_value(serde_json::json!({
        "tenant": tenant,
        "principal": {"type": "Agent", "id": "did:web:orion.agent"},
        "action": "read",
        "target": {"type": "Project", "id": "alpha"},
    }))
    .unwrap()
}

/// Two decisions of a spinning policy at once, each cut off at `deadline`; how long both
/// took.
async fn two_spins(pdp: &Arc<Pdp>, tenant: &str, limits: TenantLimits) -> Duration {
    let engine = pdp.engine().clone();
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("policy-cache");
    let registry = PolicyRegistry::new(engine, AdmissionLimits::default(), Some(cache));
    let wasm = std::fs::read(format!(
        "{}/arp_hostile_spin.wasm",
        env!("ARP_POLICY_WASM_DIR")
    ))
    .unwrap();
    let spin = registry.load(&wasm).unwrap();
    let base = PolicyLimits {
        fuel: u64::MAX / 2,
        ..PolicyLimits::default()
    };
    let applied = limits.apply(base);
    let concurrency = limits.concurrency.map(|c| usize::try_from(c).unwrap());
    let started = Instant::now();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (pdp, spin, request) = (pdp.clone(), spin.clone(), request(tenant));
            tokio::spawn(async move {
                pdp.decide_limited(spin, applied, &request, concurrency)
                    .await
            })
        })
        .collect();
    for run in runs {
        let decision = run.await.unwrap();
        assert_eq!(decision.failure, Some(PolicyFailure::Timeout));
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_concurrency_and_deadline_are_its_own() {
    let engine = Arc::new(PolicyEngine::new(EngineConfig::default()).unwrap());
    // The host default: one decision per tenant at a time.
    let pdp = Arc::new(Pdp::new(engine, Some(1)));
    let deadline = TenantLimits {
        deadline_ms: Some(300),
        ..TenantLimits::default()
    };
    // One at a time: the second waits for the first.
    let serial = two_spins(&pdp, "tenant-a", deadline).await;
    assert!(serial >= Duration::from_millis(580), "{serial:?}");
    // The operator granted two: both run at once.
    let parallel = two_spins(
        &pdp,
        "tenant-b",
        TenantLimits {
            concurrency: Some(2),
            ..deadline
        },
    )
    .await;
    assert!(parallel < Duration::from_millis(550), "{parallel:?}");
}
