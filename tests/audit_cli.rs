//! End-to-end tests of `arp-host audit verify-file`: the real binary on the golden audit
//! chain and on every tampered variant of it, against the reference verifier's results.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn verify_file(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arp-host"))
        .args(["audit", "verify-file"])
        .arg(file)
        .output()
        .expect("run arp-host")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_golden_chain_is_valid() {
    let output = verify_file(&repo_file("tests/vectors/audit-chain.jsonl"));
    assert_eq!(stdout(&output), "valid, 25 entries\n");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn every_tampered_variant_reports_what_the_reference_reports() {
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("tests/vectors/audit-chain-tampered.json")).unwrap(),
    )
    .unwrap();
    let variants = vectors["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 24);
    for variant in variants {
        let name = variant["name"].as_str().unwrap();
        let expected = &variant["expected"];
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(variant["content"].as_str().unwrap().as_bytes())
            .unwrap();
        file.flush().unwrap();

        let output = verify_file(file.path());
        let text = stdout(&output);
        let entries = expected["entriesSeen"].as_u64().unwrap();
        let noun = if entries == 1 { "entry" } else { "entries" };
        if expected["valid"].as_bool().unwrap() {
            assert_eq!(text, format!("valid, {entries} {noun}\n"), "{name}");
            assert_eq!(output.status.code(), Some(0), "{name}");
            continue;
        }
        assert_eq!(output.status.code(), Some(1), "{name}: {text}");
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        match variant["error_prefix"].as_str() {
            Some(prefix) => assert!(first.starts_with(prefix), "{name}: {text}"),
            None => {
                // The reference's error names the kind of break: "self_hash mismatch at seq 7".
                let error = expected["error"].as_str().unwrap();
                let kind = error.split(" at ").next().unwrap();
                let at = expected["firstBreakAt"].as_u64().unwrap();
                assert!(
                    first.starts_with(&format!("broken at seq {at}: {kind}")),
                    "{name}: {text}"
                );
            }
        }
        assert_eq!(
            lines.next(),
            Some(format!("{entries} {noun} verified before the break").as_str()),
            "{name}"
        );
    }
}

#[test]
fn a_changed_seq_names_the_seq_found() {
    let golden = std::fs::read_to_string(repo_file("tests/vectors/audit-chain.jsonl")).unwrap();
    let tampered = golden.replacen("\"seq\":4,", "\"seq\":40,", 1);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(tampered.as_bytes()).unwrap();
    let output = verify_file(file.path());
    assert_eq!(
        stdout(&output),
        "broken at seq 4: seq mismatch (the entry has seq 40)\n4 entries verified before the break\n"
    );
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn an_unreadable_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let output = verify_file(&missing);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: cannot read ") && stderr.contains("missing.jsonl"),
        "{stderr}"
    );
    // A directory cannot be read as a file either.
    let output = verify_file(dir.path());
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn help_describes_the_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_arp-host"))
        .args(["audit", "verify-file", "--help"])
        .output()
        .unwrap();
    let text = stdout(&output);
    assert!(text.contains("valid, N entries"), "{text}");
    assert!(text.contains("RFC 8785"), "{text}");
}
