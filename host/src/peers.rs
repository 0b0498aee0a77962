//! Where a signer's DID document comes from (ARP-PROTOCOL §1): agents hosted here from
//! the store, `did:key` in memory, any other `did:web` over HTTPS (cached, see
//! [`crate::did_web`]).

use serde_json::Value;

use crate::did::did_key_document;
use crate::did_web::DidWebResolver;
use crate::store::{Store, StoreError};

/// Resolves signer DIDs for envelope verification.
#[derive(Debug)]
pub struct PeerResolver {
    web: DidWebResolver,
}

impl PeerResolver {
    /// A resolver fetching foreign `did:web` documents through `web`.
    pub fn new(web: DidWebResolver) -> Self {
        Self { web }
    }

    /// The DID document of `did`, or `None` when it does not resolve (`unknown_peer`).
    /// Only a failing store is an error: a peer's unreachable web server is the peer's
    /// problem, not a reason to answer 503.
    pub async fn resolve(&self, store: &dyn Store, did: &str) -> Result<Option<Value>, StoreError> {
        if let Some(document) = did_key_document(did) {
            return Ok(Some(document));
        }
        match store.agent_by_did(did).await {
            Ok((_, agent)) => return Ok(Some(agent.did_document)),
            Err(StoreError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
        if !did.starts_with("did:web:") {
            return Ok(None);
        }
        match self.web.resolve(did).await {
            Ok(document) => Ok(Some(document)),
            Err(error) => {
                tracing::info!(
                    peerDid = did,
                    reason = error.code(),
                    "peer DID does not resolve"
                );
                Ok(None)
            }
        }
    }
}
