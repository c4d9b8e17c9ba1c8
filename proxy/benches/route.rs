//! What a routing decision costs, on one thread, in one run: the native
//! round robin beside Wasm routers from `plugins/`: round robin and key
//! affinity (whose `update` returns a plan the host carries out) and least
//! latency (which decides per read, so every read calls into the plugin).
//! Prints nanoseconds per decision and the ratios to native.
//!
//!     cargo bench -p rampart --bench route
//!

use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use rampart::backend::NodePool;
use rampart::config::ReadFrom;
use rampart::failover::probe::Report;
use rampart::policy::{builtin, Limits, WasmRouter};
use rampart::route::{Read, ReadPolicy, RoundRobinReplicas};
use rampart::topology::{Health, Node, ReplicaSet, Role};

fn shard(changes: &Arc<AtomicU64>) -> ReplicaSet {
    let nodes: Vec<Arc<Node>> = (1..=3)
        .map(|id| {
            let addr = format!("127.0.0.1:{}", 7000 + id);
            let pool = NodePool::unconnected(addr.clone());
            Arc::new(Node::new(id, addr, pool, changes.clone()))
        })
        .collect();
    let shard = ReplicaSet::new("bench".into(), nodes, ReadFrom::Replicas, false, u64::MAX);
    shard.set_primary(&shard.nodes[0], 1);
    let now = Instant::now();
    for (i, node) in shard.nodes.iter().enumerate() {
        node.set_health(Health::Up);
        let report = Report {
            role: if i == 0 { Role::Primary } else { Role::Replica },
            offset: 100,
            connected: i > 0,
            master: (i > 0).then(|| "127.0.0.1:7001".to_string()),
            priority: 100,
            replicas: 2,
            replid: String::new(),
            replid2: String::new(),
            backlog: 0,
        };
        shard.observe(node, &report, now, None);
    }
    shard.refresh();
    shard
}

/// Nanoseconds per decision, the best of several rounds.
fn measure(policy: &dyn ReadPolicy, shard: &ReplicaSet) -> f64 {
    let rounds = 7;
    let calls = 200_000;
    let mut best = f64::MAX;
    for round in 0..rounds {
        let start = Instant::now();
        for i in 0..calls {
            let key = if i % 2 == 0 {
                &b"user:1"[..]
            } else {
                &b"session:22"[..]
            };
            let read = Read {
                client_id: i,
                key,
                burst: i,
            };
            black_box(policy.pick(shard, black_box(&read)));
        }
        let ns = start.elapsed().as_nanos() as f64 / calls as f64;
        if round > 0 {
            best = best.min(ns);
        }
    }
    best
}

fn main() {
    let changes = Arc::new(AtomicU64::new(0));
    let shard = shard(&changes);
    let native = RoundRobinReplicas;
    // The components embedded in the binary (built from plugins/).
    let load = |name: &str| {
        let bytes = builtin::router(name).expect("a built-in router");
        WasmRouter::load(name, bytes, "", Limits::default(), changes.clone())
            .expect("the plugin loads")
    };
    let routers: Vec<(&str, Box<dyn ReadPolicy>)> = vec![
        ("native round robin", Box::new(native)),
        ("wasm round robin (plan)", Box::new(load("round-robin"))),
        ("wasm key affinity (plan)", Box::new(load("key-affinity"))),
        (
            "wasm least latency (per read)",
            Box::new(load("least-latency")),
        ),
    ];
    for (name, router) in &routers {
        let read = Read {
            client_id: 0,
            key: b"k",
            burst: 0,
        };
        assert!(
            router.pick(&shard, &read).is_some(),
            "{name} picks a replica"
        );
    }

    // Interleaved, so that noise hits all alike.
    let mut best = vec![f64::MAX; routers.len()];
    for _ in 0..3 {
        for (i, (_, router)) in routers.iter().enumerate() {
            best[i] = best[i].min(measure(router.as_ref(), &shard));
        }
    }
    println!("route decision over 2 replicas (best of 3x6 rounds of 200k calls):");
    let native = best[0];
    for ((name, _), ns) in routers.iter().zip(&best) {
        println!(
            "  {name:<30} {ns:8.1} ns   ({:.1}x native, +{:.0} ns per read)",
            ns / native,
            ns - native
        );
    }
}
