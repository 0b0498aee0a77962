//! `arp-hostile-recursion`: a TEST-ONLY hostile policy, not an example. `evaluate`
//! recurses without bound, so it exhausts the engine's wasm call stack and traps.

use arp_policy_sdk::{Decision, Policy, Request};

/// The next step of the recursion, called through a pointer the optimizer cannot see
/// through (it is `black_box`ed), so the recursion cannot be turned into a loop.
struct Step(fn(&Step, u64) -> u64);

/// Calls the next step, then uses its result, so it is not a tail call either. Each frame
/// holds only wasm locals: it is the engine's stack limit that stops it, not the shadow
/// stack in linear memory.
fn recurse(step: &Step, depth: u64) -> u64 {
    (step.0)(step, depth.wrapping_add(1)).wrapping_add(depth)
}

/// Overflows the stack.
pub struct Recursion;

impl Policy for Recursion {
    fn evaluate(_request: &Request) -> Decision {
        let step = std::hint::black_box(&Step(recurse));
        let depth = recurse(step, 0);
        Decision::deny().reason(format!("unreachable: {depth}"))
    }
}

arp_policy_sdk::export_policy!(Recursion);
