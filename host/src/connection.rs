//! The connection stage of dispatch (ARP-PROTOCOL §2): which connection an envelope
//! travels on, whether it may still carry messages, and what its token says.
//!
//! Start with [`find`] (lookup by `body.connection_id`, else the unique active pairing in
//! either orientation) and [`check_status`]. [`ConnectionToken`] reads the connection token
//! JSON a connection is created from (`arp-host connection create`).

use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::audit::parse_timestamp;
use crate::pdp::Obligation;
use crate::store::{Connection, ConnectionStatus, Store, StoreError, TenantScope};

/// Why no connection could be chosen for an envelope (400 reasons of the reference).
#[derive(Debug, Error)]
pub enum LookupError {
    /// No `connection_id`, and no active connection joins target and signer.
    #[error("no connection_id and no active connection between the signer and the agent")]
    MissingConnectionId,
    /// `connection_id` names no connection of the tenant, and no active pairing exists.
    #[error("connection {0} is not known")]
    UnknownConnection(String),
    /// More than one active connection joins target and signer.
    #[error("{0} active connections join the signer and the agent; name one in connection_id")]
    Ambiguous(usize),
    /// The connection does not join the target agent and the signer.
    #[error("connection {connection_id} does not join {target} and {signer}")]
    WrongAgent {
        /// The connection chosen.
        connection_id: String,
        /// The agent the request was routed to.
        target: String,
        /// The verified signer.
        signer: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LookupError {
    /// The 400 reason code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingConnectionId => "missing_connection_id",
            Self::UnknownConnection(_) => "unknown_connection",
            Self::Ambiguous(_) => "ambiguous_connection",
            Self::WrongAgent { .. } => "wrong_agent",
            Self::Store(_) => "store_error",
        }
    }
}

/// The connection id an envelope body names, if any.
pub fn named_in(body: &Map<String, Value>) -> Option<&str> {
    body.get("connection_id").and_then(Value::as_str)
}

/// Finds the connection of an envelope from `signer` to the hosted agent `target`:
/// `body.connection_id` if it names a connection of the tenant, otherwise the unique
/// active connection between the two in either orientation.
///
/// Fix, versus the reference (which only checks that the target is on the connection):
/// the connection must join exactly the target and the signer, so a peer cannot borrow
/// another peer's connection (and its policies) by naming its id.
pub async fn find(
    store: &dyn Store,
    scope: &TenantScope,
    target: &str,
    signer: &str,
    body: &Map<String, Value>,
) -> Result<Connection, LookupError> {
    let named = named_in(body);
    let named_connection = match named {
        Some(id) => match store.connection(scope, id).await {
            Ok(connection) => Some(connection),
            Err(StoreError::NotFound(_)) => None,
            Err(error) => return Err(error.into()),
        },
        None => None,
    };
    let connection = match named_connection {
        Some(connection) => connection,
        None => {
            let mut active = store
                .active_connections_between(scope, target, signer)
                .await?;
            match (active.len(), named) {
                (1, _) => active.remove(0),
                (0, Some(id)) => return Err(LookupError::UnknownConnection(id.to_owned())),
                (0, None) => return Err(LookupError::MissingConnectionId),
                (n, _) => return Err(LookupError::Ambiguous(n)),
            }
        }
    };
    let joins = |a: &str, b: &str| connection.agent_did == a && connection.peer_did == b;
    if !(joins(target, signer) || joins(signer, target)) {
        return Err(LookupError::WrongAgent {
            connection_id: connection.connection_id,
            target: target.to_owned(),
            signer: signer.to_owned(),
        });
    }
    Ok(connection)
}

/// Why a connection carries no messages: audited as a deny, answered 400 with
/// [`StatusDenial::code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusDenial {
    /// Paused by its owner.
    Suspended,
    /// Ended by its owner.
    Revoked,
    /// Past its expiry (by status or by `expires_at`).
    Expired,
    /// The connection id is on the agent's revocation list.
    RevocationListed,
}

impl StatusDenial {
    /// The reference's reason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Suspended => "connection_suspended",
            Self::Revoked => "connection_revoked",
            Self::Expired => "connection_expired",
            Self::RevocationListed => "revoked",
        }
    }
}

/// The status step: a connection carries messages only while active and unexpired.
pub fn check_status(connection: &Connection, now_ms: i64) -> Result<(), StatusDenial> {
    match connection.status {
        ConnectionStatus::Suspended => Err(StatusDenial::Suspended),
        ConnectionStatus::Revoked => Err(StatusDenial::Revoked),
        ConnectionStatus::Expired => Err(StatusDenial::Expired),
        ConnectionStatus::Active => match connection.expires_at_ms {
            Some(expiry) if expiry <= now_ms => Err(StatusDenial::Expired),
            _ => Ok(()),
        },
    }
}

/// The revocation kind of a connection id on an agent's revocation list.
pub const REVOKED_CONNECTION: &str = "connection";

/// The members of a connection token this host reads. Unknown members are kept in the
/// stored token JSON and ignored here.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ConnectionToken {
    /// The connection's id.
    pub connection_id: String,
    /// DID of the principal who issued the token (the policy's `owner_did`).
    pub issuer: String,
    /// One side of the pairing.
    pub subject: Option<String>,
    /// The other side.
    pub audience: Option<String>,
    /// Why the connection exists.
    pub purpose: Option<String>,
    /// Granted scope ids.
    pub scopes: Vec<String>,
    /// Cedar policies, in order (`policy0`, `policy1`, ...).
    pub cedar_policies: Vec<String>,
    /// Cedar policies carrying `@obligation` annotations.
    pub obligation_policies: Vec<String>,
    /// Standing obligations.
    pub obligations: Vec<Obligation>,
    /// Expiry: epoch milliseconds, or an RFC 3339 UTC time (`expires`).
    pub expires_at_ms: Option<i64>,
    /// Expiry as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub expires: Option<String>,
}

/// Why a token is unusable.
#[derive(Debug, Error)]
pub enum TokenError {
    /// Not a JSON object of the token's shape.
    #[error("not a connection token: {0}")]
    Shape(String),
    /// A required member is empty.
    #[error("the token has no {0}")]
    Missing(&'static str),
    /// `expires` is not a timestamp.
    #[error("expires {0:?} is not a YYYY-MM-DDTHH:MM:SS.mmmZ time")]
    BadExpiry(String),
}

impl ConnectionToken {
    /// Reads a token, requiring `connection_id` and `issuer`.
    pub fn from_json(value: &Value) -> Result<Self, TokenError> {
        // serde would also read a struct from an array, by position.
        if !value.is_object() {
            return Err(TokenError::Shape("a token is a JSON object".to_owned()));
        }
        let token = Self::deserialize(value).map_err(|e| TokenError::Shape(e.to_string()))?;
        if token.connection_id.is_empty() {
            return Err(TokenError::Missing("connection_id"));
        }
        if token.issuer.is_empty() {
            return Err(TokenError::Missing("issuer"));
        }
        if let Some(expires) = &token.expires {
            parse_timestamp(expires).ok_or_else(|| TokenError::BadExpiry(expires.clone()))?;
        }
        Ok(token)
    }

    /// Reads what a stored connection's token says, tolerating tokens stored by older
    /// versions (a token that no longer parses reads as empty, never as a failure).
    pub fn of_stored(connection: &Connection) -> Self {
        Self::deserialize(&connection.token_json).unwrap_or_default()
    }

    /// The expiry in epoch milliseconds, from `expires_at_ms` or `expires`.
    pub fn expiry_ms(&self) -> Option<i64> {
        self.expires_at_ms
            .or_else(|| self.expires.as_deref().and_then(parse_timestamp))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use serde_json::json;

    use super::*;

    fn connection(status: ConnectionStatus, expires_at_ms: Option<i64>) -> Connection {
        Connection {
            connection_id: "c1".into(),
            agent_did: "did:web:samantha.agent".into(),
            peer_did: "did:web:ghost.agent".into(),
            status,
            token_json: json!({}),
            cedar_policies: Vec::new(),
            obligations: Vec::new(),
            expires_at_ms,
        }
    }

    #[test]
    fn only_active_unexpired_connections_carry_messages() {
        assert_eq!(
            check_status(&connection(ConnectionStatus::Active, None), 5),
            Ok(())
        );
        assert_eq!(
            check_status(&connection(ConnectionStatus::Active, Some(6)), 5),
            Ok(())
        );
        assert_eq!(
            check_status(&connection(ConnectionStatus::Active, Some(5)), 5),
            Err(StatusDenial::Expired)
        );
        for (status, denial) in [
            (ConnectionStatus::Suspended, "connection_suspended"),
            (ConnectionStatus::Revoked, "connection_revoked"),
            (ConnectionStatus::Expired, "connection_expired"),
        ] {
            assert_eq!(
                check_status(&connection(status, None), 5)
                    .unwrap_err()
                    .code(),
                denial
            );
        }
    }

    #[test]
    fn tokens_need_an_id_and_an_issuer_and_a_readable_expiry() {
        let token = ConnectionToken::from_json(&json!({
            "connection_id": "c1",
            "issuer": "did:web:ian.samantha.agent",
            "cedar_policies": ["permit(principal, action, resource);"],
            "obligations": [{"type": "log", "params": {"level": "full"}}],
            "expires": "2030-01-01T00:00:00.000Z",
            "sigs": {"issuer": "ignored"}
        }))
        .unwrap();
        assert_eq!(token.cedar_policies.len(), 1);
        assert_eq!(token.obligations[0].kind, "log");
        assert_eq!(token.expiry_ms(), Some(1_893_456_000_000));
        assert!(matches!(
            ConnectionToken::from_json(&json!({"issuer": "x"})),
            Err(TokenError::Missing("connection_id"))
        ));
        assert!(matches!(
            ConnectionToken::from_json(
                &json!({"connection_id": "c", "issuer": "x", "expires": "soon"})
            ),
            Err(TokenError::BadExpiry(_))
        ));
        assert!(matches!(
            ConnectionToken::from_json(&json!(["c"])),
            Err(TokenError::Shape(_))
        ));
    }
}
