//! The agent bearer of `GET /ws` and `GET /agent-connections` (ARP-PROTOCOL §4):
//! `<ts>.<sig>`, ts = epoch milliseconds in decimal, sig = base64url(Ed25519 signature by
//! the agent's key over the 32 raw bytes of SHA-256("arp-cloud-ws:" + did + ":" + ts)).
//!
//! Checks run in the reference's order, so each refusal names the same reason:
//! unknown agent, shape, timestamp, window, stored key, signature. Unlike the reference,
//! the timestamp must be plain decimal digits and the signature strict unpadded base64url
//! of exactly 64 bytes, verified with strict Ed25519 (see the vectors' `reference_quirks`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::did::decode_public_key_multibase;

/// How far the bearer's timestamp may be from the host clock (inclusive).
pub const BEARER_WINDOW_MS: i64 = 300_000;

/// Why a bearer is refused (401, except a malformed stored key: 500).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// No DID or no bearer was presented.
    #[error("a did and a bearer are required")]
    MissingCredentials,
    /// No agent is hosted at the DID.
    #[error("no agent is hosted at this DID")]
    UnknownAgent,
    /// Not `<ts>.<sig>`.
    #[error("the bearer is not <ts>.<sig>")]
    BadShape,
    /// The timestamp is not decimal epoch milliseconds.
    #[error("the bearer timestamp is not decimal epoch milliseconds")]
    BadTimestamp,
    /// The timestamp is more than five minutes from the host clock.
    #[error("the bearer timestamp is outside the five-minute window")]
    Expired,
    /// The agent's stored key does not decode (a host-side fault).
    #[error("the agent's stored key is malformed")]
    MalformedAgentKey,
    /// The signature does not verify under the agent's key.
    #[error("the bearer signature does not verify")]
    BadSignature,
}

impl BearerError {
    /// The wire reason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing_credentials",
            Self::UnknownAgent => "unknown_agent",
            Self::BadShape => "bad_bearer_shape",
            Self::BadTimestamp => "bad_bearer_ts",
            Self::Expired => "bearer_expired",
            Self::MalformedAgentKey => "malformed_agent_key",
            Self::BadSignature => "bad_signature",
        }
    }

    /// The HTTP status: 401, or 500 for the host's own malformed key.
    pub fn status(self) -> u16 {
        match self {
            Self::MalformedAgentKey => 500,
            _ => 401,
        }
    }
}

/// What the bearer signs for `did` at `ts`: SHA-256 of the challenge string.
pub fn challenge_digest(did: &str, ts: &str) -> [u8; 32] {
    Sha256::digest(format!("arp-cloud-ws:{did}:{ts}").as_bytes()).into()
}

/// A bearer for `did` signed now by `key` (what an agent client sends).
pub fn sign_bearer(did: &str, key: &ed25519_dalek::SigningKey, now_ms: i64) -> String {
    use ed25519_dalek::Signer as _;
    let ts = now_ms.to_string();
    let signature = key.sign(&challenge_digest(did, &ts));
    format!("{ts}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// Checks `bearer` for the agent `did` whose stored key is `public_key_multibase`
/// (`None`: no agent is hosted at `did`), at `now_ms`.
pub fn verify_bearer(
    did: &str,
    public_key_multibase: Option<&str>,
    bearer: &str,
    now_ms: i64,
) -> Result<(), BearerError> {
    let public_key_multibase = public_key_multibase.ok_or(BearerError::UnknownAgent)?;
    let (ts, signature) = bearer.split_once('.').ok_or(BearerError::BadShape)?;
    if signature.contains('.') {
        return Err(BearerError::BadShape);
    }
    if ts.is_empty() || !ts.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(BearerError::BadTimestamp);
    }
    let ts_ms: i64 = ts.parse().map_err(|_| BearerError::BadTimestamp)?;
    if now_ms.abs_diff(ts_ms) > BEARER_WINDOW_MS.unsigned_abs() {
        return Err(BearerError::Expired);
    }
    let key = decode_public_key_multibase(public_key_multibase)
        .map_err(|_| BearerError::MalformedAgentKey)?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| BearerError::MalformedAgentKey)?;
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(BearerError::BadSignature)?;
    key.verify_strict(
        &challenge_digest(did, ts),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| BearerError::BadSignature)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    #[test]
    fn a_signed_bearer_verifies_and_names_its_window() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let multibase = crate::did::encode_public_key_multibase(&key.verifying_key().to_bytes());
        let bearer = sign_bearer("did:web:a.agent", &key, 1_000_000_000);
        assert_eq!(
            verify_bearer("did:web:a.agent", Some(&multibase), &bearer, 1_000_300_000),
            Ok(())
        );
        assert_eq!(
            verify_bearer("did:web:a.agent", Some(&multibase), &bearer, 1_000_300_001),
            Err(BearerError::Expired)
        );
        assert_eq!(
            verify_bearer("did:web:b.agent", Some(&multibase), &bearer, 1_000_000_000),
            Err(BearerError::BadSignature)
        );
    }
}
