//! The request a policy decides on, in the JSON/YAML form used by dispatch and the local
//! runner, and its conversion to the WIT record.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::bindings::decide;

/// `Type::"id"` pointer to an entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityRef {
    /// Entity type, e.g. `Project`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Entity id, e.g. `alpha`.
    pub id: String,
}

/// An entity with attributes and parents (`{type, id, attrs, parents}` on the wire).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// Entity type, e.g. `Agent`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Entity id.
    pub id: String,
    /// Attributes, a JSON object.
    #[serde(default = "empty_object")]
    pub attrs: Value,
    /// Direct parents.
    #[serde(default)]
    pub parents: Vec<EntityRef>,
}

/// An obligation `{type, params}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Obligation {
    /// Obligation type, e.g. `spend_cap`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Parameters, a JSON object.
    #[serde(default = "empty_object")]
    pub params: Value,
}

/// The connection a message travels on, as a policy sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Connection {
    /// Connection id.
    pub id: String,
    /// `active`, `suspended`, `revoked` or `expired`.
    pub status: String,
    /// DID of the token issuer.
    pub issuer: String,
    /// Purpose from the token.
    pub purpose: Option<String>,
    /// Granted scope ids.
    pub scopes: Vec<String>,
    /// The token's Cedar policies, in order.
    pub cedar_policies: Vec<String>,
    /// Cedar policies with `@obligation` annotations.
    pub obligation_policies: Vec<String>,
    /// Standing obligations of the token.
    pub obligations: Vec<Obligation>,
    /// Expiry in epoch milliseconds.
    pub expires_at_ms: Option<i64>,
}

impl Default for Connection {
    fn default() -> Self {
        Self {
            id: String::new(),
            status: "active".to_owned(),
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

/// The message being decided on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Message {
    /// The sender's message id.
    pub id: String,
    /// The message `type` URI.
    #[serde(rename = "type")]
    pub kind: String,
    /// The thread id (`thid`).
    pub thread_id: Option<String>,
}

/// Everything a policy may use to decide.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRequest {
    /// Tenant of the receiving agent.
    #[serde(default)]
    pub tenant: String,
    /// `Agent::"<signer DID>"`.
    pub principal: Entity,
    /// Cedar action name.
    pub action: String,
    /// The resource (called `target` in WIT, where `resource` is a keyword).
    #[serde(alias = "resource")]
    pub target: Entity,
    /// Further entities.
    #[serde(default)]
    pub entities: Vec<Entity>,
    /// Context object.
    #[serde(default = "empty_object")]
    pub context: Value,
    /// The connection.
    #[serde(default)]
    pub connection: Connection,
    /// The message.
    #[serde(default)]
    pub message: Message,
    /// The host clock in epoch milliseconds.
    #[serde(default)]
    pub now_ms: i64,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl PolicyRequest {
    /// The WIT form handed to the guest. JSON values travel as their text.
    pub fn to_wit(&self) -> decide::Request {
        decide::Request {
            tenant: self.tenant.clone(),
            principal: entity_to_wit(&self.principal),
            action: self.action.clone(),
            target: entity_to_wit(&self.target),
            entities: self.entities.iter().map(entity_to_wit).collect(),
            context: self.context.to_string(),
            connection: decide::Connection {
                id: self.connection.id.clone(),
                status: self.connection.status.clone(),
                issuer: self.connection.issuer.clone(),
                purpose: self.connection.purpose.clone(),
                scopes: self.connection.scopes.clone(),
                cedar_policies: self.connection.cedar_policies.clone(),
                obligation_policies: self.connection.obligation_policies.clone(),
                obligations: self
                    .connection
                    .obligations
                    .iter()
                    .map(|o| decide::Obligation {
                        kind: o.kind.clone(),
                        params: o.params.to_string(),
                    })
                    .collect(),
                expires_at_ms: self.connection.expires_at_ms,
            },
            message: decide::Message {
                id: self.message.id.clone(),
                kind: self.message.kind.clone(),
                thread_id: self.message.thread_id.clone(),
            },
            now_ms: self.now_ms,
        }
    }
}

fn entity_to_wit(entity: &Entity) -> decide::Entity {
    decide::Entity {
        kind: entity.kind.clone(),
        id: entity.id.clone(),
        attrs: entity.attrs.to_string(),
        parents: entity
            .parents
            .iter()
            .map(|p| decide::EntityRef {
                kind: p.kind.clone(),
                id: p.id.clone(),
            })
            .collect(),
    }
}
