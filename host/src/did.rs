//! DIDs and their Ed25519 keys (ARP-PROTOCOL §1): `publicKeyMultibase` decoding, the
//! verifying key of a DID document, `did:key` resolution in memory, and the
//! [`DidResolver`] seam the envelope verifier looks documents up through.
//!
//! Start with [`ed25519_key_from_document`]; [`DidKeyResolver`] and [`MapResolver`] are the
//! two resolvers that need no network (did:web over HTTPS comes later).

use std::collections::HashMap;

use serde_json::{Value, json};
use thiserror::Error;

/// The multicodec prefix of an Ed25519 public key (`ed25519-pub`, varint 0xed).
const ED25519_MULTICODEC: [u8; 2] = [0xed, 0x01];

/// The only verification method type whose key is used.
pub const ED25519_METHOD_TYPE: &str = "Ed25519VerificationKey2020";

/// Why a `publicKeyMultibase` string is not an Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MultibaseError {
    /// The string does not start with `z` (base58btc); other multibase prefixes are refused.
    #[error("publicKeyMultibase is not base58btc (no leading 'z')")]
    NotBase58btc,
    /// The characters after `z` are not base58 (Bitcoin alphabet).
    #[error("publicKeyMultibase is not valid base58btc")]
    Base58,
    /// Decoded to a length other than 32, or 34 without the `0xed 0x01` prefix.
    #[error("publicKeyMultibase decodes to {0} bytes, not an Ed25519 key")]
    BadLength(usize),
}

impl MultibaseError {
    /// The reason code a request refused for this error carries.
    pub fn code(&self) -> &'static str {
        "no_peer_ed25519_key"
    }
}

/// Why no verifying key could be taken from a DID document.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// No `verificationMethod` of type `Ed25519VerificationKey2020` carries a
    /// `publicKeyMultibase`.
    #[error("no Ed25519VerificationKey2020 verification method with publicKeyMultibase")]
    NoEd25519Method,
    /// The first such method's key does not decode.
    #[error("first Ed25519VerificationKey2020 key is malformed: {0}")]
    Malformed(#[from] MultibaseError),
}

impl KeyError {
    /// The protocol's reason code: `no_peer_ed25519_key` in every case.
    pub fn code(&self) -> &'static str {
        "no_peer_ed25519_key"
    }
}

/// Decodes `publicKeyMultibase` (`z` + base58btc) to a raw Ed25519 public key: 34 bytes
/// starting `0xed 0x01` give the last 32; exactly 32 bytes are the raw key.
pub fn decode_public_key_multibase(multibase: &str) -> Result<[u8; 32], MultibaseError> {
    let encoded = multibase
        .strip_prefix('z')
        .ok_or(MultibaseError::NotBase58btc)?;
    let bytes = bs58::decode(encoded)
        .into_vec()
        .map_err(|_| MultibaseError::Base58)?;
    let key = match bytes.as_slice() {
        [0xed, 0x01, rest @ ..] if rest.len() == 32 => rest,
        raw if raw.len() == 32 => raw,
        other => return Err(MultibaseError::BadLength(other.len())),
    };
    <[u8; 32]>::try_from(key).map_err(|_| MultibaseError::BadLength(bytes.len()))
}

/// Encodes a raw Ed25519 public key as `publicKeyMultibase` (`z` + base58btc of
/// `0xed 0x01` + key), the form `did:key` and DID documents carry.
pub fn encode_public_key_multibase(key: &[u8; 32]) -> String {
    let mut bytes = Vec::with_capacity(34);
    bytes.extend_from_slice(&ED25519_MULTICODEC);
    bytes.extend_from_slice(key);
    format!("z{}", bs58::encode(bytes).into_string())
}

/// The verifying key of a DID document, as the reference takes it: the **first**
/// `verificationMethod` of type `Ed25519VerificationKey2020` with a non-empty string
/// `publicKeyMultibase` decides. If its key is malformed the document has no key (a later
/// method is not tried). Other method types (`JsonWebKey2020`,
/// `Ed25519VerificationKey2018`, ...) are ignored.
pub fn ed25519_key_from_document(doc: &Value) -> Result<[u8; 32], KeyError> {
    let methods = doc
        .get("verificationMethod")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for method in methods {
        if method.get("type").and_then(Value::as_str) != Some(ED25519_METHOD_TYPE) {
            continue;
        }
        match method.get("publicKeyMultibase").and_then(Value::as_str) {
            Some(multibase) if !multibase.is_empty() => {
                return Ok(decode_public_key_multibase(multibase)?);
            }
            _ => continue,
        }
    }
    Err(KeyError::NoEd25519Method)
}

/// The DID of a `kid`: everything before the first `#` (the whole `kid` without one).
pub fn did_of_kid(kid: &str) -> &str {
    kid.split('#').next().unwrap_or(kid)
}

/// The DID document a `did:key:z6Mk...` stands for, built in memory, in the shape the
/// reference uses (one `Ed25519VerificationKey2020` method `#key-1`). `None` when `did` is
/// not a `did:key` or its key is not an `ed25519-pub` multicodec key (a bare 32-byte key
/// is not a valid did:key).
pub fn did_key_document(did: &str) -> Option<Value> {
    let multibase = did.strip_prefix("did:key:")?;
    let bytes = bs58::decode(multibase.strip_prefix('z')?).into_vec().ok()?;
    if bytes.len() != 34 || !bytes.starts_with(&ED25519_MULTICODEC) {
        return None;
    }
    let key_id = format!("{did}#key-1");
    Some(json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "controller": did,
        "verificationMethod": [{
            "id": key_id,
            "type": ED25519_METHOD_TYPE,
            "controller": did,
            "publicKeyMultibase": multibase,
        }],
        "authentication": [key_id],
        "assertionMethod": [key_id],
        "keyAgreement": [key_id],
    }))
}

/// Looks up DID documents. `None` means unknown (`unknown_peer`).
pub trait DidResolver {
    /// The DID document of `did` (no fragment), if known.
    fn resolve(&self, did: &str) -> Option<Value>;
}

impl<R: DidResolver + ?Sized> DidResolver for &R {
    fn resolve(&self, did: &str) -> Option<Value> {
        (**self).resolve(did)
    }
}

/// Resolves `did:key` DIDs in memory and nothing else.
#[derive(Debug, Clone, Copy, Default)]
pub struct DidKeyResolver;

impl DidResolver for DidKeyResolver {
    fn resolve(&self, did: &str) -> Option<Value> {
        did_key_document(did)
    }
}

/// A fixed DID → document map (hosted agents' documents, tests), falling back to
/// in-memory `did:key` resolution when `did_key` is set.
#[derive(Debug, Clone, Default)]
pub struct MapResolver {
    documents: HashMap<String, Value>,
    did_key: bool,
}

impl MapResolver {
    /// A resolver over exactly these documents (no `did:key` fallback).
    pub fn new(documents: HashMap<String, Value>) -> Self {
        Self {
            documents,
            did_key: false,
        }
    }

    /// Also resolve any `did:key` absent from the map in memory.
    pub fn with_did_key(mut self) -> Self {
        self.did_key = true;
        self
    }

    /// Adds or replaces one document.
    pub fn insert(&mut self, did: impl Into<String>, document: Value) {
        self.documents.insert(did.into(), document);
    }
}

impl DidResolver for MapResolver {
    fn resolve(&self, did: &str) -> Option<Value> {
        match self.documents.get(did) {
            Some(doc) => Some(doc.clone()),
            None if self.did_key => did_key_document(did),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const SAMANTHA_MB: &str = "z6MkrokEkv2FLzeJYMS3WUbh9JCvuoJ6TaiCfmDVE68AiqLs";
    const SAMANTHA_HEX: &str = "b78bbc97dc5b0fdb807add0ed07d498a9ceffa9d3e83b8289d05ef76a6568458";

    #[test]
    fn multibase_with_multicodec_prefix() {
        let key = decode_public_key_multibase(SAMANTHA_MB).unwrap();
        assert_eq!(hex::encode(key), SAMANTHA_HEX);
        assert_eq!(encode_public_key_multibase(&key), SAMANTHA_MB);
    }

    #[test]
    fn multibase_raw_32_bytes() {
        let key = decode_public_key_multibase("z4w3TkXo1CqgPApdbwnazRiMBogKaTCkdRbuP2MxauJTL");
        assert_eq!(
            hex::encode(key.unwrap()),
            "3a6b3516875a0405e6789cc52bcfb270a39b5ae7c21a8a077d42a17ab847376b"
        );
    }

    #[test]
    fn multibase_errors() {
        assert_eq!(
            decode_public_key_multibase("u7QHBeNsjElJCHdQHF_MxalxRVfYftaRjfoAjAHj9qpYaaA"),
            Err(MultibaseError::NotBase58btc)
        );
        assert_eq!(
            decode_public_key_multibase("z2DQVxSCctD1Uy87hDYxhtdnFEhPzU7z1gJji81y9GmuLdT"),
            Err(MultibaseError::BadLength(33))
        );
        assert_eq!(
            decode_public_key_multibase("z0OIl"),
            Err(MultibaseError::Base58)
        );
        assert_eq!(
            decode_public_key_multibase(""),
            Err(MultibaseError::NotBase58btc)
        );
        // 34 bytes without the ed25519-pub prefix.
        let mut wrong = vec![0x12, 0x00];
        wrong.extend_from_slice(&[7; 32]);
        let mb = format!("z{}", bs58::encode(wrong).into_string());
        assert_eq!(
            decode_public_key_multibase(&mb),
            Err(MultibaseError::BadLength(34))
        );
    }

    #[test]
    fn first_ed25519_2020_method_decides() {
        let doc = json!({"verificationMethod": [
            {"type": "JsonWebKey2020", "publicKeyJwk": {}},
            {"type": "Ed25519VerificationKey2020", "publicKeyMultibase": "zbad0"},
            {"type": "Ed25519VerificationKey2020", "publicKeyMultibase": SAMANTHA_MB},
        ]});
        assert_eq!(
            ed25519_key_from_document(&doc),
            Err(KeyError::Malformed(MultibaseError::Base58))
        );
        let doc = json!({"verificationMethod": [
            {"type": "Ed25519VerificationKey2020"},
            {"type": "Ed25519VerificationKey2020", "publicKeyMultibase": SAMANTHA_MB},
        ]});
        assert_eq!(
            hex::encode(ed25519_key_from_document(&doc).unwrap()),
            SAMANTHA_HEX
        );
        for doc in [json!({}), json!(null), json!({"verificationMethod": 3})] {
            assert_eq!(
                ed25519_key_from_document(&doc),
                Err(KeyError::NoEd25519Method)
            );
        }
    }

    #[test]
    fn did_key_resolves_in_memory() {
        let did = format!("did:key:{SAMANTHA_MB}");
        let doc = DidKeyResolver.resolve(&did).unwrap();
        assert_eq!(doc["id"], did.as_str());
        assert_eq!(
            hex::encode(ed25519_key_from_document(&doc).unwrap()),
            SAMANTHA_HEX
        );
        assert!(DidKeyResolver.resolve("did:web:samantha.agent").is_none());
        assert!(
            DidKeyResolver
                .resolve("did:key:z4w3TkXo1CqgPApdbwnazRiMBogKaTCkdRbuP2MxauJTL")
                .is_none()
        );
        assert!(DidKeyResolver.resolve("did:key:").is_none());
        let map = MapResolver::default();
        assert!(map.resolve(&did).is_none());
        assert!(map.with_did_key().resolve(&did).is_some());
    }

    #[test]
    fn kid_to_did() {
        assert_eq!(did_of_kid("did:web:a.agent#key-1"), "did:web:a.agent");
        assert_eq!(did_of_kid("did:web:a.agent"), "did:web:a.agent");
        assert_eq!(did_of_kid("#key-1"), "");
        assert_eq!(did_of_kid("did:web:a.agent#"), "did:web:a.agent");
    }
}
