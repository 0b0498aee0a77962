//! Runs every case of the shared ARP PDP vectors (`tests/vectors/pdp-cases.json`, a copy of
//! the reference outputs) through the policy, natively. A unit-test module rather than an
//! integration test because the crate is only a cdylib (see `Cargo.toml`).

use super::CedarPolicy;
use arp_policy_sdk::serde_json::{self, Value};
use arp_policy_sdk::{Connection, Entity, Policy, Request};
use std::collections::BTreeSet;

const VECTORS: &str = include_str!("../tests/vectors/pdp-cases.json");

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn entity(value: &Value) -> Entity {
    serde_json::from_value(value.clone()).unwrap()
}

/// The request of a case, with its policies in the connection.
fn request(case: &Value) -> Request {
    let request = &case["request"];
    Request::new(
        entity(&request["principal"]),
        request["action"].as_str().unwrap(),
        entity(&request["resource"]),
    )
    .with_entities(
        request["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(entity)
            .collect(),
    )
    .with_context(request["context"].clone())
    .with_connection(Connection {
        cedar_policies: strings(case.get("policies")),
        obligation_policies: strings(case.get("obligation_policies")),
        ..Connection::new("conn_orion_sam_01")
    })
}

/// What is wrong with the policy's answer to `case`, if anything.
fn check(case: &Value) -> Option<String> {
    let decision = CedarPolicy::evaluate(&request(case));
    let expected = &case["expected"];
    let effect = if decision.is_allow() { "allow" } else { "deny" };
    match expected["outcome"].as_str().unwrap() {
        "decision" => {
            if effect != expected["decision"] {
                return Some(format!(
                    "decision {effect}, expected {}: {decision:?}",
                    expected["decision"]
                ));
            }
            let fired: BTreeSet<&str> =
                decision.policies_fired.iter().map(String::as_str).collect();
            let expected_fired: BTreeSet<String> = strings(expected.get("policies_fired"))
                .into_iter()
                .collect();
            let expected_fired: BTreeSet<&str> =
                expected_fired.iter().map(String::as_str).collect();
            if fired != expected_fired || fired.len() != decision.policies_fired.len() {
                return Some(format!(
                    "policies_fired {:?}, expected {expected_fired:?}",
                    decision.policies_fired
                ));
            }
            // Obligation policy ids come after the decision's, in input order.
            let obligation_ids = strings(expected.get("obligation_policies_fired"));
            if !decision.policies_fired.ends_with(&obligation_ids) {
                return Some(format!(
                    "policies_fired {:?} do not end with {obligation_ids:?}",
                    decision.policies_fired
                ));
            }
            if let Some(obligations) = expected.get("obligations") {
                let got = serde_json::to_value(&decision.obligations).unwrap();
                if &got != obligations {
                    return Some(format!("obligations {got}, expected {obligations}"));
                }
            }
            // Only Cedar's evaluation errors are reasons on this path.
            if Some(decision.reasons.len() as u64) != expected["errors"].as_u64() {
                return Some(format!(
                    "reasons {:?}, expected {} errors",
                    decision.reasons, expected["errors"]
                ));
            }
            None
        }
        "failure" => {
            let stage = expected["stage"].as_str().unwrap();
            if decision.is_allow() || decision.reasons.is_empty() || decision.reasons[0].is_empty()
            {
                return Some(format!("expected a deny with a reason: {decision:?}"));
            }
            if stage == "obligation_annotation"
                && !decision.reasons[0].starts_with("obligation_annotation:")
            {
                return Some(format!(
                    "expected an obligation_annotation reason: {:?}",
                    decision.reasons
                ));
            }
            if !decision.policies_fired.is_empty() || !decision.obligations.is_empty() {
                return Some(format!("a failure fires nothing: {decision:?}"));
            }
            None
        }
        other => Some(format!("unknown outcome {other}")),
    }
}

#[test]
fn every_pdp_case_matches_the_reference() {
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    let cases = vectors["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 61);
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(case).map(|problem| format!("{}: {problem}", case["name"])))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
