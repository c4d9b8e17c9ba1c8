//! What a routing decision costs: the native round robin beside the same
//! algorithm as a Wasm plugin (`plugins/router-round-robin`), on one
//! thread, in one run. Prints nanoseconds per decision and the ratio.
//!
//!     cargo bench -p rampart --bench route
//!
//! Builds the plugins first if needed (the wasm32-wasip2 target must be
//! installed).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart::backend::{ConnectOptions, LinkOptions, NodePool};
use rampart::config::ReadFrom;
use rampart::failover::probe::Report;
use rampart::policy::{Limits, WasmRouter};
use rampart::route::{Read, ReadPolicy, RoundRobinReplicas};
use rampart::topology::{Health, Node, Role, Shard};

fn shard(changes: &Arc<AtomicU64>) -> Shard {
    let opts = LinkOptions {
        connect: ConnectOptions {
            username: None,
            password: None,
            timeout: Duration::from_secs(1),
        },
        max_reply_depth: 512,
        reply_timeout: None,
        stats: Default::default(),
    };
    let nodes: Vec<Arc<Node>> = (1..=3)
        .map(|id| {
            let addr = format!("127.0.0.1:{}", 7000 + id);
            let pool = NodePool::new(addr.clone(), opts.clone(), 1, 0, 1, Arc::new(|_: &str| {}));
            Arc::new(Node::new(id, addr, pool, changes.clone()))
        })
        .collect();
    let shard = Shard::new("bench".into(), nodes, ReadFrom::Replicas, false, u64::MAX);
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
        };
        shard.observe(node, &report, now);
    }
    shard.refresh();
    shard
}

fn plugin() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(dir.join("target"))
            .status()
            .expect("run cargo");
    assert!(status.success(), "building the plugins failed");
    dir.join("target/wasm32-wasip2/release/router_round_robin.wasm")
}

/// Nanoseconds per decision, the best of several rounds.
fn measure(policy: &dyn ReadPolicy, shard: &Shard) -> f64 {
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
            let read = Read { client_id: i, key };
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
    let native = RoundRobinReplicas::default();
    let path = plugin();
    let bytes = std::fs::read(&path).expect("the plugin was built");
    let wasm = WasmRouter::load(
        "router-round-robin",
        &bytes,
        "",
        Limits::default(),
        changes.clone(),
    )
    .expect("the plugin loads");
    assert!(native
        .pick(
            &shard,
            &Read {
                client_id: 0,
                key: b""
            }
        )
        .is_some());
    assert!(wasm
        .pick(
            &shard,
            &Read {
                client_id: 0,
                key: b""
            }
        )
        .is_some());

    // Interleaved, so that noise hits both alike.
    let (mut n, mut w) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        n = n.min(measure(&native, &shard));
        w = w.min(measure(&wasm, &shard));
    }
    println!("route decision, round robin over 2 replicas (best of 3x6 rounds of 200k calls):");
    println!("  native       {n:8.1} ns");
    println!(
        "  wasm plugin  {w:8.1} ns   ({:.1}x native, +{:.0} ns per read)",
        w / n,
        w - n
    );
}
