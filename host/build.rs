//! Builds the policies in `policies/` from source to `wasm32-wasip2` components, so the
//! binary can embed the default `cedar` policy and tests can load the example and hostile
//! ones. They build in release mode in their own target dir (`target/wasm-policies`),
//! which debug and release host builds share.

// A build script that cannot build the policies must stop the build loudly.
#![allow(clippy::expect_used, clippy::panic)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ has a parent")
        .to_path_buf();
    // `migrations/`: `sqlx::migrate!` embeds the files it saw; a new migration file must
    // recompile the host.
    for input in ["policies", "policy-sdk", "wit", "migrations"] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"));
    let wasm_target_dir = target_dir.join("wasm-policies");

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(root.join("policies/Cargo.toml"))
        .arg("--target-dir")
        .arg(&wasm_target_dir);
    // The outer build's flags and target settings are for the host, not for the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        build.env_remove(var);
    }
    let status = build.status().expect("run cargo to build the policies");
    assert!(
        status.success(),
        "building the policies in policies/ failed"
    );

    let wasm_dir = wasm_target_dir.join("wasm32-wasip2/release");
    println!("cargo:rustc-env=ARP_POLICY_WASM_DIR={}", wasm_dir.display());
}
