//! Per-policy resource limits and their defaults.
//!
//! Every limit turns a runaway policy into a deny with a reason code instead of a stalled
//! or crashed host. Defaults are sized from the `cedar` guest, the heaviest policy we ship:
//! each is roughly ten times what it needs on the largest reference case.

use serde::{Deserialize, Serialize};

/// Limits applied to one decision of one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyLimits {
    /// Fuel units (about one per Wasm instruction). A pre-initialised `cedar` decision
    /// uses well under 2M; 20M bounds a runaway guest to a few milliseconds of CPU.
    pub fuel: u64,
    /// Wall-clock deadline in milliseconds, enforced by epoch interruption. Fuel already
    /// bounds pure computation; the deadline also covers time spent in host calls and a
    /// host under load, so a decision can never hold a thread for long.
    pub deadline_ms: u64,
    /// Largest linear memory a policy may grow to, in bytes. The `cedar` snapshot starts
    /// near 2 MiB and peaks a few MiB higher; 64 MiB leaves room for big policy sets while
    /// keeping a flood of hostile decisions from exhausting host memory.
    pub memory_bytes: usize,
    /// Most elements any one table may hold. Rust guests need a few hundred for their
    /// indirect-call tables; 10,000 allows large guests and stops table-growth bombs.
    pub table_elements: usize,
    /// Most core instances, tables and memories a component may create. A
    /// `wasm32-wasip2` Rust component uses about ten instances (guest, adapters, shims).
    pub instances: usize,
    /// Largest decision a policy may return, counted as the bytes of all its strings.
    /// Real decisions are under 1 KiB; 64 KiB still fits generous reason texts.
    pub output_bytes: usize,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            fuel: 20_000_000,
            deadline_ms: 50,
            memory_bytes: 64 << 20,
            table_elements: 10_000,
            instances: 32,
            output_bytes: 64 << 10,
        }
    }
}
