//! The ingress fixes and answers beyond the golden vectors, on a real server: the claims
//! checks, replays, policy and status denials (audited), the quota, the well-known
//! documents, readiness, metrics, the body limit, and provisioning by CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use arp_host::provision;
use arp_host::store::{self, Connection, ConnectionStatus, Plan, Store, TenantScope};
use serde_json::{Value, json};
use support::{Backend, Peer, Server};

const SAMANTHA: &str = "did:web:samantha.agent";
const PERMIT_ALL: &str = "permit(principal, action, resource);";

/// samantha hosted in tenant `acme`; `did:key` peers need no did:web server.
async fn host_samantha(backend: &Backend, plan: Plan) -> (Arc<dyn Store>, TenantScope) {
    let store = store::open(&backend.database_url()).await.unwrap();
    let scope = store.create_tenant("acme", plan).await.unwrap();
    let new = provision::new_agent(SAMANTHA, "did:web:ian.samantha.agent", None, None).unwrap();
    store.create_agent(&scope, &new.agent).await.unwrap();
    (store, scope)
}

fn connection(id: &str, peer: &str, policies: &[&str], status: ConnectionStatus) -> Connection {
    Connection {
        connection_id: id.to_owned(),
        agent_did: SAMANTHA.to_owned(),
        peer_did: peer.to_owned(),
        status,
        token_json: json!({"connection_id": id, "issuer": "did:web:ian.samantha.agent"}),
        cedar_policies: policies.iter().map(|p| (*p).to_owned()).collect(),
        obligations: Vec::new(),
        expires_at_ms: None,
    }
}

/// The did:key peer of the vectors.
fn keyuser() -> Peer {
    Peer::from_vectors(&support::envelope_vectors(), "keyuser")
}

async fn post(server: &Server, host: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = support::http_client()
        .post(format!("{}/didcomm", server.url))
        .header("x-forwarded-host", host)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_replays_and_denials_are_answered_and_audited() {
    let backend = Backend::sqlite();
    let (store, scope) = host_samantha(&backend, Plan::Team).await;
    let peer = keyuser();
    store
        .create_connection(
            &scope,
            &connection("c-ok", &peer.did, &[PERMIT_ALL], ConnectionStatus::Active),
        )
        .await
        .unwrap();
    let server = Server::spawn(&backend, &[]);
    let host = "samantha.agent";

    // Allowed, then the same envelope again is a replay.
    let first = peer.request("m-1", SAMANTHA, json!({"text": "hi"}));
    let (status, body) = post(&server, host, first.clone()).await;
    assert_eq!(
        (status, &body["decision"]),
        (202, &json!("allow")),
        "{body}"
    );
    let message_id = body["messageId"].as_str().unwrap().to_owned();
    assert_eq!(
        store.message_status(&scope, &message_id).await.unwrap(),
        "queued"
    );
    let (status, body) = post(&server, host, first).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("replayed_message"))
    );

    // Wrapped in JSON, routed by the Host-like header of an owner subdomain.
    let wrapped = json!({"envelope": peer.request("m-2", SAMANTHA, json!({"text": "hi"}))});
    let (status, _) = post(&server, "ian.samantha.agent:8443", wrapped.to_string()).await;
    assert_eq!(status, 202);

    // The §1 fixes.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged_from = peer.sign(
        &json!({"id": "m-3", "type": "https://didcomm.org/arp/1.0/request",
        "from": "did:web:ghost.agent", "to": [SAMANTHA], "created_time": now, "body": {}}),
    );
    let (status, body) = post(&server, host, forged_from).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("from_mismatch"))
    );
    let elsewhere = peer.request("m-4", "did:web:orion.agent", json!({}));
    let (status, body) = post(&server, host, elsewhere).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("wrong_recipient"))
    );
    let stale = peer.sign(
        &json!({"id": "m-5", "type": "https://didcomm.org/arp/1.0/request",
        "from": peer.did, "to": [SAMANTHA], "created_time": now - 3600, "body": {}}),
    );
    let (status, body) = post(&server, host, stale).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("stale_envelope"))
    );

    // Routing: no agent at the host, or not hosted here.
    for unknown in ["example.com", "orion.agent"] {
        let (status, body) = post(&server, unknown, peer.request("m-6", SAMANTHA, json!({}))).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("unknown_agent")),
            "{unknown}"
        );
    }
    // No connection with this peer; a connection id that is not the peer's.
    let stranger = Peer::from_vectors(&support::envelope_vectors(), "ghost");
    let stranger_as_key = stranger.request("m-7", SAMANTHA, json!({}));
    let (status, body) = post(&server, host, stranger_as_key).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unknown_peer")),
        "{body}"
    );
    let (status, body) = post(
        &server,
        host,
        peer.request("m-8", SAMANTHA, json!({"connection_id": "nope"})),
    )
    .await;
    // The named id is unknown, but the peer's one active connection is used.
    assert_eq!(status, 202, "{body}");

    // Another peer's connection cannot be borrowed by naming its id.
    store
        .create_connection(
            &scope,
            &connection(
                "c-deny",
                "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
                &[],
                ConnectionStatus::Active,
            ),
        )
        .await
        .unwrap();
    let (status, body) = post(
        &server,
        host,
        peer.request("m-9", SAMANTHA, json!({"connection_id": "c-deny"})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("wrong_agent")),
        "{body}"
    );

    // Suspended: refused, audited as a deny with the status as reason.
    store
        .create_connection(
            &scope,
            &connection(
                "c-suspended",
                &peer.did,
                &[PERMIT_ALL],
                ConnectionStatus::Suspended,
            ),
        )
        .await
        .unwrap();
    let (status, body) = post(
        &server,
        host,
        peer.request("m-10", SAMANTHA, json!({"connection_id": "c-suspended"})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("connection_suspended"))
    );
    let chain = store
        .audit_chain(&scope, SAMANTHA, "c-suspended")
        .await
        .unwrap();
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0].decision.as_str(), "deny");
    assert_eq!(chain[0].reason.as_deref(), Some("connection_suspended"));

    // On the revocation list: refused with `revoked`, audited.
    store
        .add_revocation(&scope, SAMANTHA, "connection", "c-ok")
        .await
        .unwrap();
    let (status, body) = post(
        &server,
        host,
        peer.request("m-11", SAMANTHA, json!({"connection_id": "c-ok"})),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("revoked")));
    let chain = store.audit_chain(&scope, SAMANTHA, "c-ok").await.unwrap();
    let last = chain.last().unwrap();
    assert_eq!(
        (last.decision.as_str(), last.reason.as_deref()),
        ("deny", Some("revoked"))
    );
    assert_eq!(arp_host::audit::verify_chain(&chain).first_break_at, None);

    // Garbage is a 400, never a 500; an oversize body is a 413.
    let (status, body) = post(&server, host, vec![0xffu8, 0x00, 0x13]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_envelope"))
    );
    let (status, body) = post(&server, host, "x".repeat(300 * 1024)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denials_and_the_quota_answer_202_deny() {
    let backend = Backend::sqlite();
    let (store, scope) = host_samantha(&backend, Plan::Free).await;
    let peer = keyuser();
    let forbid_pings = "permit(principal, action, resource);\nforbid(principal, action == Action::\"ping\", resource);";
    store
        .create_connection(
            &scope,
            &connection("c1", &peer.did, &[forbid_pings], ConnectionStatus::Active),
        )
        .await
        .unwrap();
    let server = Server::spawn(&backend, &[]);

    let (status, body) = post(
        &server,
        "samantha.agent",
        peer.request("d-1", SAMANTHA, json!({"action": "ping"})),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        body,
        json!({"ok": true, "decision": "deny", "queued": false, "reason": "policy_denied"})
    );
    let chain = store.audit_chain(&scope, SAMANTHA, "c1").await.unwrap();
    assert_eq!(chain[0].policies_fired, vec!["policy1".to_owned()]);

    // Fill the free plan's month to one below the cap, then the cap is exact.
    let period = &chain[0].timestamp[..7];
    for _ in 0..999 {
        store
            .count_usage_if_under(&scope, period, Some(1000))
            .await
            .unwrap()
            .unwrap();
    }
    let (status, body) = post(
        &server,
        "samantha.agent",
        peer.request("q-1", SAMANTHA, json!({"text": "last one"})),
    )
    .await;
    assert_eq!(
        (status, &body["decision"]),
        (202, &json!("allow")),
        "{body}"
    );
    let (status, body) = post(
        &server,
        "samantha.agent",
        peer.request("q-2", SAMANTHA, json!({"text": "over"})),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        body,
        json!({"ok": true, "decision": "deny", "queued": false, "reason": "quota_exceeded"})
    );
    let chain = store.audit_chain(&scope, SAMANTHA, "c1").await.unwrap();
    assert_eq!(
        chain.last().unwrap().reason.as_deref(),
        Some("quota_exceeded:free:1000/1000")
    );
    assert_eq!(store.usage(&scope, period).await.unwrap(), 1000);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_readiness_and_metrics() {
    let backend = Backend::sqlite();
    let (store, scope) = host_samantha(&backend, Plan::Team).await;
    store
        .add_revocation(&scope, SAMANTHA, "connection", "c-old")
        .await
        .unwrap();
    let peer = keyuser();
    store
        .create_connection(
            &scope,
            &connection("c1", &peer.did, &[PERMIT_ALL], ConnectionStatus::Active),
        )
        .await
        .unwrap();
    let server = Server::spawn(&backend, &[]);
    let client = support::http_client();
    let get = |path: &str, host: &str| {
        client
            .get(format!("{}{path}", server.url))
            .header("x-forwarded-host", host)
            .send()
    };

    let response = get("/.well-known/did.json", "samantha.agent")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "public, max-age=60");
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["id"], SAMANTHA);
    for path in ["/.well-known/agent-card.json", "/.well-known/arp.json"] {
        let body: Value = get(path, "samantha.agent.hns.to")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["did"], SAMANTHA, "{path}");
    }
    let revocations: Value = get("/.well-known/revocations.json", "samantha.agent")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revocations["revocations"][0]["id"], "c-old");
    let missing = get("/.well-known/did.json", "nobody.agent").await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"],
        "unknown_agent"
    );

    let ready: Value = get("/ready", "x").await.unwrap().json().await.unwrap();
    assert_eq!(ready, json!({"ok": true, "store": "sqlite"}));

    for n in 0..3 {
        let (status, _) = post(
            &server,
            "samantha.agent",
            peer.request(&format!("m-{n}"), SAMANTHA, json!({"action": "ping"})),
        )
        .await;
        assert_eq!(status, 202);
    }
    let metrics = get("/metrics", "x").await.unwrap().text().await.unwrap();
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(sample("arp_inbound_total{tenant=\"acme\"}"), 3.0);
    assert_eq!(sample("arp_queued_total{tenant=\"acme\"}"), 3.0);
    assert_eq!(sample("arp_queue_depth"), 3.0);
    assert_eq!(sample("arp_pdp_latency_ms_count{tenant=\"acme\"}"), 3.0);
    server.stop();
}

#[test]
fn provisioning_by_cli_then_a_message_flows() {
    let backend = Backend::sqlite();
    let url = backend.database_url();
    let out = support::cli(&[
        "tenant",
        "create",
        "acme",
        "--plan",
        "pro",
        "--database-url",
        &url,
    ]);
    assert!(out.contains("created tenant acme (plan pro)"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("samantha.key");
    let out = support::cli(&[
        "agent",
        "create",
        "--tenant",
        "acme",
        "--did",
        SAMANTHA,
        "--owner",
        "did:web:ian.samantha.agent",
        "--key-out",
        key_file.to_str().unwrap(),
        "--database-url",
        &url,
    ]);
    assert!(out.contains("publicKeyMultibase: z6Mk"), "{out}");
    let seed = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(hex::decode(seed.trim()).unwrap().len(), 32);

    let peer = keyuser();
    let token = dir.path().join("token.json");
    std::fs::write(
        &token,
        json!({"connection_id": "c-cli", "issuer": "did:web:ian.samantha.agent",
               "subject": peer.did, "audience": SAMANTHA,
               "cedar_policies": [PERMIT_ALL]})
        .to_string(),
    )
    .unwrap();
    let out = support::cli(&[
        "connection",
        "create",
        "--tenant",
        "acme",
        "--token",
        token.to_str().unwrap(),
        "--database-url",
        &url,
    ]);
    assert!(
        out.contains("created connection c-cli between did:web:samantha.agent (hosted)"),
        "{out}"
    );

    // A bad plan is refused with a reason and exit code 2.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_arp-host"))
        .args([
            "tenant",
            "create",
            "other",
            "--plan",
            "gold",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown plan"));

    let server = Server::spawn(&backend, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = runtime.block_on(post(
        &server,
        "samantha.agent",
        peer.request("cli-1", SAMANTHA, json!({"text": "hello"})),
    ));
    assert_eq!(
        (status, &body["decision"]),
        (202, &json!("allow")),
        "{body}"
    );
    let verified = support::cli(&[
        "audit",
        "verify",
        "--tenant",
        "acme",
        "--database-url",
        &url,
    ]);
    assert_eq!(
        verified.trim(),
        "did:web:samantha.agent / c-cli: valid, 1 entry"
    );
    server.stop();
}
