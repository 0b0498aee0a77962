//! Every command of the `arp-host` binary: argument parsing and what each command prints.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use crate::agent_client;
use crate::audit;
use crate::http;
use crate::logging::{self, LogFormat};
use crate::pdp::{
    self, AdmissionError, AdmissionLimits, CompiledPolicy, EngineConfig, Entity, PolicyEngine,
    PolicyLimits, PolicyRequest,
};
use crate::provision;
use crate::runner::{self, CaseFileError};
use crate::server;
use crate::store::{self, Store};

/// Hosts ARP agents for many tenants. Tenant policies run as sandboxed WebAssembly
/// components; the `policy` commands run them locally on the same engine as the server.
#[derive(Debug, Parser)]
#[command(name = "arp-host", version, propagate_version = true)]
pub struct Cli {
    /// The configuration file (TOML; keys are the `serve` flag names). Default:
    /// ./arp-host.toml when it exists. Precedence: flag > environment > file > default.
    #[arg(long, global = true, env = "ARP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server. With no flags it listens on 127.0.0.1:8787 and keeps its data in
    /// ./arp-data (created if missing).
    Serve(ServeArgs),
    /// Check the configuration: print the effective settings of `serve` (flags,
    /// environment, configuration file, defaults) with secrets redacted, and refuse values
    /// `serve` would refuse.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Start a server on a temporary SQLite store, provision three tenants through the
    /// admin API, send allowed, denied and hostile-policy messages, deliver them to the
    /// agents over WebSocket, verify the audit chains, and print what happened and where
    /// to look. Keeps the server running until Ctrl-C (`--once`: exit instead).
    Demo(crate::demo::DemoArgs),
    /// Check, test and benchmark policy components locally (the same engine as the server).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check and export audit hash chains (ARP-PROTOCOL §3).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Create the store's tables, or bring them up to date (also done by `serve`).
    Migrate(StoreArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage hosted agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Manage connections between hosted agents and their peers.
    #[command(subcommand)]
    Connection(ConnectionCommand),
    /// The admin API of a running server over HTTP (tenants, keys, agents, connections,
    /// audit, usage), with the operator token or a tenant API key.
    Admin(crate::admin_client::AdminArgs),
}

/// `arp-host config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective settings of `serve` as TOML (operator token and database
    /// password redacted); exit 2 with the reason if `serve` would refuse them.
    Check(ServeArgs),
}

/// Where the store is: `--database-url`, else SQLite in `--data-dir`.
#[derive(Clone, Debug, Args)]
pub struct StoreArgs {
    /// Directory for the server's data: the embedded SQLite store and the compiled policy
    /// cache. Created if missing.
    #[arg(long, env = "ARP_DATA_DIR", default_value = "arp-data")]
    pub data_dir: PathBuf,
    /// The store: `postgres://user@host/db` for Postgres (production, several hosts), or
    /// `sqlite:<file>`. Default: SQLite at `<data-dir>/arp-host.sqlite3`.
    #[arg(long, env = "ARP_DATABASE_URL")]
    pub database_url: Option<String>,
}

impl StoreArgs {
    /// The location handed to [`store::open`].
    pub fn location(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            self.data_dir
                .join(store::sqlite::DEFAULT_FILE_NAME)
                .display()
                .to_string()
        })
    }

    /// Opens (and migrates) the store.
    pub async fn open(&self) -> Result<Arc<dyn Store>, CliError> {
        let location = self.location();
        store::open(&location)
            .await
            .map_err(|source| CliError::Store {
                what: format!("cannot open the store at {}", redact(&location)),
                source,
            })
    }
}

/// A database URL without its password, for messages.
fn redact(location: &str) -> String {
    match (location.find("://"), location.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &location[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => {
                    format!("{}{user}:***{}", &location[..scheme + 3], &location[at..])
                }
                None => location.to_owned(),
            }
        }
        _ => location.to_owned(),
    }
}

/// `arp-host tenant ...`
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant. Prints its id.
    Create {
        /// The tenant id (letters, digits, `-`, `_`, `.`).
        id: String,
        /// Its plan: `free` (1000 inbound messages a month), `pro` (10000), `team` or
        /// `internal` (unlimited).
        #[arg(long, default_value = "free")]
        plan: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// What describes a new hosted agent (`agent create`, and `admin agent create` over HTTP).
#[derive(Debug, Args)]
pub struct NewAgentArgs {
    /// The tenant the agent belongs to.
    #[arg(long)]
    pub tenant: String,
    /// The agent's DID: `did:web:<name>.agent`.
    #[arg(long)]
    pub did: String,
    /// DID of the agent's owner (the principal it represents).
    #[arg(long)]
    pub owner: String,
    /// Display name in the agent card (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Use this existing public key (`z6Mk...`) instead of generating one.
    #[arg(long)]
    pub public_key_multibase: Option<String>,
}

/// `arp-host agent ...`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Host a new agent: generates its Ed25519 key (unless --public-key-multibase is
    /// given) and stores its DID document, agent card and arp.json, which the server then
    /// serves under /.well-known/ for the agent's host.
    ///
    /// The generated secret key is written to --key-out (mode 0600), or printed once when
    /// no file is given: the agent needs it to sign envelopes and open its WebSocket.
    Create {
        #[command(flatten)]
        agent: NewAgentArgs,
        /// Write the generated secret key (hex seed) to this file.
        #[arg(long)]
        key_out: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Connect as the agent to a running host's WebSocket (GET /ws), print every frame
    /// it sends as one JSON line on stdout, ack each inbound_message, and reconnect with
    /// backoff (1 s doubling to 30 s) when the connection drops. For operators and tests.
    Connect {
        /// The host's base URL (http:// or ws://).
        #[arg(long, default_value = "http://127.0.0.1:8787")]
        url: String,
        /// The agent's DID.
        #[arg(long)]
        did: String,
        /// File holding the agent's secret key (the hex seed of `agent create --key-out`).
        #[arg(long)]
        key: PathBuf,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Do not ack: messages stay queued and are delivered again.
        #[arg(long)]
        no_ack: bool,
    },
}

/// `arp-host connection ...`
#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// Store a connection from its connection token (JSON: connection_id, issuer, subject,
    /// audience, cedar_policies, obligations, optional purpose, scopes,
    /// obligation_policies and expires / expires_at_ms). The hosted side is --agent, or
    /// whichever of subject and audience the tenant hosts.
    Create {
        /// The tenant the hosted agent belongs to.
        #[arg(long)]
        tenant: String,
        /// The connection token file (JSON).
        #[arg(long)]
        token: PathBuf,
        /// The hosted agent's DID, when both sides are hosted by the tenant.
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `arp-host serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port (printed at start).
    #[arg(long, env = "ARP_LISTEN", default_value = "127.0.0.1:8787")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    /// How far an envelope's created_time may be from this host's clock, in seconds.
    #[arg(long, env = "ARP_CLOCK_WINDOW_SECS", default_value_t = 300)]
    pub clock_window_secs: u64,
    /// Largest accepted request body, in bytes (larger ones get 413).
    #[arg(long, env = "ARP_BODY_LIMIT", default_value_t = http::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Log format on stderr: `json` (one object per line: level, time, msg, fields) or
    /// `text`. The level filter is RUST_LOG (default `info`).
    #[arg(long, env = "ARP_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Also log every metric sample (`metric: "arp.pdp_latency_ms"`, ...) for hosts that
    /// build metrics from log drains.
    #[arg(long, env = "ARP_METRICS_LOG_SAMPLES")]
    pub metrics_log_samples: bool,
    /// Timeout of a did:web document fetch, in milliseconds.
    #[arg(long, env = "ARP_DID_WEB_TIMEOUT_MS", default_value_t = 5000)]
    pub did_web_timeout_ms: u64,
    /// Send every did:web fetch to this address instead of the DID's host (private
    /// deployments and tests; TLS still checks the DID's host name).
    #[arg(long, env = "ARP_DID_WEB_CONNECT_TO")]
    pub did_web_connect_to: Option<std::net::SocketAddr>,
    /// Also trust this PEM CA certificate for did:web fetches.
    #[arg(long, env = "ARP_DID_WEB_CA_FILE")]
    pub did_web_ca_file: Option<PathBuf>,
    /// A push not acked within this many milliseconds is sent again.
    #[arg(long, env = "ARP_ACK_TIMEOUT_MS", default_value_t = 30_000)]
    pub ack_timeout_ms: u64,
    /// WebSocket ping interval in milliseconds; a peer silent for two is dropped.
    #[arg(long, env = "ARP_PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,
    /// How long a queued message stays deliverable, in seconds (then it is expired).
    #[arg(long, env = "ARP_MESSAGE_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub message_ttl_secs: u64,
    /// How often queued messages past their expiry are marked expired, in seconds.
    #[arg(long, env = "ARP_EXPIRY_INTERVAL_SECS", default_value_t = 60)]
    pub expiry_interval_secs: u64,
    /// How often a connected agent's queue is rescanned without a signal, in
    /// milliseconds: a safety net for lost signals between hosts.
    #[arg(long, env = "ARP_RESCAN_INTERVAL_MS", default_value_t = 5_000)]
    pub rescan_interval_ms: u64,
    /// Check bearers against this fixed time (epoch ms) instead of the clock: for tests
    /// that replay recorded bearers.
    #[arg(long, hide = true)]
    pub bearer_clock_ms: Option<i64>,
    /// The operator token of the admin API (`/admin/v1`: tenants, API keys, plans,
    /// limits). Without it, only tenant API keys work (and none can be created).
    #[arg(long, env = "ARP_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
}

/// `arp-host policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run admission on a component, then one probe decision under the default limits.
    ///
    /// Prints the digest and world, or why the component is refused; then what the
    /// probe decided, or why it failed (out of fuel, timeout, memory, trap, output).
    /// Exits 0 when both pass, 1 when the probe fails, 2 when admission refuses.
    Check {
        /// The policy component (`.wasm`).
        file: PathBuf,
    },
    /// Run test cases against a policy and print pass/fail per case.
    ///
    /// CASES is JSON or YAML: a list of `{name, request, expect}` (or `{cases: [...]}`),
    /// where `expect` has `effect` and optionally `policies_fired` (compared as a set),
    /// `obligations`, `reasons` and `max_fuel`. The golden `pdp-cases.json` schema is read
    /// as well: its `policies` become the connection's `cedar_policies`. Exits 1 if any
    /// case fails.
    Test {
        /// The policy component (`.wasm`).
        file: PathBuf,
        /// The case file (JSON or YAML).
        cases: PathBuf,
        /// Limits for every decision.
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Measure decision latency (p50/p95/p99), decisions/s and fuel per decision.
    ///
    /// Every decision runs in a fresh instance, exactly as on the server, on one thread.
    Bench {
        /// The policy component (`.wasm`).
        file: PathBuf,
        /// The case file (JSON or YAML); cases run round-robin.
        cases: PathBuf,
        /// Decisions to measure.
        #[arg(long, default_value_t = 5000)]
        iterations: usize,
        /// Decisions to run before measuring.
        #[arg(long, default_value_t = 500)]
        warmup: usize,
        /// Limits for every decision.
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Upload a component to a running server's admin API (`--url`, `--key`, `--tenant`).
    Push(RemotePolicyArgs),
    /// Activate an uploaded version on a running server (rollback: an earlier digest).
    Activate(RemotePolicyArgs),
    /// List a tenant's versions on a running server, and the active one.
    List(RemotePolicyArgs),
}

/// `policy push|activate|list`: which server, who, which tenant, and the verb's input.
#[derive(Debug, Args)]
pub struct RemotePolicyArgs {
    #[command(flatten)]
    pub remote: crate::admin_client::Remote,
    /// The tenant whose policies these are.
    #[arg(long, env = "ARP_TENANT")]
    pub tenant: String,
    /// push: the component (`.wasm`); activate: the digest; list: nothing.
    pub target: Option<String>,
    /// push: a case file (JSON or YAML) the server runs before accepting the upload.
    #[arg(long)]
    pub cases: Option<PathBuf>,
}

/// `arp-host audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify an audit log file exactly as the reference verifier does.
    ///
    /// FILE is the JSONL form: one entry per line, each with `seq`, `timestamp`, `msg_id`,
    /// `decision`, `policies_fired`, `obligations`, `spend_delta_cents`, `reason`,
    /// `prev_hash` and `self_hash`. From the first entry on, each must have seq equal to its
    /// position, prev_hash equal to the previous self_hash (`sha256:` and 64 zeros for the
    /// first), and self_hash equal to sha256 of the RFC 8785 (JCS) form of its nine hashed
    /// fields. Empty lines are skipped and positions count non-empty lines from 0.
    ///
    /// Prints `valid, N entries` and exits 0; or prints the first break (`broken at seq N:
    /// <reason>`, or the parse error) and exits 1. Exits 2 when FILE cannot be read.
    #[command(name = "verify-file")]
    VerifyFile {
        /// The audit log (`.jsonl`).
        file: PathBuf,
    },
    /// Verify chains read from the store: one chain (--agent and --connection), or every
    /// chain of the tenant. Prints one line per chain; exits 1 if any chain is broken.
    Verify {
        #[command(flatten)]
        chain: ChainArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Export one chain as JSONL in the reference file form (verifiable with
    /// `audit verify-file` and the reference verifier).
    Export {
        #[command(flatten)]
        chain: ChainArgs,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Which audit chains: one per (tenant, agent, connection).
#[derive(Debug, Args)]
pub struct ChainArgs {
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// The hosted agent's DID (with --connection: one chain).
    #[arg(long, requires = "connection")]
    pub agent: Option<String>,
    /// The connection id.
    #[arg(long, requires = "agent")]
    pub connection: Option<String>,
}

/// Per-decision limits, defaulting to the server's defaults.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Fuel per decision.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Wall-clock deadline per decision, in milliseconds.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Linear memory limit, in MiB.
    #[arg(long)]
    pub memory_mib: Option<usize>,
    /// Output size limit, in KiB.
    #[arg(long)]
    pub output_kib: Option<usize>,
}

impl LimitArgs {
    fn limits(&self) -> PolicyLimits {
        let defaults = PolicyLimits::default();
        PolicyLimits {
            fuel: self.fuel.unwrap_or(defaults.fuel),
            deadline_ms: self.deadline_ms.unwrap_or(defaults.deadline_ms),
            memory_bytes: self.memory_mib.map_or(defaults.memory_bytes, |m| m << 20),
            output_bytes: self.output_kib.map_or(defaults.output_bytes, |k| k << 10),
            ..defaults
        }
    }
}

/// Errors that end a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The engine could not start.
    #[error("{0}")]
    Engine(#[from] pdp::engine::EngineError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The policy was refused at admission.
    #[error("{path} refused ({code}): {source}", code = source.code())]
    Refused {
        /// The file.
        path: String,
        /// Why.
        source: AdmissionError,
    },
    /// An I/O operation of the server failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The case file is unusable.
    #[error("{0}")]
    Cases(#[from] CaseFileError),
    /// A store operation failed.
    #[error("{what}: {source}")]
    Store {
        /// What was attempted.
        what: String,
        /// Why it failed.
        source: store::StoreError,
    },
    /// The input is unusable.
    #[error("{0}")]
    Invalid(String),
}

impl CliError {
    /// 2 for every error: bad input, not a failed test.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(2)
    }
}

/// Parses the process's command line, with the configuration file's values as the
/// defaults of the flags they name (see [`crate::config`]). Exits with clap's message on
/// a bad command line, `--help` or `--version`.
pub fn parse() -> Result<Cli, CliError> {
    parse_from(std::env::args_os().collect())
}

/// [`parse`] for a given command line (the first item is the program name).
pub fn parse_from(args: Vec<std::ffi::OsString>) -> Result<Cli, CliError> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let loaded =
        crate::config::load(&args).map_err(|error| CliError::Invalid(error.to_string()))?;
    let mut command = Cli::command();
    if let Some(loaded) = &loaded {
        command = crate::config::apply_defaults(command, &loaded.config.defaults());
    }
    let matches = command
        .try_get_matches_from(args)
        .unwrap_or_else(|error| error.exit());
    Cli::from_arg_matches(&matches).map_err(|error| CliError::Invalid(error.to_string()))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Config(ConfigCommand::Check(args)) => {
            let source = crate::config::locate(&std::env::args_os().collect::<Vec<_>>());
            match &source {
                Some((path, _)) => println!("# configuration file: {}", path.display()),
                None => println!("# no configuration file (./arp-host.toml does not exist)"),
            }
            println!("# precedence: flag > environment (ARP_*) > file > default");
            print!("{}", crate::config::render(&args));
            crate::config::validate(&args)?;
            println!("# ok: serve would start with these settings");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => crate::demo::run(args),
        Command::Policy(command) => run_policy(command),
        Command::Serve(args) => run_serve(args),
        Command::Audit(command) => run_audit(command),
        Command::Migrate(store) => block_on(async {
            let opened = store.open().await?;
            println!("migrations applied ({})", opened.backend());
            Ok(ExitCode::SUCCESS)
        }),
        Command::Tenant(command) => block_on(run_tenant(command)),
        Command::Agent(command) => block_on(run_agent(command)),
        Command::Connection(command) => block_on(run_connection(command)),
        Command::Admin(args) => crate::admin_client::run_admin(args),
    }
}

/// Runs a store command on a small runtime.
fn block_on(
    command: impl Future<Output = Result<ExitCode, CliError>>,
) -> Result<ExitCode, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("cannot start the runtime"))?
        .block_on(command)
}

fn store_error(what: impl Into<String>) -> impl FnOnce(store::StoreError) -> CliError {
    let what = what.into();
    move |source| CliError::Store { what, source }
}

async fn run_tenant(command: TenantCommand) -> Result<ExitCode, CliError> {
    match command {
        TenantCommand::Create { id, plan, store } => {
            let plan = store::Plan::parse(&plan).ok_or_else(|| {
                CliError::Invalid(format!(
                    "unknown plan {plan:?}: use free, pro, team or internal"
                ))
            })?;
            let valid = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                return Err(CliError::Invalid(format!(
                    "tenant id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
                )));
            }
            let opened = store.open().await?;
            opened
                .create_tenant(&id, plan)
                .await
                .map_err(store_error(format!("cannot create tenant {id}")))?;
            println!("created tenant {id} (plan {})", plan.as_str());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_agent(command: AgentCommand) -> Result<ExitCode, CliError> {
    match command {
        AgentCommand::Connect {
            url,
            did,
            key,
            count,
            no_ack,
        } => {
            let seed = std::fs::read_to_string(&key).map_err(|source| CliError::Read {
                path: key.display().to_string(),
                source,
            })?;
            let seed: [u8; 32] = hex::decode(seed.trim())
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| {
                    CliError::Invalid(format!(
                        "{} does not hold a 32-byte hex seed",
                        key.display()
                    ))
                })?;
            let options = agent_client::ClientOptions {
                url,
                did,
                key: ed25519_dalek::SigningKey::from_bytes(&seed),
                count,
                ack: !no_ack,
            };
            agent_client::run(options)
                .await
                .map_err(|error| CliError::Invalid(error.to_string()))?;
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Create {
            agent:
                NewAgentArgs {
                    tenant,
                    did,
                    owner,
                    name,
                    public_key_multibase,
                },
            key_out,
            store,
        } => {
            let new = provision::new_agent(
                &did,
                &owner,
                name.as_deref(),
                public_key_multibase.as_deref(),
            )
            .map_err(|error| CliError::Invalid(error.to_string()))?;
            let opened = store.open().await?;
            let scope = opened
                .tenant_scope(&tenant)
                .await
                .map_err(store_error(format!("no tenant {tenant}")))?;
            opened
                .create_agent(&scope, &new.agent)
                .await
                .map_err(store_error(format!("cannot create agent {did}")))?;
            println!("created agent {did} in tenant {tenant}");
            println!("  publicKeyMultibase: {}", new.agent.public_key_multibase);
            if let Some(seed) = new.secret_seed {
                let seed = hex::encode(seed);
                match key_out {
                    Some(path) => {
                        write_secret(&path, &seed)?;
                        println!("  secret key (hex seed) written to {}", path.display());
                    }
                    None => {
                        println!("  secret key (hex seed): {seed}");
                        eprintln!(
                            "keep the secret key: it is not stored and cannot be shown again"
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes a secret readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> Result<(), CliError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(io_error(format!("cannot create {}", path.display())))?;
    writeln!(file, "{secret}").map_err(io_error(format!("cannot write {}", path.display())))
}

async fn run_connection(command: ConnectionCommand) -> Result<ExitCode, CliError> {
    match command {
        ConnectionCommand::Create {
            tenant,
            token,
            agent,
            store,
        } => {
            let text = std::fs::read_to_string(&token).map_err(|source| CliError::Read {
                path: token.display().to_string(),
                source,
            })?;
            let token_json: serde_json::Value = serde_json::from_str(&text).map_err(|error| {
                CliError::Invalid(format!("{} is not JSON: {error}", token.display()))
            })?;
            let opened = store.open().await?;
            let scope = opened
                .tenant_scope(&tenant)
                .await
                .map_err(store_error(format!("no tenant {tenant}")))?;
            let mut hosted = Vec::new();
            for side in ["subject", "audience"] {
                if let Some(did) = token_json.get(side).and_then(serde_json::Value::as_str)
                    && opened.agent(&scope, did).await.is_ok()
                {
                    hosted.push(did.to_owned());
                }
            }
            let connection =
                provision::connection_from_token(token_json, agent.as_deref(), |did| {
                    hosted.iter().any(|h| h == did)
                })
                .map_err(|error| CliError::Invalid(error.to_string()))?;
            opened
                .agent(&scope, &connection.agent_did)
                .await
                .map_err(store_error(format!(
                    "tenant {tenant} does not host {}",
                    connection.agent_did
                )))?;
            opened
                .create_connection(&scope, &connection)
                .await
                .map_err(store_error(format!(
                    "cannot create connection {}",
                    connection.connection_id
                )))?;
            println!(
                "created connection {} between {} (hosted) and {}",
                connection.connection_id, connection.agent_did, connection.peer_did
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_serve(args: ServeArgs) -> Result<ExitCode, CliError> {
    crate::config::validate(&args)?;
    logging::init(
        args.log_format,
        &std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    )
    .map_err(|error| CliError::Invalid(error.to_string()))?;
    let runtime = tokio::runtime::Runtime::new().map_err(io_error("cannot start the runtime"))?;
    runtime.block_on(async {
        let server::Prepared { state, hub } = server::prepare(&args).await?;
        let backend = state.store.backend();
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(io_error(format!("cannot listen on {}", args.listen)))?;
        let local = listener
            .local_addr()
            .map_err(io_error("cannot read the listening address"))?;
        tracing::info!(address = %local, store = backend, "listening");
        println!("listening on http://{local}");
        let _ = std::io::stdout().flush();
        let shutdown = async move {
            shutdown_signal().await;
            tracing::info!("shutting down: closing agent sessions");
            hub.shutdown(server::SESSION_SHUTDOWN_GRACE).await;
        };
        http::serve(listener, state, shutdown)
            .await
            .map_err(io_error(format!("the server on {local} failed")))
    })?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Io { what, source }
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn run_remote_policy(command: PolicyCommand) -> Result<ExitCode, CliError> {
    use crate::admin_client::{RemotePolicyVerb, run_remote_policy as run};
    let missing = |what: &str| CliError::Invalid(format!("give the {what}"));
    match command {
        PolicyCommand::Push(args) => {
            let file = args.target.ok_or_else(|| missing("component file"))?;
            let verb = RemotePolicyVerb::Push {
                file: PathBuf::from(file),
                cases: args.cases,
            };
            run(&args.remote, &args.tenant, verb)
        }
        PolicyCommand::Activate(args) => {
            let digest = args.target.ok_or_else(|| missing("digest"))?;
            run(
                &args.remote,
                &args.tenant,
                RemotePolicyVerb::Activate { digest },
            )
        }
        PolicyCommand::List(args) => run(&args.remote, &args.tenant, RemotePolicyVerb::List),
        _ => Err(CliError::Invalid("not a remote policy command".into())),
    }
}

fn run_policy(command: PolicyCommand) -> Result<ExitCode, CliError> {
    if matches!(
        command,
        PolicyCommand::Push(_) | PolicyCommand::Activate(_) | PolicyCommand::List(_)
    ) {
        return run_remote_policy(command);
    }
    // Only the local commands need an engine.
    let engine = Arc::new(PolicyEngine::new(EngineConfig::default())?);
    match command {
        PolicyCommand::Check { file } => {
            let policy = load_policy(&engine, &file)?;
            println!("accepted {}", file.display());
            println!("  digest: {}", policy.digest);
            println!(
                "  world:  {}@{}",
                pdp::bindings::WORLD_PACKAGE,
                pdp::bindings::WORLD_VERSION
            );
            let probe =
                engine.evaluate(&policy, &PolicyLimits::default(), &probe_request().to_wit());
            match &probe.failure {
                None => {
                    println!(
                        "  probe:  {} (reasons {:?}, fuel {})",
                        probe.effect.as_str(),
                        probe.reasons,
                        probe.fuel_used
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some(failure) => {
                    println!(
                        "  probe:  FAILED {}: {} (fuel {})",
                        failure.code(),
                        failure.detail().unwrap_or("no detail"),
                        probe.fuel_used
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PolicyCommand::Test {
            file,
            cases,
            limits,
        } => {
            let cases = runner::load_cases(&cases)?;
            let policy = load_policy(&engine, &file)?;
            let outcomes = runner::run_cases(&engine, &policy, &limits.limits(), &cases);
            print!("{}", runner::render_outcomes(&outcomes));
            Ok(if outcomes.iter().all(runner::CaseOutcome::passed) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolicyCommand::Bench {
            file,
            cases,
            iterations,
            warmup,
            limits,
        } => {
            let cases = runner::load_cases(&cases)?;
            let policy = load_policy(&engine, &file)?;
            eprintln!("running {warmup} warm-up and {iterations} measured decisions ...");
            let report = runner::bench(
                &engine,
                &policy,
                &limits.limits(),
                &cases,
                warmup,
                iterations,
            );
            println!(
                "{} decisions over {} cases: p50 {:.1} µs, p95 {:.1} µs, p99 {:.1} µs, {:.0} decisions/s, {} fuel/decision",
                report.decisions,
                cases.len(),
                report.p50_us,
                report.p95_us,
                report.p99_us,
                report.per_second,
                report.mean_fuel
            );
            Ok(ExitCode::SUCCESS)
        }
        remote @ (PolicyCommand::Push(_) | PolicyCommand::Activate(_) | PolicyCommand::List(_)) => {
            run_remote_policy(remote)
        }
    }
}

/// A minimal request any policy must survive: a ping on a connection without policies.
fn probe_request() -> PolicyRequest {
    let entity = |kind: &str, id: &str| Entity {
        kind: kind.into(),
        id: id.into(),
        attrs: serde_json::json!({}),
        parents: Vec::new(),
    };
    PolicyRequest {
        tenant: "probe".into(),
        principal: entity("Agent", "did:web:probe.agent"),
        action: "ping".into(),
        target: entity("Resource", "default"),
        entities: Vec::new(),
        context: serde_json::json!({}),
        connection: Default::default(),
        message: Default::default(),
        now_ms: 1_752_000_000_000,
    }
}

/// Reads and admits a component, telling the user what takes time.
fn load_policy(engine: &Arc<PolicyEngine>, file: &Path) -> Result<CompiledPolicy, CliError> {
    let path = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })?;
    eprint!(
        "compiling and pre-initialising {path} ({} KiB) ... ",
        bytes.len() / 1024
    );
    let _ = std::io::stderr().flush();
    let started = Instant::now();
    let admitted = pdp::admit(engine, &bytes, &AdmissionLimits::default());
    eprintln!("{} ms", started.elapsed().as_millis());
    admitted.map_err(|source| CliError::Refused { path, source })
}

/// What one chain's check prints, and whether it holds.
fn chain_report(report: &audit::VerifyReport) -> (String, bool) {
    let entries = |n: u64| format!("{n} {}", if n == 1 { "entry" } else { "entries" });
    match (&report.reason, report.first_break_at) {
        (Some(audit::ChainBreak::Parse { .. }), Some(_)) => (
            format!(
                "{}\n{} verified before the break",
                report.error.as_deref().unwrap_or_default(),
                entries(report.entries_seen)
            ),
            false,
        ),
        (Some(reason), Some(at)) => (
            format!(
                "broken at seq {at}: {reason}\n{} verified before the break",
                entries(report.entries_seen)
            ),
            false,
        ),
        _ => (format!("valid, {}", entries(report.entries_seen)), true),
    }
}

async fn run_audit_store(command: AuditCommand) -> Result<ExitCode, CliError> {
    let (AuditCommand::Verify { chain, store } | AuditCommand::Export { chain, store, .. }) =
        &command
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let opened = store.open().await?;
    let scope = opened
        .tenant_scope(&chain.tenant)
        .await
        .map_err(store_error(format!("no tenant {}", chain.tenant)))?;
    let chains = match (&chain.agent, &chain.connection) {
        (Some(agent), Some(connection)) => vec![(agent.clone(), connection.clone())],
        _ => opened
            .audit_chains(&scope)
            .await
            .map_err(store_error("cannot list the chains"))?,
    };
    let read = |agent: String, connection: String| {
        let opened = opened.clone();
        let scope = scope.clone();
        async move {
            opened
                .audit_chain(&scope, &agent, &connection)
                .await
                .map_err(store_error(format!(
                    "cannot read the chain of {agent} / {connection}"
                )))
        }
    };
    match command {
        AuditCommand::Export { output, .. } => {
            let [(agent, connection)] = chains.as_slice() else {
                return Err(CliError::Invalid(
                    "export needs one chain: give --agent and --connection".into(),
                ));
            };
            let entries = read(agent.clone(), connection.clone()).await?;
            let mut text = String::new();
            for entry in &entries {
                let line = entry
                    .to_jsonl_line()
                    .map_err(|error| CliError::Invalid(error.to_string()))?;
                text.push_str(&line);
                text.push('\n');
            }
            match output {
                Some(path) => {
                    std::fs::write(&path, text)
                        .map_err(io_error(format!("cannot write {}", path.display())))?;
                    eprintln!("exported {} entries to {}", entries.len(), path.display());
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            if chains.is_empty() {
                println!("tenant {} has no audit chains", chain.tenant);
            }
            let mut all_valid = true;
            for (agent, connection) in chains {
                let entries = read(agent.clone(), connection.clone()).await?;
                let (text, valid) = chain_report(&audit::verify_chain(&entries));
                all_valid &= valid;
                println!("{agent} / {connection}: {text}");
            }
            Ok(if all_valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn run_audit(command: AuditCommand) -> Result<ExitCode, CliError> {
    match command {
        command @ (AuditCommand::Verify { .. } | AuditCommand::Export { .. }) => {
            block_on(run_audit_store(command))
        }
        AuditCommand::VerifyFile { file } => {
            let read_error = |source| CliError::Read {
                path: file.display().to_string(),
                source,
            };
            let reader = std::fs::File::open(&file).map_err(read_error)?;
            let report =
                audit::verify_reader(std::io::BufReader::new(reader)).map_err(read_error)?;
            let (text, valid) = chain_report(&report);
            println!("{text}");
            Ok(if valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
