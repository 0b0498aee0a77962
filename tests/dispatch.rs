//! `POST /didcomm` end to end: the real `arp-host serve` on a real socket, with SQLite and
//! with Postgres, peers' did:web documents fetched over HTTPS from a local server. Every
//! case of the golden `envelopes.json` gets its expected answer, and the audit chain the
//! server wrote exports and verifies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/did_web_server.rs"]
mod did_web_server;
mod support;

use std::collections::HashMap;

use arp_host::provision;
use arp_host::store::{self, Connection, ConnectionStatus, Plan};
use serde_json::{Value, json};
use support::{Backend, Server};

/// The cases' connection ids, one per (hosted agent, peer) pairing the vectors use.
const CONNECTIONS: &[(&str, &str, &str)] = &[
    (
        "conn_abcd1",
        "did:web:samantha.agent",
        "did:web:ghost.agent",
    ),
    (
        "conn_orion_sam_01",
        "did:web:samantha.agent",
        "did:web:orion.agent",
    ),
    (
        "conn_key_sam",
        "did:web:samantha.agent",
        "did:key:z6MkmQomttbY6eUbnpMAmnrw8nDqDZdddzYYfm8HgzEdJo4H",
    ),
    (
        "conn_echo_sam",
        "did:web:samantha.agent",
        "did:web:hub.example.org:bots:echo",
    ),
    (
        "conn_nova_sam",
        "did:web:samantha.agent",
        "did:web:nova.agent",
    ),
    (
        "conn_raw_sam",
        "did:web:samantha.agent",
        "did:web:raw.agent",
    ),
    (
        "conn_hollow_sam",
        "did:web:samantha.agent",
        "did:web:hollow.agent",
    ),
    (
        "conn_ghost_orion",
        "did:web:orion.agent",
        "did:web:ghost.agent",
    ),
];

const PERMIT_ALL: &str = "permit(principal, action, resource);";

/// A server hosting samantha and orion (tenant `acme`) with a connection per pairing of
/// the vectors, resolving the vectors' other DIDs from a local HTTPS server.
struct World {
    backend: Backend,
    server: Server,
    _did_web: did_web_server::DidWebServer,
    vectors: Value,
}

async fn world(backend: Backend, plan: Plan, extra: &[&str]) -> World {
    let vectors = support::envelope_vectors();
    let store = store::open(&backend.database_url()).await.unwrap();
    let scope = store.create_tenant("acme", plan).await.unwrap();
    for name in ["samantha", "orion"] {
        let key = &vectors["keys"][name];
        let new = provision::new_agent(
            key["did"].as_str().unwrap(),
            "did:web:ian.samantha.agent",
            None,
            key["public_key_multibase"].as_str(),
        )
        .unwrap();
        store.create_agent(&scope, &new.agent).await.unwrap();
    }
    for (id, agent, peer) in CONNECTIONS {
        store
            .create_connection(&scope, &connection(id, agent, peer, &[PERMIT_ALL]))
            .await
            .unwrap();
    }
    let documents: HashMap<String, Value> = vectors["dids"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(did, _)| did.starts_with("did:web:"))
        .map(|(did, doc)| (did.clone(), doc.clone()))
        .collect();
    let did_web = did_web_server::spawn(documents).await;
    let ca = backend
        .data_dir()
        .join(format!("ca-{}.pem", did_web.addr.port()));
    std::fs::create_dir_all(backend.data_dir()).unwrap();
    std::fs::write(&ca, &did_web.ca_pem).unwrap();
    let connect_to = did_web.addr.to_string();
    let ca = ca.display().to_string();
    let mut args = vec![
        "--did-web-connect-to",
        connect_to.as_str(),
        "--did-web-ca-file",
        ca.as_str(),
    ];
    args.extend_from_slice(extra);
    let server = Server::spawn(&backend, &args);
    World {
        backend,
        server,
        _did_web: did_web,
        vectors,
    }
}

fn connection(id: &str, agent: &str, peer: &str, policies: &[&str]) -> Connection {
    Connection {
        connection_id: id.to_owned(),
        agent_did: agent.to_owned(),
        peer_did: peer.to_owned(),
        status: ConnectionStatus::Active,
        token_json: json!({"connection_id": id, "issuer": "did:web:ian.samantha.agent"}),
        cedar_policies: policies.iter().map(|p| (*p).to_owned()).collect(),
        obligations: Vec::new(),
        expires_at_ms: None,
    }
}

/// POSTs `body` to `/didcomm?target=<host>`; returns status and JSON body.
async fn post(server: &Server, host: &str, body: &str) -> (u16, Value) {
    let response = support::http_client()
        .post(format!("{}/didcomm?target={host}", server.url))
        .header("content-type", "application/didcomm-signed+json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, json)
}

/// The `.agent` host of an agent DID.
fn host_of(did: &str) -> &str {
    did.strip_prefix("did:web:").unwrap()
}

/// The vectors' envelopes are from July 2025: accept any age for them.
const ANY_AGE: &[&str] = &["--clock-window-secs", "1000000000"];

async fn every_golden_envelope_gets_its_expected_answer(backend: Backend) {
    let world = world(backend, Plan::Team, ANY_AGE).await;
    let mut allowed_per_connection: HashMap<&str, u64> = HashMap::new();
    for case in world.vectors["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let target = case["target"].as_str().unwrap();
        let (status, body) = post(
            &world.server,
            host_of(target),
            case["compact"].as_str().unwrap(),
        )
        .await;
        if case["expect"] == "valid" {
            assert_eq!(status, 202, "{name}: {body}");
            assert_eq!(body["ok"], true, "{name}: {body}");
            assert_eq!(body["decision"], "allow", "{name}: {body}");
            assert_eq!(body["queued"], true, "{name}: {body}");
            assert_eq!(body["messageId"].as_str().unwrap().len(), 36, "{name}");
            let connection = case["payload"]["body"]["connection_id"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    let signer = case["signer"].as_str().unwrap();
                    CONNECTIONS
                        .iter()
                        .find(|(_, agent, peer)| *agent == target && *peer == signer)
                        .unwrap()
                        .0
                        .to_owned()
                });
            *allowed_per_connection
                .entry(CONNECTIONS.iter().find(|c| c.0 == connection).unwrap().0)
                .or_default() += 1;
        } else {
            let mut acceptable = vec![case["reason"].as_str().unwrap()];
            if let Some(more) = case["also_acceptable"].as_array() {
                acceptable.extend(more.iter().map(|r| r.as_str().unwrap()));
            }
            assert_eq!(status, 400, "{name}: {body}");
            assert_eq!(body["ok"], false, "{name}: {body}");
            let reason = body["error"].as_str().unwrap();
            assert!(
                acceptable.contains(&reason),
                "{name}: {reason} not in {acceptable:?}"
            );
        }
    }

    // The quirks: strict verification refuses the small-order forgery; a malformed kid and
    // a context Cedar cannot read are clean answers, never a 500.
    let quirks: HashMap<&str, &Value> = world.vectors["reference_quirks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|quirk| (quirk["name"].as_str().unwrap(), quirk))
        .collect();
    let send_quirk = |name: &str| {
        let quirk = quirks[name];
        post(
            &world.server,
            host_of(quirk["target"].as_str().unwrap()),
            quirk["compact"].as_str().unwrap(),
        )
    };
    let (status, body) = send_quirk("quirk/small-order-key-forgery").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_signature"))
    );
    let (status, body) = send_quirk("quirk/kid-not-a-string").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("malformed_kid"))
    );
    let (status, body) = send_quirk("quirk/context-float-and-null").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ok"], true, "{body}");

    // What the server wrote verifies: every chain, and conn_abcd1 exported to the
    // reference file form.
    let database_url = world.backend.database_url();
    let verified = support::cli(&[
        "audit",
        "verify",
        "--tenant",
        "acme",
        "--database-url",
        &database_url,
    ]);
    assert!(!verified.contains("broken"), "{verified}");
    let export = world
        .backend
        .data_dir()
        .join(format!("export-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&export);
    support::cli(&[
        "audit",
        "export",
        "--tenant",
        "acme",
        "--agent",
        "did:web:samantha.agent",
        "--connection",
        "conn_abcd1",
        "--database-url",
        &database_url,
        "--output",
        export.to_str().unwrap(),
    ]);
    // ghost's allowed cases on conn_abcd1 plus the quirk whose context Cedar refuses.
    let expected = allowed_per_connection["conn_abcd1"] + 1;
    let verdict = support::cli(&["audit", "verify-file", export.to_str().unwrap()]);
    assert_eq!(verdict.trim(), format!("valid, {expected} entries"));
    let lines: Vec<Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let response_entry = lines
        .iter()
        .find(|entry| entry["reason"] == "auto_allow_response")
        .expect("the response was audited as an automatic allow");
    assert_eq!(response_entry["decision"], "allow");
    assert!(
        lines
            .iter()
            .filter(|e| e["decision"] == "allow")
            .all(|e| e["policies_fired"] == json!(["policy0"])
                || e["reason"] == "auto_allow_response")
    );
    std::fs::remove_file(&export).unwrap();
    world.server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_envelopes_on_sqlite() {
    every_golden_envelope_gets_its_expected_answer(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_envelopes_on_postgres() {
    every_golden_envelope_gets_its_expected_answer(Backend::postgres().await).await;
}
