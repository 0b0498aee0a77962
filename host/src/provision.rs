//! Provisioning: what `arp-host agent create` and `arp-host connection create` store.
//! A new agent gets an Ed25519 key and its three public documents (DID document, agent
//! card, `arp.json`) in the shapes the reference serves; a connection is read from its
//! connection token.

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use thiserror::Error;

use crate::connection::{ConnectionToken, TokenError};
use crate::did::{ED25519_METHOD_TYPE, decode_public_key_multibase, encode_public_key_multibase};
use crate::store::{Agent, Connection, ConnectionStatus};

/// Why an agent or a connection cannot be provisioned.
#[derive(Debug, Error)]
pub enum ProvisionError {
    /// Only `did:web:<name>.agent` DIDs can be hosted (requests are routed by host name).
    #[error("{0} is not a hostable DID: expected did:web:<name>.agent")]
    NotHostable(String),
    /// The given public key is not an Ed25519 multibase key.
    #[error("the public key is not an Ed25519 publicKeyMultibase: {0}")]
    BadKey(String),
    /// The token is unusable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token does not name the hosted agent.
    #[error("the token names neither {agent} as subject nor as audience")]
    AgentNotInToken {
        /// The agent given.
        agent: String,
    },
    /// Which side is hosted here cannot be told.
    #[error("say which agent is hosted here (--agent): the token has no subject/audience pair")]
    AmbiguousAgent,
}

/// A new agent and, when its key was generated here, the secret seed (32 bytes) its
/// owner must keep.
#[derive(Debug)]
pub struct NewAgent {
    /// What the store keeps.
    pub agent: Agent,
    /// The Ed25519 seed, when generated.
    pub secret_seed: Option<[u8; 32]>,
}

/// The agent `did` (`did:web:<name>.agent`) owned by `owner_did`, with the given public
/// key or a fresh one.
pub fn new_agent(
    did: &str,
    owner_did: &str,
    name: Option<&str>,
    public_key_multibase: Option<&str>,
) -> Result<NewAgent, ProvisionError> {
    let host = did
        .strip_prefix("did:web:")
        .filter(|host| crate::routing::agent_did_from_host(host).as_deref() == Some(did))
        .ok_or_else(|| ProvisionError::NotHostable(did.to_owned()))?;
    let (multibase, secret_seed) = match public_key_multibase {
        Some(multibase) => {
            decode_public_key_multibase(multibase)
                .map_err(|error| ProvisionError::BadKey(error.to_string()))?;
            (multibase.to_owned(), None)
        }
        None => {
            let seed: [u8; 32] = rand_seed();
            let key = SigningKey::from_bytes(&seed);
            (
                encode_public_key_multibase(key.verifying_key().as_bytes()),
                Some(seed),
            )
        }
    };
    let key_id = format!("{did}#key-1");
    let didcomm = format!("https://{host}/didcomm");
    let card_url = format!("https://{host}/.well-known/agent-card.json");
    let did_document = json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "controller": owner_did,
        "verificationMethod": [{
            "id": key_id,
            "type": ED25519_METHOD_TYPE,
            "controller": did,
            "publicKeyMultibase": multibase,
        }],
        "authentication": [key_id],
        "assertionMethod": [key_id],
        "keyAgreement": [key_id],
        "service": [
            {"id": format!("{did}#didcomm"), "type": "DIDCommMessaging",
             "serviceEndpoint": didcomm, "accept": ["didcomm/v2"]},
            {"id": format!("{did}#agent-card"), "type": "AgentCard",
             "serviceEndpoint": card_url},
        ],
        "principal": {"did": owner_did},
    });
    let agent_card = json!({
        "name": name.unwrap_or(host),
        "did": did,
        "owner": owner_did,
        "endpoints": {"didcomm": didcomm},
    });
    let arp_json = json!({
        "version": "0.1",
        "did": did,
        "principal": owner_did,
        "didcomm": didcomm,
        "agent_card": card_url,
    });
    Ok(NewAgent {
        agent: Agent {
            did: did.to_owned(),
            public_key_multibase: multibase,
            did_document,
            agent_card,
            arp_json,
        },
        secret_seed,
    })
}

/// The connection a token describes, hosted on `agent_did` (or, when `None`, on the
/// side of the token that `is_hosted` says is hosted here).
pub fn connection_from_token(
    token_json: Value,
    agent_did: Option<&str>,
    is_hosted: impl Fn(&str) -> bool,
) -> Result<Connection, ProvisionError> {
    let token = ConnectionToken::from_json(&token_json)?;
    let sides = [token.subject.clone(), token.audience.clone()];
    let (agent, peer) = match (agent_did, &sides) {
        (Some(agent), [Some(a), Some(b)]) if a == agent => (agent.to_owned(), b.clone()),
        (Some(agent), [Some(a), Some(b)]) if b == agent => (agent.to_owned(), a.clone()),
        (Some(agent), _) => {
            return Err(ProvisionError::AgentNotInToken {
                agent: agent.to_owned(),
            });
        }
        (None, [Some(a), Some(b)]) if is_hosted(a) => (a.clone(), b.clone()),
        (None, [Some(a), Some(b)]) if is_hosted(b) => (b.clone(), a.clone()),
        (None, _) => return Err(ProvisionError::AmbiguousAgent),
    };
    Ok(Connection {
        connection_id: token.connection_id.clone(),
        agent_did: agent,
        peer_did: peer,
        status: ConnectionStatus::Active,
        cedar_policies: token.cedar_policies.clone(),
        obligations: token.obligations.clone(),
        expires_at_ms: token.expiry_ms(),
        token_json,
    })
}

/// 32 random bytes from the operating system.
fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    // A uuid v4 draws from the OS generator; two of them make 32 bytes without another
    // dependency.
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::did::ed25519_key_from_document;

    #[test]
    fn a_new_agent_publishes_its_generated_key() {
        let new = new_agent(
            "did:web:samantha.agent",
            "did:web:ian.samantha.agent",
            None,
            None,
        )
        .unwrap();
        let seed = new.secret_seed.unwrap();
        let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        assert_eq!(
            ed25519_key_from_document(&new.agent.did_document).unwrap(),
            public
        );
        assert_eq!(
            new.agent.did_document["service"][0]["serviceEndpoint"],
            "https://samantha.agent/didcomm"
        );
        assert!(matches!(
            new_agent("did:web:example.com", "did:web:o", None, None),
            Err(ProvisionError::NotHostable(_))
        ));
        assert!(matches!(
            new_agent("did:web:a.agent", "did:web:o", None, Some("zNotAKey")),
            Err(ProvisionError::BadKey(_))
        ));
    }

    #[test]
    fn the_hosted_side_of_a_token_is_the_agent() {
        let token = json!({
            "connection_id": "c1", "issuer": "did:web:ian.samantha.agent",
            "subject": "did:web:ghost.agent", "audience": "did:web:samantha.agent",
            "cedar_policies": ["permit(principal, action, resource);"]
        });
        let connection =
            connection_from_token(token.clone(), None, |did| did == "did:web:samantha.agent")
                .unwrap();
        assert_eq!(connection.agent_did, "did:web:samantha.agent");
        assert_eq!(connection.peer_did, "did:web:ghost.agent");
        assert_eq!(connection.cedar_policies.len(), 1);
        let explicit =
            connection_from_token(token.clone(), Some("did:web:ghost.agent"), |_| false).unwrap();
        assert_eq!(explicit.peer_did, "did:web:samantha.agent");
        assert!(matches!(
            connection_from_token(token.clone(), Some("did:web:orion.agent"), |_| true),
            Err(ProvisionError::AgentNotInToken { .. })
        ));
        assert!(matches!(
            connection_from_token(token, None, |_| false),
            Err(ProvisionError::AmbiguousAgent)
        ));
    }
}
