//! Hostile input never gets a 5xx: random bytes and mutations of a valid envelope, thrown
//! at `POST /didcomm` of a real server, get a 4xx with a reason code (or, for a mutation
//! that leaves the envelope valid, a 202).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::OnceLock;

use arp_host::provision;
use arp_host::store::{self, Connection, ConnectionStatus, Plan};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{Backend, Peer, Server};

const SAMANTHA: &str = "did:web:samantha.agent";

struct Target {
    _backend: Backend,
    server: Server,
    runtime: tokio::runtime::Runtime,
    valid: String,
}

/// One server for every case.
fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let backend = Backend::sqlite();
        let peer = Peer::from_vectors(&support::envelope_vectors(), "keyuser");
        runtime.block_on(async {
            let store = store::open(&backend.database_url()).await.unwrap();
            let scope = store.create_tenant("acme", Plan::Team).await.unwrap();
            let agent = provision::new_agent(SAMANTHA, "did:web:o.example", None, None).unwrap();
            store.create_agent(&scope, &agent.agent).await.unwrap();
            let connection = Connection {
                connection_id: "c1".into(),
                agent_did: SAMANTHA.into(),
                peer_did: peer.did.clone(),
                status: ConnectionStatus::Active,
                token_json: json!({"connection_id": "c1", "issuer": "did:web:o.example"}),
                cedar_policies: vec!["permit(principal, action, resource);".into()],
                obligations: Vec::new(),
                expires_at_ms: None,
            };
            store.create_connection(&scope, &connection).await.unwrap();
        });
        let server = Server::spawn(&backend, &[]);
        let valid = peer.request(
            "fuzz-base",
            SAMANTHA,
            json!({"action": "ping", "context": {"n": 1}}),
        );
        Target {
            _backend: backend,
            server,
            runtime,
            valid,
        }
    })
}

/// POSTs and checks the answer is a 4xx with a reason code, or a 202.
fn assert_clean_answer(body: Vec<u8>) -> Result<(), TestCaseError> {
    let target = target();
    let (status, text) = target.runtime.block_on(async {
        let response = support::http_client()
            .post(format!(
                "{}/didcomm?target=samantha.agent",
                target.server.url
            ))
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    prop_assert!(
        status == 202 || (400..500).contains(&status),
        "status {status}: {text}"
    );
    let json: Value = serde_json::from_str(&text).unwrap();
    if status != 202 {
        prop_assert!(
            json["error"].as_str().is_some_and(|code| !code.is_empty()),
            "{text}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_get_a_4xx(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        assert_clean_answer(body)?;
    }

    #[test]
    fn mutated_envelopes_get_a_4xx(
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        mutation in 0..4u8,
    ) {
        let mut bytes = target().valid.clone().into_bytes();
        let at = position.index(bytes.len());
        match mutation {
            0 => bytes[at] = byte,
            1 => { bytes.insert(at, byte); }
            2 => { bytes.truncate(at); }
            _ => { bytes.remove(at); }
        }
        assert_clean_answer(bytes)?;
    }

    #[test]
    fn signed_garbage_payloads_get_a_4xx(payload in any::<Vec<(String, i64)>>(), text in ".{0,64}") {
        // Validly signed, but the payload is whatever the generator made.
        let peer = Peer::from_vectors(&support::envelope_vectors(), "keyuser");
        let object: serde_json::Map<String, Value> = payload.into_iter().map(|(k, v)| (k, json!(v))).collect();
        assert_clean_answer(peer.sign(&Value::Object(object)).into_bytes())?;
        assert_clean_answer(peer.sign(&json!(text)).into_bytes())?;
    }
}
