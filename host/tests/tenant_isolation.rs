//! One tenant's hostile policy occupies only that tenant's evaluation slots: another
//! tenant's decision does not queue behind it.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arp_host::pdp::{
    AdmissionLimits, EngineConfig, Pdp, PolicyEngine, PolicyFailure, PolicyLimits, PolicyRegistry,
    PolicyRequest,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_tenant_does_not_hold_up_another_tenant() {
    let engine = Arc::new(PolicyEngine::new(EngineConfig::default()).unwrap());
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("policy-cache");
    let registry = PolicyRegistry::new(engine.clone(), AdmissionLimits::default(), Some(cache));
    let wasm =
        |name: &str| std::fs::read(format!("{}/{name}.wasm", env!("ARP_POLICY_WASM_DIR"))).unwrap();
    let spin = registry.load(&wasm("arp_hostile_spin")).unwrap();
    let deny_all = registry.load(&wasm("arp_policy_deny_all")).unwrap();
    let pdp = Arc::new(Pdp::new(engine, Some(1)));

    // Tenant A: three decisions that each burn a 400 ms deadline, one slot at a time.
    let slow = PolicyLimits {
        fuel: u64::MAX / 2,
        deadline_ms: 400,
        ..PolicyLimits::default()
    };
    let finished = Arc::new(Mutex::new(Vec::new()));
    let mut flood = Vec::new();
    for _ in 0..3 {
        let (pdp, spin, finished) = (pdp.clone(), spin.clone(), finished.clone());
        flood.push(tokio::spawn(async move {
            let decision = pdp.decide(spin, slow, &request("tenant-a")).await;
            finished.lock().unwrap().push("a");
            decision
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Tenant B arrives while A's first decision runs and two more wait for A's slot.
    let decision = pdp
        .decide(deny_all, PolicyLimits::default(), &request("tenant-b"))
        .await;
    finished.lock().unwrap().push("b");
    assert_eq!(decision.reasons, vec!["deny_all".to_owned()]);
    assert_eq!(decision.failure, None);

    for task in flood {
        let decision = task.await.unwrap();
        assert_eq!(decision.failure, Some(PolicyFailure::Timeout));
    }
    assert_eq!(*finished.lock().unwrap(), vec!["b", "a", "a", "a"]);
}
