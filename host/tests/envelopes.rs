//! The golden envelope vectors (`tests/vectors/envelopes.json`): every case verifies or
//! fails with its expected reason, every valid case maps to the expected PDP request,
//! the reference's quirks are refused, and mangled input never panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use arp_host::did::{self, MapResolver};
use arp_host::envelope::{self, DEFAULT_CLOCK_WINDOW};
use arp_host::mapping;
use ed25519_dalek::Verifier as _;
use serde_json::{Value, json};

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/envelopes.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn resolver(v: &Value) -> MapResolver {
    let docs: HashMap<String, Value> = v["dids"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, d)| (k.clone(), d.clone()))
        .collect();
    MapResolver::new(docs)
}

fn cases(v: &Value) -> &Vec<Value> {
    v["cases"].as_array().unwrap()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} missing"))
}

#[test]
fn every_case_has_its_expected_outcome() {
    let v = vectors();
    let resolver = resolver(&v);
    let now_ms = v["now_ms"].as_i64().unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for case in cases(&v) {
        let name = str_of(case, "name");
        let result = envelope::verify(str_of(case, "compact"), &resolver);
        match str_of(case, "expect") {
            "valid" => {
                valid += 1;
                let env = result.unwrap_or_else(|e| panic!("{name}: {e} ({})", e.code()));
                assert_eq!(env.signer, str_of(case, "signer"), "{name}");
                assert_eq!(env.compact, str_of(case, "compact"), "{name}");
                assert_eq!(
                    serde_json::to_value(&env.payload).unwrap(),
                    case["payload"],
                    "{name}"
                );
                envelope::check_claims(&env, str_of(case, "target"), now_ms, DEFAULT_CLOCK_WINDOW)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "invalid" => {
                invalid += 1;
                let err = match result {
                    Ok(_) => panic!("{name}: accepted"),
                    Err(e) => e,
                };
                let mut allowed = vec![str_of(case, "reason")];
                if let Some(also) = case["also_acceptable"].as_array() {
                    allowed.extend(also.iter().filter_map(Value::as_str));
                }
                assert!(
                    allowed.contains(&err.code()),
                    "{name}: got {} ({err}), want {allowed:?}",
                    err.code()
                );
            }
            other => panic!("{name}: unknown expectation {other}"),
        }
    }
    assert_eq!((valid, invalid), (22, 31));
}

#[test]
fn every_valid_case_maps_to_its_request() {
    let v = vectors();
    let resolver = resolver(&v);
    let mut mapped = 0;
    for case in cases(&v).iter().filter(|c| c["expect"] == "valid") {
        let name = str_of(case, "name");
        let env = envelope::verify(str_of(case, "compact"), &resolver).unwrap();
        let expected = &case["mapped_request"];
        if envelope::is_response_type(&env.payload.kind) {
            assert!(expected.is_null(), "{name}");
            assert_eq!(case["pdp_skipped"], "auto_allow_response", "{name}");
            continue;
        }
        assert!(
            !expected.is_null(),
            "{name}: mapping expected to be skipped"
        );
        let req =
            mapping::map_request(&env.payload, &env.signer, "conn_x", "did:web:owner.example");
        let principal = &expected["principal"];
        assert_eq!(req.principal.kind, str_of(principal, "type"), "{name}");
        assert_eq!(req.principal.id, str_of(principal, "id"), "{name}");
        assert_eq!(
            req.principal.attrs,
            json!({"connection_id": "conn_x", "owner_did": "did:web:owner.example"}),
            "{name}"
        );
        assert_eq!(req.action, str_of(expected, "action"), "{name}");
        let resource = &expected["resource"];
        assert_eq!(req.target.kind, str_of(resource, "type"), "{name}");
        assert_eq!(req.target.id, str_of(resource, "id"), "{name}");
        let attrs = resource.get("attrs").cloned().unwrap_or_else(|| json!({}));
        assert_eq!(req.target.attrs, attrs, "{name}");
        assert_eq!(req.context, expected["context"], "{name}");
        assert_eq!(req.message.id, env.payload.id, "{name}");
        mapped += 1;
    }
    assert_eq!(mapped, 21);
}

#[test]
fn reference_quirks_are_refused_or_harmless() {
    let v = vectors();
    let resolver = resolver(&v);
    let quirk = |name: &str| {
        let q = v["reference_quirks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("{name}"));
        envelope::verify(str_of(q, "compact"), &resolver)
    };
    // The reference (zip215) accepts a forgery against a small-order published key.
    let err = quirk("quirk/small-order-key-forgery").unwrap_err();
    assert_eq!(err.code(), "invalid_signature", "{err}");
    // ... and it is the strict check that refuses it: the lax RFC 8032 equation holds.
    let hollow = did::ed25519_key_from_document(&v["dids"]["did:web:hollow.agent"]).unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&hollow).unwrap();
    let q = &v["reference_quirks"][0];
    assert_eq!(q["name"], "quirk/small-order-key-forgery");
    let compact = str_of(q, "compact");
    let (input, _) = compact.rsplit_once('.').unwrap();
    let mut sig = [0u8; 64];
    sig[0] = 1;
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    assert!(key.is_weak());
    assert!(key.verify(input.as_bytes(), &sig).is_ok());
    assert!(key.verify_strict(input.as_bytes(), &sig).is_err());
    // A numeric kid is a clean refusal, not a crash.
    let err = quirk("quirk/kid-not-a-string").unwrap_err();
    assert_eq!(err.code(), "malformed_kid");
    // Validly signed; floats and nulls in the context are the PDP's to judge, not ours.
    let env = quirk("quirk/context-float-and-null").unwrap();
    let req = mapping::map_request(&env.payload, &env.signer, "c", "o");
    assert_eq!(req.context, json!({"score": 0.75, "note": null}));
}

#[test]
fn did_key_documents_match_the_reference_shape() {
    let v = vectors();
    let did = "did:key:z6MkmQomttbY6eUbnpMAmnrw8nDqDZdddzYYfm8HgzEdJo4H";
    assert_eq!(did::did_key_document(did).unwrap(), v["dids"][did]);
    // Every key's multibase decodes to its hex key.
    for (name, key) in v["keys"].as_object().unwrap() {
        let raw = did::decode_public_key_multibase(str_of(key, "public_key_multibase")).unwrap();
        assert_eq!(hex::encode(raw), str_of(key, "public_key_hex"), "{name}");
    }
}

/// xorshift64*: a fixed-seed generator, enough to vary inputs reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mangled_input_never_panics_and_never_forges() {
    let v = vectors();
    let resolver = resolver(&v);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    // Random strings over the envelope alphabet and raw random bytes (lossy UTF-8).
    let alphabet: Vec<char> = "ABCxyz019-_.=+/*!é\u{0}\u{2028}".chars().collect();
    for _ in 0..2000 {
        let len = rng.below(200);
        let s: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let _ = envelope::verify(&s, &resolver);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = envelope::verify(&String::from_utf8_lossy(&bytes), &resolver);
    }
    for case in cases(&v).iter().filter(|c| c["expect"] == "valid") {
        let compact = str_of(case, "compact");
        let original = envelope::verify(compact, &resolver).unwrap();
        let chars: Vec<char> = compact.chars().collect();
        // Every truncation (sampled for the big body).
        let step = (chars.len() / 300).max(1);
        for cut in (0..chars.len()).step_by(step) {
            let truncated: String = chars[..cut].iter().collect();
            if let Ok(env) = envelope::verify(&truncated, &resolver) {
                assert_eq!(env.payload, original.payload, "{truncated}");
            }
        }
        // Random single-character substitutions, insertions and deletions.
        for _ in 0..150 {
            let mut mutated = chars.clone();
            let at = rng.below(mutated.len());
            match rng.below(3) {
                0 => mutated[at] = alphabet[rng.below(alphabet.len())],
                1 => mutated.insert(at, alphabet[rng.below(alphabet.len())]),
                _ => {
                    mutated.remove(at);
                }
            }
            let mutated: String = mutated.into_iter().collect();
            if let Ok(env) = envelope::verify(&mutated, &resolver) {
                assert_eq!(env.payload, original.payload, "{mutated}");
            }
        }
    }
}
