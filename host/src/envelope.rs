//! The signed envelope of ARP-PROTOCOL §1: a JWS compact string (DIDComm v2 "signed"),
//! parsed and verified with the reference's check order and reason codes, and the
//! checks the reference skips (`from`, `to`, `created_time`).
//!
//! Start with [`verify`] (parse, resolve the signer, verify); [`parse`] and
//! [`ParsedEnvelope::verify_with_document`] are its two halves for callers that resolve
//! DIDs themselves (asynchronously, from a store). [`check_claims`] is the §1 "fix" step
//! to run after verification. Every error has a `code()` with the wire reason string.
//!
//! Check order (the reference's): three segments (`invalid_envelope`) → header is a
//! base64url JSON object with a `kid` member (`invalid_envelope_header`) → `kid` is a
//! non-empty string (`missing_kid`) → the DID before `#` is non-empty (`malformed_kid`) →
//! the DID resolves (`unknown_peer`) → its document has an Ed25519 key
//! (`no_peer_ed25519_key`) → `alg` is `EdDSA`, every segment is base64url, the signature
//! is 64 bytes and verifies strictly, the payload is JSON (`invalid_signature`) → the
//! payload has the JWM shape (`invalid_payload`, checked only once the signature holds).

use std::time::Duration;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::did::{self, DidResolver, KeyError};

/// base64url, padding accepted but not required, no stray bits or characters.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The only accepted `alg`.
pub const ALG_EDDSA: &str = "EdDSA";

/// The `typ` a signed DIDComm v2 message carries (never checked on input, as the
/// reference does not).
pub const TYP_SIGNED: &str = "application/didcomm-signed+json";

/// Why an envelope was refused before or during signature verification.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// Not exactly three `.`-separated segments.
    #[error("envelope is not three dot-separated segments")]
    NotCompact,
    /// The header segment is not base64url JSON, not an object, or has no `kid` member.
    #[error("envelope header is not a base64url JSON object with a kid")]
    InvalidHeader,
    /// `kid` is present but empty or null (or another JSON "falsy" value).
    #[error("envelope header kid is empty")]
    MissingKid,
    /// `kid` is not a string, or its DID part (before `#`) is empty.
    #[error("envelope header kid names no DID")]
    MalformedKid,
    /// The signer DID does not resolve.
    #[error("signer DID {did} does not resolve")]
    UnknownPeer {
        /// The signer DID.
        did: String,
    },
    /// The signer's DID document has no usable Ed25519 key.
    #[error("signer DID {did} has no Ed25519 key: {source}")]
    NoPeerKey {
        /// The signer DID.
        did: String,
        /// Why no key was found.
        source: KeyError,
    },
    /// `alg` is absent or not exactly `EdDSA`.
    #[error("unsupported alg {0:?}")]
    UnsupportedAlg(Option<String>),
    /// A segment is not base64url.
    #[error("{0} segment is not base64url")]
    BadEncoding(&'static str),
    /// The signature is not 64 bytes.
    #[error("signature is {0} bytes, not 64")]
    BadSignatureLength(usize),
    /// The published key is not a valid Ed25519 point.
    #[error("signer key is not a valid Ed25519 public key")]
    BadPeerKey,
    /// The signature does not verify (strict RFC 8032: canonical S, no small-order keys).
    #[error("signature verification failed")]
    BadSignature,
    /// The payload is not JSON (reported like a bad signature, as the reference does).
    #[error("payload is not JSON")]
    PayloadNotJson,
    /// The signed payload is JSON but not a JWM: `detail` names the first bad member.
    #[error("payload is not a DIDComm message: {0}")]
    InvalidPayload(&'static str),
}

impl EnvelopeError {
    /// The reason string of a 400 answer. `invalid_payload` is ours (the reference never
    /// checks the payload's shape); every other code is the reference's.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotCompact => "invalid_envelope",
            Self::InvalidHeader => "invalid_envelope_header",
            Self::MissingKid => "missing_kid",
            Self::MalformedKid => "malformed_kid",
            Self::UnknownPeer { .. } => "unknown_peer",
            Self::NoPeerKey { .. } => "no_peer_ed25519_key",
            Self::UnsupportedAlg(_)
            | Self::BadEncoding(_)
            | Self::BadSignatureLength(_)
            | Self::BadPeerKey
            | Self::BadSignature
            | Self::PayloadNotJson => "invalid_signature",
            Self::InvalidPayload(_) => "invalid_payload",
        }
    }
}

/// The protected header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// `alg`, if a string.
    pub alg: Option<String>,
    /// `typ`, if a string.
    pub typ: Option<String>,
    /// `kid`, `<signer DID>#<key ref>` or the bare DID.
    pub kid: String,
    /// The whole decoded header object.
    pub raw: Map<String, Value>,
}

/// The decoded JWM payload. Serializes back to its JWM member names (`thid` only when
/// present; unknown members are not kept).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payload {
    /// Message id.
    pub id: String,
    /// Protocol URI (`type`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Sender DID.
    pub from: String,
    /// Recipient DIDs.
    pub to: Vec<String>,
    /// Creation time, epoch seconds.
    pub created_time: i64,
    /// Thread id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thid: Option<String>,
    /// Body object (`{}` when absent).
    pub body: Map<String, Value>,
}

/// An envelope whose header names a signer, not yet verified.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedEnvelope {
    /// The signer DID (`kid` before the first `#`).
    pub signer: String,
    /// The decoded header.
    pub header: Header,
    compact: String,
}

/// A verified envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedEnvelope {
    /// The DID whose key verified the signature.
    pub signer: String,
    /// The decoded header.
    pub header: Header,
    /// The decoded payload.
    pub payload: Payload,
    /// The compact string exactly as received (what is stored and delivered).
    pub compact: String,
}

/// Whether a message `type` is a response (`.../response` or `....response`): the PDP is
/// skipped for those (allow with reason `auto_allow_response`).
pub fn is_response_type(kind: &str) -> bool {
    kind.ends_with("/response") || kind.ends_with(".response")
}

/// Steps 1–4 of §2: splits the compact string and reads the signer DID from the header.
pub fn parse(compact: &str) -> Result<ParsedEnvelope, EnvelopeError> {
    let mut segments = compact.split('.');
    let (Some(header_b64), Some(_), Some(_), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(EnvelopeError::NotCompact);
    };
    let raw = B64URL
        .decode(header_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|value| match value {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .ok_or(EnvelopeError::InvalidHeader)?;
    let kid = match raw.get("kid") {
        None => return Err(EnvelopeError::InvalidHeader),
        Some(value) if is_falsy(value) => return Err(EnvelopeError::MissingKid),
        Some(Value::String(kid)) => kid.clone(),
        Some(_) => return Err(EnvelopeError::MalformedKid),
    };
    let signer = did::did_of_kid(&kid).to_owned();
    if signer.is_empty() {
        return Err(EnvelopeError::MalformedKid);
    }
    let header = Header {
        alg: raw.get("alg").and_then(Value::as_str).map(str::to_owned),
        typ: raw.get("typ").and_then(Value::as_str).map(str::to_owned),
        kid,
        raw,
    };
    Ok(ParsedEnvelope {
        signer,
        header,
        compact: compact.to_owned(),
    })
}

/// JavaScript truthiness, which the reference's `if (!kid)` applies.
fn is_falsy(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(_) | Value::Object(_) => false,
    }
}

impl ParsedEnvelope {
    /// The compact string as received.
    pub fn compact(&self) -> &str {
        &self.compact
    }

    /// Verifies against the signer's DID document (its first Ed25519VerificationKey2020).
    pub fn verify_with_document(self, document: &Value) -> Result<VerifiedEnvelope, EnvelopeError> {
        let key = did::ed25519_key_from_document(document).map_err(|source| {
            EnvelopeError::NoPeerKey {
                did: self.signer.clone(),
                source,
            }
        })?;
        self.verify_with_key(&key)
    }

    /// Verifies against a raw Ed25519 public key.
    pub fn verify_with_key(self, key: &[u8; 32]) -> Result<VerifiedEnvelope, EnvelopeError> {
        if self.header.alg.as_deref() != Some(ALG_EDDSA) {
            return Err(EnvelopeError::UnsupportedAlg(self.header.alg.clone()));
        }
        let (signing_input, signature_b64) = self
            .compact
            .rsplit_once('.')
            .ok_or(EnvelopeError::NotCompact)?;
        let (_, payload_b64) = signing_input
            .split_once('.')
            .ok_or(EnvelopeError::NotCompact)?;
        // The header was decoded by `parse`; only the other two remain.
        let payload_bytes = B64URL
            .decode(payload_b64)
            .map_err(|_| EnvelopeError::BadEncoding("payload"))?;
        let signature_bytes = B64URL
            .decode(signature_b64)
            .map_err(|_| EnvelopeError::BadEncoding("signature"))?;
        let signature = Signature::from_slice(&signature_bytes)
            .map_err(|_| EnvelopeError::BadSignatureLength(signature_bytes.len()))?;
        let key = VerifyingKey::from_bytes(key).map_err(|_| EnvelopeError::BadPeerKey)?;
        key.verify_strict(signing_input.as_bytes(), &signature)
            .map_err(|_| EnvelopeError::BadSignature)?;
        let payload_json: Value =
            serde_json::from_slice(&payload_bytes).map_err(|_| EnvelopeError::PayloadNotJson)?;
        let payload = payload_from_json(payload_json)?;
        Ok(VerifiedEnvelope {
            signer: self.signer,
            header: self.header,
            payload,
            compact: self.compact,
        })
    }
}

/// Parses, resolves the signer through `resolver` and verifies, in the reference's order.
pub fn verify(
    compact: &str,
    resolver: &dyn DidResolver,
) -> Result<VerifiedEnvelope, EnvelopeError> {
    let parsed = parse(compact)?;
    let document = resolver
        .resolve(&parsed.signer)
        .ok_or_else(|| EnvelopeError::UnknownPeer {
            did: parsed.signer.clone(),
        })?;
    parsed.verify_with_document(&document)
}

fn payload_from_json(value: Value) -> Result<Payload, EnvelopeError> {
    let Value::Object(mut map) = value else {
        return Err(EnvelopeError::InvalidPayload("payload is not an object"));
    };
    let mut string = |name: &'static str| match map.remove(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(EnvelopeError::InvalidPayload(name)),
    };
    let id = string("id")?;
    let kind = string("type")?;
    let from = string("from")?;
    let to = match map.remove("to") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(EnvelopeError::InvalidPayload("to")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(EnvelopeError::InvalidPayload("to")),
    };
    let created_time = map
        .get("created_time")
        .and_then(Value::as_i64)
        .ok_or(EnvelopeError::InvalidPayload("created_time"))?;
    let thid = match map.remove("thid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(EnvelopeError::InvalidPayload("thid")),
    };
    let body = match map.remove("body") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(body)) => body,
        Some(_) => return Err(EnvelopeError::InvalidPayload("body")),
    };
    Ok(Payload {
        id,
        kind,
        from,
        to,
        created_time,
        thid,
        body,
    })
}

/// The default freshness window of [`check_claims`]: ±300 s, the skew the bearer check
/// of §4 also allows, wide enough for unsynchronised clocks and queueing at the sender.
pub const DEFAULT_CLOCK_WINDOW: Duration = Duration::from_secs(300);

/// Why a verified envelope's claims are refused (the §1 fixes; codes are ours).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClaimError {
    /// `from` differs from the DID that signed.
    #[error("from {from} is not the signer {signer}")]
    FromMismatch {
        /// The payload's `from`.
        from: String,
        /// The verified signer.
        signer: String,
    },
    /// `to` does not name the target agent.
    #[error("to does not name {target}")]
    WrongRecipient {
        /// The agent the request was routed to.
        target: String,
    },
    /// `created_time` is outside the window around now.
    #[error("created_time {created_time} s is outside ±{window_secs} s of now ({now_ms} ms)")]
    Stale {
        /// The payload's `created_time`, seconds.
        created_time: i64,
        /// The host clock, milliseconds.
        now_ms: i64,
        /// The window, seconds.
        window_secs: u64,
    },
}

impl ClaimError {
    /// `from_mismatch`, `wrong_recipient` or `stale_envelope` (400 reasons of this
    /// project; the reference has none of these checks).
    pub fn code(&self) -> &'static str {
        match self {
            Self::FromMismatch { .. } => "from_mismatch",
            Self::WrongRecipient { .. } => "wrong_recipient",
            Self::Stale { .. } => "stale_envelope",
        }
    }
}

/// The §1 fixes, in this order: `from` == signer, `to` contains `target_did`,
/// `|created_time − now| ≤ window` (both ends inclusive, compared in milliseconds).
pub fn check_claims(
    envelope: &VerifiedEnvelope,
    target_did: &str,
    now_ms: i64,
    window: Duration,
) -> Result<(), ClaimError> {
    let payload = &envelope.payload;
    if payload.from != envelope.signer {
        return Err(ClaimError::FromMismatch {
            from: payload.from.clone(),
            signer: envelope.signer.clone(),
        });
    }
    if !payload.to.iter().any(|to| to == target_did) {
        return Err(ClaimError::WrongRecipient {
            target: target_did.to_owned(),
        });
    }
    let created_ms = i128::from(payload.created_time) * 1000;
    let skew = (created_ms - i128::from(now_ms)).unsigned_abs();
    if skew > window.as_millis() {
        return Err(ClaimError::Stale {
            created_time: payload.created_time,
            now_ms,
            window_secs: window.as_secs(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use ed25519_dalek::{Signer as _, SigningKey};
    use serde_json::json;

    use super::*;
    use crate::did::{MapResolver, encode_public_key_multibase};

    const SIGNER: &str = "did:web:orion.agent";
    const TARGET: &str = "did:web:samantha.agent";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn resolver() -> MapResolver {
        let mb = encode_public_key_multibase(&key().verifying_key().to_bytes());
        let mut r = MapResolver::default();
        r.insert(
            SIGNER,
            json!({"verificationMethod": [{"type": "Ed25519VerificationKey2020", "publicKeyMultibase": mb}]}),
        );
        r
    }

    fn sign(header: &Value, payload: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(payload.to_string())
        );
        let sig = key().sign(input.as_bytes());
        format!("{input}.{}", B64URL.encode(sig.to_bytes()))
    }

    fn header() -> Value {
        json!({"alg": "EdDSA", "typ": TYP_SIGNED, "kid": format!("{SIGNER}#key-1")})
    }

    fn payload() -> Value {
        json!({"id": "m1", "type": "https://didcomm.org/arp/1.0/request", "from": SIGNER,
               "to": [TARGET], "created_time": 1_752_000_000, "thid": "t1", "body": {"text": "hi"}})
    }

    #[test]
    fn round_trip_and_claims() {
        let compact = sign(&header(), &payload());
        let env = verify(&compact, &resolver()).unwrap();
        assert_eq!(env.signer, SIGNER);
        assert_eq!(env.payload.thid.as_deref(), Some("t1"));
        assert_eq!(env.payload.body["text"], "hi");
        assert_eq!(env.compact, compact);
        let now = 1_752_000_000_000;
        check_claims(&env, TARGET, now, DEFAULT_CLOCK_WINDOW).unwrap();
        check_claims(&env, TARGET, now + 300_000, DEFAULT_CLOCK_WINDOW).unwrap();
        check_claims(&env, TARGET, now - 300_000, DEFAULT_CLOCK_WINDOW).unwrap();
        let err = check_claims(&env, TARGET, now + 300_001, DEFAULT_CLOCK_WINDOW).unwrap_err();
        assert_eq!(err.code(), "stale_envelope");
        let err = check_claims(&env, TARGET, now - 300_001, DEFAULT_CLOCK_WINDOW).unwrap_err();
        assert_eq!(err.code(), "stale_envelope");
        let err = check_claims(&env, "did:web:orion.agent", now, DEFAULT_CLOCK_WINDOW);
        assert_eq!(err.unwrap_err().code(), "wrong_recipient");
        check_claims(&env, TARGET, i64::MIN, DEFAULT_CLOCK_WINDOW).unwrap_err();
    }

    #[test]
    fn from_must_be_signer() {
        let mut p = payload();
        p["from"] = json!("did:web:ghost.agent");
        let env = verify(&sign(&header(), &p), &resolver()).unwrap();
        let err = check_claims(&env, TARGET, 1_752_000_000_000, DEFAULT_CLOCK_WINDOW);
        assert_eq!(err.unwrap_err().code(), "from_mismatch");
    }

    #[test]
    fn payload_shape_is_checked_after_the_signature() {
        for (member, bad) in [
            ("id", json!(1)),
            ("type", json!(null)),
            ("to", json!(TARGET)),
            ("to", json!([1])),
            ("created_time", json!(1.5)),
            ("created_time", json!("1752000000")),
            ("body", json!([])),
            ("thid", json!(3)),
        ] {
            let mut p = payload();
            p[member] = bad;
            let err = verify(&sign(&header(), &p), &resolver()).unwrap_err();
            assert_eq!(err.code(), "invalid_payload", "{member}");
        }
        let mut p = payload();
        p.as_object_mut().unwrap().remove("body");
        p.as_object_mut().unwrap().remove("thid");
        let env = verify(&sign(&header(), &p), &resolver()).unwrap();
        assert!(env.payload.body.is_empty());
        assert_eq!(env.payload.thid, None);
        let err = verify(&sign(&header(), &json!([1])), &resolver()).unwrap_err();
        assert_eq!(
            err,
            EnvelopeError::InvalidPayload("payload is not an object")
        );
    }

    #[test]
    fn kid_forms() {
        let mut h = header();
        h["kid"] = json!(42);
        assert_eq!(
            parse(&sign(&h, &payload())).unwrap_err().code(),
            "malformed_kid"
        );
        for falsy in [json!(0), json!(false), json!(""), json!(null)] {
            h["kid"] = falsy;
            assert_eq!(
                parse(&sign(&h, &payload())).unwrap_err().code(),
                "missing_kid"
            );
        }
        h["kid"] = json!({"did": SIGNER});
        assert_eq!(
            parse(&sign(&h, &payload())).unwrap_err().code(),
            "malformed_kid"
        );
    }

    #[test]
    fn alg_is_checked_after_resolution() {
        let mut h = header();
        h.as_object_mut().unwrap().remove("alg");
        let compact = sign(&h, &payload());
        assert_eq!(
            verify(&compact, &resolver()).unwrap_err().code(),
            "invalid_signature"
        );
        let empty = MapResolver::default();
        assert_eq!(verify(&compact, &empty).unwrap_err().code(), "unknown_peer");
    }

    #[test]
    fn response_types() {
        assert!(is_response_type("https://didcomm.org/arp/1.0/response"));
        assert!(is_response_type("arp.response"));
        assert!(!is_response_type("https://didcomm.org/arp/1.0/request"));
        assert!(!is_response_type("response"));
        assert!(!is_response_type("https://didcomm.org/arp/1.0/responses"));
    }
}
