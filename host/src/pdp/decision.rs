//! The host's view of a decision: what the policy answered, or why it could not answer.

use serde::Serialize;

use super::request::Obligation;

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Deliver the message.
    Allow,
    /// Refuse the message.
    Deny,
}

impl Effect {
    /// `allow` or `deny`, as written in audit entries and replies.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// Why a policy produced no decision of its own. Each is turned into a deny whose first
/// reason is the [`code`](PolicyFailure::code).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "code", content = "detail", rename_all = "snake_case")]
pub enum PolicyFailure {
    /// The policy used all its fuel.
    OutOfFuel,
    /// The policy ran past its wall-clock deadline.
    Timeout,
    /// The policy tried to grow its memory (or a table) past the limit.
    MemoryLimit(String),
    /// The policy trapped: a panic, stack overflow, `unreachable`, a forbidden call.
    Trap(String),
    /// The policy returned something the host refuses: too large, or params that are not
    /// a JSON object.
    InvalidOutput(String),
    /// The host could not start the policy (e.g. the instance pool is exhausted).
    Unavailable(String),
}

impl PolicyFailure {
    /// The stable reason code recorded in audit entries.
    pub fn code(&self) -> &'static str {
        match self {
            PolicyFailure::OutOfFuel => "policy_out_of_fuel",
            PolicyFailure::Timeout => "policy_timeout",
            PolicyFailure::MemoryLimit(_) => "policy_memory_limit",
            PolicyFailure::Trap(_) => "policy_trap",
            PolicyFailure::InvalidOutput(_) => "policy_invalid_output",
            PolicyFailure::Unavailable(_) => "policy_unavailable",
        }
    }

    /// Human-readable detail, if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            PolicyFailure::OutOfFuel | PolicyFailure::Timeout => None,
            PolicyFailure::MemoryLimit(d)
            | PolicyFailure::Trap(d)
            | PolicyFailure::InvalidOutput(d)
            | PolicyFailure::Unavailable(d) => Some(d),
        }
    }
}

/// The outcome of one policy evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Allow or deny.
    pub effect: Effect,
    /// Ids of the determining policies, then of fired obligation policies.
    pub policies_fired: Vec<String>,
    /// Obligations from the policy.
    pub obligations: Vec<Obligation>,
    /// Reasons; for a failure the first is its code.
    pub reasons: Vec<String>,
    /// Set when the policy failed and the deny is the host's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<PolicyFailure>,
    /// Fuel the decision consumed, instantiation included.
    pub fuel_used: u64,
}

impl Decision {
    /// The fail-closed deny for a policy that could not decide.
    pub fn failed(failure: PolicyFailure, fuel_used: u64) -> Self {
        let mut reasons = vec![failure.code().to_owned()];
        if let Some(detail) = failure.detail() {
            reasons.push(detail.to_owned());
        }
        Self {
            effect: Effect::Deny,
            policies_fired: Vec::new(),
            obligations: Vec::new(),
            reasons,
            failure: Some(failure),
            fuel_used,
        }
    }
}
