//! `arp-hostile-spin`: a TEST-ONLY hostile policy, not an example. `evaluate` never
//! returns: it counts forever, so the host's fuel or epoch deadline must stop it.

use arp_policy_sdk::{Decision, Policy, Request};

/// Loops forever.
pub struct Spin;

impl Policy for Spin {
    fn evaluate(_request: &Request) -> Decision {
        let mut counter: u64 = 0;
        // `black_box` hides the counter from the optimizer, so the loop is real work that
        // cannot be removed or folded.
        loop {
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
}

arp_policy_sdk::export_policy!(Spin);
