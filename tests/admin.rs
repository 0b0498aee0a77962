//! The admin API (`/admin/v1`) end to end on the real binary, on SQLite and Postgres:
//! authentication (operator token, tenant keys), tenants, plans, limits used by dispatch,
//! policy upload / activate / rollback (also under constant traffic), agents, connections
//! and their audited owner actions, audit, usage, the OpenAPI document against the router,
//! the CLI over HTTP, and five tenants that cannot see or touch each other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arp_host::http::admin::{Access, ROUTES};
use serde_json::{Value, json};
use support::{Backend, Peer, Server};

const OPERATOR: &str = "op-secret-token";
const PERMIT_ALL: &str = "permit(principal, action, resource);";

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{name}.wasm", env!("ARP_POLICY_WASM_DIR"))).unwrap()
}

/// A server with an operator token, and a client for its admin API.
struct Admin {
    server: Server,
    client: reqwest::Client,
}

impl Admin {
    fn spawn(backend: &Backend) -> Self {
        Self {
            server: Server::spawn(backend, &["--operator-token", OPERATOR]),
            client: support::http_client(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.server.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        answer(request.send().await.unwrap()).await
    }

    async fn op(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, Some(OPERATOR), body).await
    }

    async fn put_wasm(&self, tenant: &str, key: &str, bytes: Vec<u8>) -> (u16, Value) {
        let response = self
            .client
            .put(format!(
                "{}/admin/v1/tenants/{tenant}/policies",
                self.server.url
            ))
            .bearer_auth(key)
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    /// Creates a tenant and an API key for it; returns the key.
    async fn tenant(&self, id: &str, plan: &str) -> String {
        let (status, body) = self
            .op(
                "POST",
                "/admin/v1/tenants",
                Some(json!({"id": id, "plan": plan})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .op(
                "POST",
                &format!("/admin/v1/tenants/{id}/keys"),
                Some(json!({"label": "ci"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["key"].as_str().unwrap().to_owned()
    }

    /// Hosts `did:web:<name>.agent` in the tenant (generated key) and pairs it with a
    /// did:key peer under a permit-all connection `conn`. Returns (agent signer, peer).
    async fn agent_and_peer(
        &self,
        tenant: &str,
        key: &str,
        name: &str,
        conn: &str,
        seed: u8,
    ) -> (Peer, Peer) {
        let did = format!("did:web:{name}.agent");
        let (status, body) = self
            .call(
                "POST",
                &format!("/admin/v1/tenants/{tenant}/agents"),
                Some(key),
                Some(json!({"did": did, "owner": format!("did:web:owner.{name}.agent")})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let secret: [u8; 32] = hex::decode(body["secretKeyHex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let peer = Peer::did_key([seed; 32]);
        let token = json!({
            "connection_id": conn,
            "issuer": format!("did:web:owner.{name}.agent"),
            "subject": did,
            "audience": peer.did,
            "cedar_policies": [PERMIT_ALL],
            "obligations": [],
        });
        let (status, body) = self
            .call(
                "POST",
                &format!("/admin/v1/tenants/{tenant}/connections"),
                Some(key),
                Some(json!({"token": token})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (Peer::from_seed(&did, secret), peer)
    }

    /// POSTs an envelope to `host`.
    async fn envelope(&self, host: &str, envelope: String) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/didcomm", self.server.url))
            .header("x-forwarded-host", host)
            .body(envelope)
            .send()
            .await
            .unwrap();
        answer(response).await
    }
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

static MESSAGES: AtomicUsize = AtomicUsize::new(0);

fn message_id() -> String {
    format!(
        "m-{}-{}",
        std::process::id(),
        MESSAGES.fetch_add(1, Ordering::Relaxed)
    )
}

/// A request from `peer` to `name`.agent on `conn`.
fn hello(peer: &Peer, name: &str, conn: &str) -> String {
    peer.request(
        &message_id(),
        &format!("did:web:{name}.agent"),
        json!({"connection_id": conn, "text": "hi"}),
    )
}

// ---------------------------------------------------------------------------------------

async fn auth_tenants_keys_plans_and_limits(backend: Backend) {
    let admin = Admin::spawn(&backend);
    // No token, a wrong token.
    let (status, body) = admin.call("GET", "/admin/v1/tenants", None, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = admin
        .call("GET", "/admin/v1/tenants", Some("nope"), None)
        .await;
    assert_eq!(status, 401);

    // Tenants: create, refuse bad input and duplicates, list.
    let key = admin.tenant("acme", "pro").await;
    admin.tenant("globex", "free").await;
    let (status, body) = admin
        .op("POST", "/admin/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("tenant_exists"))
    );
    let (status, body) = admin
        .op("POST", "/admin/v1/tenants", Some(json!({"id": "a/b"})))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_tenant_id"))
    );
    let (status, body) = admin
        .op(
            "POST",
            "/admin/v1/tenants",
            Some(json!({"id": "x", "plan": "gold"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_plan"))
    );
    let (status, body) = admin
        .op("POST", "/admin/v1/tenants", Some(json!({"nope": 1})))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_body"))
    );
    let (status, body) = admin.op("GET", "/admin/v1/tenants", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "globex"]);

    // The tenant key: its own tenant yes, operator routes 403, another tenant 404.
    let (status, body) = admin
        .call("GET", "/admin/v1/tenants/acme", Some(&key), None)
        .await;
    assert_eq!(
        (status, body["tenant"]["plan"].as_str()),
        (200, Some("pro")),
        "{body}"
    );
    let (status, body) = admin
        .call("GET", "/admin/v1/tenants", Some(&key), None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("operator_only"))
    );
    let (status, body) = admin
        .call("GET", "/admin/v1/tenants/globex", Some(&key), None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_tenant"))
    );
    let (status, body) = admin
        .call(
            "PUT",
            "/admin/v1/tenants/acme/plan",
            Some(&key),
            Some(json!({"plan": "team"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("operator_only"))
    );
    let (status, _) = admin
        .op(
            "PUT",
            "/admin/v1/tenants/acme/plan",
            Some(json!({"plan": "team"})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = admin.op("GET", "/admin/v1/tenants/acme", None).await;
    assert_eq!(body["tenant"]["plan"], "team");
    let (status, body) = admin.op("GET", "/admin/v1/tenants/nobody", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_tenant"))
    );

    // Limits: within the maxima, refused above them or at zero, shown to the tenant.
    let (status, body) = admin
        .op(
            "PUT",
            "/admin/v1/tenants/acme/limits",
            Some(json!({"fuel": 1000, "concurrency": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for bad in [
        json!({"fuel": 0}),
        json!({"deadlineMs": 10_000_000}),
        json!({"memoryBytes": u64::MAX}),
    ] {
        let (status, body) = admin
            .op("PUT", "/admin/v1/tenants/acme/limits", Some(bad))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("limit_out_of_range")),
            "{body}"
        );
    }
    let (status, body) = admin
        .call("GET", "/admin/v1/tenants/acme/limits", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["limits"]["fuel"], 1000);
    assert_eq!(body["limits"]["deadlineMs"], Value::Null);
    assert_eq!(body["effective"]["fuel"], 1000);
    assert_eq!(body["effective"]["deadlineMs"], 50);
    let (status, _) = admin
        .call(
            "PUT",
            "/admin/v1/tenants/acme/limits",
            Some(&key),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403);

    // Keys: listed without the key, revoked at once.
    let (_, body) = admin.op("GET", "/admin/v1/tenants/acme/keys", None).await;
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].get("key").is_none());
    assert!(!body.to_string().contains(&key));
    let key_id = keys[0]["id"].as_str().unwrap().to_owned();
    let (status, _) = admin
        .op(
            "DELETE",
            &format!("/admin/v1/tenants/acme/keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = admin
        .call("GET", "/admin/v1/tenants/acme", Some(&key), None)
        .await;
    assert_eq!(status, 401);
    let (status, body) = admin
        .op("DELETE", "/admin/v1/tenants/acme/keys/key_nope", None)
        .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_key")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tenants_keys_plans_and_limits_sqlite() {
    auth_tenants_keys_plans_and_limits(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tenants_keys_plans_and_limits_postgres() {
    auth_tenants_keys_plans_and_limits(Backend::postgres().await).await;
}

// ---------------------------------------------------------------------------------------

async fn last_audit_entry(
    admin: &Admin,
    key: &str,
    tenant: &str,
    agent: &str,
    conn: &str,
) -> Value {
    let (status, body) = admin
        .call(
            "GET",
            &format!("/admin/v1/tenants/{tenant}/audit/chains/{agent}/{conn}"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verify"]["valid"], true, "{body}");
    body["entries"].as_array().unwrap().last().unwrap().clone()
}

async fn policies_and_limits_in_dispatch(backend: Backend) {
    let admin = Admin::spawn(&backend);
    let key = admin.tenant("acme", "team").await;
    let (_, peer) = admin
        .agent_and_peer("acme", &key, "samantha", "c-1", 7)
        .await;
    let send = || admin.envelope("samantha.agent", hello(&peer, "samantha", "c-1"));
    let (status, body) = send().await;
    assert_eq!(
        (status, body["decision"].as_str()),
        (202, Some("allow")),
        "{body}"
    );

    // Refused uploads: each with its admission reason, nothing stored or activated.
    let (status, body) = admin
        .put_wasm("acme", &key, b"not wasm at all".to_vec())
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("not_wasm")),
        "{body}"
    );
    let (status, body) = admin.put_wasm("acme", &key, wasm("arp_hostile_io")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("forbidden_import")),
        "{body}"
    );
    let (status, body) = admin
        .put_wasm("acme", &key, b"\0asm\x01\0\0\0".to_vec())
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("not_a_component")),
        "{body}"
    );
    let (status, body) = admin.put_wasm("acme", &key, vec![0; 17 << 20]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("component_too_large")),
        "{body}"
    );
    // The tenant's own cases run first: deny-all fails a case expecting allow.
    let cases: Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/cases/scopes.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let b64 = |bytes: Vec<u8>| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let (status, body) = admin
        .call(
            "PUT",
            "/admin/v1/tenants/acme/policies",
            Some(&key),
            Some(json!({"component": b64(wasm("arp_policy_deny_all")), "cases": cases})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("cases_failed")),
        "{body}"
    );
    assert!(
        body["cases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["passed"] == false)
    );
    let (status, body) = admin
        .call("GET", "/admin/v1/tenants/acme/policies", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["versions"], json!([]));
    assert_eq!(body["active"], Value::Null);

    // Accepted uploads: scopes with its passing cases, deny-all raw. Not active yet.
    let (status, body) = admin
        .call(
            "PUT",
            "/admin/v1/tenants/acme/policies",
            Some(&key),
            Some(json!({"component": b64(wasm("arp_policy_scopes")), "cases": cases})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["casesPassed"].as_u64().unwrap() > 0);
    let (status, body) = admin
        .put_wasm("acme", &key, wasm("arp_policy_deny_all"))
        .await;
    assert_eq!(status, 201, "{body}");
    let deny_all = body["digest"].as_str().unwrap().to_owned();
    let (status, body) = send().await;
    assert_eq!((status, body["decision"].as_str()), (202, Some("allow")));

    // Activate deny-all: denied; roll back to cedar (uploaded as a version): allowed.
    let (status, body) = admin
        .call(
            "PUT",
            "/admin/v1/tenants/acme/policies/active",
            Some(&key),
            Some(json!({"digest": deny_all})),
        )
        .await;
    assert_eq!(
        (status, body["previous"].clone()),
        (200, Value::Null),
        "{body}"
    );
    let (_, body) = send().await;
    assert_eq!(body["decision"], "deny", "{body}");
    let (status, body) = admin.put_wasm("acme", &key, wasm("arp_policy_cedar")).await;
    assert_eq!(status, 201, "{body}");
    let cedar = body["digest"].as_str().unwrap().to_owned();
    // A refused upload leaves the active version alone.
    let (status, _) = admin.put_wasm("acme", &key, wasm("arp_hostile_io")).await;
    assert_eq!(status, 422);
    let (_, body) = admin
        .call(
            "GET",
            "/admin/v1/tenants/acme/policies/active",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(body["active"], deny_all.as_str());
    let (status, body) = admin
        .call(
            "PUT",
            "/admin/v1/tenants/acme/policies/active",
            Some(&key),
            Some(json!({"digest": "sha256:00"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_policy_version"))
    );
    let (status, _) = admin
        .call(
            "PUT",
            "/admin/v1/tenants/acme/policies/active",
            Some(&key),
            Some(json!({"digest": cedar})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = send().await;
    assert_eq!(body["decision"], "allow", "{body}");
    let (_, body) = admin
        .call("GET", "/admin/v1/tenants/acme/policies", Some(&key), None)
        .await;
    let versions = body["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3, "{body}");
    assert_eq!(versions.iter().filter(|v| v["active"] == true).count(), 1);
    assert_eq!(body["active"], cedar.as_str());

    // The tenant's limits are what dispatch runs its decisions under.
    let (status, _) = admin
        .op(
            "PUT",
            "/admin/v1/tenants/acme/limits",
            Some(json!({"fuel": 1000})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = send().await;
    assert_eq!(body["decision"], "deny", "{body}");
    let entry = last_audit_entry(&admin, &key, "acme", "did:web:samantha.agent", "c-1").await;
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .starts_with("policy_out_of_fuel"),
        "{entry}"
    );
    let (status, _) = admin
        .op("PUT", "/admin/v1/tenants/acme/limits", Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let (_, body) = send().await;
    assert_eq!(body["decision"], "allow", "{body}");

    // Usage counts the allowed messages.
    let (status, body) = admin
        .call("GET", "/admin/v1/tenants/acme/usage", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["inbound"], 4, "{body}");
    let (status, body) = admin
        .call(
            "GET",
            "/admin/v1/tenants/acme/usage?period=2020-13x",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_period"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_limits_in_dispatch_sqlite() {
    policies_and_limits_in_dispatch(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_limits_in_dispatch_postgres() {
    policies_and_limits_in_dispatch(Backend::postgres().await).await;
}

// ---------------------------------------------------------------------------------------

/// One decision observed by a traffic client.
struct Observed {
    started: Instant,
    finished: Instant,
    status: u16,
    decision: String,
}

async fn switch_under_traffic(backend: Backend) {
    let admin = Arc::new(Admin::spawn(&backend));
    let key = admin.tenant("acme", "team").await;
    let (_, peer) = admin
        .agent_and_peer("acme", &key, "samantha", "c-1", 9)
        .await;
    let peer = Arc::new(peer);
    let (status, body) = admin
        .put_wasm("acme", &key, wasm("arp_policy_deny_all"))
        .await;
    assert_eq!(status, 201, "{body}");
    let deny_all = body["digest"].as_str().unwrap().to_owned();
    let (status, body) = admin.put_wasm("acme", &key, wasm("arp_policy_cedar")).await;
    assert_eq!(status, 201, "{body}");
    let cedar = body["digest"].as_str().unwrap().to_owned();
    let (status, _) = admin
        .call(
            "PUT",
            "/admin/v1/tenants/acme/policies/active",
            Some(&key),
            Some(json!({"digest": cedar})),
        )
        .await;
    assert_eq!(status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (admin, peer, stop) = (admin.clone(), peer.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (status, body) = admin
                    .envelope("samantha.agent", hello(&peer, "samantha", "c-1"))
                    .await;
                seen.push(Observed {
                    started,
                    finished: Instant::now(),
                    status,
                    decision: body["decision"].as_str().unwrap_or("?").to_owned(),
                });
            }
            seen
        }));
    }
    let activate = |digest: String| {
        let (admin, key) = (admin.clone(), key.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let before = Instant::now();
            let (status, body) = admin
                .call(
                    "PUT",
                    "/admin/v1/tenants/acme/policies/active",
                    Some(&key),
                    Some(json!({"digest": digest})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            (before, Instant::now())
        }
    };
    let (_, deny_done) = activate(deny_all).await;
    let (rollback_start, rollback_done) = activate(cedar).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    let (mut allows, mut denies) = (0, 0);
    for client in clients {
        let seen = client.await.unwrap();
        total += seen.len();
        for observed in &seen {
            // Zero failed requests.
            assert_eq!(observed.status, 202, "a request failed during the switch");
            match observed.decision.as_str() {
                "allow" => allows += 1,
                "deny" => denies += 1,
                other => panic!("unexpected decision {other}"),
            }
            // Wholly after the activation and before the rollback: the new version.
            if observed.started > deny_done && observed.finished < rollback_start {
                assert_eq!(observed.decision, "deny");
            }
            if observed.started > rollback_done {
                assert_eq!(observed.decision, "allow");
            }
        }
        // Each client sees allow…, deny…, allow…: never back and forth (no mixing).
        let switches = seen
            .windows(2)
            .filter(|pair| pair[0].decision != pair[1].decision)
            .count();
        assert!(switches <= 2, "{switches} switches");
    }
    assert!(
        total > 30 && allows > 0 && denies > 0,
        "{total} {allows} {denies}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_and_rollback_under_traffic_fail_no_request_sqlite() {
    switch_under_traffic(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_and_rollback_under_traffic_fail_no_request_postgres() {
    switch_under_traffic(Backend::postgres().await).await;
}

// ---------------------------------------------------------------------------------------

async fn connections_owner_actions_and_audit(backend: Backend) {
    let admin = Admin::spawn(&backend);
    let key = admin.tenant("acme", "free").await;
    let (_, peer) = admin
        .agent_and_peer("acme", &key, "samantha", "c-1", 11)
        .await;
    let agent = "did:web:samantha.agent";
    let send = || admin.envelope("samantha.agent", hello(&peer, "samantha", "c-1"));
    assert_eq!(send().await.0, 202);

    let path = |action: &str| format!("/admin/v1/tenants/acme/connections/c-1/{action}");
    let (status, body) = admin
        .call(
            "POST",
            &path("suspend"),
            Some(&key),
            Some(json!({"reason": "owner away"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["audit"]["decision"], "suspend");
    let entry = last_audit_entry(&admin, &key, "acme", agent, "c-1").await;
    assert_eq!(
        (entry["decision"].as_str(), entry["reason"].as_str()),
        (Some("suspend"), Some("owner away"))
    );
    let (status, body) = send().await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("connection_suspended"))
    );
    let (status, body) = admin.call("POST", &path("suspend"), Some(&key), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("invalid_transition"))
    );
    let (status, _) = admin.call("POST", &path("resume"), Some(&key), None).await;
    assert_eq!(status, 200);
    assert_eq!(send().await.0, 202);
    let (status, body) = admin.call("POST", &path("revoke"), Some(&key), None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("revoked")));
    let (status, body) = admin.call("POST", &path("resume"), Some(&key), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("invalid_transition"))
    );
    let (status, body) = send().await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("connection_revoked"))
    );
    let (status, body) = admin
        .call(
            "POST",
            "/admin/v1/tenants/acme/connections/c-x/revoke",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_connection"))
    );

    // The chain: allow, suspend, deny, resume, allow, revoke, deny; verified.
    let (status, body) = admin
        .call(
            "GET",
            &format!("/admin/v1/tenants/acme/audit/chains/{agent}/c-1"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let decisions: Vec<&str> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decision"].as_str().unwrap())
        .collect();
    assert_eq!(
        decisions,
        [
            "allow", "suspend", "deny", "resume", "allow", "revoke", "deny"
        ]
    );
    let (status, body) = admin
        .call(
            "GET",
            "/admin/v1/tenants/acme/audit/verify",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        (status, body["valid"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let (_, body) = admin
        .call(
            "GET",
            "/admin/v1/tenants/acme/audit/chains",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        body["chains"],
        json!([{"agentDid": agent, "connectionId": "c-1"}])
    );

    // Listed, and on the agent's public revocation list.
    let (_, body) = admin
        .call(
            "GET",
            "/admin/v1/tenants/acme/connections",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(body["connections"][0]["status"], "revoked");
    let (_, body) = admin
        .call(
            "GET",
            &format!("/admin/v1/tenants/acme/agents/{agent}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(body["agent"]["didDocument"]["id"], agent);
    let response = admin
        .client
        .get(format!("{}/.well-known/revocations.json", admin.server.url))
        .header("x-forwarded-host", "samantha.agent")
        .send()
        .await
        .unwrap();
    let (_, body) = answer(response).await;
    assert_eq!(body["revocations"][0]["id"], "c-1", "{body}");

    // A duplicate connection and an agent the tenant does not host.
    let token = json!({"connection_id": "c-1", "issuer": "did:web:x.agent", "subject": agent, "audience": peer.did});
    let (status, body) = admin
        .call(
            "POST",
            "/admin/v1/tenants/acme/connections",
            Some(&key),
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("connection_exists"))
    );
    let token = json!({"connection_id": "c-2", "issuer": "did:web:x.agent", "subject": "did:web:orion.agent", "audience": peer.did});
    let (status, body) = admin
        .call(
            "POST",
            "/admin/v1/tenants/acme/connections",
            Some(&key),
            Some(json!({"token": token, "agent": "did:web:orion.agent"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_agent")),
        "{body}"
    );
    let (status, body) = admin
        .call(
            "POST",
            "/admin/v1/tenants/acme/agents",
            Some(&key),
            Some(json!({"did": "did:web:samantha.agent", "owner": "did:web:x.agent"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("agent_exists"))
    );
    let (status, body) = admin
        .call(
            "POST",
            "/admin/v1/tenants/acme/agents",
            Some(&key),
            Some(json!({"did": "did:web:example.com", "owner": "did:web:x.agent"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_agent"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_owner_actions_and_audit_sqlite() {
    connections_owner_actions_and_audit(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_owner_actions_and_audit_postgres() {
    connections_owner_actions_and_audit(Backend::postgres().await).await;
}

// ---------------------------------------------------------------------------------------

/// One tenant of the isolation suite.
struct Tenant {
    id: String,
    key: String,
    name: String,
    conn: String,
    agent: Peer,
    peer: Peer,
}

/// `route.path` with the tenant `tenant` and the objects of `objects`.
fn fill(path: &str, tenant: &Tenant, objects: &Tenant) -> String {
    path.replace("{tenant}", &tenant.id)
        .replace("{did}", &objects.agent.did)
        .replace("{agent}", &objects.agent.did)
        .replace("{connection}", &objects.conn)
        .replace("{key}", "key_0000000000000000")
}

async fn chains_and_usage(admin: &Admin, tenant: &Tenant) -> (usize, u64) {
    let (_, chains) = admin
        .call(
            "GET",
            &format!("/admin/v1/tenants/{}/audit/chains", tenant.id),
            Some(&tenant.key),
            None,
        )
        .await;
    let (_, usage) = admin
        .call(
            "GET",
            &format!("/admin/v1/tenants/{}/usage", tenant.id),
            Some(&tenant.key),
            None,
        )
        .await;
    (
        chains["chains"].as_array().unwrap().len(),
        usage["inbound"].as_u64().unwrap(),
    )
}

async fn five_tenants_are_isolated(backend: Backend) {
    let admin = Admin::spawn(&backend);
    let mut tenants = Vec::new();
    for i in 0..5u8 {
        let id = format!("tenant-{i}");
        let key = admin.tenant(&id, "team").await;
        let name = format!("agent{i}");
        let conn = format!("c-{i}");
        let (agent, peer) = admin.agent_and_peer(&id, &key, &name, &conn, 40 + i).await;
        // One stored policy version each, to probe.
        let (status, _) = admin.put_wasm(&id, &key, wasm("arp_policy_deny_all")).await;
        assert_eq!(status, 201);
        tenants.push(Tenant {
            id,
            key,
            name,
            conn,
            agent,
            peer,
        });
    }

    // Each tenant's well-known documents are its own agent's.
    for tenant in &tenants {
        for document in ["did.json", "agent-card.json", "arp.json"] {
            let response = admin
                .client
                .get(format!("{}/.well-known/{document}", admin.server.url))
                .header("x-forwarded-host", format!("{}.agent", tenant.name))
                .send()
                .await
                .unwrap();
            let (status, body) = answer(response).await;
            assert_eq!(status, 200);
            assert!(
                body.to_string().contains(&tenant.agent.did),
                "{document}: {body}"
            );
        }
    }

    // All 20 cross-tenant pairs: A's agent to B's agent, naming A's connection and then
    // B's: refused, nothing stored anywhere.
    for a in &tenants {
        for b in &tenants {
            if a.id == b.id {
                continue;
            }
            for conn in [&a.conn, &b.conn] {
                let envelope = a.agent.request(
                    &message_id(),
                    &b.agent.did,
                    json!({"connection_id": conn, "text": "hi"}),
                );
                let (status, body) = admin.envelope(&format!("{}.agent", b.name), envelope).await;
                assert_eq!(status, 400, "{} -> {} on {conn}: {body}", a.id, b.id);
            }
            // A's peer to B's agent on A's connection: refused as well.
            let envelope = a.peer.request(
                &message_id(),
                &b.agent.did,
                json!({"connection_id": a.conn, "text": "hi"}),
            );
            let (status, body) = admin.envelope(&format!("{}.agent", b.name), envelope).await;
            assert_eq!(status, 400, "{body}");
        }
    }
    for tenant in &tenants {
        assert_eq!(
            chains_and_usage(&admin, tenant).await,
            (0, 0),
            "{}",
            tenant.id
        );
    }
    // Each tenant's own envelopes are accepted.
    for tenant in &tenants {
        let (status, body) = admin
            .envelope(
                &format!("{}.agent", tenant.name),
                hello(&tenant.peer, &tenant.name, &tenant.conn),
            )
            .await;
        assert_eq!(
            (status, body["decision"].as_str()),
            (202, Some("allow")),
            "{body}"
        );
        assert_eq!(
            chains_and_usage(&admin, tenant).await,
            (1, 1),
            "{}",
            tenant.id
        );
    }

    // Every tenant route, with A's key: B's tenant (with B's objects) is 404; A's own
    // tenant with B's objects is 404 too (403 only for A's own operator routes).
    let a = &tenants[0];
    let mut probed = 0;
    for b in &tenants[1..] {
        for route in ROUTES {
            // A body that would be valid for the route, so only the tenant decides.
            let body = match route.operation_id {
                "createTenant" => Some(json!({"id": "zz"})),
                "setPlan" => Some(json!({"plan": "free"})),
                "setLimits" => Some(json!({"fuel": 1000})),
                "createKey" => Some(json!({"label": "probe"})),
                "createAgent" => {
                    Some(json!({"did": "did:web:zz.agent", "owner": "did:web:zz.agent"}))
                }
                "createConnection" => Some(json!({"token": {"connection_id": "zz",
                    "issuer": "did:web:zz.agent", "subject": a.agent.did, "audience": "did:web:zz.agent"}})),
                "suspendConnection" | "resumeConnection" | "revokeConnection" => {
                    Some(json!({"reason": "probe"}))
                }
                "uploadPolicy" => Some(json!({"component": ""})),
                "activatePolicy" => Some(json!({"digest": "sha256:x"})),
                _ => None,
            };
            match route.access {
                Access::Tenant | Access::TenantOperator => {
                    let (status, answer) = admin
                        .call(
                            &route.method.to_uppercase(),
                            &fill(route.path, b, b),
                            Some(&a.key),
                            body.clone(),
                        )
                        .await;
                    assert_eq!(status, 404, "{} {}: {answer}", route.method, route.path);
                    probed += 1;
                    let has_objects = ["{did}", "{agent}", "{connection}"]
                        .iter()
                        .any(|p| route.path.contains(p));
                    if has_objects {
                        let (status, answer) = admin
                            .call(
                                &route.method.to_uppercase(),
                                &fill(route.path, a, b),
                                Some(&a.key),
                                body,
                            )
                            .await;
                        let expected = if route.access == Access::TenantOperator {
                            403
                        } else {
                            404
                        };
                        assert_eq!(
                            status, expected,
                            "{} {} (own tenant): {answer}",
                            route.method, route.path
                        );
                    }
                }
                Access::Operator => {
                    let (status, _) = admin
                        .call(&route.method.to_uppercase(), route.path, Some(&a.key), body)
                        .await;
                    assert_eq!(status, 403, "{}", route.path);
                }
                Access::Public => {}
            }
        }
    }
    assert!(probed >= 4 * 20);
    // B's things are as they were.
    for b in &tenants[1..] {
        let (_, body) = admin
            .op(
                "GET",
                &format!("/admin/v1/tenants/{}/connections", b.id),
                None,
            )
            .await;
        assert_eq!(body["connections"][0]["status"], "active", "{body}");
        let (_, body) = admin
            .op("GET", &format!("/admin/v1/tenants/{}/agents", b.id), None)
            .await;
        assert_eq!(body["agents"].as_array().unwrap().len(), 1);
        let (_, body) = admin
            .op("GET", &format!("/admin/v1/tenants/{}/policies", b.id), None)
            .await;
        assert_eq!(body["versions"].as_array().unwrap().len(), 1);
        assert_eq!(body["active"], Value::Null);
        assert_eq!(chains_and_usage(&admin, b).await, (1, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_tenants_are_isolated_sqlite() {
    five_tenants_are_isolated(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_tenants_are_isolated_postgres() {
    five_tenants_are_isolated(Backend::postgres().await).await;
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_router() {
    let backend = Backend::sqlite();
    let admin = Admin::spawn(&backend);
    let (status, document) = admin
        .call("GET", "/admin/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented.insert((method.clone(), path.clone()));
            assert!(operation["operationId"].is_string());
        }
    }
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, table);

    // Every documented operation is served: without a token it is 401 (not the 404 of an
    // unknown route, nor 405); the document itself is public.
    for (method, path) in &documented {
        let concrete = path
            .replace("{tenant}", "t")
            .replace("{did}", "did:web:a.agent")
            .replace("{agent}", "did:web:a.agent")
            .replace("{connection}", "c")
            .replace("{key}", "k");
        let (status, body) = admin
            .call(&method.to_uppercase(), &concrete, None, None)
            .await;
        let expected = if path.ends_with("openapi.json") {
            200
        } else {
            401
        };
        assert_eq!(status, expected, "{method} {path}: {body}");
    }
    // And what is not documented is not served.
    let (status, body) = admin.op("GET", "/admin/v1/nothing/here", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_route"))
    );
    let (status, _) = admin.op("DELETE", "/admin/v1/tenants", None).await;
    assert_eq!(status, 405);
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_admin_api() {
    let backend = Backend::sqlite();
    let admin = Admin::spawn(&backend);
    let url = admin.server.url.clone();
    let op = ["--url", url.as_str(), "--key", OPERATOR];
    let run = |args: Vec<&str>| {
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            support::cli(&refs)
        })
    };
    let out = run([
        &["admin"][..],
        &op,
        &["tenant", "create", "acme", "--plan", "pro"],
    ]
    .concat())
    .await
    .unwrap();
    assert!(out.contains("\"acme\""), "{out}");
    let out = run([&["admin"][..], &op, &["key", "create", "--tenant", "acme"]].concat())
        .await
        .unwrap();
    let key = serde_json::from_str::<Value>(&out).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deny.wasm");
    std::fs::write(&file, wasm("arp_policy_deny_all")).unwrap();
    let file = file.display().to_string();
    let tenant_args = [
        "--url",
        url.as_str(),
        "--key",
        key.as_str(),
        "--tenant",
        "acme",
    ];
    let out = run([&["policy", "push"][..], &tenant_args, &[file.as_str()]].concat())
        .await
        .unwrap();
    let digest = serde_json::from_str::<Value>(&out).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run([
        &["policy", "activate"][..],
        &tenant_args,
        &[digest.as_str()],
    ]
    .concat())
    .await
    .unwrap();
    assert!(out.contains(&digest), "{out}");
    let out = run([&["policy", "list"][..], &tenant_args].concat())
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["active"],
        digest.as_str()
    );
    let out = run([&["admin"][..], &op, &["usage", "--tenant", "acme"]].concat())
        .await
        .unwrap();
    assert!(out.contains("\"inbound\": 0"), "{out}");
    // A refusal exits 1 with the reason code.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_arp-host"))
        .args([
            "admin",
            "--url",
            url.as_str(),
            "--key",
            key.as_str(),
            "tenant",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("operator_only"));
}
