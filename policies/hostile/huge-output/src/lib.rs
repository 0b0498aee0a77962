//! `arp-hostile-huge-output`: a TEST-ONLY hostile policy, not an example. `evaluate`
//! answers a deny whose reasons total 4 MiB (64 reasons of 64 KiB), so the host must
//! bound what it accepts from a guest.

use arp_policy_sdk::{Decision, Policy, Request};

/// Number of reasons.
const REASONS: usize = 64;
/// Length of each reason in bytes.
const REASON_LEN: usize = 64 * 1024;

/// Answers 4 MiB of reasons.
pub struct HugeOutput;

impl Policy for HugeOutput {
    fn evaluate(_request: &Request) -> Decision {
        let mut decision = Decision::deny();
        for index in 0..REASONS {
            let mut reason = format!("huge_output:{index}:");
            reason.push_str(&"x".repeat(REASON_LEN - reason.len()));
            decision = decision.reason(reason);
        }
        decision
    }
}

arp_policy_sdk::export_policy!(HugeOutput);

#[cfg(test)]
mod tests {
    use super::*;
    use arp_policy_sdk::Entity;

    #[test]
    fn reasons_total_four_mebibytes() {
        let request = Request::new(Entity::new("Agent", "a"), "read", Entity::new("R", "r"));
        let decision = HugeOutput::evaluate(&request);
        let total: usize = decision.reasons.iter().map(String::len).sum();
        assert_eq!(total, 4 * 1024 * 1024);
    }
}
