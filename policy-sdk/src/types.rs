//! The plain Rust types a policy author works with, and their builders.
//!
//! They mirror the records of `wit/policy.wit`, except that every JSON text of the contract
//! (attributes, context, obligation parameters) is already parsed into a
//! [`serde_json::Value`]. They serialize with serde in the shape the ARP vectors use
//! (`type` for kinds), so tests can load requests from JSON files.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An empty JSON object: the value of "no attributes", "no context" and "no parameters".
pub(crate) fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// A pointer to an entity: its Cedar entity type and its id, e.g. `Project` / `alpha`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EntityRef {
    /// Entity type name, e.g. `Project`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Entity id within its type, e.g. `alpha`.
    pub id: String,
}

impl EntityRef {
    /// A reference to the entity `kind::"id"`.
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            id: id.into(),
        }
    }
}

/// An entity with its attributes and the entities it is a member of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// Entity type name, e.g. `Agent`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Entity id within its type, e.g. `did:web:orion.agent`.
    pub id: String,
    /// Attributes, a JSON object (`{}` when there are none).
    #[serde(default = "empty_object")]
    pub attrs: Value,
    /// Direct parents (Cedar `in`), e.g. the `Project` a `Document` belongs to.
    #[serde(default)]
    pub parents: Vec<EntityRef>,
}

impl Default for Entity {
    fn default() -> Self {
        Self::new("", "")
    }
}

impl Entity {
    /// The entity `kind::"id"` with no attributes and no parents.
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            id: id.into(),
            attrs: empty_object(),
            parents: Vec::new(),
        }
    }

    /// Replaces the attributes; `attrs` should be a JSON object.
    pub fn attrs(mut self, attrs: Value) -> Self {
        self.attrs = attrs;
        self
    }

    /// Adds the direct parent `kind::"id"`.
    pub fn parent(mut self, kind: impl Into<String>, id: impl Into<String>) -> Self {
        self.parents.push(EntityRef::new(kind, id));
        self
    }

    /// The attribute `name`, if the attributes are an object that has it.
    pub fn attr(&self, name: &str) -> Option<&Value> {
        self.attrs.get(name)
    }
}

/// Something the receiving agent must do when it acts on an allowed message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Obligation {
    /// Obligation type, e.g. `redact_fields` or `spend_cap`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Parameters, a JSON object (`{}` when there are none).
    #[serde(default = "empty_object")]
    pub params: Value,
}

impl Obligation {
    /// An obligation of type `kind` with the given parameters (a JSON object).
    pub fn new(kind: impl Into<String>, params: Value) -> Self {
        Self {
            kind: kind.into(),
            params,
        }
    }
}

/// The ARP connection the message travels on, from its connection token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Connection {
    /// Connection id, e.g. `conn_orion_sam_01`.
    pub id: String,
    /// `active`, `suspended`, `revoked` or `expired`. The host only asks about active ones.
    pub status: String,
    /// DID of the token's issuer (the owner who granted the connection).
    pub issuer: String,
    /// Free-text purpose from the token, if it has one.
    pub purpose: Option<String>,
    /// Scope ids granted by the token, e.g. `files.project.files.read`.
    pub scopes: Vec<String>,
    /// Cedar policy texts from the token, in order.
    pub cedar_policies: Vec<String>,
    /// Cedar policy texts with `@obligation` annotations, evaluated only on allow.
    pub obligation_policies: Vec<String>,
    /// Standing obligations of the token (the host attaches these itself).
    pub obligations: Vec<Obligation>,
    /// When the connection expires, in epoch milliseconds, if it does.
    pub expires_at_ms: Option<i64>,
}

impl Default for Connection {
    fn default() -> Self {
        Self {
            id: String::new(),
            // The host only ever asks about active connections, so tests get that too.
            status: "active".to_string(),
            issuer: String::new(),
            purpose: None,
            scopes: Vec::new(),
            cedar_policies: Vec::new(),
            obligation_policies: Vec::new(),
            obligations: Vec::new(),
            expires_at_ms: None,
        }
    }
}

impl Connection {
    /// An active connection with this id and nothing granted.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }

    /// Adds a granted scope id.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds a Cedar policy text.
    pub fn cedar_policy(mut self, text: impl Into<String>) -> Self {
        self.cedar_policies.push(text.into());
        self
    }

    /// Adds an obligation policy text.
    pub fn obligation_policy(mut self, text: impl Into<String>) -> Self {
        self.obligation_policies.push(text.into());
        self
    }
}

/// The DIDComm message being decided on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Message {
    /// The message's `id` as set by the sender.
    pub id: String,
    /// The message's `type` URI, e.g. `https://didcomm.org/arp/1.0/request`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The message's `thid`, if any.
    pub thread_id: Option<String>,
}

/// Everything a policy may use to decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Request {
    /// The tenant that hosts the receiving agent.
    pub tenant: String,
    /// Who asks: `Agent::"<signer DID>"` with attrs `connection_id` and `owner_did`.
    pub principal: Entity,
    /// The Cedar action name, e.g. `read` or `relay_to_principal`.
    pub action: String,
    /// What is asked for (Cedar's resource).
    pub target: Entity,
    /// Further entities the sender described, e.g. parents of the target.
    pub entities: Vec<Entity>,
    /// The message context, a JSON object (`{}` when absent). Money is in integer cents,
    /// times in epoch milliseconds.
    pub context: Value,
    /// The connection the message arrived on.
    pub connection: Connection,
    /// The message itself.
    pub message: Message,
    /// The host's clock at the time of the request, in epoch milliseconds. Policies never
    /// read a clock of their own.
    pub now_ms: i64,
}

impl Default for Request {
    fn default() -> Self {
        Self::new(Entity::default(), "", Entity::default())
    }
}

impl Request {
    /// A request by `principal` to do `action` on `target`, with an empty context, no
    /// further entities, an active connection that grants nothing, an empty message and
    /// `now_ms` 0. Change the rest with the `with_*` setters.
    pub fn new(principal: Entity, action: impl Into<String>, target: Entity) -> Self {
        Self {
            tenant: String::new(),
            principal,
            action: action.into(),
            target,
            entities: Vec::new(),
            context: empty_object(),
            connection: Connection::default(),
            message: Message::default(),
            now_ms: 0,
        }
    }

    /// Sets the tenant.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// Adds one further entity.
    pub fn with_entity(mut self, entity: Entity) -> Self {
        self.entities.push(entity);
        self
    }

    /// Replaces the further entities.
    pub fn with_entities(mut self, entities: Vec<Entity>) -> Self {
        self.entities = entities;
        self
    }

    /// Replaces the context; it should be a JSON object.
    pub fn with_context(mut self, context: Value) -> Self {
        self.context = context;
        self
    }

    /// Replaces the connection.
    pub fn with_connection(mut self, connection: Connection) -> Self {
        self.connection = connection;
        self
    }

    /// Replaces the message.
    pub fn with_message(mut self, message: Message) -> Self {
        self.message = message;
        self
    }

    /// Sets the host clock value, in epoch milliseconds.
    pub fn with_now_ms(mut self, now_ms: i64) -> Self {
        self.now_ms = now_ms;
        self
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Deliver the message.
    Allow,
    /// Refuse the message.
    Deny,
}

/// What a policy answers. Build one with [`Decision::allow`] or [`Decision::deny`] and the
/// chaining methods [`fired`](Decision::fired), [`obligation`](Decision::obligation) and
/// [`reason`](Decision::reason).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Allow or deny.
    pub effect: Effect,
    /// Ids of the policies (rules) that determined the effect, then those of fired
    /// obligation policies.
    pub policies_fired: Vec<String>,
    /// Obligations the receiving agent must honour, in order.
    pub obligations: Vec<Obligation>,
    /// Human-readable reasons, e.g. evaluation errors or why a request was denied.
    pub reasons: Vec<String>,
}

impl Decision {
    /// An allow with nothing fired, no obligations and no reasons.
    pub fn allow() -> Self {
        Self::with_effect(Effect::Allow)
    }

    /// A deny with nothing fired and no reasons.
    pub fn deny() -> Self {
        Self::with_effect(Effect::Deny)
    }

    /// A decision with this effect and nothing else.
    pub fn with_effect(effect: Effect) -> Self {
        Self {
            effect,
            policies_fired: Vec::new(),
            obligations: Vec::new(),
            reasons: Vec::new(),
        }
    }

    /// Appends the id of a policy (rule) that fired.
    pub fn fired(mut self, policy_id: impl Into<String>) -> Self {
        self.policies_fired.push(policy_id.into());
        self
    }

    /// Appends an obligation of type `kind` with `params` (a JSON object).
    pub fn obligation(mut self, kind: impl Into<String>, params: Value) -> Self {
        self.obligations.push(Obligation::new(kind, params));
        self
    }

    /// Appends a human-readable reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reasons.push(reason.into());
        self
    }

    /// Whether the effect is allow.
    pub fn is_allow(&self) -> bool {
        self.effect == Effect::Allow
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entity_builder() {
        let entity = Entity::new("Document", "doc-7")
            .attrs(json!({"classification": "internal"}))
            .parent("Project", "alpha")
            .parent("Portfolio", "main");
        assert_eq!(entity.kind, "Document");
        assert_eq!(entity.id, "doc-7");
        assert_eq!(entity.attr("classification"), Some(&json!("internal")));
        assert_eq!(entity.attr("missing"), None);
        assert_eq!(
            entity.parents,
            [
                EntityRef::new("Project", "alpha"),
                EntityRef::new("Portfolio", "main")
            ]
        );
        assert_eq!(Entity::new("A", "b").attrs, json!({}));
    }

    #[test]
    fn request_defaults_and_setters() {
        let request = Request::new(
            Entity::new("Agent", "a"),
            "read",
            Entity::new("Project", "p"),
        );
        assert_eq!(request.action, "read");
        assert_eq!(request.context, json!({}));
        assert!(request.entities.is_empty());
        assert_eq!(request.connection.status, "active");
        assert!(request.connection.scopes.is_empty());
        assert_eq!(request.now_ms, 0);

        let request = request
            .with_tenant("acme")
            .with_entities(vec![Entity::new("X", "1")])
            .with_entity(Entity::new("Y", "2"))
            .with_context(json!({"k": 1}))
            .with_connection(Connection::new("c").scope("s").obligation_policy("o"))
            .with_message(Message {
                id: "m".to_string(),
                ..Message::default()
            })
            .with_now_ms(42);
        assert_eq!(request.tenant, "acme");
        assert_eq!(request.entities.len(), 2);
        assert_eq!(request.context["k"], 1);
        assert_eq!(request.connection.id, "c");
        assert_eq!(request.connection.scopes, ["s"]);
        assert_eq!(request.connection.obligation_policies, ["o"]);
        assert_eq!(request.message.id, "m");
        assert_eq!(request.now_ms, 42);
    }

    #[test]
    fn decision_builders() {
        let decision = Decision::allow()
            .fired("policy0")
            .fired("o_0")
            .obligation("spend_cap", json!({"max_cents": 5}))
            .reason("r1")
            .reason("r2");
        assert!(decision.is_allow());
        assert_eq!(decision.policies_fired, ["policy0", "o_0"]);
        assert_eq!(
            decision.obligations,
            [Obligation::new("spend_cap", json!({"max_cents": 5}))]
        );
        assert_eq!(decision.reasons, ["r1", "r2"]);
        let deny = Decision::deny();
        assert!(!deny.is_allow());
        assert_eq!(deny, Decision::with_effect(Effect::Deny));
    }

    #[test]
    fn serde_uses_the_vector_shape() {
        let entity: Entity = serde_json::from_value(json!({
            "type": "Document", "id": "doc-7", "parents": [{"type": "Project", "id": "alpha"}]
        }))
        .unwrap();
        assert_eq!(
            entity,
            Entity::new("Document", "doc-7").parent("Project", "alpha")
        );
        assert_eq!(
            serde_json::to_value(Obligation::new("notify", json!({}))).unwrap(),
            json!({"type": "notify", "params": {}})
        );
        assert_eq!(
            serde_json::to_value(Decision::deny().reason("x")).unwrap(),
            json!({"effect": "deny", "policies_fired": [], "obligations": [], "reasons": ["x"]})
        );
        let request: Request = serde_json::from_value(json!({"action": "read"})).unwrap();
        assert_eq!(request.context, json!({}));
        assert_eq!(request.connection.status, "active");
    }
}
