//! `arp-loadgen`: a load generator for `POST /didcomm`.
//!
//! It provisions its own tenant in the server's store (one hosted agent, `--peers` did:key
//! peers, one connection each, and the chosen policy), signs every envelope before the
//! clock starts (unique ids, so no replay is refused), then sends them at `--rate` (or as
//! fast as the server answers) from `--concurrency` workers and reports decisions per
//! second and latency percentiles. Run it against a server started with the same
//! `--database-url`:
//!
//! ```text
//! arp-host serve --database-url postgres://postgres@127.0.0.1/arp &
//! arp-loadgen --url http://127.0.0.1:8787 --database-url postgres://postgres@127.0.0.1/arp \
//!     --policy scopes --concurrency 8 --count 20000
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use arp_host::pdp::digest_of;
use arp_host::provision;
use arp_host::store::{self, Connection, ConnectionStatus, Plan};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Parser, ValueEnum};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;

/// The `scopes` example policy, built by the build script.
const SCOPES_POLICY: &[u8] = include_bytes!(concat!(
    env!("ARP_POLICY_WASM_DIR"),
    "/arp_policy_scopes.wasm"
));

/// What every envelope asks: a scope the connection grants, with a context.
const SCOPE: &str = "calendar.availability.read";

/// Sends pre-signed, unique envelopes to `POST /didcomm` and reports throughput and
/// latency.
#[derive(Debug, Parser)]
#[command(name = "arp-loadgen", version)]
struct Args {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    url: String,
    /// The server's store, where the load's tenant, agent and connections are created.
    #[arg(long, env = "ARP_DATABASE_URL")]
    database_url: String,
    /// The tenant's policy: `scopes` (the example policy, uploaded as the tenant's active
    /// version) or `cedar` (the default policy, with a permit-all connection policy).
    #[arg(long, value_enum, default_value = "scopes")]
    policy: PolicyChoice,
    /// Envelopes to measure.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Envelopes sent first and not measured.
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Envelopes per second over all workers; 0 sends as fast as the server answers.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Distinct peers (one connection, hence one audit chain, each).
    #[arg(long, default_value_t = 8)]
    peers: usize,
    /// What to measure: `dispatch` (POST to 202) or `delivery` (POST to the
    /// `inbound_message` frame at the agent, connected over WebSocket and acking).
    #[arg(long, value_enum, default_value = "dispatch")]
    mode: Mode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Dispatch,
    Delivery,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PolicyChoice {
    Scopes,
    Cedar,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.peers == 0 {
        bail!("--concurrency and --peers must be at least 1");
    }
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let agent_did = format!("did:web:lg{run_id}.agent");
    let host = agent_did.trim_start_matches("did:web:").to_owned();
    let (agent_key, peers) = provision_tenant(&args, run_id, &agent_did).await?;

    eprintln!(
        "signing {} envelopes from {} peers ...",
        args.warmup + args.count,
        peers.len()
    );
    let envelopes = sign_all(&peers, &agent_did, run_id, args.warmup + args.count)?;
    let (warmup, measured) = envelopes.split_at(args.warmup);

    // reqwest is built without a default TLS provider (the did:web resolver brings its
    // own); install one so the client builds.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let endpoint = format!("{}/didcomm?target={host}", args.url.trim_end_matches('/'));
    let agent = match args.mode {
        Mode::Dispatch => None,
        Mode::Delivery => Some(Agent::connect(&args.url, &agent_did, &agent_key).await?),
    };
    if !warmup.is_empty() {
        eprintln!("warming up with {} envelopes ...", warmup.len());
        send(&client, &endpoint, warmup, args.concurrency, args.rate).await;
    }
    if let Some(agent) = &agent {
        agent.wait_for(args.warmup).await?;
    }
    eprintln!(
        "sending {} envelopes, concurrency {}, rate {} ...",
        measured.len(),
        args.concurrency,
        if args.rate == 0 {
            "unlimited".to_owned()
        } else {
            format!("{}/s", args.rate)
        }
    );
    let report = send(&client, &endpoint, measured, args.concurrency, args.rate).await;
    report.print(&args);
    if report.failed > 0 {
        bail!("{} requests failed", report.failed);
    }
    if let Some(agent) = agent {
        agent.wait_for(args.warmup + args.count).await?;
        agent.report(args.warmup, &report.sent_at);
    }
    Ok(())
}

/// The load's agent in delivery mode: connected over WebSocket, acking every frame, and
/// noting when each envelope (by its index in the run) arrived.
struct Agent {
    received: Arc<std::sync::Mutex<Vec<(usize, Instant)>>>,
}

impl Agent {
    async fn connect(url: &str, did: &str, key: &SigningKey) -> anyhow::Result<Self> {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;

        let bearer = arp_host::delivery::bearer::sign_bearer(did, key, arp_host::clock::now_ms());
        let url = format!(
            "{}&token={bearer}",
            arp_host::agent_client::session_url(url, did)?
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .context("cannot open the agent's WebSocket")?;
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                let at = Instant::now();
                let Message::Text(text) = frame else { continue };
                let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                if frame["kind"] != "inbound_message" {
                    continue;
                }
                let index = frame["msgId"]
                    .as_str()
                    .and_then(|id| id.rsplit('-').next())
                    .and_then(|n| n.parse::<usize>().ok());
                if let Some(index) = index {
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((index, at));
                }
                let ack = json!({"kind": "ack", "messageId": frame["messageId"]});
                if socket.send(Message::text(ack.to_string())).await.is_err() {
                    break;
                }
            }
        });
        Ok(Self { received })
    }

    fn count(&self) -> usize {
        self.received.lock().map_or(0, |received| received.len())
    }

    /// Waits until `count` frames arrived (30 s without progress is a failure).
    async fn wait_for(&self, count: usize) -> anyhow::Result<()> {
        let mut last = (self.count(), Instant::now());
        while self.count() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = self.count();
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(30) {
                bail!("only {now} of {count} messages reached the agent");
            }
        }
        Ok(())
    }

    /// Prints POST-to-frame percentiles of the measured envelopes (indices from `first`).
    fn report(&self, first: usize, sent_at: &[Instant]) {
        let received = self.received.lock().map(|r| r.clone()).unwrap_or_default();
        let mut latencies: Vec<Duration> = received
            .iter()
            .filter_map(|(index, at)| {
                let sent = sent_at.get(index.checked_sub(first)?)?;
                Some(at.saturating_duration_since(*sent))
            })
            .collect();
        latencies.sort_unstable();
        let percentile = |p: f64| {
            let rank =
                ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len().max(1));
            latencies
                .get(rank - 1)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "delivery: {} frames; POST-to-frame p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            latencies.len(),
            percentile(0.50),
            percentile(0.95),
            percentile(0.99),
        );
    }
}

/// Creates the load's tenant (plan `internal`: no quota), agent, peers and connections,
/// and activates the chosen policy. Returns the agent's key and the peers' keys.
async fn provision_tenant(
    args: &Args,
    run_id: u128,
    agent_did: &str,
) -> anyhow::Result<(SigningKey, Vec<(String, SigningKey)>)> {
    let store = store::open(&args.database_url)
        .await
        .context("cannot open the store")?;
    let scope = store
        .create_tenant(&format!("loadgen-{run_id}"), Plan::Internal)
        .await?;
    let agent = provision::new_agent(agent_did, "did:web:owner.example", None, None)?;
    store.create_agent(&scope, &agent.agent).await?;
    let agent_key = SigningKey::from_bytes(
        &agent
            .secret_seed
            .context("a generated agent has its secret key")?,
    );
    if args.policy == PolicyChoice::Scopes {
        let digest = digest_of(SCOPES_POLICY);
        store
            .put_policy_version(&scope, &digest, SCOPES_POLICY)
            .await?;
        store.activate_policy(&scope, &digest).await?;
    }
    let mut peers = Vec::with_capacity(args.peers);
    for n in 0..args.peers {
        let mut seed = [0u8; 32];
        seed[..16].copy_from_slice(&run_id.to_le_bytes());
        seed[16..24].copy_from_slice(&(n as u64).to_le_bytes());
        let key = SigningKey::from_bytes(&seed);
        let did = format!(
            "did:key:{}",
            arp_host::did::encode_public_key_multibase(key.verifying_key().as_bytes())
        );
        let connection_id = format!("lg-{run_id}-{n}");
        store
            .create_connection(
                &scope,
                &Connection {
                    connection_id: connection_id.clone(),
                    agent_did: agent_did.to_owned(),
                    peer_did: did.clone(),
                    status: ConnectionStatus::Active,
                    token_json: json!({
                        "connection_id": connection_id,
                        "issuer": "did:web:owner.example",
                        "scopes": [SCOPE],
                    }),
                    cedar_policies: vec!["permit(principal, action, resource);".to_owned()],
                    obligations: Vec::new(),
                    expires_at_ms: None,
                },
            )
            .await?;
        peers.push((did, key));
    }
    Ok((agent_key, peers))
}

/// Every envelope of the run, round-robin over the peers.
fn sign_all(
    peers: &[(String, SigningKey)],
    agent_did: &str,
    run_id: u128,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let created_time = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    Ok((0..count)
        .map(|n| {
            let (did, key) = &peers[n % peers.len()];
            let header = json!({
                "alg": "EdDSA",
                "typ": "application/didcomm-signed+json",
                "kid": format!("{did}#key-1"),
            });
            let payload = json!({
                "id": format!("lg-{run_id}-{n}"),
                "type": "https://didcomm.org/arp/1.0/request",
                "from": did,
                "to": [agent_did],
                "created_time": created_time,
                "body": {"action": SCOPE, "context": {"spend_cap_cents": 500}},
            });
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(payload.to_string())
            );
            let signature = key.sign(input.as_bytes());
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
        })
        .collect())
}

/// What one run measured.
struct Report {
    /// When each envelope was due (or sent), by index.
    sent_at: Vec<Instant>,
    allowed: usize,
    denied: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank =
            ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1].as_secs_f64() * 1000.0
    }

    fn print(&self, args: &Args) {
        let total = self.allowed + self.denied + self.failed;
        println!(
            "policy {:?}, concurrency {}, rate {}: {} requests in {:.2} s = {:.0} decisions/s \
             ({} allowed, {} denied, {} failed); latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            args.policy,
            args.concurrency,
            if args.rate == 0 {
                "max".to_owned()
            } else {
                args.rate.to_string()
            },
            total,
            self.elapsed.as_secs_f64(),
            total as f64 / self.elapsed.as_secs_f64(),
            self.allowed,
            self.denied,
            self.failed,
            self.percentile(0.50),
            self.percentile(0.95),
            self.percentile(0.99),
        );
    }
}

/// Sends `envelopes` from `concurrency` workers, at most `rate` per second in total
/// (0: no limit). A request counts as failed unless answered 202.
async fn send(
    client: &reqwest::Client,
    endpoint: &str,
    envelopes: &[String],
    concurrency: usize,
    rate: u64,
) -> Report {
    let envelopes: Arc<Vec<String>> = Arc::new(envelopes.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, endpoint) = (client.clone(), endpoint.to_owned());
            let (envelopes, next) = (envelopes.clone(), next.clone());
            tokio::spawn(async move {
                let mut measured = Vec::new();
                let mut sent_at = Vec::new();
                let (mut allowed, mut denied, mut failed) = (0, 0, 0);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(envelope) = envelopes.get(n) else {
                        break;
                    };
                    // Open-loop pacing: envelope n is due at n × interval, and its latency
                    // counts from then, so a server that falls behind is not flattered by
                    // the requests it delayed (coordinated omission).
                    let sent = match interval {
                        Some(interval) => {
                            let due = started + interval * n as u32;
                            tokio::time::sleep_until(due.into()).await;
                            due
                        }
                        None => Instant::now(),
                    };
                    let answer = client.post(&endpoint).body(envelope.clone()).send().await;
                    let decision = match answer {
                        Ok(response) if response.status().as_u16() == 202 => response
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|body| body["decision"].as_str().map(str::to_owned)),
                        Ok(response) => {
                            eprintln!(
                                "HTTP {}: {}",
                                response.status(),
                                response.text().await.unwrap_or_default()
                            );
                            None
                        }
                        Err(error) => {
                            eprintln!("request failed: {error}");
                            None
                        }
                    };
                    measured.push(sent.elapsed());
                    sent_at.push((n, sent));
                    match decision.as_deref() {
                        Some("allow") => allowed += 1,
                        Some(_) => denied += 1,
                        None => failed += 1,
                    }
                }
                (measured, sent_at, allowed, denied, failed)
            })
        })
        .collect();
    let mut report = Report {
        sent_at: vec![started; envelopes.len()],
        allowed: 0,
        denied: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(envelopes.len()),
    };
    for worker in workers {
        match worker.await {
            Ok((measured, sent_at, allowed, denied, failed)) => {
                report.latencies.extend(measured);
                for (n, sent) in sent_at {
                    report.sent_at[n] = sent;
                }
                report.allowed += allowed;
                report.denied += denied;
                report.failed += failed;
            }
            Err(_) => report.failed += 1,
        }
    }
    report.elapsed = started.elapsed();
    report.latencies.sort_unstable();
    report
}
