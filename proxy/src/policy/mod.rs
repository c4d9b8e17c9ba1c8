//! The Wasm policy host: routing decisions made by WebAssembly components
//! that users write with `rampart-sdk`.
//!
//! Sandbox: a component gets no WASI at all (no files, sockets, clock or
//! environment); any import other than Rampart's `host` interface traps when
//! called. Memory is capped per instance, and every call runs under an epoch
//! deadline, so a plugin that loops is stopped within a tick or two of its
//! budget. A trap drops the instance (a new one is made on the next call)
//! and that call falls back to the default choice, the primary.
//!
//! A `Store` is not `Sync`, so each worker thread keeps its own instance of
//! each router, made lazily from a pre-linked `InstancePre`. Quorum and
//! detector plugins are called rarely (on configuration, at failover, per
//! probe) and keep state across nodes, so each has one instance behind a
//! mutex.
//!
//! Routers are swapped at runtime by generations (`slot`, `swap`); quorum
//! and detector plugins are chosen in the configuration.

pub mod builtin;
mod detector;
pub mod error;
pub mod file;
mod quorum;
mod router;
mod sandbox;
pub mod slot;
pub mod swap;
mod trap;
mod wit;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::{Config, Engine};

pub use detector::WasmDetector;
pub use quorum::WasmQuorum;
pub use router::WasmRouter;
pub use sandbox::Spec;

/// Limits applied to every plugin instance.
///
/// Time is budgeted twice. Fuel (wasm instructions) stops a plugin that
/// loops, deterministically: a machine so busy that it preempts the thread
/// in the middle of a call never stops a well-behaved plugin, which a
/// wall-clock deadline alone would (measured: a 1 ms deadline tripped on
/// a 300 ns routing call under benchmark load). Epoch ticks are the
/// wall-clock backstop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory an instance may grow to.
    pub memory_bytes: usize,
    /// Fuel for one routing call (`route`, `update`).
    pub route_fuel: u64,
    /// Fuel for instantiating and configuring, and for each quorum and
    /// detector call.
    pub setup_fuel: u64,
    /// Epoch ticks (one per [`TICK`]) any call may run, however much fuel
    /// it has left.
    pub setup_ticks: u64,
}

impl Limits {
    /// The sandbox `[plugins]` asks for.
    pub fn of(plugins: &crate::config::PluginsConfig) -> Limits {
        Limits {
            memory_bytes: plugins.memory_limit_mb as usize * 1024 * 1024,
            route_fuel: u64::from(plugins.route_budget_ms) * FUEL_PER_MS,
            setup_fuel: u64::from(plugins.call_budget_ms) * FUEL_PER_MS,
            setup_ticks: ticks_for(u64::from(plugins.call_budget_ms)),
        }
    }
}

/// Fuel per millisecond of budget: about what cranelift's code burns in a
/// millisecond of a tight loop (measured on the development VM: 2 million
/// ran out after 0.34 ms).
pub const FUEL_PER_MS: u64 = 5_000_000;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 16 * 1024 * 1024,
            route_fuel: FUEL_PER_MS,
            setup_fuel: 100 * FUEL_PER_MS,
            setup_ticks: ticks_for(100),
        }
    }
}

/// How often the engine's epoch advances: the granularity of the
/// wall-clock backstop (fuel is the budget proper) and of [`TICKS`]. Each
/// tick wakes a thread; at 1 ms that thread took 2.7% of Rampart's CPU
/// under load (`perf`, LRANGE_100 -P 16), at 10 ms a tenth of it.
pub const TICK_MS: u64 = 10;
pub const TICK: Duration = Duration::from_millis(TICK_MS);

/// Ticks a deadline `ms` from now needs: deadlines count whole ticks from
/// wherever the current one is, so one more than the budget.
pub const fn ticks_for(ms: u64) -> u64 {
    ms.div_ceil(TICK_MS) + 1
}

/// Ticks since the engine started, a clock cheap enough to read per call.
pub(crate) static TICKS: AtomicU64 = AtomicU64::new(0);

/// The process-wide engine, with its epoch ticker thread.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(true);
        // Plugins are small and called often: optimise for call speed.
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            // The configuration is fixed and valid; an error here is a bug.
            Err(e) => panic!("wasmtime engine configuration rejected: {e}"),
        };
        let ticker = engine.weak();
        let _ = std::thread::Builder::new()
            .name("rampart-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    TICKS.fetch_add(1, Ordering::Relaxed);
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            });
        engine
    })
}

/// Counters kept per loaded plugin.
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub traps: AtomicU64,
    pub fallbacks: AtomicU64,
    /// Why the last trap or fallback happened, in words.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl Stats {
    /// A call that trapped: counted, and its reason kept for the views.
    pub fn trapped(&self, reason: &str) {
        self.traps.fetch_add(1, Ordering::Relaxed);
        self.fallback(reason);
    }

    /// A decision the fallback made instead of the plugin.
    pub fn fallback(&self, reason: &str) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
    }

    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.traps.load(Ordering::Relaxed),
            self.fallbacks.load(Ordering::Relaxed),
        )
    }

    /// The plugin `name` as the admin views show it.
    pub fn view(&self, name: &str) -> crate::observe::policy_view::PolicyView {
        let (calls, traps, fallbacks) = self.snapshot();
        crate::observe::policy_view::PolicyView {
            name: name.to_string(),
            kind: "wasm",
            calls,
            traps,
            fallbacks,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// A plugin that could not be loaded, with the step that refused it.
#[derive(Debug, thiserror::Error)]
#[error("plugin {name}: {step}: {message}")]
pub struct LoadError {
    pub name: String,
    pub step: &'static str,
    pub message: String,
}

/// Shared by every instance of one plugin.
pub(crate) type SharedStats = Arc<Stats>;
