//! `arp-host demo --once` on a fresh temporary data dir: provisions over the admin API,
//! sends allowed, denied and hostile-policy envelopes, delivers over WebSocket, verifies
//! every audit chain, and says so.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn demo_once_shows_every_kind_of_decision_a_delivery_and_verified_chains() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_arp-host"))
        .args(["demo", "--once", "--data-dir"])
        .arg(dir.path().join("demo"))
        // No configuration file of the developer's may leak in.
        .current_dir(dir.path())
        .env_remove("ARP_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let line = |needle: &str| {
        stdout
            .lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{stdout}"))
            .to_owned()
    };
    // An allowed message of each ordinary tenant, a denied one of each.
    assert!(
        line("ALLOWED acme").contains("-> allow, queued as"),
        "{stdout}"
    );
    assert!(line("ALLOWED globex").contains("-> allow"), "{stdout}");
    assert!(
        line("DENIED  acme").contains("scope_not_granted"),
        "{stdout}"
    );
    assert!(line("DENIED  globex").contains("-> deny"), "{stdout}");
    // The hostile policy's decision is a deny with the limit it broke.
    let hostile = line("HOSTILE mallory");
    assert!(
        hostile.contains("policy_out_of_fuel") || hostile.contains("policy_timeout"),
        "{hostile}"
    );
    // Delivered over WebSocket with the scopes policy's obligation.
    let delivered = line("DELIVERED to did:web:acme-assistant.agent");
    assert!(delivered.contains("spend_cap"), "{delivered}");
    assert!(delivered.contains("2500"), "{delivered}");
    line("DELIVERED to did:web:globex-assistant.agent");
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
    // Every chain verified, and the URLs to look at.
    assert!(
        stdout.contains("VERIFIED: all audit chains are valid"),
        "{stdout}"
    );
    assert!(!stdout.contains("BROKEN"), "{stdout}");
    for url in [
        "/.well-known/did.json",
        "/metrics",
        "/admin/v1/openapi.json",
    ] {
        assert!(stdout.contains(url), "{url} missing in\n{stdout}");
    }
}
