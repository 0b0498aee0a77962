//! `arp-hostile-panic`: a TEST-ONLY hostile policy, not an example. `evaluate` panics with
//! the message "hostile policy panicked"; with `panic = "abort"` that is a trap, which the
//! host must turn into a failed decision.

use arp_policy_sdk::{Decision, Policy, Request};

/// Panics on every request.
pub struct Panic;

impl Policy for Panic {
    #[allow(clippy::panic)]
    fn evaluate(_request: &Request) -> Decision {
        panic!("hostile policy panicked")
    }
}

arp_policy_sdk::export_policy!(Panic);
