//! Every command of the `arp-host` binary: argument parsing and what each command prints.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use crate::audit;
use crate::http::{self, AppState};
use crate::pdp::{
    self, AdmissionError, AdmissionLimits, CompiledPolicy, EngineConfig, Entity, Pdp, PolicyEngine,
    PolicyLimits, PolicyRegistry, PolicyRequest,
};
use crate::runner::{self, CaseFileError};

/// Hosts ARP agents for many tenants. Tenant policies run as sandboxed WebAssembly
/// components; the `policy` commands run them locally on the same engine as the server.
#[derive(Debug, Parser)]
#[command(name = "arp-host", version, propagate_version = true)]
pub struct Cli {
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
    /// Check, test and benchmark policy components locally (the same engine as the server).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check audit hash chains (ARP-PROTOCOL §3).
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `arp-host serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port (printed at start).
    #[arg(long, env = "ARP_LISTEN", default_value = "127.0.0.1:8787")]
    pub listen: std::net::SocketAddr,
    /// Directory for the server's data (compiled policy cache, and the embedded store).
    #[arg(long, env = "ARP_DATA_DIR", default_value = "arp-data")]
    pub data_dir: PathBuf,
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
}

impl CliError {
    /// 2 for every error: bad input, not a failed test.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(2)
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Policy(command) => run_policy(command),
        Command::Serve(args) => run_serve(args),
        Command::Audit(command) => run_audit(command),
    }
}

fn run_serve(args: ServeArgs) -> Result<ExitCode, CliError> {
    std::fs::create_dir_all(&args.data_dir).map_err(io_error(format!(
        "cannot create the data dir {}",
        args.data_dir.display()
    )))?;
    let engine = Arc::new(PolicyEngine::new(EngineConfig::default())?);
    let registry = Arc::new(PolicyRegistry::new(
        engine.clone(),
        AdmissionLimits::default(),
        Some(args.data_dir.join("policy-cache")),
    ));
    eprintln!("loading the default policy (compiled once, then cached in the data dir) ...");
    let default_policy =
        registry
            .load(pdp::DEFAULT_POLICY)
            .map_err(|source| CliError::Refused {
                path: "the embedded default policy".into(),
                source,
            })?;
    let state = AppState {
        pdp: Arc::new(Pdp::new(engine, None)),
        registry,
        default_policy,
    };
    let runtime = tokio::runtime::Runtime::new().map_err(io_error("cannot start the runtime"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(io_error(format!("cannot listen on {}", args.listen)))?;
        let local = listener
            .local_addr()
            .map_err(io_error("cannot read the listening address"))?;
        println!("listening on http://{local}");
        let _ = std::io::stdout().flush();
        http::serve(listener, state, shutdown_signal())
            .await
            .map_err(io_error(format!("the server on {local} failed")))
    })?;
    Ok(ExitCode::SUCCESS)
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Io { what, source }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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

fn run_policy(command: PolicyCommand) -> Result<ExitCode, CliError> {
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

fn run_audit(command: AuditCommand) -> Result<ExitCode, CliError> {
    match command {
        AuditCommand::VerifyFile { file } => {
            let read_error = |source| CliError::Read {
                path: file.display().to_string(),
                source,
            };
            let reader = std::fs::File::open(&file).map_err(read_error)?;
            let report =
                audit::verify_reader(std::io::BufReader::new(reader)).map_err(read_error)?;
            let entries = |n: u64| format!("{n} {}", if n == 1 { "entry" } else { "entries" });
            match (&report.reason, report.first_break_at) {
                (Some(reason), Some(at)) => {
                    match reason {
                        audit::ChainBreak::Parse { .. } => {
                            println!("{}", report.error.as_deref().unwrap_or_default());
                        }
                        reason => println!("broken at seq {at}: {reason}"),
                    }
                    println!("{} verified before the break", entries(report.entries_seen));
                    Ok(ExitCode::FAILURE)
                }
                _ => {
                    println!("valid, {}", entries(report.entries_seen));
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}
