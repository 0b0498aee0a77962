//! Tenant B's decision latency while tenant A floods the PDP with hostile policies (an
//! infinite loop and a memory hog, each decision burning its whole deadline or memory
//! limit), against B alone. Every decision runs through the server's scheduler
//! ([`arp_host::pdp::Pdp`]) with its per-tenant gates, in a fresh instance.
//!
//! Run with `cargo bench -p arp-host --bench tenant_flood`. Prints B's p50/p95/p99 alone
//! and under the flood, and A's decisions/s.

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arp_host::pdp::{
    AdmissionLimits, EngineConfig, Pdp, PolicyEngine, PolicyLimits, PolicyRegistry, PolicyRequest,
};
use arp_host::runner;

/// B's measured decisions per phase.
const DECISIONS: usize = 2_000;
/// Concurrent flooding requests of tenant A (the scheduler lets only its share run).
const FLOODERS: usize = 16;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = Path::new(env!("ARP_POLICY_WASM_DIR"));
    let engine = Arc::new(PolicyEngine::new(EngineConfig::default())?);
    let registry = PolicyRegistry::new(engine.clone(), AdmissionLimits::default(), None);
    let scopes = registry.load(&std::fs::read(wasm.join("arp_policy_scopes.wasm"))?)?;
    let spin = registry.load(&std::fs::read(wasm.join("arp_hostile_spin.wasm"))?)?;
    let memory = registry.load(&std::fs::read(wasm.join("arp_hostile_memory.wasm"))?)?;
    let cases = runner::load_cases(&root.join("tests/cases/scopes.yaml"))?;
    let requests: Vec<PolicyRequest> = cases
        .into_iter()
        .map(|case| PolicyRequest {
            tenant: "tenant-b".into(),
            ..case.request
        })
        .collect();
    let pdp = Arc::new(Pdp::new(engine, None));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    runtime.block_on(async {
        let alone = measure_b(&pdp, &scopes, &requests).await;
        print("B alone", &alone);

        let stop = Arc::new(AtomicBool::new(false));
        let flooded = Arc::new(AtomicUsize::new(0));
        let mut flood = Vec::new();
        for i in 0..FLOODERS {
            let (pdp, stop, flooded) = (pdp.clone(), stop.clone(), flooded.clone());
            let policy = if i % 2 == 0 {
                spin.clone()
            } else {
                memory.clone()
            };
            let request = PolicyRequest {
                tenant: "tenant-a".into(),
                ..requests[0].clone()
            };
            flood.push(tokio::spawn(async move {
                // Fuel high enough that the deadline is what stops the loop.
                let limits = PolicyLimits {
                    fuel: u64::MAX / 2,
                    ..PolicyLimits::default()
                };
                while !stop.load(Ordering::Relaxed) {
                    pdp.decide(policy.clone(), limits, &request).await;
                    flooded.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let under_flood = measure_b(&pdp, &scopes, &requests).await;
        let elapsed = started.elapsed().as_secs_f64();
        let a_done = flooded.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        for task in flood {
            let _ = task.await;
        }
        print("B while A floods (spin + memory hog)", &under_flood);
        println!(
            "A: {a_done} hostile decisions ({:.0}/s), each denied at its limit",
            a_done as f64 / elapsed
        );
        println!(
            "B p95 under flood / alone: {:.1}x",
            under_flood[1] / alone[1].max(f64::EPSILON)
        );
    });
    Ok(())
}

/// B's p50, p95, p99 in microseconds over [`DECISIONS`] sequential decisions.
async fn measure_b(
    pdp: &Arc<Pdp>,
    policy: &Arc<arp_host::pdp::CompiledPolicy>,
    requests: &[PolicyRequest],
) -> [f64; 3] {
    let limits = PolicyLimits::default();
    let mut samples = Vec::with_capacity(DECISIONS);
    for request in requests.iter().cycle().take(DECISIONS) {
        let t0 = Instant::now();
        let decision = pdp.decide(policy.clone(), limits, request).await;
        assert!(decision.failure.is_none(), "{decision:?}");
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    [pct(0.50), pct(0.95), pct(0.99)]
}

fn print(name: &str, [p50, p95, p99]: &[f64; 3]) {
    println!("{name}: p50 {p50:.1} µs, p95 {p95:.1} µs, p99 {p99:.1} µs");
}
