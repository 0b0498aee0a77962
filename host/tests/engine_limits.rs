//! Every engine limit, each shown with the exact failure it produces, and proof that the
//! engine serves the next request normally afterwards.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};

use arp_host::pdp::{
    AdmissionLimits, CompiledPolicy, Decision, Effect, EngineConfig, PolicyEngine, PolicyFailure,
    PolicyLimits, PolicyRegistry, PolicyRequest,
};

fn registry() -> &'static PolicyRegistry {
    static REGISTRY: OnceLock<PolicyRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let engine = Arc::new(PolicyEngine::new(EngineConfig::default()).unwrap());
        let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("policy-cache");
        PolicyRegistry::new(engine, AdmissionLimits::default(), Some(cache))
    })
}

fn engine() -> &'static Arc<PolicyEngine> {
    registry().engine()
}

fn policy_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/{name}.wasm", env!("ARP_POLICY_WASM_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn load(name: &str) -> Arc<CompiledPolicy> {
    registry().load(&policy_bytes(name)).unwrap()
}

fn request() -> PolicyRequest {
    serde_json::from_value(serde_json::json!({
        "tenant": "t1",
        "principal": {"type": "Agent", "id": "did:web:orion.agent",
                      "attrs": {"connection_id": "conn_1", "owner_did": "did:web:ian.samantha.agent"}},
        "action": "read",
        "target": {"type": "Project", "id": "alpha"},
        "connection": {"id": "conn_1", "cedar_policies": [
            "permit (principal == Agent::\"did:web:orion.agent\", action == Action::\"read\", resource);"
        ]},
        "now_ms": 1752000000000i64
    }))
    .unwrap()
}

fn decide(policy: &CompiledPolicy, limits: PolicyLimits) -> Decision {
    engine().evaluate(policy, &limits, &request().to_wit())
}

/// After any failure the engine must still answer a well-behaved policy.
fn assert_still_serving() {
    let cedar = load("arp_policy_cedar");
    let decision = decide(&cedar, PolicyLimits::default());
    assert_eq!(decision.effect, Effect::Allow, "{decision:?}");
    assert_eq!(decision.policies_fired, vec!["policy0".to_owned()]);
}

fn assert_failure(decision: &Decision, code: &str) {
    assert_eq!(decision.effect, Effect::Deny);
    assert_eq!(
        decision.reasons.first().map(String::as_str),
        Some(code),
        "{decision:?}"
    );
    assert_eq!(
        decision.failure.as_ref().map(PolicyFailure::code),
        Some(code)
    );
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let spin = load("arp_hostile_spin");
    let limits = PolicyLimits {
        fuel: 5_000_000,
        deadline_ms: 10_000,
        ..PolicyLimits::default()
    };
    let decision = decide(&spin, limits);
    assert_failure(&decision, "policy_out_of_fuel");
    assert_eq!(decision.fuel_used, 5_000_000);
    assert_still_serving();
}

#[test]
fn infinite_loop_hits_the_wall_clock_deadline() {
    let spin = load("arp_hostile_spin");
    let limits = PolicyLimits {
        fuel: u64::MAX / 2,
        deadline_ms: 20,
        ..PolicyLimits::default()
    };
    let started = std::time::Instant::now();
    let decision = decide(&spin, limits);
    assert_failure(&decision, "policy_timeout");
    // Generous bound: what matters is that the loop was stopped at all.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_still_serving();
}

#[test]
fn memory_growth_past_the_limit_is_stopped() {
    let hog = load("arp_hostile_memory");
    let limits = PolicyLimits {
        memory_bytes: 16 << 20,
        ..PolicyLimits::default()
    };
    let decision = decide(&hog, limits);
    assert_failure(&decision, "policy_memory_limit");
    assert!(
        decision.reasons[1].contains("limit is 16777216 bytes"),
        "{decision:?}"
    );
    assert_still_serving();
}

#[test]
fn deep_recursion_traps_on_stack_overflow() {
    let recursion = load("arp_hostile_recursion");
    let decision = decide(&recursion, PolicyLimits::default());
    assert_failure(&decision, "policy_trap");
    // A Rust guest keeps most of its frames on a shadow stack in linear memory, which
    // runs out (an out-of-bounds access below address 0) before wasmtime's native stack
    // limit does; a guest with small frames hits the native limit instead.
    let detail = &decision.reasons[1];
    assert!(
        detail.contains("out of bounds memory access") || detail.contains("call stack exhausted"),
        "{decision:?}"
    );
    assert_still_serving();
}

#[test]
fn panic_traps_with_its_message() {
    let panic = load("arp_hostile_panic");
    let decision = decide(&panic, PolicyLimits::default());
    assert_failure(&decision, "policy_trap");
    assert!(
        decision.reasons[1].contains("hostile policy panicked"),
        "{decision:?}"
    );
    assert_still_serving();
}

#[test]
fn oversized_output_is_refused() {
    let huge = load("arp_hostile_huge_output");
    let decision = decide(&huge, PolicyLimits::default());
    assert_failure(&decision, "policy_invalid_output");
    assert!(
        decision.reasons[1].contains("exceeds the 65536 byte limit"),
        "{decision:?}"
    );
    assert_still_serving();
}

#[test]
fn table_limit_below_the_guest_tables_fails_instantiation() {
    let cedar = load("arp_policy_cedar");
    let limits = PolicyLimits {
        table_elements: 1,
        ..PolicyLimits::default()
    };
    let decision = decide(&cedar, limits);
    assert_failure(&decision, "policy_memory_limit");
    assert!(decision.reasons[1].contains("table"), "{decision:?}");
    assert_still_serving();
}

#[test]
fn instance_limit_below_the_component_fails_instantiation() {
    let cedar = load("arp_policy_cedar");
    let limits = PolicyLimits {
        instances: 1,
        ..PolicyLimits::default()
    };
    let decision = decide(&cedar, limits);
    assert_failure(&decision, "policy_memory_limit");
    assert!(decision.reasons[1].contains("instance"), "{decision:?}");
    assert_still_serving();
}

#[test]
fn decisions_are_deterministic_in_effect_and_fuel() {
    let cedar = load("arp_policy_cedar");
    let first = decide(&cedar, PolicyLimits::default());
    let second = decide(&cedar, PolicyLimits::default());
    assert_eq!(first, second);
    assert!(first.fuel_used > 0);
}

#[test]
fn pre_initialisation_removes_the_warm_up_from_every_decision() {
    // The snapshot must carry the guest's start-up work: a decision in a fresh instance
    // of the admitted policy costs well under what one without the snapshot costs.
    let bytes = policy_bytes("arp_policy_cedar");
    let raw = engine().compile(&bytes).unwrap();
    let raw = engine().prepare("raw".into(), &raw).unwrap();
    let snapshot = load("arp_policy_cedar");
    let cold = decide(&raw, PolicyLimits::default());
    let warm = decide(&snapshot, PolicyLimits::default());
    assert_eq!(cold.effect, warm.effect);
    assert!(
        warm.fuel_used * 2 < cold.fuel_used,
        "warm {} vs cold {}",
        warm.fuel_used,
        cold.fuel_used
    );
}
