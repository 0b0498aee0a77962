//! Conversions between the WIT records of the bindings and the SDK's own types.
//!
//! [`export_policy!`](crate::export_policy) calls into here, so none of the generated
//! bindings show in a policy author's code. Everything is moved, not copied: the host's
//! strings become the SDK's strings as they are, only the JSON texts are parsed.

use serde_json::Value;

use crate::Policy;
use crate::bindings::exports::arp::policy::decide as wit;
use crate::types::{Connection, Decision, Effect, Entity, EntityRef, Message, Obligation, Request};

/// The body of the exported `evaluate`: converts, asks the policy, converts back.
///
/// JSON from the host that does not parse is answered with a deny whose reason starts
/// `invalid_request_json:`; the policy is not asked then, because it could not see the
/// request the host meant.
pub fn evaluate<P: Policy + ?Sized>(request: wit::Request) -> wit::Decision {
    let decision = match request_from_wit(request) {
        Ok(request) => P::evaluate(&request),
        Err(error) => Decision::deny().reason(format!("invalid_request_json: {error}")),
    };
    decision_to_wit(decision)
}

/// The body of the exported `init`.
pub fn init<P: Policy + ?Sized>() {
    P::init();
}

/// Parses one JSON text of the request; `field` names it in the error.
fn parse_json(text: &str, field: impl FnOnce() -> String) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|error| format!("{}: {error}", field()))
}

pub(crate) fn request_from_wit(request: wit::Request) -> Result<Request, String> {
    let wit::Request {
        tenant,
        principal,
        action,
        target,
        entities,
        context,
        connection,
        message,
        now_ms,
    } = request;
    let principal = entity_from_wit(principal, || "principal.attrs".to_string())?;
    let target = entity_from_wit(target, || "target.attrs".to_string())?;
    let entities = entities
        .into_iter()
        .enumerate()
        .map(|(index, entity)| entity_from_wit(entity, || format!("entities[{index}].attrs")))
        .collect::<Result<Vec<_>, _>>()?;
    let context = parse_json(&context, || "context".to_string())?;
    Ok(Request {
        tenant,
        principal,
        action,
        target,
        entities,
        context,
        connection: connection_from_wit(connection)?,
        message: Message {
            id: message.id,
            kind: message.kind,
            thread_id: message.thread_id,
        },
        now_ms,
    })
}

fn entity_from_wit(entity: wit::Entity, field: impl FnOnce() -> String) -> Result<Entity, String> {
    Ok(Entity {
        attrs: parse_json(&entity.attrs, field)?,
        kind: entity.kind,
        id: entity.id,
        parents: entity
            .parents
            .into_iter()
            .map(|parent| EntityRef {
                kind: parent.kind,
                id: parent.id,
            })
            .collect(),
    })
}

fn connection_from_wit(connection: wit::Connection) -> Result<Connection, String> {
    let obligations = connection
        .obligations
        .into_iter()
        .enumerate()
        .map(|(index, obligation)| {
            Ok(Obligation {
                params: parse_json(&obligation.params, || {
                    format!("connection.obligations[{index}].params")
                })?,
                kind: obligation.kind,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Connection {
        id: connection.id,
        status: connection.status,
        issuer: connection.issuer,
        purpose: connection.purpose,
        scopes: connection.scopes,
        cedar_policies: connection.cedar_policies,
        obligation_policies: connection.obligation_policies,
        obligations,
        expires_at_ms: connection.expires_at_ms,
    })
}

pub(crate) fn decision_to_wit(decision: Decision) -> wit::Decision {
    wit::Decision {
        effect: match decision.effect {
            Effect::Allow => wit::Effect::Allow,
            Effect::Deny => wit::Effect::Deny,
        },
        policies_fired: decision.policies_fired,
        obligations: decision
            .obligations
            .into_iter()
            .map(|obligation| wit::Obligation {
                kind: obligation.kind,
                // `Value`'s Display is its compact JSON text and cannot fail.
                params: obligation.params.to_string(),
            })
            .collect(),
        reasons: decision.reasons,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wit_entity(kind: &str, id: &str, attrs: &str) -> wit::Entity {
        wit::Entity {
            kind: kind.to_string(),
            id: id.to_string(),
            attrs: attrs.to_string(),
            parents: vec![wit::EntityRef {
                kind: "Project".to_string(),
                id: "alpha".to_string(),
            }],
        }
    }

    fn wit_request() -> wit::Request {
        wit::Request {
            tenant: "acme".to_string(),
            principal: wit_entity(
                "Agent",
                "did:web:orion.agent",
                r#"{"owner_did":"did:web:ian"}"#,
            ),
            action: "read".to_string(),
            target: wit_entity("Document", "doc-7", "{}"),
            entities: vec![wit_entity("Project", "alpha", r#"{"tags":["a","b"]}"#)],
            context: r#"{"time":{"now_ms":1752000000000},"note":"x"}"#.to_string(),
            connection: wit::Connection {
                id: "conn_1".to_string(),
                status: "active".to_string(),
                issuer: "did:web:ian".to_string(),
                purpose: Some("testing".to_string()),
                scopes: vec!["files.project.files.read".to_string()],
                cedar_policies: vec!["permit (principal, action, resource);".to_string()],
                obligation_policies: vec![],
                obligations: vec![wit::Obligation {
                    kind: "spend_cap".to_string(),
                    params: r#"{"max_cents":500}"#.to_string(),
                }],
                expires_at_ms: Some(1_800_000_000_000),
            },
            message: wit::Message {
                id: "msg-1".to_string(),
                kind: "https://didcomm.org/arp/1.0/request".to_string(),
                thread_id: None,
            },
            now_ms: 1_752_000_000_123,
        }
    }

    #[test]
    fn request_converts_field_by_field() {
        let request = request_from_wit(wit_request()).unwrap();
        let expected = Request::new(
            Entity::new("Agent", "did:web:orion.agent")
                .attrs(json!({"owner_did": "did:web:ian"}))
                .parent("Project", "alpha"),
            "read",
            Entity::new("Document", "doc-7").parent("Project", "alpha"),
        )
        .with_tenant("acme")
        .with_entity(
            Entity::new("Project", "alpha")
                .attrs(json!({"tags": ["a", "b"]}))
                .parent("Project", "alpha"),
        )
        .with_context(json!({"time": {"now_ms": 1752000000000_i64}, "note": "x"}))
        .with_connection(Connection {
            issuer: "did:web:ian".to_string(),
            purpose: Some("testing".to_string()),
            obligations: vec![Obligation::new("spend_cap", json!({"max_cents": 500}))],
            expires_at_ms: Some(1_800_000_000_000),
            ..Connection::new("conn_1")
                .scope("files.project.files.read")
                .cedar_policy("permit (principal, action, resource);")
        })
        .with_message(Message {
            id: "msg-1".to_string(),
            kind: "https://didcomm.org/arp/1.0/request".to_string(),
            thread_id: None,
        })
        .with_now_ms(1_752_000_000_123);
        assert_eq!(request, expected);
    }

    #[test]
    fn invalid_json_names_the_field() {
        let mut bad_context = wit_request();
        bad_context.context = "{not json".to_string();
        let error = request_from_wit(bad_context).unwrap_err();
        assert!(error.starts_with("context: "), "{error}");

        let mut bad_entity = wit_request();
        bad_entity.entities[0].attrs = String::new();
        let error = request_from_wit(bad_entity).unwrap_err();
        assert!(error.starts_with("entities[0].attrs: "), "{error}");

        let mut bad_obligation = wit_request();
        bad_obligation.connection.obligations[0].params = "[1,".to_string();
        let error = request_from_wit(bad_obligation).unwrap_err();
        assert!(
            error.starts_with("connection.obligations[0].params: "),
            "{error}"
        );
    }

    #[test]
    fn decision_converts_with_compact_params() {
        let decision = Decision::allow()
            .fired("policy0")
            .obligation("redact_fields", json!({"fields": ["a"], "mode": "mask"}))
            .reason("because");
        let wit_decision = decision_to_wit(decision);
        assert!(matches!(wit_decision.effect, wit::Effect::Allow));
        assert_eq!(wit_decision.policies_fired, ["policy0"]);
        assert_eq!(wit_decision.obligations.len(), 1);
        assert_eq!(wit_decision.obligations[0].kind, "redact_fields");
        let params: Value = serde_json::from_str(&wit_decision.obligations[0].params).unwrap();
        assert_eq!(params, json!({"fields": ["a"], "mode": "mask"}));
        assert!(!wit_decision.obligations[0].params.contains(' '));
        assert_eq!(wit_decision.reasons, ["because"]);

        let deny = decision_to_wit(Decision::deny());
        assert!(matches!(deny.effect, wit::Effect::Deny));
        assert!(deny.policies_fired.is_empty() && deny.obligations.is_empty());
    }

    /// Allows reads and echoes what it saw, to check what `evaluate` hands to a policy.
    struct Echo;

    impl Policy for Echo {
        fn evaluate(request: &Request) -> Decision {
            let base = if request.action == "read" {
                Decision::allow()
            } else {
                Decision::deny()
            };
            base.fired("echo")
                .reason(request.context["note"].as_str().unwrap_or("-"))
        }
    }

    #[test]
    fn evaluate_asks_the_policy() {
        let decision = evaluate::<Echo>(wit_request());
        assert!(matches!(decision.effect, wit::Effect::Allow));
        assert_eq!(decision.policies_fired, ["echo"]);
        assert_eq!(decision.reasons, ["x"]);
    }

    #[test]
    fn evaluate_denies_unparsable_json_without_asking_the_policy() {
        let mut request = wit_request();
        request.principal.attrs = "{\"a\":".to_string();
        let decision = evaluate::<Echo>(request);
        assert!(matches!(decision.effect, wit::Effect::Deny));
        assert!(decision.policies_fired.is_empty());
        assert_eq!(decision.reasons.len(), 1);
        assert!(
            decision.reasons[0].starts_with("invalid_request_json: principal.attrs: "),
            "{}",
            decision.reasons[0]
        );
    }
}
