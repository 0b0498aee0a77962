//! The policy decision point: tenant policies as sandboxed WebAssembly components.
//!
//! Start at [`engine`] (wasmtime setup, limits, one decision), then [`admission`] (what
//! an upload must pass) and [`Pdp`] (per-tenant scheduling off the async reactor).

pub mod admission;
pub mod bindings;
pub mod decision;
pub mod engine;
pub mod limits;
pub mod registry;
pub mod request;
mod scheduler;

pub use admission::{AdmissionError, AdmissionLimits, admit, digest_of, inspect};
pub use decision::{Decision, Effect, PolicyFailure};
pub use engine::{CompiledPolicy, EngineConfig, PolicyEngine};
pub use limits::{LimitMaxima, PolicyLimits, TenantLimits};
pub use registry::PolicyRegistry;
pub use request::{Connection, Entity, EntityRef, Message, Obligation, PolicyRequest};
pub use scheduler::Pdp;

/// The `cedar` policy, built from `policies/cedar` by the build script: the policy of
/// every tenant that has not uploaded its own, so existing ARP connections work unchanged.
pub const DEFAULT_POLICY: &[u8] = include_bytes!(concat!(
    env!("ARP_POLICY_WASM_DIR"),
    "/arp_policy_cedar.wasm"
));
