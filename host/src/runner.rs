//! The local policy runner behind `arp-host policy test` and `policy bench`: test cases
//! in our own format or in the golden `pdp-cases.json` schema, run on the server's engine.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

use crate::pdp::{
    CompiledPolicy, Decision, Effect, Entity, Obligation, PolicyEngine, PolicyLimits, PolicyRequest,
};

/// What a case expects. Unset fields are not checked.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// `allow` or `deny`.
    pub effect: ExpectedEffect,
    /// Fired policy ids, compared as a set.
    #[serde(default)]
    pub policies_fired: Option<Vec<String>>,
    /// Obligations, compared in order.
    #[serde(default)]
    pub obligations: Option<Vec<Obligation>>,
    /// Reasons, compared exactly and in order.
    #[serde(default)]
    pub reasons: Option<Vec<String>>,
    /// The decision must carry at least one reason (a fail-closed deny).
    #[serde(default)]
    pub needs_reason: bool,
    /// Most fuel the decision may use.
    #[serde(default)]
    pub max_fuel: Option<u64>,
}

/// `allow` or `deny` as written in case files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedEffect {
    /// Expect allow.
    Allow,
    /// Expect deny.
    Deny,
}

impl ExpectedEffect {
    fn matches(self, effect: Effect) -> bool {
        matches!(
            (self, effect),
            (ExpectedEffect::Allow, Effect::Allow) | (ExpectedEffect::Deny, Effect::Deny)
        )
    }
}

/// One named case.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the report.
    pub name: String,
    /// The request.
    pub request: PolicyRequest,
    /// What must come out.
    pub expect: Expectation,
}

/// Errors reading a case file.
#[derive(Debug, thiserror::Error)]
pub enum CaseFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Neither our case format nor the golden pdp-cases schema.
    #[error("{path} is not a case file: {reason}")]
    Format {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CaseFile {
    Golden(GoldenFile),
    Listed { cases: Vec<Case> },
    Bare(Vec<Case>),
}

/// The golden `pdp-cases.json` schema (see `tests/vectors/README.md`).
#[derive(Deserialize)]
struct GoldenFile {
    format: String,
    cases: Vec<GoldenCase>,
}

#[derive(Deserialize)]
struct GoldenCase {
    name: String,
    policies: Vec<String>,
    #[serde(default)]
    obligation_policies: Vec<String>,
    request: GoldenRequest,
    expected: GoldenExpected,
}

#[derive(Deserialize)]
struct GoldenRequest {
    principal: Entity,
    action: String,
    resource: Entity,
    #[serde(default)]
    context: Value,
    #[serde(default)]
    entities: Vec<Entity>,
}

#[derive(Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
enum GoldenExpected {
    Decision {
        decision: ExpectedEffect,
        policies_fired: Vec<String>,
        #[serde(default)]
        obligations: Option<Vec<Obligation>>,
    },
    /// The reference threw here; we fail closed, so the case wants a deny with a reason.
    Failure {},
}

impl GoldenCase {
    fn into_case(self) -> Case {
        let mut request = PolicyRequest {
            tenant: "local".into(),
            principal: self.request.principal,
            action: self.request.action,
            target: self.request.resource,
            entities: self.request.entities,
            context: if self.request.context.is_null() {
                Value::Object(Default::default())
            } else {
                self.request.context
            },
            connection: Default::default(),
            message: Default::default(),
            now_ms: 0,
        };
        request.connection.cedar_policies = self.policies;
        request.connection.obligation_policies = self.obligation_policies;
        let expect = match self.expected {
            GoldenExpected::Decision {
                decision,
                policies_fired,
                obligations,
            } => Expectation {
                effect: decision,
                policies_fired: Some(policies_fired),
                obligations,
                reasons: None,
                needs_reason: false,
                max_fuel: None,
            },
            GoldenExpected::Failure {} => Expectation {
                effect: ExpectedEffect::Deny,
                policies_fired: None,
                obligations: None,
                reasons: None,
                needs_reason: true,
                max_fuel: None,
            },
        };
        Case {
            name: self.name,
            request,
            expect,
        }
    }
}

/// Reads cases from JSON or YAML (by content: JSON is valid YAML).
pub fn load_cases(path: &Path) -> Result<Vec<Case>, CaseFileError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CaseFileError::Read {
        path: display.clone(),
        source,
    })?;
    parse_cases(&text, &display)
}

/// Reads cases from the text of a case file (JSON or YAML); `display` names it in errors.
/// The admin API's policy upload uses this for the cases sent with a component.
pub fn parse_cases(text: &str, display: &str) -> Result<Vec<Case>, CaseFileError> {
    let display = display.to_owned();
    let parsed: CaseFile = if text.trim_start().starts_with(['{', '[']) {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }
    .map_err(|reason| CaseFileError::Format {
        path: display.clone(),
        reason,
    })?;
    let cases = match parsed {
        CaseFile::Golden(golden) if golden.format.starts_with("arp-golden-vectors/pdp") => golden
            .cases
            .into_iter()
            .map(GoldenCase::into_case)
            .collect(),
        CaseFile::Golden(golden) => {
            return Err(CaseFileError::Format {
                path: display,
                reason: format!("unknown golden format `{}`", golden.format),
            });
        }
        CaseFile::Listed { cases } | CaseFile::Bare(cases) => cases,
    };
    if cases.is_empty() {
        return Err(CaseFileError::Format {
            path: display,
            reason: "it holds no cases".into(),
        });
    }
    Ok(cases)
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseOutcome {
    /// Case name.
    pub name: String,
    /// What the policy decided.
    pub decision: Decision,
    /// One line per mismatch; empty when the case passed.
    pub mismatches: Vec<String>,
}

impl CaseOutcome {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Compares a decision with what the case expects.
pub fn check(expect: &Expectation, decision: &Decision) -> Vec<String> {
    let mut mismatches = Vec::new();
    if !expect.effect.matches(decision.effect) {
        mismatches.push(format!(
            "effect: expected {:?}, got {}",
            expect.effect,
            decision.effect.as_str()
        ));
    }
    if let Some(fired) = &expect.policies_fired {
        let want: BTreeSet<&String> = fired.iter().collect();
        let got: BTreeSet<&String> = decision.policies_fired.iter().collect();
        if want != got {
            mismatches.push(format!("policies_fired: expected {want:?}, got {got:?}"));
        }
    }
    if let Some(obligations) = &expect.obligations
        && obligations != &decision.obligations
    {
        mismatches.push(format!(
            "obligations: expected {}, got {}",
            serde_json::to_string(obligations).unwrap_or_default(),
            serde_json::to_string(&decision.obligations).unwrap_or_default()
        ));
    }
    if let Some(reasons) = &expect.reasons
        && reasons != &decision.reasons
    {
        mismatches.push(format!(
            "reasons: expected {reasons:?}, got {:?}",
            decision.reasons
        ));
    }
    if expect.needs_reason && decision.reasons.is_empty() {
        mismatches.push("reasons: expected a reason for the fail-closed deny, got none".into());
    }
    if let Some(max) = expect.max_fuel
        && decision.fuel_used > max
    {
        mismatches.push(format!(
            "fuel: expected at most {max}, used {}",
            decision.fuel_used
        ));
    }
    mismatches
}

/// Runs every case once.
pub fn run_cases(
    engine: &PolicyEngine,
    policy: &CompiledPolicy,
    limits: &PolicyLimits,
    cases: &[Case],
) -> Vec<CaseOutcome> {
    cases
        .iter()
        .map(|case| {
            let decision = engine.evaluate(policy, limits, &case.request.to_wit());
            CaseOutcome {
                name: case.name.clone(),
                mismatches: check(&case.expect, &decision),
                decision,
            }
        })
        .collect()
}

/// The report printed by `policy test`.
pub fn render_outcomes(outcomes: &[CaseOutcome]) -> String {
    let mut out = String::new();
    for outcome in outcomes {
        let verdict = if outcome.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(
            out,
            "{verdict} {} ({}, fuel {})",
            outcome.name,
            outcome.decision.effect.as_str(),
            outcome.decision.fuel_used
        );
        for line in &outcome.mismatches {
            let _ = writeln!(out, "     {line}");
        }
        if !outcome.passed() && !outcome.decision.reasons.is_empty() {
            let _ = writeln!(out, "     reasons given: {:?}", outcome.decision.reasons);
        }
    }
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    let _ = writeln!(out, "{passed} passed, {} failed", outcomes.len() - passed);
    out
}

/// Latency and fuel figures of a benchmark run.
#[derive(Debug)]
pub struct BenchReport {
    /// Decisions measured.
    pub decisions: usize,
    /// Latency percentiles in microseconds: p50, p95, p99.
    pub p50_us: f64,
    /// 95th percentile.
    pub p95_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Decisions per second on one thread.
    pub per_second: f64,
    /// Mean fuel per decision.
    pub mean_fuel: u64,
}

/// Runs the cases round-robin, `iterations` decisions in all after `warmup`, each in a
/// fresh instance exactly as the server does, on the calling thread.
pub fn bench(
    engine: &PolicyEngine,
    policy: &CompiledPolicy,
    limits: &PolicyLimits,
    cases: &[Case],
    warmup: usize,
    iterations: usize,
) -> BenchReport {
    let requests: Vec<_> = cases.iter().map(|c| c.request.to_wit()).collect();
    for request in requests.iter().cycle().take(warmup) {
        engine.evaluate(policy, limits, request);
    }
    let mut samples = Vec::with_capacity(iterations);
    let mut fuel = 0u64;
    let started = Instant::now();
    for request in requests.iter().cycle().take(iterations) {
        let t0 = Instant::now();
        let decision = engine.evaluate(policy, limits, request);
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
        fuel += decision.fuel_used;
    }
    let elapsed = started.elapsed().as_secs_f64();
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples.get(index).copied().unwrap_or(0.0)
    };
    BenchReport {
        decisions: samples.len(),
        p50_us: pct(0.50),
        p95_us: pct(0.95),
        p99_us: pct(0.99),
        per_second: samples.len() as f64 / elapsed.max(f64::EPSILON),
        mean_fuel: fuel / (samples.len().max(1) as u64),
    }
}
