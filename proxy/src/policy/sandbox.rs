//! What every plugin instance shares, whatever its world: the store it
//! runs in (memory cap, epoch deadline), the `host` interface it may
//! import, and the rule that any other import traps.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};

use super::wit::rampart::policy::host::{Host, Level};
use super::wit::rampart::policy::types;
use super::{engine, Limits, LoadError, SharedStats};
use crate::observe::policy_view::PolicyView;

/// What each plugin instance's store holds.
pub struct State {
    limits: StoreLimits,
    name: Arc<str>,
    /// The shard's nodes, for `inflight`; empty outside routers.
    pub nodes: Vec<Arc<crate::topology::Node>>,
    /// The last error the plugin logged in the current call: a panic
    /// hook's message, which the trap that follows does not carry.
    pub last_error_log: Option<String>,
}

impl Host for State {
    fn log(&mut self, level: Level, message: String) {
        let plugin = &*self.name;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => {
                tracing::error!(plugin, "{message}");
                self.last_error_log = Some(message);
            }
        }
    }

    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn inflight(&mut self, node: u32) -> u32 {
        self.nodes
            .iter()
            .find(|n| n.id == node)
            .map_or(0, |n| n.inflight().min(u32::MAX as u64) as u32)
    }
}

impl types::Host for State {}

/// Compiles a component and links it against Rampart's interfaces
/// (`add` adds the world's), every other import trapping: a policy gets no
/// files, sockets, clock, randomness or environment. `pre` turns the linked
/// component into the world's typed pre-instance.
pub fn link<P>(
    name: &str,
    bytes: &[u8],
    add: impl FnOnce(&mut Linker<State>) -> wasmtime::Result<()>,
    pre: impl FnOnce(InstancePre<State>) -> wasmtime::Result<P>,
) -> Result<P, LoadError> {
    let fail = |step: &'static str, message: String| LoadError {
        name: name.to_string(),
        step,
        message,
    };
    let component =
        Component::new(engine(), bytes).map_err(|e| fail("compile", format!("{e:#}")))?;
    let mut linker = Linker::new(engine());
    add(&mut linker).map_err(|e| fail("link", format!("{e:#}")))?;
    linker
        .define_unknown_imports_as_traps(&component)
        .map_err(|e| fail("link", format!("{e:#}")))?;
    linker
        .instantiate_pre(&component)
        .and_then(pre)
        .map_err(|e| fail("link", format!("{e:#}")))
}

/// Runs a world's `configure` (already instantiated) and turns its
/// answer into the step and reason a refused plugin is reported with.
pub fn configured<W>(
    store: Store<State>,
    world: W,
    limits: &Limits,
    configure: impl FnOnce(&W, &mut Store<State>) -> wasmtime::Result<Result<(), String>>,
) -> Result<(Store<State>, W), (&'static str, String)> {
    let mut store = store;
    match configure(&world, &mut store) {
        Ok(Ok(())) => Ok((store, world)),
        Ok(Err(refused)) => Err(("configure", format!("refused: {refused}"))),
        Err(trap) => Err((
            "configure",
            super::trap::Failure {
                error: &trap,
                call: "configure",
                limits,
                fuel: limits.setup_fuel,
                last_error_log: store.data().last_error_log.as_deref(),
            }
            .explain(),
        )),
    }
}

/// A world's `configure` export: `Err` is a trap, `Ok(Err)` a refusal.
type Configure<W> = fn(&W, &mut Store<State>, &str) -> wasmtime::Result<Result<(), String>>;

type Make<W> = Box<dyn Fn() -> Result<(Store<State>, W), (&'static str, String)> + Send + Sync>;

/// A plugin with one instance behind a mutex: for the worlds called off
/// the request path (quorum, detector), whose state must be one, whichever
/// thread calls. A call that traps drops the instance; the next call makes
/// a fresh one.
pub struct Single<W> {
    pub name: Arc<str>,
    limits: Limits,
    pub stats: SharedStats,
    instance: Mutex<Option<(Store<State>, W)>>,
    make: Make<W>,
}

impl<W> Single<W> {
    /// Makes the first instance now, so a plugin that cannot start is
    /// refused at load time.
    pub fn new(name: &str, limits: Limits, make: Make<W>) -> Result<Single<W>, LoadError> {
        let first = make().map_err(|(step, message)| LoadError {
            name: name.to_string(),
            step,
            message,
        })?;
        Ok(Single {
            name: name.into(),
            limits,
            stats: SharedStats::default(),
            instance: Mutex::new(Some(first)),
            make,
        })
    }

    /// Runs `call` on the instance; `None` if there is none or it trapped
    /// (logged and counted, with `what` the call's name).
    pub fn call<R>(
        &self,
        what: &str,
        call: impl FnOnce(&W, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Option<R> {
        let mut slot = self.instance.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            match (self.make)() {
                Ok(instance) => *slot = Some(instance),
                Err((step, message)) => {
                    tracing::warn!(plugin = %self.name, step, %message, "plugin unavailable");
                    return None;
                }
            }
        }
        let (store, world) = slot.as_mut()?;
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.limits.arm_setup(store);
        match call(world, store) {
            Ok(result) => Some(result),
            Err(trap) => {
                let reason = super::trap::Failure {
                    error: &trap,
                    call: what,
                    limits: &self.limits,
                    fuel: self.limits.setup_fuel,
                    last_error_log: store.data().last_error_log.as_deref(),
                }
                .explain();
                self.stats.trapped(&reason);
                *slot = None;
                tracing::warn!(plugin = %self.name, call = what, %reason, "plugin trapped; its fallback answers");
                None
            }
        }
    }

    pub fn describe(&self) -> PolicyView {
        self.stats.view(&self.name)
    }

    /// Drops the instance: the next call makes a fresh one (configured
    /// anew), with none of the state the calls so far left in it.
    pub fn reset(&self) {
        *self.instance.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Links, instantiates and configures a single-instance plugin:
    /// `instantiate` and `configure` are the world's own calls.
    pub fn load<P>(
        spec: Spec<'_>,
        add: impl FnOnce(&mut Linker<State>) -> wasmtime::Result<()>,
        pre: impl FnOnce(InstancePre<State>) -> wasmtime::Result<P>,
        instantiate: fn(&P, &mut Store<State>) -> wasmtime::Result<W>,
        configure: Configure<W>,
    ) -> Result<Single<W>, LoadError>
    where
        P: Send + Sync + 'static,
        W: 'static,
    {
        let pre = link(spec.name, spec.bytes, add, pre)?;
        let (plugin, config, limits) = (
            Arc::<str>::from(spec.name),
            spec.config.to_string(),
            spec.limits,
        );
        let make = Box::new(move || {
            let mut store = store(&plugin, limits);
            let world =
                instantiate(&pre, &mut store).map_err(|e| ("instantiate", format!("{e:#}")))?;
            configured(store, world, &limits, |w, store| {
                configure(w, store, &config)
            })
        });
        Single::new(spec.name, limits, make)
    }
}

impl Limits {
    /// Before a routing call.
    pub fn arm_route(&self, store: &mut Store<State>) {
        store.data_mut().last_error_log = None;
        let _ = store.set_fuel(self.route_fuel);
        store.set_epoch_deadline(self.setup_ticks);
    }

    /// Before any other call.
    pub fn arm_setup(&self, store: &mut Store<State>) {
        store.data_mut().last_error_log = None;
        let _ = store.set_fuel(self.setup_fuel);
        store.set_epoch_deadline(self.setup_ticks);
    }
}

/// A plugin to load: its name (for logs and views), the component, the
/// text for its `configure`, and the sandbox limits it runs under.
#[derive(Clone, Copy)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
    pub config: &'a str,
    pub limits: Limits,
}

/// A fresh store for one instance, with its memory cap and the budget for
/// instantiating and configuring it.
pub fn store(name: &Arc<str>, limits: Limits) -> Store<State> {
    let state = State {
        limits: StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            // A component is several core instances (its modules and the
            // shims between them), never many.
            .instances(32)
            // A growth past the cap traps (and is reported as such) rather
            // than failing quietly into an allocator abort.
            .trap_on_grow_failure(true)
            .build(),
        name: name.clone(),
        nodes: Vec::new(),
        last_error_log: None,
    };
    let mut store = Store::new(engine(), state);
    store.limiter(|state| &mut state.limits);
    limits.arm_setup(&mut store);
    store
}
