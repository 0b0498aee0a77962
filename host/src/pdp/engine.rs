//! The wasmtime setup every policy runs on: one `Engine` with the pooling allocator,
//! fuel and epoch interruption; one `Linker` that offers a locked-down subset of WASI;
//! and a fresh `Store` for every decision, so no state crosses requests or tenants.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{INIT_EXPORT, PolicyPre, decide};
use super::decision::{Decision, Effect, PolicyFailure};
use super::limits::PolicyLimits;
use super::request::Obligation;

/// Host-wide settings of the engine. Per-policy limits must fit inside these.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Component instances that may be live at once across all tenants. Each slot
    /// reserves address space, not memory; 256 covers far more concurrent decisions
    /// than the blocking pool will run on a small host.
    pub pool_instances: u32,
    /// The largest linear memory any policy may be granted (the pool's slot size).
    pub max_memory_bytes: usize,
    /// Granularity of the wall-clock deadline.
    pub epoch_tick: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            pool_instances: 256,
            max_memory_bytes: 256 << 20,
            epoch_tick: Duration::from_millis(1),
        }
    }
}

/// Interfaces a policy may import. They are what Rust's std on `wasm32-wasip2` pulls in
/// (streams for stdio, environment, exit, terminals), plus random and clocks, which std's
/// `HashMap` seeding and `SystemTime` reach for. All of them are served from an empty,
/// deterministic context: no args or env, stdin empty, stdout/stderr captured and bounded,
/// a fixed random stream and a clock frozen at the epoch. Nothing touches the host.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
];

/// Fuel and time for the one-time `init` run at admission. Warm-up may do far more work
/// than a decision (the `cedar` guest spends about 7M fuel), but it is still bounded.
const INIT_FUEL: u64 = 2_000_000_000;
const INIT_DEADLINE: Duration = Duration::from_secs(20);
/// How much of each memory and table slot stays resident between decisions. 16 MiB covers
/// the whole working set of the `cedar` snapshot; a slot costs that much RSS only once it
/// was actually used that far.
const KEEP_RESIDENT_MEMORY_BYTES: usize = 16 << 20;
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;
/// Bytes of guest stderr kept for error messages (a panic message, typically).
const STDERR_CAPTURE_BYTES: usize = 4096;

/// A policy compiled for this engine, pre-initialised and with its imports resolved:
/// ready to be instantiated for one decision.
pub struct CompiledPolicy {
    /// `sha256:<hex>` of the component bytes as uploaded.
    pub digest: String,
    pre: PolicyPre<GuestState>,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// The per-store state: WASI context, resource table and the limiter.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
    stderr: MemoryOutputPipe,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Enforces [`PolicyLimits`] on growth and remembers which limit stopped the guest, so
/// the resulting trap can be reported as a memory limit rather than a generic trap.
struct GuestLimiter {
    limits: PolicyLimits,
    exceeded: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("policy resource limit exceeded")]
struct LimitExceeded;

impl wasmtime::ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes {
            self.exceeded = Some(format!(
                "linear memory of {desired} bytes requested, limit is {} bytes",
                self.limits.memory_bytes
            ));
            return Err(wasmtime::Error::new(LimitExceeded));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.table_elements {
            self.exceeded = Some(format!(
                "table of {desired} elements requested, limit is {}",
                self.limits.table_elements
            ));
            return Err(wasmtime::Error::new(LimitExceeded));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.limits.instances
    }
    fn tables(&self) -> usize {
        self.limits.instances
    }
    fn memories(&self) -> usize {
        self.limits.instances
    }
}

/// Errors setting up the engine or compiling a component.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("engine configuration: {0}")]
    Config(String),
    /// The component failed to compile or link.
    #[error("{0}")]
    Compile(String),
    /// The `init` warm-up failed.
    #[error("pre-initialisation failed: {0}")]
    Init(String),
}

fn describe(error: &wasmtime::Error) -> String {
    format!("{error:#}")
}

/// Increments the engine's epoch on a fixed tick until dropped, which is what turns
/// epoch deadlines into wall-clock deadlines.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Result<Self, EngineError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("arp-epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| EngineError::Config(format!("epoch ticker thread: {e}")))?;
        Ok(Self { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The one engine of the host. Cheap to share behind an `Arc`.
pub struct PolicyEngine {
    engine: Engine,
    linker: Linker<GuestState>,
    config: EngineConfig,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Builds the engine, the linker and the epoch ticker.
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(config.pool_instances)
            .total_core_instances(config.pool_instances * 16)
            // A Rust wasip2 component has one memory and a few tables; each memory slot
            // reserves (not commits) 4 GiB of address space, so keep the count tight.
            .total_memories(config.pool_instances * 2)
            .total_tables(config.pool_instances * 8)
            .total_stacks(config.pool_instances)
            .max_memory_size(config.max_memory_bytes)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(16)
            // A slot keeps its pages between decisions and is reset by copying back only
            // the pages the last decision dirtied (PAGEMAP_SCAN, Linux 6.7+), instead of
            // dropping them with madvise and faulting them in again on the next decision.
            // This took `scopes` from 30 to 11 µs p50 and `cedar` from 218 to 79 µs.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY_BYTES)
            .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);

        let mut wasm = Config::new();
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .consume_fuel(true)
            .epoch_interruption(true)
            // Copy-on-write images make a fresh instance of a pre-initialised snapshot
            // cost page mappings rather than a copy of its heap.
            .memory_init_cow(true)
            .max_wasm_stack(1 << 20)
            .wasm_component_model(true);
        let engine = Engine::new(&wasm).map_err(|e| EngineError::Config(describe(&e)))?;

        let mut linker = Linker::new(&engine);
        link_allowed_wasi(&mut linker).map_err(|e| EngineError::Config(describe(&e)))?;

        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        Ok(Self {
            engine,
            linker,
            config,
            _ticker: ticker,
        })
    }

    /// The underlying wasmtime engine.
    pub fn wasmtime(&self) -> &Engine {
        &self.engine
    }

    /// Runs the component's `init` export once and returns the component with the
    /// resulting state baked in (wizer), so no decision repeats the warm-up.
    pub fn pre_initialize(&self, component: &[u8]) -> Result<Vec<u8>, EngineError> {
        let limits = PolicyLimits {
            fuel: INIT_FUEL,
            deadline_ms: u64::try_from(INIT_DEADLINE.as_millis()).unwrap_or(u64::MAX),
            ..PolicyLimits::default()
        };
        let mut store = self.new_store(&limits);
        let mut wizer = wasmtime_wizer::Wizer::new();
        wizer.init_func(INIT_EXPORT).keep_init_func(true);
        let linker = &self.linker;
        let run = wizer.run_component(&mut store, component, async |store, component| {
            linker.instantiate_async(store, component).await
        });
        match run_to_completion(run) {
            Some(Ok((snapshot, _))) => Ok(snapshot),
            Some(Err(e)) => Err(EngineError::Init(describe(&e))),
            None => Err(EngineError::Init("init did not complete".into())),
        }
    }

    /// Compiles component bytes (no validation of the world; see `admission`).
    pub fn compile(&self, component: &[u8]) -> Result<Component, EngineError> {
        Component::new(&self.engine, component).map_err(|e| EngineError::Compile(describe(&e)))
    }

    /// Resolves the imports of a compiled policy once, so every decision only
    /// instantiates.
    pub fn prepare(
        &self,
        digest: String,
        component: &Component,
    ) -> Result<CompiledPolicy, EngineError> {
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| EngineError::Compile(describe(&e)))?;
        let pre = PolicyPre::new(instance_pre).map_err(|e| EngineError::Compile(describe(&e)))?;
        Ok(CompiledPolicy { digest, pre })
    }

    /// Loads a compiled artifact written by [`store_artifact`](Self::store_artifact).
    /// `None` if it is missing or was built by an incompatible engine.
    pub(crate) fn load_artifact(&self, path: &Path) -> Option<Component> {
        if !path.is_file() {
            return None;
        }
        // SAFETY: wasmtime runs deserialized machine code as is. The only files read
        // here are the registry's own cache, written by `store_artifact` of this host
        // into a directory the host owns; uploads never reach this path, they are
        // always compiled from their Wasm bytes. wasmtime itself refuses artifacts of
        // another version or configuration.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize_file(&self.engine, path) };
        component.ok()
    }

    /// Writes a policy's compiled form for [`load_artifact`](Self::load_artifact),
    /// atomically, so a crash never leaves a torn artifact behind.
    pub(crate) fn store_artifact(
        &self,
        policy: &CompiledPolicy,
        path: &Path,
    ) -> std::io::Result<()> {
        let bytes = policy
            .pre
            .instance_pre()
            .component()
            .serialize()
            .map_err(|e| std::io::Error::other(describe(&e)))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Per process, so two hosts sharing a cache dir never interleave their writes.
        let partial = path.with_extension(format!("{}.partial", std::process::id()));
        std::fs::write(&partial, bytes)?;
        std::fs::rename(partial, path)
    }

    fn new_store(&self, limits: &PolicyLimits) -> Store<GuestState> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        let wasi = WasiCtxBuilder::new()
            .stdout(MemoryOutputPipe::new(STDERR_CAPTURE_BYTES))
            .stderr(stderr.clone())
            .secure_random(wasmtime_wasi::Deterministic::new(vec![0x5a]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![0xa5]))
            .insecure_random_seed(0)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = GuestState {
            wasi,
            table: ResourceTable::new(),
            limiter: GuestLimiter {
                limits: *limits,
                exceeded: None,
            },
            stderr,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // `set_fuel` only fails when fuel is disabled, which `new` never does.
        let _ = store.set_fuel(limits.fuel);
        let tick_ms = u64::try_from(self.config.epoch_tick.as_millis().max(1)).unwrap_or(1);
        // +1: the current tick may be nearly over when the decision starts.
        store.set_epoch_deadline(limits.deadline_ms.div_ceil(tick_ms) + 1);
        store
    }

    /// Runs one decision in a fresh instance. Never fails: a policy that cannot decide
    /// yields a deny carrying the failure's reason code.
    pub fn evaluate(
        &self,
        policy: &CompiledPolicy,
        limits: &PolicyLimits,
        request: &decide::Request,
    ) -> Decision {
        let mut store = self.new_store(limits);
        let outcome = policy.pre.instantiate(&mut store).and_then(|instance| {
            instance
                .arp_policy_decide()
                .call_evaluate(&mut store, request)
        });
        let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        match outcome {
            Ok(decision) => check_output(decision, limits, fuel_used),
            Err(error) => Decision::failed(classify(&error, store.data()), fuel_used),
        }
    }
}

/// Maps a wasmtime error from a decision to its failure code.
fn classify(error: &wasmtime::Error, state: &GuestState) -> PolicyFailure {
    if let Some(limit) = &state.limiter.exceeded {
        return PolicyFailure::MemoryLimit(limit.clone());
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PolicyFailure::OutOfFuel,
        Some(Trap::Interrupt) => PolicyFailure::Timeout,
        Some(trap) => {
            let stderr = state.stderr.contents();
            // One line: a panic message spans two, and reasons are shown one per line.
            let message = String::from_utf8_lossy(&stderr)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            if message.is_empty() {
                PolicyFailure::Trap(trap.to_string())
            } else {
                PolicyFailure::Trap(format!("{trap}: {message}"))
            }
        }
        // The store's instance/table/memory counts (see `GuestLimiter::instances`).
        None if describe(error).contains("resource limit exceeded") => {
            PolicyFailure::MemoryLimit(describe(error))
        }
        None if describe(error).contains("pool") => PolicyFailure::Unavailable(describe(error)),
        None => PolicyFailure::Trap(describe(error)),
    }
}

/// Refuses oversized decisions and obligation params that are not JSON objects.
fn check_output(decision: decide::Decision, limits: &PolicyLimits, fuel_used: u64) -> Decision {
    let size: usize = decision
        .policies_fired
        .iter()
        .map(String::len)
        .sum::<usize>()
        + decision.reasons.iter().map(String::len).sum::<usize>()
        + decision
            .obligations
            .iter()
            .map(|o| o.kind.len() + o.params.len())
            .sum::<usize>();
    if size > limits.output_bytes {
        return Decision::failed(
            PolicyFailure::InvalidOutput(format!(
                "decision of {size} bytes exceeds the {} byte limit",
                limits.output_bytes
            )),
            fuel_used,
        );
    }
    let mut obligations = Vec::with_capacity(decision.obligations.len());
    for obligation in decision.obligations {
        match serde_json::from_str::<serde_json::Value>(&obligation.params) {
            Ok(params @ serde_json::Value::Object(_)) => obligations.push(Obligation {
                kind: obligation.kind,
                params,
            }),
            _ => {
                return Decision::failed(
                    PolicyFailure::InvalidOutput(format!(
                        "params of obligation `{}` are not a JSON object",
                        obligation.kind
                    )),
                    fuel_used,
                );
            }
        }
    }
    Decision {
        effect: match decision.effect {
            decide::Effect::Allow => Effect::Allow,
            decide::Effect::Deny => Effect::Deny,
        },
        policies_fired: decision.policies_fired,
        obligations,
        reasons: decision.reasons,
        failure: None,
        fuel_used,
    }
}

/// A clock stopped at the Unix epoch: policies get time only from the request.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Adds exactly the [`ALLOWED_IMPORTS`] to the linker, and nothing else: no filesystem,
/// no sockets, no HTTP.
fn link_allowed_wasi(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
    use wasmtime_wasi::p2::bindings::{cli, clocks, random, sync};
    use wasmtime_wasi::random::WasiRandom;

    struct HasIo;
    impl wasmtime::component::HasData for HasIo {
        type Data<'a> = &'a mut ResourceTable;
    }

    let l = linker;
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<GuestState, HasIo>(l, |t| {
        &mut t.table
    })?;
    sync::io::poll::add_to_linker::<GuestState, HasIo>(l, |t| &mut t.table)?;
    sync::io::streams::add_to_linker::<GuestState, HasIo>(l, |t| &mut t.table)?;
    cli::environment::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::exit::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::stdin::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::stdout::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::stderr::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::terminal_input::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::terminal_output::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::terminal_stdin::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::terminal_stdout::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    cli::terminal_stderr::add_to_linker::<GuestState, WasiCli>(l, GuestState::cli)?;
    random::random::add_to_linker::<GuestState, WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure::add_to_linker::<GuestState, WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure_seed::add_to_linker::<GuestState, WasiRandom>(l, |t| t.wasi.random())?;
    clocks::wall_clock::add_to_linker::<GuestState, WasiClocks>(l, GuestState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<GuestState, WasiClocks>(l, GuestState::clocks)?;
    Ok(())
}

/// Drives a future that never waits on I/O (wizer's run over synchronous host calls) to
/// completion on the current thread, without needing an async runtime. `None` if it
/// keeps reporting `Pending`, which would mean it waits on something that never comes.
fn run_to_completion<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..10_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        std::thread::yield_now();
    }
    None
}
