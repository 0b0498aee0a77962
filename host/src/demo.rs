//! `arp-host demo`: the whole host in one command, with no setup.
//!
//! It starts a server in this process on a temporary SQLite store (or `--data-dir`),
//! then drives it only through its public surfaces, as an operator, tenants, peers and
//! agents would:
//!
//! 1. the **admin API** over HTTP with an operator token generated for the run: three
//!    tenants, each with an API key, a hosted agent and a connection to a `did:key` peer
//!    (which resolves offline); `acme` uploads and activates the `scopes` example policy,
//!    `globex` keeps the default `cedar`, and `mallory` activates the hostile `spin`
//!    policy (an endless loop);
//! 2. **`POST /didcomm`** with envelopes signed by the peers: allowed, denied, and one the
//!    hostile policy cannot decide (a deny with `policy_out_of_fuel` or `policy_timeout`);
//! 3. **`GET /ws`** as the agents: what each received, with its obligations, acked;
//! 4. **audit**: every tenant's chains verified through the admin API.
//!
//! It prints a short narrative of each step and the URLs to look at, then serves until
//! Ctrl-C (`--once`: stops and exits 0). The policies are the build's own, embedded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Args, Parser};
use ed25519_dalek::{Signer as _, SigningKey};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{CliError, ServeArgs};
use crate::http;
use crate::logging::{self, LogFormat};
use crate::server;

/// The `scopes` example policy, built from `policies/scopes` by the build script.
const SCOPES_POLICY: &[u8] = include_bytes!(concat!(
    env!("ARP_POLICY_WASM_DIR"),
    "/arp_policy_scopes.wasm"
));

/// The hostile `spin` policy (an endless loop), built from `policies/hostile/spin`.
const SPIN_POLICY: &[u8] = include_bytes!(concat!(
    env!("ARP_POLICY_WASM_DIR"),
    "/arp_hostile_spin.wasm"
));

/// How long the demo waits for an agent's messages before it gives up.
const DELIVERY_WAIT: Duration = Duration::from_secs(20);

/// `arp-host demo` options. The ids differ from `serve`'s so that `arp-host.toml` (whose
/// `data-dir` and `listen` are `serve`'s defaults) never points the demo at real data.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's store and policy cache here (default: a new temporary directory,
    /// removed when the demo ends).
    #[arg(id = "demo_data_dir", long = "data-dir", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (port 0: any free port). Loopback only by default.
    #[arg(
        id = "demo_listen",
        long = "listen",
        value_name = "ADDR",
        default_value = "127.0.0.1:0"
    )]
    pub listen: SocketAddr,
    /// Exit 0 after the demo instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

/// Only `serve`'s flags, to build its settings the way the command line would.
#[derive(Debug, Parser)]
struct ServeOnly {
    #[command(flatten)]
    serve: ServeArgs,
}

/// Runs the demo: exit 0 when every step did what it should.
pub fn run(args: DemoArgs) -> Result<ExitCode, CliError> {
    logging::init(
        LogFormat::Text,
        &std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
    )
    .map_err(|error| CliError::Invalid(error.to_string()))?;
    let (data_dir, temporary) = match &args.data_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("arp-host-demo-{}", uuid::Uuid::new_v4().simple())),
            true,
        ),
    };
    let runtime =
        tokio::runtime::Runtime::new().map_err(crate::cli::io_error("cannot start the runtime"))?;
    let result = runtime.block_on(demo(&args, &data_dir));
    drop(runtime);
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    result
}

fn fail(what: impl Into<String>) -> CliError {
    CliError::Invalid(format!("demo: {}", what.into()))
}

async fn demo(args: &DemoArgs, data_dir: &std::path::Path) -> Result<ExitCode, CliError> {
    let operator_token = format!(
        "arpop_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let database_url = format!("sqlite:{}", data_dir.join("arp-host.sqlite3").display());
    let listen = args.listen.to_string();
    let data_dir_text = data_dir.display().to_string();
    let serve = ServeOnly::try_parse_from([
        "arp-host-demo",
        "--listen",
        listen.as_str(),
        "--data-dir",
        data_dir_text.as_str(),
        "--database-url",
        database_url.as_str(),
        "--operator-token",
        operator_token.as_str(),
        "--log-format",
        "text",
    ])
    .map_err(|error| fail(error.to_string()))?
    .serve;
    crate::config::validate(&serve)?;

    println!("arp-host demo: a whole host on SQLite in {data_dir_text}");
    println!("compiling the default policy (cedar) ...");
    let server::Prepared { state, hub } = server::prepare(&serve).await?;
    let listener =
        tokio::net::TcpListener::bind(serve.listen)
            .await
            .map_err(crate::cli::io_error(format!(
                "cannot listen on {}",
                serve.listen
            )))?;
    let local = listener
        .local_addr()
        .map_err(crate::cli::io_error("cannot read the listening address"))?;
    let base = format!("http://{local}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_hub = hub.clone();
    let server = tokio::spawn(http::serve(listener, state, async move {
        let _ = stopped.await;
        server_hub.shutdown(server::SESSION_SHUTDOWN_GRACE).await;
    }));
    println!("listening on {base}");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = Admin {
        client: reqwest::Client::new(),
        base: base.clone(),
        operator: operator_token.clone(),
    };
    let outcome = script(&admin).await;
    let mut ok = match outcome {
        Ok(ok) => ok,
        Err(error) => {
            let _ = stop.send(());
            let _ = server.await;
            return Err(error);
        }
    };

    println!();
    println!("5. Look around while the server runs:");
    let host = "acme-assistant.agent";
    for (path, what) in [
        (
            format!("/.well-known/did.json?target={host}"),
            "the agent's DID document",
        ),
        (
            format!("/.well-known/agent-card.json?target={host}"),
            "its agent card (also arp.json, revocations.json)",
        ),
        (
            "/metrics".to_owned(),
            "Prometheus metrics (arp_pdp_latency_ms, ...)",
        ),
        (
            "/admin/v1/openapi.json".to_owned(),
            "the admin API's OpenAPI document",
        ),
        ("/health".to_owned(), "liveness (/ready checks the store)"),
    ] {
        println!("   {:<70} {what}", format!("{base}{path}"));
    }
    println!("   operator token of this run: {operator_token}");
    println!("   e.g. arp-host admin --url {base} --key {operator_token} tenant list");

    if args.once {
        println!();
        println!("--once: stopping the server");
    } else {
        println!();
        println!("serving until Ctrl-C ...");
        crate::cli::shutdown_signal().await;
    }
    let _ = stop.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            eprintln!("the server failed: {error}");
            ok = false;
        }
        Err(error) => {
            eprintln!("the server task failed: {error}");
            ok = false;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A tenant of the demo, once provisioned.
struct Tenant {
    id: &'static str,
    key: String,
    agent_did: String,
    agent_key: SigningKey,
    peer: Peer,
    connection: String,
}

impl Tenant {
    fn host(&self) -> &str {
        self.agent_did.trim_start_matches("did:web:")
    }
}

/// Steps 1 to 4. `Ok(false)` when something did not turn out as the narrative says.
async fn script(admin: &Admin) -> Result<bool, CliError> {
    let mut ok = true;
    println!();
    println!(
        "1. Provisioning through the admin API (/admin/v1, operator token generated for this run)"
    );
    let acme = admin.tenant("acme", "pro", 1, "scopes").await?;
    let scopes = admin.upload(&acme, SCOPES_POLICY).await?;
    admin.activate(&acme, &scopes).await?;
    println!(
        "   acme:    policy scopes uploaded and activated ({})",
        short(&scopes)
    );
    let globex = admin.tenant("globex", "team", 2, "cedar").await?;
    println!(
        "   globex:  keeps the default policy, cedar (the connection's Cedar policies decide)"
    );
    let mallory = admin.tenant("mallory", "free", 3, "spin").await?;
    let spin = admin.upload(&mallory, SPIN_POLICY).await?;
    admin.activate(&mallory, &spin).await?;
    println!(
        "   mallory: hostile policy spin (an endless loop) uploaded and activated ({})",
        short(&spin)
    );

    println!();
    println!("2. Messages from peers (signed envelopes, POST /didcomm)");
    let sends: [(&Tenant, &str, Value, &str); 5] = [
        (
            &acme,
            "calendar.availability.read",
            json!({"action": "calendar.availability.read", "context": {"spend_cap_cents": 2500}}),
            "allow",
        ),
        (
            &acme,
            "share_external",
            json!({"action": "share_external"}),
            "deny",
        ),
        (&globex, "text \"hello\"", json!({"text": "hello"}), "allow"),
        (
            &globex,
            "share_external",
            json!({"action": "share_external"}),
            "deny",
        ),
        (&mallory, "text \"hello\"", json!({"text": "hello"}), "deny"),
    ];
    for (n, (tenant, what, body, expected)) in sends.into_iter().enumerate() {
        let mut body = body;
        if let Some(object) = body.as_object_mut() {
            object.insert("connection_id".into(), json!(tenant.connection));
        }
        let envelope =
            tenant
                .peer
                .request(&format!("demo-{}-{n}", tenant.id), &tenant.agent_did, body)?;
        let answer = admin.didcomm(tenant.host(), envelope).await?;
        let decision = answer["decision"].as_str().unwrap_or("?");
        let reason = admin.last_reason(tenant).await.unwrap_or_default();
        let label = match (decision, tenant.id) {
            ("allow", _) => "ALLOWED",
            (_, "mallory") => "HOSTILE",
            _ => "DENIED ",
        };
        let detail = if decision == "allow" {
            format!(
                "allow, queued as {}",
                answer["messageId"].as_str().unwrap_or("?")
            )
        } else {
            format!(
                "deny ({}; audit reason: {reason})",
                answer["reason"].as_str().unwrap_or("?")
            )
        };
        println!("   {label} {:<8} {what} -> {detail}", tenant.id);
        if decision != expected {
            println!(
                "   UNEXPECTED: {} expected {expected}, got {answer}",
                tenant.id
            );
            ok = false;
        }
        if tenant.id == "mallory"
            && !(reason.starts_with("policy_out_of_fuel") || reason.starts_with("policy_timeout"))
        {
            println!("   UNEXPECTED: the hostile policy's deny has reason {reason:?}");
            ok = false;
        }
    }

    println!();
    println!("3. Delivery: the agents connect over WebSocket (GET /ws) and ack what they receive");
    for tenant in [&acme, &globex] {
        match receive(&admin.base, tenant).await {
            Ok(frames) if !frames.is_empty() => {
                for frame in frames {
                    println!(
                        "   DELIVERED to {}: inbound_message {} from {}, decision {}, obligations {}, policiesFired {}",
                        tenant.agent_did,
                        frame["msgId"].as_str().unwrap_or("?"),
                        short(frame["peerDid"].as_str().unwrap_or("?")),
                        frame["decision"],
                        frame["obligations"],
                        frame["policiesFired"],
                    );
                }
            }
            Ok(_) => {
                println!("   UNEXPECTED: {} received nothing", tenant.agent_did);
                ok = false;
            }
            Err(error) => {
                println!("   UNEXPECTED: {}: {error}", tenant.agent_did);
                ok = false;
            }
        }
    }

    println!();
    println!("4. Audit: every chain verified (GET /admin/v1/tenants/<id>/audit/verify)");
    let mut all_valid = true;
    for tenant in [&acme, &globex, &mallory] {
        let (status, body) = admin
            .call(
                reqwest::Method::GET,
                &format!("/admin/v1/tenants/{}/audit/verify", tenant.id),
                &tenant.key,
                None,
            )
            .await?;
        if status != 200 {
            return Err(fail(format!(
                "audit verify of {}: {status} {body}",
                tenant.id
            )));
        }
        for chain in body["chains"].as_array().into_iter().flatten() {
            let report = &chain["verify"];
            println!(
                "   {:<8} {} / {}: {}, {} {}",
                tenant.id,
                chain["agentDid"].as_str().unwrap_or("?"),
                chain["connectionId"].as_str().unwrap_or("?"),
                if report["valid"] == true {
                    "valid"
                } else {
                    "BROKEN"
                },
                report["entriesSeen"],
                if report["entriesSeen"] == 1 {
                    "entry"
                } else {
                    "entries"
                },
            );
        }
        all_valid &= body["valid"] == true;
    }
    if all_valid {
        println!("   VERIFIED: all audit chains are valid");
    } else {
        println!("   UNEXPECTED: a chain is broken");
        ok = false;
    }
    Ok(ok)
}

/// `sha256:0123456789ab…`, `did:key:z6Mk…`: enough to recognise.
fn short(text: &str) -> String {
    match text.char_indices().nth(20) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Connects as the tenant's agent, collects every `inbound_message` it was queued (the
/// `server_hello` says how many), acks each, and closes.
async fn receive(base: &str, tenant: &Tenant) -> Result<Vec<Value>, CliError> {
    let bearer = crate::delivery::bearer::sign_bearer(
        &tenant.agent_did,
        &tenant.agent_key,
        crate::clock::now_ms(),
    );
    let url = format!(
        "{}&token={bearer}",
        crate::agent_client::session_url(base, &tenant.agent_did)
            .map_err(|error| fail(error.to_string()))?
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|error| {
            fail(format!(
                "cannot open {}'s WebSocket: {error}",
                tenant.agent_did
            ))
        })?;
    let collect = async {
        let mut expected = None;
        let mut frames = Vec::new();
        while let Some(frame) = socket.next().await {
            let frame = frame.map_err(|error| fail(format!("WebSocket: {error}")))?;
            let Message::Text(text) = frame else { continue };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            match frame["kind"].as_str() {
                Some("server_hello") => {
                    let queued = frame["queuedCount"].as_u64().unwrap_or(0);
                    println!(
                        "   {} connected: server_hello, {queued} queued",
                        tenant.agent_did
                    );
                    expected = Some(queued);
                }
                Some("inbound_message") => {
                    let ack = json!({"kind": "ack", "messageId": frame["messageId"]});
                    socket
                        .send(Message::text(ack.to_string()))
                        .await
                        .map_err(|error| fail(format!("cannot ack: {error}")))?;
                    frames.push(frame);
                }
                _ => {}
            }
            if expected.is_some_and(|n| frames.len() as u64 >= n) {
                break;
            }
        }
        Ok::<_, CliError>(frames)
    };
    let frames = tokio::time::timeout(DELIVERY_WAIT, collect)
        .await
        .map_err(|_| {
            fail(format!(
                "{} received nothing within {DELIVERY_WAIT:?}",
                tenant.agent_did
            ))
        })??;
    let _ = socket.close(None).await;
    Ok(frames)
}

/// A peer that signs envelopes: a `did:key`, so it resolves without any network.
struct Peer {
    did: String,
    key: SigningKey,
}

impl Peer {
    fn new(seed: u8) -> Self {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let multibase = crate::did::encode_public_key_multibase(key.verifying_key().as_bytes());
        Self {
            did: format!("did:key:{multibase}"),
            key,
        }
    }

    /// A request envelope (JWS compact, EdDSA) from this peer to `to`, created now.
    fn request(&self, id: &str, to: &str, body: Value) -> Result<String, CliError> {
        let header = json!({
            "alg": "EdDSA",
            "typ": "application/didcomm-signed+json",
            "kid": format!("{}#key-1", self.did),
        });
        let created_time = crate::clock::now_ms() / 1000;
        let payload = json!({
            "id": id,
            "type": "https://didcomm.org/arp/1.0/request",
            "from": self.did,
            "to": [to],
            "created_time": created_time,
            "body": body,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature = self.key.sign(input.as_bytes());
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

/// The admin API and `POST /didcomm` of the demo's server.
struct Admin {
    client: reqwest::Client,
    base: String,
    operator: String,
}

impl Admin {
    /// One request; the status and the JSON body.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<(u16, Value), CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method, &url).bearer_auth(key);
        if let Some((bytes, content_type)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let response = request
            .send()
            .await
            .map_err(|error| fail(format!("{url}: {error}")))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|error| fail(format!("{url}: {error}")))?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// A JSON request that must answer `expect`.
    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Value,
        expect: u16,
    ) -> Result<Value, CliError> {
        let (status, answer) = self
            .call(
                method,
                path,
                key,
                Some((body.to_string().into_bytes(), "application/json")),
            )
            .await?;
        if status != expect {
            return Err(fail(format!("{path} answered {status}: {answer}")));
        }
        Ok(answer)
    }

    /// Creates the tenant (operator), its API key (operator), then with that key its
    /// agent `did:web:<id>-assistant.agent` and a connection to a `did:key` peer.
    async fn tenant(
        &self,
        id: &'static str,
        plan: &str,
        seed: u8,
        policy: &str,
    ) -> Result<Tenant, CliError> {
        use reqwest::Method;
        self.json(
            Method::POST,
            "/admin/v1/tenants",
            &self.operator,
            json!({"id": id, "plan": plan}),
            201,
        )
        .await?;
        let key = self
            .json(
                Method::POST,
                &format!("/admin/v1/tenants/{id}/keys"),
                &self.operator,
                json!({"label": "demo"}),
                201,
            )
            .await?["key"]
            .as_str()
            .ok_or_else(|| fail("the key answer has no key"))?
            .to_owned();
        let agent_did = format!("did:web:{id}-assistant.agent");
        let owner = format!("did:web:owner.{id}-assistant.agent");
        let agent = self
            .json(
                Method::POST,
                &format!("/admin/v1/tenants/{id}/agents"),
                &key,
                json!({"did": agent_did, "owner": owner, "name": format!("{id} assistant")}),
                201,
            )
            .await?;
        let seed_bytes: [u8; 32] = agent["secretKeyHex"]
            .as_str()
            .and_then(|hex_seed| hex::decode(hex_seed).ok())
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| fail("the agent answer has no secretKeyHex"))?;
        let peer = Peer::new(seed);
        let connection = format!("{id}-conn-1");
        // acme's scopes policy reads the scopes; globex's cedar reads the Cedar policies
        // (text messages only, with an obligation policy); mallory's never gets that far.
        let token = json!({
            "connection_id": connection,
            "issuer": owner,
            "subject": agent_did,
            "audience": peer.did,
            "purpose": "demo",
            "scopes": ["calendar.availability.read"],
            "cedar_policies": ["permit(principal, action == Action::\"relay_to_principal\", resource);"],
            "obligation_policies": [
                "@obligation(\"redact_fields\") @obligation_params(\"{\\\"fields\\\":[\\\"email\\\"]}\") permit(principal, action == Action::\"relay_to_principal\", resource);"
            ],
            "obligations": [],
        });
        self.json(
            Method::POST,
            &format!("/admin/v1/tenants/{id}/connections"),
            &key,
            json!({"token": token}),
            201,
        )
        .await?;
        println!(
            "   {id:<8} tenant (plan {plan}) with an API key; agent {agent_did}; connection {connection} to peer {}; policy {policy}",
            short(&peer.did)
        );
        Ok(Tenant {
            id,
            key,
            agent_did,
            agent_key: SigningKey::from_bytes(&seed_bytes),
            peer,
            connection,
        })
    }

    /// Uploads a component with the tenant's key; returns its digest.
    async fn upload(&self, tenant: &Tenant, component: &[u8]) -> Result<String, CliError> {
        let path = format!("/admin/v1/tenants/{}/policies", tenant.id);
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &path,
                &tenant.key,
                Some((component.to_vec(), "application/wasm")),
            )
            .await?;
        if status != 200 && status != 201 {
            return Err(fail(format!("{path} answered {status}: {body}")));
        }
        body["digest"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| fail(format!("{path}: no digest in {body}")))
    }

    /// Activates an uploaded version.
    async fn activate(&self, tenant: &Tenant, digest: &str) -> Result<(), CliError> {
        self.json(
            reqwest::Method::PUT,
            &format!("/admin/v1/tenants/{}/policies/active", tenant.id),
            &tenant.key,
            json!({"digest": digest}),
            200,
        )
        .await
        .map(drop)
    }

    /// Posts an envelope to the agent at `host`; the 202 answer.
    async fn didcomm(&self, host: &str, envelope: String) -> Result<Value, CliError> {
        let url = format!("{}/didcomm?target={host}", self.base);
        let response = self
            .client
            .post(&url)
            .body(envelope)
            .send()
            .await
            .map_err(|error| fail(format!("{url}: {error}")))?;
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .map_err(|error| fail(format!("{url}: {error}")))?;
        if status != 202 {
            return Err(fail(format!("POST {url} answered {status}: {body}")));
        }
        Ok(body)
    }

    /// The reason recorded in the last audit entry of the tenant's chain.
    async fn last_reason(&self, tenant: &Tenant) -> Result<String, CliError> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!(
                    "/admin/v1/tenants/{}/audit/chains/{}/{}",
                    tenant.id, tenant.agent_did, tenant.connection
                ),
                &tenant.key,
                None,
            )
            .await?;
        if status != 200 {
            return Err(fail(format!("audit chain of {}: {status}", tenant.id)));
        }
        Ok(body["entries"]
            .as_array()
            .and_then(|entries| entries.last())
            .and_then(|entry| entry["reason"].as_str())
            .unwrap_or("-")
            .to_owned())
    }
}
