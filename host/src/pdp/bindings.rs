//! The one `bindgen!` of the policy world: the host side of `wit/policy.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
});

pub use exports::arp::policy::decide;

/// The WIT package and version this host speaks, as it appears in export names.
pub const WORLD_PACKAGE: &str = "arp:policy";
/// The supported version of [`WORLD_PACKAGE`].
pub const WORLD_VERSION: &str = "0.1.0";
/// The interface every policy exports, fully qualified.
pub const DECIDE_EXPORT: &str = "arp:policy/decide@0.1.0";
/// The warm-up export that wizer runs once at admission.
pub const INIT_EXPORT: &str = "init";
