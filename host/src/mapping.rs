//! What a policy sees of a verified message (ARP-PROTOCOL §2, "PDP request mapping"):
//! the principal, the Cedar action, the resource and the context, derived from the
//! payload's `type` and `body`, with scope ids translated through the scope catalogue
//! table (`tests/vectors/scope-actions.tsv`, embedded at build time).
//!
//! Start with [`map_request`]. The rules, in the order they apply:
//! - *plain text*: `body.action` is not a string, `body.text` is a string and
//!   `body.resource` is absent (or `null`) → action `relay_to_principal` on
//!   `Principal::"self"`.
//! - action: `body.action` if a string, else the part of `type` after the last `/`; a
//!   scope id with a Cedar action in the table becomes that action.
//! - resource: `body.resource` if present: a string `"Type:id"` → `Type::"id"` (JavaScript
//!   `split(":", 2)`: `"Doc:x:y"` → `Doc::"x"`, `"alpha"` → `alpha::"alpha"`), an object
//!   with string `type` and `id` as is (with `attrs` if an object), anything else
//!   `Resource::"default"`; when absent, the scope's resource template (a literal id, or
//!   the body parameter it names, which must be a string); else `Resource::"default"`.
//! - context: `body.context` if a JSON object, else `{}`.
//!
//! Responses (`type` ending in `/response` or `.response`, see
//! [`crate::envelope::is_response_type`]) never reach the PDP: dispatch skips the mapping.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use crate::envelope::Payload;
use crate::pdp::request::{Connection, Entity, Message, PolicyRequest};

/// The scope catalogue table, `scope_id \t cedar_action \t resource_type \t
/// resource_id_source`, with a header row; `-` means none.
const SCOPE_TABLE: &str = include_str!("../../tests/vectors/scope-actions.tsv");

/// The action of a plain text message.
pub const RELAY_ACTION: &str = "relay_to_principal";

/// Where a scope's resource id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceId {
    /// A fixed id (`literal:<id>`).
    Literal(String),
    /// The body parameter of that name (`body:<param>`).
    BodyParam(String),
}

/// A scope's resource template: `<kind>::"<id>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceTemplate {
    /// Entity type, e.g. `Collection`.
    pub kind: String,
    /// Where the id comes from.
    pub id: ResourceId,
}

/// One scope of the catalogue with a Cedar action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeMapping {
    /// The Cedar action the scope id stands for.
    pub cedar_action: String,
    /// The resource the scope's policy names, if any.
    pub resource: Option<ResourceTemplate>,
}

/// Scope id → mapping, for the scopes that have a Cedar action (the others pass through
/// unchanged, as in the reference).
static SCOPES: LazyLock<HashMap<String, ScopeMapping>> =
    LazyLock::new(|| parse_scope_table(SCOPE_TABLE));

fn parse_scope_table(text: &str) -> HashMap<String, ScopeMapping> {
    let mut scopes = HashMap::new();
    for line in text.lines().skip(1) {
        let mut cols = line.split('\t');
        let (Some(scope), Some(action), Some(kind), Some(source)) =
            (cols.next(), cols.next(), cols.next(), cols.next())
        else {
            continue;
        };
        if scope.is_empty() || action == "-" || action.is_empty() {
            continue;
        }
        let id = if let Some(literal) = source.strip_prefix("literal:") {
            Some(ResourceId::Literal(literal.to_owned()))
        } else {
            source
                .strip_prefix("body:")
                .map(|param| ResourceId::BodyParam(param.to_owned()))
        };
        let resource = match id {
            Some(id) if kind != "-" && !kind.is_empty() => Some(ResourceTemplate {
                kind: kind.to_owned(),
                id,
            }),
            _ => None,
        };
        scopes.insert(
            scope.to_owned(),
            ScopeMapping {
                cedar_action: action.to_owned(),
                resource,
            },
        );
    }
    scopes
}

/// The catalogue entry of a scope id, if it has a Cedar action.
pub fn scope(scope_id: &str) -> Option<&'static ScopeMapping> {
    SCOPES.get(scope_id)
}

/// The number of scopes with a Cedar action in the embedded table.
pub fn scope_count() -> usize {
    SCOPES.len()
}

/// The Cedar action of an action name: the scope's action for a scope id, else the
/// name unchanged.
pub fn cedar_action(action: &str) -> &str {
    scope(action).map_or(action, |s| s.cedar_action.as_str())
}

fn entity(kind: &str, id: &str) -> Entity {
    Entity {
        kind: kind.to_owned(),
        id: id.to_owned(),
        attrs: Value::Object(Map::new()),
        parents: Vec::new(),
    }
}

/// The default resource, `Resource::"default"`.
fn default_resource() -> Entity {
    entity("Resource", "default")
}

/// Whether `body` is a plain text message (see the module header).
pub fn is_plain_text(body: &Map<String, Value>) -> bool {
    !body.get("action").is_some_and(Value::is_string)
        && body.get("text").is_some_and(Value::is_string)
        && body.get("resource").is_none_or(Value::is_null)
}

/// The action name before scope translation: `body.action`, `relay_to_principal` for
/// plain text, else the part of `kind` after the last `/`.
pub fn raw_action<'a>(kind: &'a str, body: &'a Map<String, Value>) -> &'a str {
    if let Some(action) = body.get("action").and_then(Value::as_str) {
        action
    } else if is_plain_text(body) {
        RELAY_ACTION
    } else {
        kind.rsplit_once('/').map_or(kind, |(_, last)| last)
    }
}

/// The resource of an explicit `body.resource` (the reference's `coerceResource`).
pub fn coerce_resource(spec: &Value) -> Entity {
    match spec {
        Value::String(s) => {
            let mut parts = s.splitn(3, ':');
            let kind = parts.next().unwrap_or_default();
            let id = parts.next().unwrap_or(s);
            entity(kind, id)
        }
        Value::Object(obj) => {
            match (
                obj.get("type").and_then(Value::as_str),
                obj.get("id").and_then(Value::as_str),
            ) {
                (Some(kind), Some(id)) => {
                    let mut e = entity(kind, id);
                    if let Some(attrs @ Value::Object(_)) = obj.get("attrs") {
                        e.attrs = attrs.clone();
                    }
                    e
                }
                _ => default_resource(),
            }
        }
        _ => default_resource(),
    }
}

/// The mapped resource (see the module header).
pub fn map_resource(action: &str, body: &Map<String, Value>) -> Entity {
    if is_plain_text(body) {
        return entity("Principal", "self");
    }
    if let Some(spec) = body.get("resource").filter(|v| !v.is_null()) {
        return coerce_resource(spec);
    }
    let Some(template) = scope(action).and_then(|s| s.resource.as_ref()) else {
        return default_resource();
    };
    match &template.id {
        ResourceId::Literal(id) => entity(&template.kind, id),
        ResourceId::BodyParam(param) => match body.get(param).and_then(Value::as_str) {
            Some(id) => entity(&template.kind, id),
            None => default_resource(),
        },
    }
}

/// Maps a verified payload to the request the tenant's policy decides on.
///
/// `signer` is the verified signer DID (the principal `Agent::"<signer>"`, with attrs
/// `connection_id` and `owner_did`, the issuer of the connection token). The message
/// fields and `connection.id`/`connection.issuer` are filled in; dispatch sets the tenant,
/// the rest of the connection and `now_ms`.
pub fn map_request(
    payload: &Payload,
    signer: &str,
    connection_id: &str,
    owner_did: &str,
) -> PolicyRequest {
    let body = &payload.body;
    let raw = raw_action(&payload.kind, body);
    let action = cedar_action(raw).to_owned();
    let target = map_resource(raw, body);
    let context = match body.get("context") {
        Some(ctx @ Value::Object(_)) => ctx.clone(),
        _ => Value::Object(Map::new()),
    };
    let principal = Entity {
        kind: "Agent".to_owned(),
        id: signer.to_owned(),
        attrs: json!({"connection_id": connection_id, "owner_did": owner_did}),
        parents: Vec::new(),
    };
    PolicyRequest {
        tenant: String::new(),
        principal,
        action,
        target,
        entities: Vec::new(),
        context,
        connection: Connection {
            id: connection_id.to_owned(),
            issuer: owner_did.to_owned(),
            ..Connection::default()
        },
        message: Message {
            id: payload.id.clone(),
            kind: payload.kind.clone(),
            thread_id: payload.thid.clone(),
        },
        now_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn payload(kind: &str, b: Value) -> Payload {
        Payload {
            id: "m1".into(),
            kind: kind.into(),
            from: "did:web:a.agent".into(),
            to: vec!["did:web:b.agent".into()],
            created_time: 0,
            thid: Some("t".into()),
            body: body(b),
        }
    }

    const REQ: &str = "https://didcomm.org/arp/1.0/request";

    #[test]
    fn scope_table_is_complete() {
        assert_eq!(SCOPE_TABLE.lines().count(), 52);
        assert_eq!(scope_count(), 47);
        assert_eq!(cedar_action("notes.write"), "notes.write");
        assert_eq!(cedar_action("notes.search"), "search");
        assert_eq!(
            scope("calendar.availability.read").unwrap().resource,
            Some(ResourceTemplate {
                kind: "Calendar".into(),
                id: ResourceId::Literal("primary".into())
            })
        );
        assert_eq!(scope("contacts.search").unwrap().resource, None);
        assert_eq!(
            scope("knowledge.query")
                .unwrap()
                .resource
                .as_ref()
                .unwrap()
                .id,
            ResourceId::BodyParam("kb_id".into())
        );
    }

    #[test]
    fn full_request() {
        let req = map_request(
            &payload(
                REQ,
                json!({"action": "tasks.read", "project_id": "p9", "context": {"x": 1}}),
            ),
            "did:web:a.agent",
            "conn_1",
            "did:web:owner.example",
        );
        assert_eq!(req.principal.kind, "Agent");
        assert_eq!(req.principal.id, "did:web:a.agent");
        assert_eq!(
            req.principal.attrs,
            json!({"connection_id": "conn_1", "owner_did": "did:web:owner.example"})
        );
        assert_eq!(req.action, "read");
        assert_eq!(
            (req.target.kind.as_str(), req.target.id.as_str()),
            ("Project", "p9")
        );
        assert_eq!(req.context, json!({"x": 1}));
        assert_eq!(req.message.thread_id.as_deref(), Some("t"));
        assert_eq!(req.connection.id, "conn_1");
    }

    fn resource_of(b: Value) -> (String, String) {
        let b = body(b);
        let e = map_resource(raw_action(REQ, &b), &b);
        (e.kind, e.id)
    }

    fn pair(k: &str, i: &str) -> (String, String) {
        (k.to_owned(), i.to_owned())
    }

    #[test]
    fn resources() {
        assert_eq!(
            resource_of(json!({"text": "hi"})),
            pair("Principal", "self")
        );
        assert_eq!(
            resource_of(json!({"text": "hi", "resource": null})),
            pair("Principal", "self")
        );
        assert_eq!(
            resource_of(json!({"text": "hi", "resource": "A:b"})),
            pair("A", "b")
        );
        assert_eq!(resource_of(json!({"resource": ""})), pair("", ""));
        assert_eq!(resource_of(json!({"resource": ":x"})), pair("", "x"));
        assert_eq!(resource_of(json!({"resource": "A:"})), pair("A", ""));
        assert_eq!(
            resource_of(json!({"resource": 5})),
            pair("Resource", "default")
        );
        assert_eq!(
            resource_of(json!({"resource": {"type": "A"}})),
            pair("Resource", "default")
        );
        // An explicit resource wins over the scope template.
        assert_eq!(
            resource_of(json!({"action": "notes.read", "collection_id": "c", "resource": "X:y"})),
            pair("X", "y")
        );
        // A template whose body parameter is missing or not a string.
        assert_eq!(
            resource_of(json!({"action": "notes.read"})),
            pair("Resource", "default")
        );
        assert_eq!(
            resource_of(json!({"action": "notes.read", "collection_id": 3})),
            pair("Resource", "default")
        );
        assert_eq!(
            resource_of(json!({"action": "work.status.read"})),
            pair("WorkStatus", "self")
        );
        let b = body(json!({"resource": {"type": "D", "id": "1", "attrs": [1]}}));
        assert_eq!(map_resource("read", &b).attrs, json!({}));
    }

    #[test]
    fn actions() {
        let act = |kind: &str, b: Value| {
            let b = body(b);
            cedar_action(raw_action(kind, &b)).to_owned()
        };
        assert_eq!(act(REQ, json!({"text": "hi"})), "relay_to_principal");
        assert_eq!(
            act(REQ, json!({"text": "hi", "resource": "A:b"})),
            "request"
        );
        assert_eq!(act(REQ, json!({"text": 3})), "request");
        assert_eq!(
            act(REQ, json!({"action": 3, "text": "hi"})),
            "relay_to_principal"
        );
        assert_eq!(act("ping", json!({})), "ping");
        assert_eq!(act("a/b/", json!({})), "");
        assert_eq!(
            act(REQ, json!({"action": "messaging.relay.to_principal"})),
            "relay_to_principal"
        );
        let ctx = |b: Value| map_request(&payload(REQ, b), "s", "c", "o").context;
        assert_eq!(ctx(json!({"context": [1]})), json!({}));
        assert_eq!(ctx(json!({"context": null})), json!({}));
        assert_eq!(ctx(json!({"context": "x"})), json!({}));
    }
}
