//! Decision latency of the shipped policies, each decision in a fresh instance as on the
//! server, against native `cedar-policy` doing the same work (parse, build entities,
//! authorize) on every call.
//!
//! Run with `cargo bench -p arp-host --bench pdp`. Prints one line per measurement.

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arp_host::pdp::{
    AdmissionLimits, EngineConfig, PolicyEngine, PolicyLimits, PolicyRegistry, PolicyRequest,
};
use arp_host::runner::{self, BenchReport};
use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request};
use serde_json::{Value, json};

const ITERATIONS: usize = 20_000;
const WARMUP: usize = 2_000;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = Path::new(env!("ARP_POLICY_WASM_DIR"));
    let engine = Arc::new(PolicyEngine::new(EngineConfig::default())?);
    let registry = PolicyRegistry::new(engine.clone(), AdmissionLimits::default(), None);
    let limits = PolicyLimits::default();

    let scope_cases = runner::load_cases(&root.join("tests/cases/scopes.yaml"))?;
    let scopes = registry.load(&std::fs::read(wasm.join("arp_policy_scopes.wasm"))?)?;
    let report = runner::bench(&engine, &scopes, &limits, &scope_cases, WARMUP, ITERATIONS);
    print_report("scopes (wasm, fresh instance)", &report);

    let pdp_cases = runner::load_cases(&root.join("tests/vectors/pdp-cases.json"))?;
    let cedar = registry.load(&std::fs::read(wasm.join("arp_policy_cedar.wasm"))?)?;
    let wasm_report = runner::bench(&engine, &cedar, &limits, &pdp_cases, WARMUP, ITERATIONS);
    print_report("cedar on pdp-cases (wasm, fresh instance)", &wasm_report);

    let requests: Vec<PolicyRequest> = pdp_cases.into_iter().map(|c| c.request).collect();
    let native_report = bench_native(&requests);
    print_report("cedar on pdp-cases (native cedar-policy)", &native_report);
    println!(
        "ratio wasm/native: p50 {:.1}x, p99 {:.1}x",
        wasm_report.p50_us / native_report.p50_us,
        wasm_report.p99_us / native_report.p99_us
    );
    Ok(())
}

fn print_report(name: &str, report: &BenchReport) {
    println!(
        "{name}: p50 {:.1} µs, p95 {:.1} µs, p99 {:.1} µs, {:.0} decisions/s, {} fuel/decision",
        report.p50_us, report.p95_us, report.p99_us, report.per_second, report.mean_fuel
    );
}

/// The native baseline: what the `cedar` guest does, without Wasm.
fn decide_native(request: &PolicyRequest) -> bool {
    let text = request
        .connection
        .cedar_policies
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let Ok(policies) = text.parse::<PolicySet>() else {
        return false;
    };
    let entity_json = |e: &arp_host::pdp::Entity| {
        json!({
            "uid": {"type": e.kind, "id": e.id},
            "attrs": e.attrs,
            "parents": e.parents.iter().map(|p| json!({"type": p.kind, "id": p.id})).collect::<Vec<_>>(),
        })
    };
    let mut all = vec![
        entity_json(&request.principal),
        entity_json(&request.target),
    ];
    all.extend(request.entities.iter().map(entity_json));
    let Ok(entities) = Entities::from_json_value(Value::Array(all), None) else {
        return false;
    };
    let uid = |kind: &str, id: &str| {
        EntityUid::from_type_name_and_id(kind.parse().ok()?, id.parse().ok()?).into()
    };
    let (Some(principal), Some(action), Some(resource)) = (
        uid(&request.principal.kind, &request.principal.id),
        uid("Action", &request.action),
        uid(&request.target.kind, &request.target.id),
    ) else {
        return false;
    };
    let Ok(context) = Context::from_json_value(request.context.clone(), None) else {
        return false;
    };
    let Ok(cedar_request) = Request::new(principal, action, resource, context, None) else {
        return false;
    };
    let response = Authorizer::new().is_authorized(&cedar_request, &policies, &entities);
    response.decision() == cedar_policy::Decision::Allow
}

fn bench_native(requests: &[PolicyRequest]) -> BenchReport {
    for request in requests.iter().cycle().take(WARMUP) {
        std::hint::black_box(decide_native(request));
    }
    let mut samples = Vec::with_capacity(ITERATIONS);
    let started = Instant::now();
    for request in requests.iter().cycle().take(ITERATIONS) {
        let t0 = Instant::now();
        std::hint::black_box(decide_native(request));
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let elapsed = started.elapsed().as_secs_f64();
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    BenchReport {
        decisions: samples.len(),
        p50_us: pct(0.50),
        p95_us: pct(0.95),
        p99_us: pct(0.99),
        per_second: samples.len() as f64 / elapsed,
        mean_fuel: 0,
    }
}
