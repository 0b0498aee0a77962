//! Admission refuses each kind of bad upload with its own reason code and a message that
//! says what to fix.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use arp_host::pdp::{self, AdmissionError, AdmissionLimits, EngineConfig, PolicyEngine};

fn policy_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/{name}.wasm", env!("ARP_POLICY_WASM_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn inspect(bytes: &[u8]) -> Result<String, AdmissionError> {
    pdp::inspect(bytes, &AdmissionLimits::default())
}

/// Rewrites every occurrence of the decide export name, as a policy built against
/// another version of the WIT package would carry it (same length, so the binary stays
/// well-formed).
fn with_export_renamed(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut start = 0;
    while let Some(at) = out[start..]
        .windows(from.len())
        .position(|w| w == from.as_bytes())
    {
        let at = start + at;
        out[at..at + from.len()].copy_from_slice(to.as_bytes());
        start = at + from.len();
    }
    assert_ne!(out, bytes, "the export name was not found");
    out
}

#[test]
fn example_policies_are_accepted_with_the_world_version() {
    for name in [
        "arp_policy_cedar",
        "arp_policy_scopes",
        "arp_policy_business_hours",
        "arp_policy_deny_all",
    ] {
        assert_eq!(
            inspect(&policy_bytes(name)).unwrap(),
            "arp:policy@0.1.0",
            "{name}"
        );
    }
}

#[test]
fn garbage_is_not_wasm() {
    let error = inspect(b"#!/bin/sh\necho hello\n").unwrap_err();
    assert_eq!(error, AdmissionError::NotWasm);
    assert_eq!(error.code(), "not_wasm");
}

#[test]
fn a_core_module_is_not_a_component() {
    // The smallest valid core module: magic and version 1.
    let error = inspect(b"\0asm\x01\0\0\0").unwrap_err();
    assert_eq!(error, AdmissionError::NotAComponent);
    assert!(error.to_string().contains("wasm32-wasip2"));
}

#[test]
fn a_truncated_component_is_invalid() {
    let bytes = policy_bytes("arp_policy_deny_all");
    let error = inspect(&bytes[..bytes.len() / 2]).unwrap_err();
    assert_eq!(error.code(), "invalid_component", "{error}");
}

#[test]
fn oversized_uploads_are_refused_before_parsing() {
    let bytes = policy_bytes("arp_policy_cedar");
    let limits = AdmissionLimits {
        max_component_bytes: 1 << 20,
        ..AdmissionLimits::default()
    };
    let error = pdp::inspect(&bytes, &limits).unwrap_err();
    assert_eq!(
        error,
        AdmissionError::TooLarge {
            size: bytes.len(),
            limit: 1 << 20
        }
    );
}

#[test]
fn another_world_version_is_named_in_the_refusal() {
    let bytes = with_export_renamed(
        &policy_bytes("arp_policy_deny_all"),
        "arp:policy/decide@0.1.0",
        "arp:policy/decide@0.2.0",
    );
    let error = inspect(&bytes).unwrap_err();
    assert_eq!(
        error,
        AdmissionError::UnsupportedWorld {
            found: "arp:policy@0.2.0".into()
        }
    );
    assert_eq!(
        error.to_string(),
        "built for arp:policy@0.2.0, but this host supports arp:policy@0.1.0 (export `arp:policy/decide@0.1.0`)"
    );
}

#[test]
fn a_component_of_another_world_misses_the_decide_export() {
    let bytes = with_export_renamed(
        &policy_bytes("arp_policy_deny_all"),
        "arp:policy/decide@0.1.0",
        "acme:other/handle@0.1.0",
    );
    let error = inspect(&bytes).unwrap_err();
    assert_eq!(
        error,
        AdmissionError::MissingExport("arp:policy/decide@0.1.0")
    );
}

#[test]
fn filesystem_and_socket_imports_are_forbidden() {
    let error = inspect(&policy_bytes("arp_hostile_io")).unwrap_err();
    assert_eq!(error.code(), "forbidden_import");
    let AdmissionError::ForbiddenImport(name) = &error else {
        panic!("{error:?}")
    };
    assert!(
        name.starts_with("wasi:filesystem/") || name.starts_with("wasi:sockets/"),
        "{name}"
    );
}

#[test]
fn compilation_over_its_time_bound_is_refused() {
    let engine = Arc::new(PolicyEngine::new(EngineConfig::default()).unwrap());
    let limits = AdmissionLimits {
        compile_timeout: Duration::from_millis(1),
        ..AdmissionLimits::default()
    };
    let error = pdp::admit(&engine, &policy_bytes("arp_policy_cedar"), &limits).unwrap_err();
    assert_eq!(
        error,
        AdmissionError::CompileTimeout(Duration::from_millis(1))
    );
    assert_eq!(error.code(), "compile_timeout");
}
