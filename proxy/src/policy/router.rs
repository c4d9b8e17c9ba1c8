//! The `router` world: a Wasm component that picks the node for each read.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wasmtime::component::HasSelf;
use wasmtime::Store;

use super::{Limits, LoadError, SharedStats, Stats};
use crate::observe::policy_view::PolicyView;
use crate::route::{Read, ReadPolicy};
use crate::topology::{self, ReplicaSet};

use super::sandbox::{self, State};
use super::wit::rampart::policy::types as wit;
use super::wit::{Router, RouterPre};

/// `update` runs at least every 100 ms (counted in ticks), so latencies and lag a
/// router sees are at most this old even when nothing else changed.
const REFRESH_TICKS: u64 = 100 / super::TICK_MS;

/// One live instance, owned by one thread.
struct Instance {
    store: Store<State>,
    router: Router,
    /// Topology version last passed to `update`, and when (in ticks).
    seen: u64,
    updated_at: u64,
    /// Dead once the plugin generation this instance belongs to is gone.
    owner: std::sync::Weak<()>,
}

thread_local! {
    /// This thread's instances, by plugin id.
    static INSTANCES: RefCell<HashMap<u64, Instance>> = RefCell::new(HashMap::new());
}

/// A loaded router plugin: a read policy backed by a Wasm component.
pub struct WasmRouter {
    id: u64,
    name: Arc<str>,
    pre: RouterPre<State>,
    config: String,
    limits: Limits,
    /// Bumped whenever a node's role or health changes.
    topology_version: Arc<AtomicU64>,
    pub stats: SharedStats,
    /// Instances hold a weak reference: when this router is replaced and
    /// dropped, each thread sweeps its instances of it away.
    alive: Arc<()>,
    /// The plan of the last `update`, shared by every thread.
    plan: arc_swap::ArcSwapOption<Published>,
}

impl WasmRouter {
    /// Compiles, links, instantiates and configures the component once, on
    /// the calling thread, before anything routes through it.
    pub fn load(
        name: &str,
        bytes: &[u8],
        config: &str,
        limits: Limits,
        topology_version: Arc<AtomicU64>,
    ) -> Result<WasmRouter, LoadError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let pre = sandbox::link(
            name,
            bytes,
            |linker| Router::add_to_linker::<State, HasSelf<State>>(linker, |state| state),
            RouterPre::new,
        )?;
        let router = WasmRouter {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            pre,
            config: config.to_string(),
            limits,
            topology_version,
            stats: Arc::new(Stats::default()),
            alive: Arc::new(()),
            plan: arc_swap::ArcSwapOption::empty(),
        };
        router
            .instantiate(&[])
            .map_err(|(step, message)| LoadError {
                name: name.to_string(),
                step,
                message,
            })?;
        Ok(router)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn instantiate(
        &self,
        nodes: &[Arc<topology::Node>],
    ) -> Result<Instance, (&'static str, String)> {
        let mut store = sandbox::store(&self.name, self.limits);
        store.data_mut().nodes = nodes.to_vec();
        let router = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| ("instantiate", format!("{e:#}")))?;
        let (store, router) = sandbox::configured(store, router, &self.limits, |r, store| {
            r.call_configure(store, &self.config)
        })?;
        Ok(Instance {
            store,
            router,
            seen: u64::MAX,
            updated_at: 0,
            owner: Arc::downgrade(&self.alive),
        })
    }

    /// Records a failed call: the instance is dropped (a trap may leave it
    /// in any state) and the caller falls back to the primary.
    fn trapped(&self, instances: &mut HashMap<u64, Instance>, what: &str, error: wasmtime::Error) {
        let last_error_log = instances
            .get(&self.id)
            .and_then(|i| i.store.data().last_error_log.clone());
        let reason = super::trap::Failure {
            error: &error,
            call: what,
            limits: &self.limits,
            fuel: self.limits.route_fuel,
            last_error_log: last_error_log.as_deref(),
        }
        .explain();
        self.stats.trapped(&reason);
        instances.remove(&self.id);
        tracing::warn!(plugin = %self.name, call = what, %reason, "router plugin trapped; using the primary");
    }
}

fn wit_node(shard_index: u32, node: &topology::Node) -> wit::Node {
    wit::Node {
        id: node.id,
        shard: shard_index,
        role: match node.role() {
            topology::Role::Primary => wit::Role::Primary,
            _ => wit::Role::Replica,
        },
        health: match node.health() {
            topology::Health::Up => wit::Health::Up,
            topology::Health::Suspect => wit::Health::Suspect,
            topology::Health::Down => wit::Health::Down,
        },
        serves_reads: node.serves_reads(),
        priority: node.priority(),
        zone: node.zone,
        latency_us: node.routing_latency_us(),
        inflight: node.inflight().min(u32::MAX as u64) as u32,
        repl_offset: node.offset(),
        lag_ms: node.lag_ms().min(u32::MAX as u64) as u32,
    }
}

/// A router's plan, resolved to indices into the shard's nodes, with the
/// topology version and tick it was made at.
struct Published {
    plan: Resolved,
    version: u64,
    at: u64,
}

enum Resolved {
    PerRead,
    Primary,
    Rotate(Vec<usize>),
    ByKey(Vec<usize>),
}

impl WasmRouter {
    /// The plan in force, if it is still fresh.
    fn fresh_plan(
        &self,
        version: u64,
        now: u64,
    ) -> Option<arc_swap::Guard<Option<Arc<Published>>>> {
        let published = self.plan.load();
        let fresh = published
            .as_ref()
            .is_some_and(|p| p.version == version && now.wrapping_sub(p.at) < REFRESH_TICKS);
        fresh.then_some(published)
    }

    /// Carries a plan out for one read, natively.
    fn apply<'s>(
        &self,
        plan: &Resolved,
        shard: &'s ReplicaSet,
        read: &Read,
    ) -> Option<&'s Arc<topology::Node>> {
        match plan {
            Resolved::PerRead => self.route(shard, read),
            Resolved::Primary => None,
            // In turn by burst, not by read (see `Read::turn`).
            Resolved::Rotate(nodes) => shard
                .nodes
                .get(*nodes.get(read.turn() % nodes.len().max(1))?),
            Resolved::ByKey(table) => {
                let hash = if read.key.is_empty() {
                    rampart_sdk::algorithms::mix64(read.client_id)
                } else {
                    fnv1a(read.key)
                };
                let slot = (hash % table.len().max(1) as u64) as usize;
                shard.nodes.get(*table.get(slot)?)
            }
        }
    }

    /// This thread's instance, made if needed and brought up to date (an
    /// `update`, whose plan is published for every thread); `None` if it
    /// could not be (counted, logged, the read goes to the primary).
    fn with_instance<R>(
        &self,
        shard: &ReplicaSet,
        call: impl FnOnce(&mut Instance) -> Result<R, wasmtime::Error>,
    ) -> Option<R> {
        INSTANCES.with(|cell| {
            let mut instances = cell.borrow_mut();
            if !instances.contains_key(&self.id) {
                // A new plugin on this thread: drop instances of replaced ones.
                instances.retain(|_, instance| instance.owner.strong_count() > 0);
            }
            if let Entry::Vacant(slot) = instances.entry(self.id) {
                match self.instantiate(&shard.nodes.to_vec()) {
                    Ok(instance) => {
                        slot.insert(instance);
                    }
                    Err((step, message)) => {
                        self.stats.fallback(&format!("{step}: {message}"));
                        tracing::warn!(plugin = %self.name, step, %message, "router plugin unavailable; using the primary");
                        return None;
                    }
                }
            }
            let instance = instances.get_mut(&self.id)?;
            let version = self.topology_version.load(Ordering::Acquire);
            let now = super::TICKS.load(Ordering::Relaxed);
            if instance.seen != version || now.wrapping_sub(instance.updated_at) >= REFRESH_TICKS {
                let nodes: Vec<wit::Node> = shard.nodes.iter().map(|n| wit_node(0, n)).collect();
                self.limits.arm_route(&mut instance.store);
                self.stats.calls.fetch_add(1, Ordering::Relaxed);
                let plan = match instance.router.call_update(&mut instance.store, &nodes, shard.client_zone) {
                    Ok(plan) => plan,
                    Err(trap) => {
                        self.trapped(&mut instances, "update", trap);
                        return None;
                    }
                };
                instance.seen = version;
                instance.updated_at = now;
                self.publish(shard, plan, version, now);
            }
            match call(instance) {
                Ok(result) => Some(result),
                Err(trap) => {
                    self.trapped(&mut instances, "route", trap);
                    None
                }
            }
        })
    }

    /// Resolves a plan's node ids; an unknown id is dropped and counted as
    /// a fallback (a plan left with no nodes sends reads to the primary).
    fn publish(&self, shard: &ReplicaSet, plan: wit::Plan, version: u64, at: u64) {
        let mut unknown = 0;
        let mut resolve = |ids: Vec<u32>| -> Vec<usize> {
            ids.into_iter()
                .filter_map(|id| {
                    let index = shard.nodes.iter().position(|n| n.id == id);
                    unknown += u64::from(index.is_none());
                    index
                })
                .collect()
        };
        let plan = match plan {
            wit::Plan::PerRead => Resolved::PerRead,
            wit::Plan::Primary => Resolved::Primary,
            wit::Plan::Rotate(ids) => match resolve(ids) {
                nodes if nodes.is_empty() => Resolved::Primary,
                nodes => Resolved::Rotate(nodes),
            },
            wit::Plan::ByKey(ids) => match resolve(ids) {
                table if table.is_empty() => Resolved::Primary,
                table => Resolved::ByKey(table),
            },
        };
        if unknown > 0 {
            let reason = format!("update returned a plan naming {unknown} unknown node(s)");
            self.stats
                .fallbacks
                .fetch_add(unknown - 1, Ordering::Relaxed);
            self.stats.fallback(&reason);
            tracing::warn!(plugin = %self.name, unknown, "router plan names nodes that do not exist; ignoring them");
        }
        self.plan
            .store(Some(Arc::new(Published { plan, version, at })));
    }

    /// One `route` call, for plans that decide per read.
    fn route<'s>(&self, shard: &'s ReplicaSet, read: &Read) -> Option<&'s Arc<topology::Node>> {
        let request = wit::Request {
            shard: 0,
            class: wit::CommandClass::Read,
            key_hash: fnv1a(read.key),
            key: read.key,
            client_id: read.client_id,
            client_zone: shard.client_zone,
        };
        let chosen = self.with_instance(shard, |instance| {
            self.stats.calls.fetch_add(1, Ordering::Relaxed);
            self.limits.arm_route(&mut instance.store);
            instance.router.call_route(&mut instance.store, request)
        })??;
        let node = shard.nodes.iter().find(|n| n.id == chosen);
        if node.is_none() {
            self.stats
                .fallback(&format!("route returned unknown node {chosen}"));
        }
        node
    }
}

impl ReadPolicy for WasmRouter {
    fn describe(&self) -> PolicyView {
        self.stats.view(&self.name)
    }

    /// The fast path carries out the published plan without entering the
    /// plugin; a stale or missing plan first runs `update` on this
    /// thread's instance.
    fn pick<'s>(&self, shard: &'s ReplicaSet, read: &Read) -> Option<&'s Arc<topology::Node>> {
        let version = self.topology_version.load(Ordering::Acquire);
        let now = super::TICKS.load(Ordering::Relaxed);
        if let Some(published) = self.fresh_plan(version, now) {
            if let Some(p) = published.as_ref() {
                return self.apply(&p.plan, shard, read);
            }
        }
        self.with_instance(shard, |_| Ok(()))?;
        let published = self.plan.load();
        let p = published.as_ref()?;
        self.apply(&p.plan, shard, read)
    }
}

/// FNV-1a, 64 bits: a stable hash of the key for plugins that spread keys
/// (the same key always gives the same hash, in every Rampart).
fn fnv1a(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
