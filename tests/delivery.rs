//! WebSocket delivery end to end (ARP-PROTOCOL §4), real server, real sockets: every
//! bearer vector, a live push with its obligations, offline queueing then an ordered
//! drain, a client killed mid-stream (all delivered, only unacked ones again), expiry,
//! `outbound_envelope`, supersession, shutdown, a SIGKILL after 202s, and two hosts
//! sharing Postgres.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arp_host::provision;
use arp_host::store::{self, Connection, ConnectionStatus, Plan, Store, TenantScope};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use support::agent::{AgentSocket, Opened, open, ws_url};
use support::{Backend, Peer, Server};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SAMANTHA: &str = "did:web:samantha.agent";
const ORION: &str = "did:web:orion.agent";

/// The connection policies: permit all, and an obligation policy, so frames carry both
/// fired policies and obligations.
const PERMIT_ALL: &str = "permit(principal, action, resource);";
const SPEND_CAP: &str = "@id(\"spend\")\n@obligation(\"spend_cap\")\n@obligation_params(\"{\\\"max_cents\\\":500}\")\npermit(principal, action, resource);";

struct World {
    store: Arc<dyn Store>,
    scope: TenantScope,
    samantha: SigningKey,
    orion: SigningKey,
    peer: Peer,
}

/// Tenant `acme` hosting samantha and orion (generated keys), a did:key peer connected to
/// samantha, and samantha connected to orion.
async fn world(backend: &Backend) -> World {
    let store = store::open(&backend.database_url()).await.unwrap();
    let scope = store.create_tenant("acme", Plan::Team).await.unwrap();
    let mut keys = Vec::new();
    for did in [SAMANTHA, ORION] {
        let new = provision::new_agent(did, "did:web:ian.samantha.agent", None, None).unwrap();
        store.create_agent(&scope, &new.agent).await.unwrap();
        keys.push(SigningKey::from_bytes(&new.secret_seed.unwrap()));
    }
    let peer = Peer::from_vectors(&support::envelope_vectors(), "keyuser");
    for (id, agent, other) in [("c1", SAMANTHA, peer.did.as_str()), ("c2", ORION, SAMANTHA)] {
        store
            .create_connection(
                &scope,
                &Connection {
                    connection_id: id.into(),
                    agent_did: agent.into(),
                    peer_did: other.into(),
                    status: ConnectionStatus::Active,
                    token_json: json!({"connection_id": id, "issuer": "did:web:ian.samantha.agent", "obligation_policies": [SPEND_CAP]}),
                    cedar_policies: vec![PERMIT_ALL.into()],
                    obligations: Vec::new(),
                    expires_at_ms: None,
                },
            )
            .await
            .unwrap();
    }
    let orion = keys.pop().unwrap();
    let samantha = keys.pop().unwrap();
    World {
        store,
        scope,
        samantha,
        orion,
        peer,
    }
}

/// POSTs a request from the peer to samantha; returns its queue id.
async fn send(server: &Server, peer: &Peer, id: &str) -> String {
    let response = support::http_client()
        .post(format!("{}/didcomm?target=samantha.agent", server.url))
        .body(peer.request(id, SAMANTHA, json!({"text": id})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["queued"], true, "{body}");
    body["messageId"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bearer_vector_gets_its_answer_on_the_socket() {
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/bearer.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let backend = Backend::sqlite();
    let store = store::open(&backend.database_url()).await.unwrap();
    for (did, agent) in vectors["agents"].as_object().unwrap() {
        let scope = store
            .create_tenant(agent["tenant_id"].as_str().unwrap(), Plan::Free)
            .await
            .unwrap();
        // The stored key as the vectors have it, malformed one included (written past
        // the provisioning checks, as a corrupted row would be).
        let mut new = provision::new_agent(did, "did:web:owner.example", None, None).unwrap();
        new.agent.public_key_multibase = agent["public_key_multibase"].as_str().unwrap().into();
        store.create_agent(&scope, &new.agent).await.unwrap();
    }
    let mut by_clock: HashMap<i64, Vec<&Value>> = HashMap::new();
    for case in vectors["cases"].as_array().unwrap() {
        by_clock
            .entry(case["now_ms"].as_i64().unwrap())
            .or_default()
            .push(case);
    }
    for (now_ms, cases) in by_clock {
        let server = Server::spawn(&backend, &["--bearer-clock-ms", &now_ms.to_string()]);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let did = case["did"].as_str().unwrap();
            let bearer = case["bearer"].as_str().unwrap();
            match open(&ws_url(&server.url, did, bearer)).await {
                Opened::Socket(mut agent) => {
                    assert_eq!(case["expect"], "valid", "{name} was accepted");
                    let hello = agent.next_json().await;
                    assert_eq!(hello["kind"], "server_hello", "{name}");
                    assert_eq!(hello["agentDid"], did, "{name}");
                }
                Opened::Refused(status, body) => {
                    assert_eq!(case["expect"], "invalid", "{name} was refused: {body}");
                    assert_eq!(
                        u64::from(status),
                        case["status"].as_u64().unwrap(),
                        "{name}"
                    );
                    assert_eq!(body["error"], case["reason"], "{name}");
                }
            }
        }
        // The same check guards the agent's connection list, and the header form works.
        let valid = vectors["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|case| case["now_ms"] == now_ms && case["expect"] == "valid");
        if let Some(case) = valid {
            let did = case["did"].as_str().unwrap();
            let response = support::http_client()
                .get(format!("{}/agent-connections?did={did}", server.url))
                .header(
                    "authorization",
                    format!("Bearer {}", case["bearer"].as_str().unwrap()),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["connections"], json!([]));
        }
        server.stop();
    }
    let server = Server::spawn(&backend, &[]);
    let response = support::http_client()
        .get(format!("{}/agent-connections?did={SAMANTHA}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "missing_credentials");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_agent_gets_a_live_push_with_obligations_and_acks_it() {
    let backend = Backend::sqlite();
    let w = world(&backend).await;
    let server = Server::spawn(&backend, &[]);
    let (mut agent, hello) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    assert_eq!(hello["queuedCount"], 0);

    let id = send(&server, &w.peer, "live-1").await;
    let frame = agent.next_json().await;
    assert_eq!(frame["kind"], "inbound_message");
    assert_eq!(frame["messageId"], id);
    assert_eq!(frame["msgId"], "live-1");
    assert_eq!(frame["connectionId"], "c1");
    assert_eq!(frame["peerDid"], w.peer.did);
    assert_eq!(frame["decision"], "allow");
    assert_eq!(frame["policiesFired"], json!(["policy0", "spend"]));
    assert_eq!(
        frame["obligations"],
        json!([{"type": "spend_cap", "params": {"max_cents": 500}}])
    );
    assert_eq!(
        w.store.message_status(&w.scope, &id).await.unwrap(),
        "queued"
    );
    agent.ack(&id).await;
    wait_for_status(&w, &id, "delivered").await;

    // The agent's connection list answers over HTTP with the same bearer.
    let now = arp_host::delivery::now_ms();
    let bearer = arp_host::delivery::bearer::sign_bearer(SAMANTHA, &w.samantha, now);
    let body: Value = support::http_client()
        .get(format!(
            "{}/agent-connections?did={SAMANTHA}&token={bearer}",
            server.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["connections"][0]["connectionId"], "c1");
    server.stop();
}

async fn wait_for_status(w: &World, id: &str, status: &str) {
    for _ in 0..200 {
        if w.store.message_status(&w.scope, id).await.unwrap() == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("message {id} never became {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_offline_drain_in_order_on_connect() {
    let backend = Backend::sqlite();
    let w = world(&backend).await;
    let server = Server::spawn(&backend, &[]);
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(send(&server, &w.peer, &format!("offline-{n}")).await);
    }
    let (mut agent, hello) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    assert_eq!(hello["queuedCount"], 20);
    let mut received = Vec::new();
    for _ in 0..20 {
        let frame = agent.next_json().await;
        assert_eq!(frame["kind"], "inbound_message");
        received.push(frame["messageId"].as_str().unwrap().to_owned());
    }
    assert_eq!(received, ids, "drained in arrival order");
    for id in &ids {
        agent.ack(id).await;
    }
    wait_for_status(&w, ids.last().unwrap(), "delivered").await;
    drop(agent);
    let (_, hello) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    assert_eq!(hello["queuedCount"], 0);
    server.stop();
}

/// 100 messages flow while the agent acks 40 and then its socket is killed: after a
/// reconnect every message has arrived, and the only repeats are pushes that were not
/// acked.
async fn killed_mid_stream(backend: Backend) {
    let w = world(&backend).await;
    let server = Server::spawn(&backend, &[]);
    let (mut agent, _) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    let sender = {
        let url = server.url.clone();
        let peer = Peer::from_vectors(&support::envelope_vectors(), "keyuser");
        tokio::spawn(async move {
            let client = support::http_client();
            for n in 0..100 {
                let response = client
                    .post(format!("{url}/didcomm?target=samantha.agent"))
                    .body(peer.request(&format!("flow-{n}"), SAMANTHA, json!({})))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
            }
        })
    };
    let mut first: Vec<String> = Vec::new();
    let mut acked = BTreeSet::new();
    while acked.len() < 40 {
        let frame = agent.next_json().await;
        let id = frame["messageId"].as_str().unwrap().to_owned();
        first.push(id.clone());
        agent.ack(&id).await;
        acked.insert(id);
    }
    // Acks recorded, then the socket dies without a close handshake.
    wait_for_status(&w, acked.iter().last().unwrap(), "delivered").await;
    for id in &acked {
        wait_for_status(&w, id, "delivered").await;
    }
    drop(agent);
    sender.await.unwrap();

    let (mut agent, hello) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    let remaining = hello["queuedCount"].as_u64().unwrap() as usize;
    assert_eq!(remaining, 100 - acked.len());
    let mut second = Vec::new();
    for _ in 0..remaining {
        let frame = agent.next_json().await;
        let id = frame["messageId"].as_str().unwrap().to_owned();
        agent.ack(&id).await;
        second.push(id);
    }
    let all: BTreeSet<_> = first.iter().chain(&second).cloned().collect();
    assert_eq!(all.len(), 100, "every message arrived");
    let repeated: BTreeSet<_> = second.iter().filter(|id| first.contains(id)).collect();
    assert!(
        repeated.iter().all(|id| !acked.contains(*id)),
        "an acked message was delivered again"
    );
    let chain = w.store.audit_chain(&w.scope, SAMANTHA, "c1").await.unwrap();
    assert_eq!(chain.len(), 100);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_stream_loses_nothing_sqlite() {
    killed_mid_stream(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_stream_loses_nothing_postgres() {
    killed_mid_stream(Backend::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_pushes_are_retried_and_counted() {
    let backend = Backend::sqlite();
    let w = world(&backend).await;
    let server = Server::spawn(&backend, &["--ack-timeout-ms", "300"]);
    let (mut agent, _) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    let id = send(&server, &w.peer, "retry-1").await;
    let first = agent.next_json().await;
    assert_eq!(
        (first["messageId"].as_str(), first["attempts"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    let again = agent.next_json().await;
    assert_eq!(
        (again["messageId"].as_str(), again["attempts"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    agent.ack(&id).await;
    wait_for_status(&w, &id, "delivered").await;
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_never_delivered() {
    let backend = Backend::sqlite();
    let w = world(&backend).await;
    let server = Server::spawn(
        &backend,
        &["--message-ttl-secs", "1", "--expiry-interval-secs", "1"],
    );
    let id = send(&server, &w.peer, "stale-1").await;
    wait_for_status(&w, &id, "expired").await;
    let (mut agent, hello) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    assert_eq!(hello["queuedCount"], 0);
    // A fresh message is the next frame: the expired one was skipped.
    let fresh = send(&server, &w.peer, "fresh-1").await;
    assert_eq!(agent.next_json().await["messageId"], fresh);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_envelopes_route_like_a_post_only_when_signed_by_the_agent() {
    let backend = Backend::sqlite();
    let w = world(&backend).await;
    let server = Server::spawn(&backend, &[]);
    let (mut samantha, _) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    let (mut orion, _) = AgentSocket::connect(&server.url, ORION, &w.orion).await;

    let as_samantha = support::Peer::from_seed(SAMANTHA, w.samantha.to_bytes());
    let envelope = as_samantha.request("out-1", ORION, json!({"text": "hello orion"}));
    samantha
        .send_json(json!({"kind": "outbound_envelope", "msgId": "out-1", "msgType": "https://didcomm.org/arp/1.0/request", "peerDid": ORION, "envelope": envelope, "connectionId": "c2"}))
        .await;
    let result = samantha.next_json().await;
    assert_eq!(result["kind"], "outbound_result");
    assert_eq!(result["ok"], true, "{result}");
    let frame = orion.next_json().await;
    assert_eq!(
        (frame["msgId"].as_str(), frame["peerDid"].as_str()),
        (Some("out-1"), Some(SAMANTHA))
    );

    // An envelope signed by someone else is refused, and nothing reaches orion.
    let forged = w.peer.request("out-2", ORION, json!({}));
    samantha
        .send_json(json!({"kind": "outbound_envelope", "msgId": "out-2", "peerDid": ORION, "envelope": forged}))
        .await;
    let result = samantha.next_json().await;
    assert_eq!(
        (result["ok"].as_bool(), result["error"].as_str()),
        (Some(false), Some("not_signed_by_agent"))
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_session_supersedes_and_shutdown_is_announced() {
    let backend = Backend::sqlite();
    let w = world(&backend).await;
    let server = Server::spawn(&backend, &[]);
    let (mut older, _) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    let (mut newer, _) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    assert_eq!(older.closed_with().await, Some(CloseCode::from(4000)));
    server.stop_in_background();
    let frame = newer.next_json().await;
    assert_eq!(
        frame,
        json!({"kind": "shutdown", "reason": "server_shutdown"})
    );
    assert_eq!(newer.closed_with().await, Some(CloseCode::Away));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_survives_a_sigkill() {
    let backend = Backend::sqlite();
    let w = world(&backend).await;
    let server = Server::spawn(&backend, &[]);
    let mut ids = BTreeSet::new();
    for n in 0..30 {
        ids.insert(send(&server, &w.peer, &format!("durable-{n}")).await);
    }
    server.kill9();
    let server = Server::spawn(&backend, &[]);
    let (mut agent, hello) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    assert_eq!(hello["queuedCount"], 30);
    let mut received = BTreeSet::new();
    while received.len() < 30 {
        let frame = agent.next_json().await;
        received.insert(frame["messageId"].as_str().unwrap().to_owned());
    }
    assert_eq!(received, ids);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_sharing_postgres_push_across_and_keep_one_session() {
    let backend = Backend::postgres().await;
    let w = world(&backend).await;
    // No periodic rescan within the test's time: only the host event can wake B.
    let slow_rescan = ["--rescan-interval-ms", "600000"];
    let a = Server::spawn(&backend, &slow_rescan);
    let b = Server::spawn(&backend, &slow_rescan);
    let (mut on_b, _) = AgentSocket::connect(&b.url, SAMANTHA, &w.samantha).await;
    let id = send(&a, &w.peer, "across-1").await;
    let frame = on_b.next_json().await;
    assert_eq!(frame["messageId"], id);
    on_b.ack(&id).await;
    wait_for_status(&w, &id, "delivered").await;

    // A session on A supersedes the one on B.
    let (mut on_a, _) = AgentSocket::connect(&a.url, SAMANTHA, &w.samantha).await;
    assert_eq!(on_b.closed_with().await, Some(CloseCode::from(4000)));
    let id = send(&b, &w.peer, "across-2").await;
    assert_eq!(on_a.next_json().await["messageId"], id);
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_client_prints_acks_and_reconnects_after_a_host_restart() {
    let backend = Backend::sqlite();
    let w = world(&backend).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::spawn(&backend, &["--listen", &listen]);
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), hex::encode(w.samantha.to_bytes())).unwrap();
    let mut client = std::process::Command::new(env!("CARGO_BIN_EXE_arp-host"))
        .args([
            "agent",
            "connect",
            "--url",
            &server.url,
            "--did",
            SAMANTHA,
            "--count",
            "2",
        ])
        .arg("--key")
        .arg(key_file.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = client.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let value: Value = serde_json::from_str(&line.unwrap()).unwrap();
            if lines_tx.send(value).is_err() {
                break;
            }
        }
    });
    let mut next_of_kind = async |kind: &str| loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .unwrap()
            .unwrap();
        if line["kind"] == kind {
            return line;
        }
    };
    next_of_kind("server_hello").await;
    let first = send(&server, &w.peer, "client-1").await;
    assert_eq!(next_of_kind("inbound_message").await["messageId"], first);
    wait_for_status(&w, &first, "delivered").await;

    // The host dies and comes back on the same address: the client reconnects.
    server.kill9();
    let server = Server::spawn(&backend, &["--listen", &listen]);
    let second = send(&server, &w.peer, "client-2").await;
    next_of_kind("server_hello").await;
    assert_eq!(next_of_kind("inbound_message").await["messageId"], second);
    assert!(
        client.wait().unwrap().success(),
        "exits after --count messages"
    );
    wait_for_status(&w, &second, "delivered").await;
    server.stop();
}

/// Suspending or revoking through the admin API reaches the agent as a `revocation` frame,
/// whichever host holds its session.
async fn owner_actions_reach_the_agent(backend: Backend) {
    let w = world(&backend).await;
    let token = ["--operator-token", "op-secret"];
    let admin_host = Server::spawn(&backend, &token);
    let agent_host = Server::spawn(&backend, &token);
    let (mut agent, _) = AgentSocket::connect(&agent_host.url, SAMANTHA, &w.samantha).await;
    let client = support::http_client();
    for (action, body, reason) in [
        ("suspend", json!({}), "suspended"),
        (
            "revoke",
            json!({"reason": "no longer needed"}),
            "no longer needed",
        ),
    ] {
        let response = client
            .post(format!(
                "{}/admin/v1/tenants/acme/connections/c1/{action}",
                admin_host.url
            ))
            .bearer_auth("op-secret")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        let frame = agent.next_json().await;
        assert_eq!(
            frame,
            json!({"kind": "revocation", "connectionId": "c1", "reason": reason})
        );
    }
    admin_host.stop();
    agent_host.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_actions_reach_the_agent_on_one_host_sqlite() {
    let backend = Backend::sqlite();
    let w = world(&backend).await;
    let server = Server::spawn(&backend, &["--operator-token", "op-secret"]);
    let (mut agent, _) = AgentSocket::connect(&server.url, SAMANTHA, &w.samantha).await;
    let response = support::http_client()
        .post(format!(
            "{}/admin/v1/tenants/acme/connections/c1/revoke",
            server.url
        ))
        .bearer_auth("op-secret")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        agent.next_json().await,
        json!({"kind": "revocation", "connectionId": "c1", "reason": "revoked"})
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_actions_reach_the_agent_across_hosts_postgres() {
    owner_actions_reach_the_agent(Backend::postgres().await).await;
}
