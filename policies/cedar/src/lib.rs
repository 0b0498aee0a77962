//! `arp-policy-cedar`: the default ARP policy of every tenant. It evaluates the Cedar
//! policies that travel in the connection token, with the semantics of the reference ARP
//! PDP (`@kybernesis/arp-pdp`), and embeds Cedar itself (`cedar-policy` 4).
//!
//! - The non-empty trimmed entries of `connection.cedar_policies`, joined with `"\n"`, are
//!   one policy set; Cedar names its policies `policy0`, `policy1`, ... in text order (an
//!   `@id` annotation does not rename them).
//! - Principal and resource (the request target) are entities, then `request.entities`;
//!   the first of several entities with the same `Type::"id"` wins. The action is
//!   `Action::"<action>"`; the context is the request's.
//! - Cedar decides: default deny, any satisfied `permit` allows, a satisfied `forbid`
//!   wins. `policies_fired` are the determining policies, ordered by their number.
//!   Evaluation errors become `reasons`; the decision stands, as in Cedar.
//! - On allow, the connection's obligation policies (see [`annotations`]) are evaluated as
//!   a second policy set, each under its `@id` or `o_<index>`; each one that is
//!   determining there adds its `{type, params}` to the obligations, in input order, and
//!   its id to `policies_fired`. Errors of that evaluation are silent.
//! - Where the reference PDP throws (a policy text that does not parse, a float or `null`
//!   in the context or attributes, an unusable obligation annotation), this policy fails
//!   closed: a deny whose one reason says what failed (`policy_parse:`, `entities:`,
//!   `context:`, `request:`, `obligation_annotation:`, `obligation_policy_parse:`).

mod annotations;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod vector_tests;

use std::collections::BTreeSet;
use std::str::FromStr;

use arp_policy_sdk::serde_json::{Map, Value};
use arp_policy_sdk::{Decision, Effect, Entity, Obligation, Policy, Request};
use cedar_policy::{
    Authorizer, Context, Entities, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet,
};

use annotations::parse_obligation_policy;

/// Evaluates the connection's Cedar policies.
pub struct CedarPolicy;

impl Policy for CedarPolicy {
    fn evaluate(request: &Request) -> Decision {
        decide(request).unwrap_or_else(|failure| Decision::deny().reason(failure))
    }

    /// Runs one representative decision, so that everything Cedar does lazily the first
    /// time (static tables, extension registries, the parser's first run, the allocator's
    /// first growth) is done in the snapshot rather than in every decision.
    ///
    /// Cedar builds std `HashMap`s, so this asks WASI once for the hash seed (see
    /// [`Policy::init`]); every decision then reuses the seed from the snapshot.
    fn init() {
        std::hint::black_box(Self::evaluate(&warm_up_request()));
    }
}

arp_policy_sdk::export_policy!(CedarPolicy);

/// The decision, or why none could be made (the caller denies with that reason).
fn decide(request: &Request) -> Result<Decision, String> {
    let policies = decision_policies(&request.connection.cedar_policies)?;
    let cedar_request = cedar_request(request)?;
    let entities = entities(request)?;

    let authorizer = Authorizer::new();
    let response = authorizer.is_authorized(&cedar_request, &policies, &entities);
    let diagnostics = response.diagnostics();
    let mut policies_fired: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
    policies_fired.sort_by(|a, b| {
        policy_number(a)
            .cmp(&policy_number(b))
            .then_with(|| a.cmp(b))
    });
    let mut decision = Decision {
        effect: match response.decision() {
            cedar_policy::Decision::Allow => Effect::Allow,
            cedar_policy::Decision::Deny => Effect::Deny,
        },
        policies_fired,
        obligations: Vec::new(),
        reasons: diagnostics.errors().map(ToString::to_string).collect(),
    };

    let obligation_policies = &request.connection.obligation_policies;
    if decision.is_allow() && !obligation_policies.is_empty() {
        add_obligations(
            &mut decision,
            obligation_policies,
            &authorizer,
            &cedar_request,
            &entities,
        )?;
    }
    Ok(decision)
}

/// The sort key of a determining policy: `policy<N>` sorts by N (Cedar's own order is a
/// hash set's), anything else after them.
fn policy_number(id: &str) -> u64 {
    id.strip_prefix("policy")
        .and_then(|number| number.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The connection's decision policies as one set, named `policy0`, `policy1`, ...
fn decision_policies(texts: &[String]) -> Result<PolicySet, String> {
    let mut joined = String::new();
    for text in texts
        .iter()
        .map(|text| text.trim())
        .filter(|text| !text.is_empty())
    {
        if !joined.is_empty() {
            joined.push('\n');
        }
        joined.push_str(text);
    }
    if joined.is_empty() {
        return Ok(PolicySet::new());
    }
    PolicySet::from_str(&joined).map_err(|error| format!("policy_parse: {error}"))
}

/// `kind::"id"` as a Cedar entity uid.
fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let kind = EntityTypeName::from_str(kind)
        .map_err(|error| format!("request: invalid entity type `{kind}`: {error}"))?;
    Ok(EntityUid::from_type_name_and_id(kind, EntityId::new(id)))
}

/// Principal, `Action::"<action>"`, resource and context as a Cedar request.
fn cedar_request(request: &Request) -> Result<cedar_policy::Request, String> {
    let context = Context::from_json_value(request.context.clone(), None)
        .map_err(|error| format!("context: {error}"))?;
    cedar_policy::Request::new(
        uid(&request.principal.kind, &request.principal.id)?,
        uid("Action", &request.action)?,
        uid(&request.target.kind, &request.target.id)?,
        context,
        None,
    )
    .map_err(|error| format!("request: {error}"))
}

/// Principal, target and the further entities, the first of each `Type::"id"` only.
fn entities(request: &Request) -> Result<Entities, String> {
    let all = [&request.principal, &request.target]
        .into_iter()
        .chain(&request.entities);
    let mut seen = BTreeSet::new();
    let mut list = Vec::with_capacity(2 + request.entities.len());
    for entity in all {
        if seen.insert((entity.kind.as_str(), entity.id.as_str())) {
            list.push(entity_json(entity));
        }
    }
    // Cedar's own JSON entity format, so attributes mean exactly what they mean to the
    // reference (which handed Cedar the same JSON), `__entity`/`__extn` escapes included.
    Entities::from_json_value(Value::Array(list), None)
        .map_err(|error| format!("entities: {error}"))
}

/// One entity in Cedar's JSON entity format.
fn entity_json(entity: &Entity) -> Value {
    let parents = entity
        .parents
        .iter()
        .map(|parent| uid_json(&parent.kind, &parent.id))
        .collect();
    let mut object = Map::new();
    object.insert("uid".to_string(), uid_json(&entity.kind, &entity.id));
    object.insert("attrs".to_string(), entity.attrs.clone());
    object.insert("parents".to_string(), Value::Array(parents));
    Value::Object(object)
}

fn uid_json(kind: &str, id: &str) -> Value {
    let mut object = Map::new();
    object.insert("type".to_string(), Value::String(kind.to_string()));
    object.insert("id".to_string(), Value::String(id.to_string()));
    Value::Object(object)
}

/// Evaluates the obligation policies and adds the fired ones to an allow.
fn add_obligations(
    decision: &mut Decision,
    texts: &[String],
    authorizer: &Authorizer,
    cedar_request: &cedar_policy::Request,
    entities: &Entities,
) -> Result<(), String> {
    let obligation_policies = texts
        .iter()
        .enumerate()
        .map(|(index, text)| parse_obligation_policy(index, text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("obligation_annotation: {error}"))?;

    let mut policies = PolicySet::new();
    for (index, obligation) in obligation_policies.iter().enumerate() {
        let parse_error = |error: &dyn std::fmt::Display| {
            format!(
                "obligation_policy_parse: obligation policy {index} (`{}`): {error}",
                obligation.id
            )
        };
        let policy =
            cedar_policy::Policy::parse(Some(PolicyId::new(&obligation.id)), &obligation.text)
                .map_err(|error| parse_error(&error))?;
        policies.add(policy).map_err(|error| parse_error(&error))?;
    }

    let response = authorizer.is_authorized(cedar_request, &policies, entities);
    let determining: Vec<&str> = response
        .diagnostics()
        .reason()
        .map(AsRef::<str>::as_ref)
        .collect();
    for obligation in obligation_policies {
        if determining.contains(&obligation.id.as_str()) {
            decision.obligations.push(Obligation {
                kind: obligation.kind,
                params: obligation.params,
            });
            decision.policies_fired.push(obligation.id);
        }
    }
    Ok(())
}

/// A request that goes through every common path once: a multi-policy set with `==`,
/// `in`, `has`, set and record operations, an evaluation error, parents across entities,
/// and obligation policies with both parameter forms and an `@id`.
fn warm_up_request() -> Request {
    use arp_policy_sdk::Connection;
    use arp_policy_sdk::serde_json::json;

    let principal = Entity::new("Agent", "did:web:warm.agent")
        .attrs(json!({"connection_id": "conn_warm", "owner_did": "did:web:owner.agent"}));
    let target = Entity::new("Document", "doc-warm")
        .attrs(json!({"classification": "internal", "tags": ["q3"], "pages": 3}))
        .parent("Project", "alpha");
    let project = Entity::new("Project", "alpha")
        .attrs(json!({"owner": "did:web:owner.agent"}))
        .parent("Portfolio", "main");
    let connection = Connection {
        cedar_policies: vec![
            "permit (\n  principal == Agent::\"did:web:warm.agent\",\n  action in [Action::\"read\", Action::\"list\"],\n  resource in Project::\"alpha\"\n);".to_string(),
            "forbid (principal, action, resource)\nwhen { resource has tags && resource.tags.contains(\"confidential\") };".to_string(),
            "permit (principal, action == Action::\"read\", resource in Portfolio::\"main\")\nwhen { context.time.now_ms < 1767225600000 && context.amount_cents <= 5000 && principal.owner_did like \"did:web:*\" && context.location == {\"country\": \"DE\"} };".to_string(),
            "permit (principal, action, resource) when { context.missing > 1 };".to_string(),
        ],
        obligation_policies: vec![
            "@obligation(\"redact_fields\")\n@obligation_params({ fields: ['client.name'], mode: 'mask' })\npermit (principal, action == Action::\"read\", resource in Project::\"alpha\");".to_string(),
            "@id(\"rate\")\n@obligation(\"rate_limit\")\n@obligation_params(\"{\\\"max_requests\\\":60}\")\npermit (principal, action, resource) unless { context has urgent && context.urgent };".to_string(),
        ],
        ..Connection::new("conn_warm")
    };
    Request::new(principal, "read", target)
        .with_entity(project)
        .with_context(json!({
            "time": {"now_ms": 1752000000000_i64},
            "amount_cents": 4999,
            "location": {"country": "DE"},
            "urgent": false
        }))
        .with_connection(connection)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use arp_policy_sdk::Connection;
    use arp_policy_sdk::serde_json::json;

    fn request(policies: &[&str], obligation_policies: &[&str]) -> Request {
        Request::new(
            Entity::new("Agent", "did:web:orion.agent").attrs(json!({"owner_did": "did:web:o"})),
            "read",
            Entity::new("Project", "alpha"),
        )
        .with_connection(Connection {
            cedar_policies: policies.iter().map(ToString::to_string).collect(),
            obligation_policies: obligation_policies
                .iter()
                .map(ToString::to_string)
                .collect(),
            ..Connection::new("conn")
        })
    }

    #[test]
    fn warm_up_allows_with_obligations_and_an_error() {
        let decision = CedarPolicy::evaluate(&warm_up_request());
        assert!(decision.is_allow(), "{decision:?}");
        assert_eq!(
            decision.policies_fired,
            ["policy0", "policy2", "o_0", "rate"]
        );
        assert_eq!(decision.obligations.len(), 2);
        assert_eq!(decision.reasons.len(), 1, "{:?}", decision.reasons);
        CedarPolicy::init();
    }

    #[test]
    fn fired_ids_sort_by_number_not_text() {
        let permit = "permit (principal, action, resource);";
        let policies = vec![permit; 12];
        let decision = CedarPolicy::evaluate(&request(&policies, &[]));
        let expected: Vec<String> = (0..12).map(|n| format!("policy{n}")).collect();
        assert_eq!(decision.policies_fired, expected);
    }

    #[test]
    fn evaluation_errors_are_reasons() {
        let decision = CedarPolicy::evaluate(&request(
            &["permit (principal, action, resource) when { context.a > 1 };"],
            &[],
        ));
        assert!(!decision.is_allow());
        assert_eq!(decision.reasons.len(), 1);
        assert!(
            decision.reasons[0].contains("policy0"),
            "{:?}",
            decision.reasons
        );
    }

    #[test]
    fn failures_deny_with_what_failed() {
        let permit = "permit (principal, action, resource);";
        let cases: [(Request, &str); 6] = [
            (request(&["permit (principal"], &[]), "policy_parse: "),
            (
                request(&[permit], &[]).with_context(json!({"x": 1.5})),
                "context: ",
            ),
            (
                request(&[permit], &[]).with_context(json!([1])),
                "context: ",
            ),
            (
                request(&[permit], &[])
                    .with_entity(Entity::new("X", "y").attrs(json!({"n": null}))),
                "entities: ",
            ),
            (
                request(&[permit], &["permit (principal, action, resource);"]),
                "obligation_annotation: ",
            ),
            (
                request(&[permit], &["@obligation(\"x\") permit (principal, action"]),
                "obligation_policy_parse: ",
            ),
        ];
        for (request, prefix) in cases {
            let decision = CedarPolicy::evaluate(&request);
            assert!(!decision.is_allow(), "{prefix}");
            assert!(decision.policies_fired.is_empty() && decision.obligations.is_empty());
            assert_eq!(decision.reasons.len(), 1);
            assert!(
                decision.reasons[0].starts_with(prefix),
                "{:?}",
                decision.reasons
            );
        }
    }

    #[test]
    fn invalid_entity_type_fails_closed() {
        let mut request = request(&["permit (principal, action, resource);"], &[]);
        request.target.kind = "Not A Type".to_string();
        let decision = CedarPolicy::evaluate(&request);
        assert!(!decision.is_allow());
        assert!(
            decision.reasons[0].starts_with("request: "),
            "{:?}",
            decision.reasons
        );
    }

    #[test]
    fn duplicate_obligation_ids_fail_closed() {
        let decision = CedarPolicy::evaluate(&request(
            &["permit (principal, action, resource);"],
            &[
                "@id(\"o_1\") @obligation(\"a\") permit (principal, action, resource);",
                "@obligation(\"b\") permit (principal, action, resource);",
            ],
        ));
        assert!(!decision.is_allow());
        assert!(decision.reasons[0].starts_with("obligation_policy_parse: "));
    }

    #[test]
    fn obligations_are_not_read_on_deny() {
        // An unusable obligation policy does not matter when the decision is deny.
        let decision = CedarPolicy::evaluate(&request(&[], &["not even cedar"]));
        assert!(!decision.is_allow());
        assert!(decision.reasons.is_empty());
    }

    #[test]
    fn entities_dedupe_first_wins() {
        // The principal's own attributes win over a later entity with the same uid.
        let request = request(
            &["permit (principal, action, resource) when { principal.owner_did == \"did:web:o\" };"],
            &[],
        )
        .with_entity(
            Entity::new("Agent", "did:web:orion.agent").attrs(json!({"owner_did": "did:web:x"})),
        );
        assert!(CedarPolicy::evaluate(&request).is_allow());
    }

    #[test]
    fn colon_inside_a_param_string_works() {
        // A reference quirk (its regex coercion threw); here it is a plain string.
        let decision = CedarPolicy::evaluate(&request(
            &["permit (principal, action, resource);"],
            &[
                "@obligation(\"banner\")\n@obligation_params({ text: 'hello, note: read me' })\npermit (principal, action, resource);",
            ],
        ));
        assert!(decision.is_allow());
        assert_eq!(decision.obligations.len(), 1);
        assert_eq!(
            decision.obligations[0].params,
            json!({"text": "hello, note: read me"})
        );
        assert_eq!(decision.policies_fired, ["policy0", "o_0"]);
    }

    #[test]
    fn extension_functions_are_available() {
        let decision = CedarPolicy::evaluate(&request(
            &[
                "permit (principal, action, resource) when { decimal(\"1.5\").lessThan(decimal(\"2.0\")) && ip(\"10.0.0.1\").isInRange(ip(\"10.0.0.0/8\")) };",
            ],
            &[],
        ));
        assert!(decision.is_allow(), "{decision:?}");
    }
}
