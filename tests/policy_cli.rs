//! End-to-end tests of the local runner: the real `arp-host` binary on policies built
//! from source.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn policy(name: &str) -> String {
    format!("{}/{name}.wasm", env!("ARP_POLICY_WASM_DIR"))
}

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn arp_host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arp-host"))
        .args(args)
        .output()
        .expect("run arp-host")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn cedar_passes_every_golden_pdp_case() {
    let cases = repo_file("tests/vectors/pdp-cases.json");
    let output = arp_host(&[
        "policy",
        "test",
        &policy("arp_policy_cedar"),
        cases.to_str().unwrap(),
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("\n61 passed, 0 failed\n"), "{text}");
    assert!(
        text.contains("PASS obligations/explicit-id-kept (allow, fuel "),
        "{text}"
    );
    assert!(
        text.contains("PASS failure/policy-parse-error (deny, fuel "),
        "{text}"
    );
}

#[test]
fn scopes_passes_its_yaml_cases() {
    let cases = repo_file("tests/cases/scopes.yaml");
    let output = arp_host(&[
        "policy",
        "test",
        &policy("arp_policy_scopes"),
        cases.to_str().unwrap(),
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("4 passed, 0 failed"), "{text}");
}

#[test]
fn a_failing_case_prints_a_diff_and_exits_non_zero() {
    let cases = repo_file("tests/cases/scopes.yaml");
    // deny-all fails the two allow cases of the scopes file.
    let output = arp_host(&[
        "policy",
        "test",
        &policy("arp_policy_deny_all"),
        cases.to_str().unwrap(),
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL granted scope allows with a spend cap (deny, fuel "),
        "{text}"
    );
    assert!(text.contains("effect: expected Allow, got deny"), "{text}");
    assert!(
        text.contains("reasons: expected [\"scope_not_granted\"], got [\"deny_all\"]"),
        "{text}"
    );
    assert!(text.contains("0 passed, 4 failed"), "{text}");
}

#[test]
fn check_names_the_failure_of_each_hostile_policy() {
    let expectations = [
        ("arp_hostile_spin", "probe:  FAILED policy_out_of_fuel"),
        (
            "arp_hostile_memory",
            "probe:  FAILED policy_memory_limit: linear memory of",
        ),
        ("arp_hostile_recursion", "probe:  FAILED policy_trap"),
        (
            "arp_hostile_panic",
            "probe:  FAILED policy_trap: wasm trap: wasm `unreachable` instruction executed: thread '<unnamed>' (1) panicked at",
        ),
        (
            "arp_hostile_huge_output",
            "probe:  FAILED policy_invalid_output: decision of 4194304 bytes exceeds the 65536 byte limit",
        ),
    ];
    for (name, expected) in expectations {
        let output = arp_host(&["policy", "check", &policy(name)]);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(1), "{name}: {text}");
        assert!(text.contains(expected), "{name}: {text}");
    }
    let output = arp_host(&["policy", "check", &policy("arp_hostile_panic")]);
    assert!(stdout(&output).contains("hostile policy panicked"));
}

#[test]
fn check_refuses_a_policy_that_imports_the_filesystem() {
    let output = arp_host(&["policy", "check", &policy("arp_hostile_io")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused (forbidden_import): imports `wasi:"),
        "{stderr}"
    );
    assert!(stderr.contains("(no files, sockets or HTTP)"), "{stderr}");
}

#[test]
fn check_accepts_an_example_policy_and_runs_the_probe() {
    let output = arp_host(&["policy", "check", &policy("arp_policy_deny_all")]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("world:  arp:policy@0.1.0"), "{text}");
    assert!(text.contains("digest: sha256:"), "{text}");
    assert!(
        text.contains("probe:  deny (reasons [\"deny_all\"]"),
        "{text}"
    );
}

#[test]
fn bench_reports_percentiles_and_fuel() {
    let cases = repo_file("tests/cases/scopes.yaml");
    let output = arp_host(&[
        "policy",
        "bench",
        &policy("arp_policy_scopes"),
        cases.to_str().unwrap(),
        "--iterations",
        "200",
        "--warmup",
        "20",
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.starts_with("200 decisions over 4 cases: p50 "),
        "{text}"
    );
    assert!(text.contains("fuel/decision"), "{text}");
}

#[test]
fn a_missing_case_file_is_a_clear_error() {
    let output = arp_host(&[
        "policy",
        "test",
        &policy("arp_policy_deny_all"),
        "/nonexistent/cases.yaml",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains("cannot read /nonexistent/cases.yaml"),
        "{stderr}"
    );
}
