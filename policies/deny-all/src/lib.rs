//! `arp-policy-deny-all`: the smallest ARP policy. It refuses every message with the reason
//! `deny_all`, e.g. for a tenant whose agents must receive nothing while an incident is open.

use arp_policy_sdk::{Decision, Policy, Request};

/// Denies every request.
pub struct DenyAll;

impl Policy for DenyAll {
    fn evaluate(_request: &Request) -> Decision {
        Decision::deny().reason("deny_all")
    }
}

arp_policy_sdk::export_policy!(DenyAll);

#[cfg(test)]
mod tests {
    use super::*;
    use arp_policy_sdk::{Connection, Entity};

    #[test]
    fn denies_even_a_fully_granted_request() {
        let request = Request::new(
            Entity::new("Agent", "did:web:orion.agent"),
            "read",
            Entity::new("Project", "alpha"),
        )
        .with_connection(
            Connection::new("conn_1")
                .scope("system.trusted.full_access")
                .cedar_policy("permit (principal, action, resource);"),
        );
        let decision = DenyAll::evaluate(&request);
        assert!(!decision.is_allow());
        assert_eq!(decision.reasons, ["deny_all"]);
        assert!(decision.policies_fired.is_empty());
        assert!(decision.obligations.is_empty());
    }
}
