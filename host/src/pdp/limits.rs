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

/// A tenant's own limits, set by the operator: each `None` keeps the host default. Stored
/// with the tenant and applied by dispatch to every decision of that tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// Fuel per decision ([`PolicyLimits::fuel`]).
    pub fuel: Option<u64>,
    /// Wall-clock deadline per decision, in milliseconds ([`PolicyLimits::deadline_ms`]).
    pub deadline_ms: Option<u64>,
    /// Linear memory per decision, in bytes ([`PolicyLimits::memory_bytes`]).
    pub memory_bytes: Option<u64>,
    /// Decisions of this tenant that may run at once (the scheduler's per-tenant gate).
    pub concurrency: Option<u32>,
}

impl TenantLimits {
    /// `base` (the host's limits) with this tenant's overrides.
    pub fn apply(&self, base: PolicyLimits) -> PolicyLimits {
        PolicyLimits {
            fuel: self.fuel.unwrap_or(base.fuel),
            deadline_ms: self.deadline_ms.unwrap_or(base.deadline_ms),
            memory_bytes: self
                .memory_bytes
                .and_then(|bytes| usize::try_from(bytes).ok())
                .unwrap_or(base.memory_bytes),
            ..base
        }
    }
}

/// The most an operator may grant one tenant (an operator's request above these is
/// refused with `limit_out_of_range`, never clamped silently).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitMaxima {
    /// Ten times the default: a decision can still never hold a CPU for long.
    pub fuel: u64,
    /// One second: a decision is on the request path of a peer waiting for its 202.
    pub deadline_ms: u64,
    /// The engine's pool slot size ([`super::EngineConfig::max_memory_bytes`]): more
    /// cannot be granted without restarting the engine.
    pub memory_bytes: u64,
    /// Every CPU of the host: one tenant may then use all of them, never more.
    pub concurrency: u32,
}

impl Default for LimitMaxima {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            fuel: 200_000_000,
            deadline_ms: 1000,
            memory_bytes: u64::try_from(super::EngineConfig::default().max_memory_bytes)
                .unwrap_or(u64::MAX),
            concurrency: u32::try_from(cpus).unwrap_or(u32::MAX),
        }
    }
}

impl LimitMaxima {
    /// Checks `limits` against these maxima (and that none is zero); the error names the
    /// first limit out of range.
    pub fn check(&self, limits: &TenantLimits) -> Result<(), String> {
        let checks = [
            ("fuel", limits.fuel, self.fuel),
            ("deadlineMs", limits.deadline_ms, self.deadline_ms),
            ("memoryBytes", limits.memory_bytes, self.memory_bytes),
            (
                "concurrency",
                limits.concurrency.map(u64::from),
                u64::from(self.concurrency),
            ),
        ];
        for (name, value, max) in checks {
            if let Some(value) = value
                && (value == 0 || value > max)
            {
                return Err(format!("{name} {value} is outside 1..={max}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn tenant_limits_override_only_what_they_set() {
        let base = PolicyLimits::default();
        assert_eq!(TenantLimits::default().apply(base), base);
        let set = TenantLimits {
            fuel: Some(1000),
            memory_bytes: Some(1 << 20),
            ..TenantLimits::default()
        };
        let applied = set.apply(base);
        assert_eq!(applied.fuel, 1000);
        assert_eq!(applied.memory_bytes, 1 << 20);
        assert_eq!(applied.deadline_ms, base.deadline_ms);
    }

    #[test]
    fn maxima_refuse_zero_and_too_much() {
        let maxima = LimitMaxima::default();
        assert!(maxima.check(&TenantLimits::default()).is_ok());
        let zero = TenantLimits {
            concurrency: Some(0),
            ..TenantLimits::default()
        };
        assert!(
            maxima
                .check(&zero)
                .unwrap_err()
                .starts_with("concurrency 0")
        );
        let big = TenantLimits {
            deadline_ms: Some(maxima.deadline_ms + 1),
            ..TenantLimits::default()
        };
        assert!(maxima.check(&big).unwrap_err().starts_with("deadlineMs"));
    }
}
