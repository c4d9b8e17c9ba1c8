//! `rampart policy new router|quorum|detector NAME`: a ready plugin crate
//! (Cargo.toml with the SDK dependency and the target set, a commented
//! skeleton that already works, a scenario file for `rampart policy test`,
//! a README), built with one `cargo build --release`.

use std::path::{Path, PathBuf};

use super::Failure;

#[derive(clap::Args)]
pub struct New {
    /// router, quorum or detector.
    kind: String,
    /// The crate's name; also the directory made for it.
    name: String,
    /// Where to make the directory; default: here.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Rampart's `sdk/` directory; default: the one this binary was built
    /// from, if it is still there.
    #[arg(long)]
    sdk: Option<PathBuf>,
}

pub fn new(args: New) -> Result<(), Failure> {
    let kind = args.kind.as_str();
    let (skeleton, scenario) = match kind {
        "router" => (ROUTER, ROUTER_SCENARIO),
        "quorum" => (QUORUM, QUORUM_SCENARIO),
        "detector" => (DETECTOR, DETECTOR_SCENARIO),
        other => {
            return Err(Failure::Usage(format!(
                "policy kind '{other}': expected router, quorum or detector"
            )))
        }
    };
    let valid = !args.name.is_empty()
        && args.name.starts_with(|c: char| c.is_ascii_lowercase())
        && args
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(Failure::Usage(format!(
            "name '{}': expected a crate name (lower-case letters, digits, - and _, starting with a letter)",
            args.name
        )));
    }
    let sdk = sdk_path(args.sdk)?;
    let root = args.dir.join(&args.name);
    if root.exists() {
        return Err(Failure::Usage(format!(
            "{} already exists; choose another name or --dir",
            root.display()
        )));
    }
    let wasm = format!("{}.wasm", args.name.replace('-', "_"));
    let fill = |text: &str| {
        text.replace("{name}", &args.name)
            .replace("{kind}", kind)
            .replace("{wasm}", &wasm)
            .replace("{sdk}", &sdk.display().to_string())
    };
    let files = [
        ("Cargo.toml", fill(CARGO_TOML)),
        (".cargo/config.toml", CARGO_CONFIG.to_string()),
        ("src/lib.rs", fill(skeleton)),
        ("scenario.toml", fill(scenario)),
        ("README.md", fill(README)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in files {
        write(&root.join(file), &text)?;
    }
    println!(
        "made {kind} plugin '{}' in {}\n\n  cd {}\n  cargo build --release\n  rampart policy test target/wasm32-wasip2/release/{wasm} --scenario scenario.toml --expect\n  rampart policy load {kind} target/wasm32-wasip2/release/{wasm} --name {}",
        args.name,
        root.display(),
        root.display(),
        args.name
    );
    Ok(())
}

/// The SDK to depend on, made absolute so the crate builds from anywhere.
fn sdk_path(given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    let path = given.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk"));
    path.join("Cargo.toml")
        .is_file()
        .then(|| path.canonicalize().unwrap_or(path.clone()))
        .ok_or_else(|| {
            Failure::Usage(format!(
                "no rampart-sdk at {}: give --sdk <Rampart's sdk/ directory>",
                path.display()
            ))
        })
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    let failed = |e: std::io::Error| Failure::Usage(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    std::fs::write(path, text).map_err(failed)
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
description = "A Rampart {kind} policy"
edition = "2021"
version = "0.1.0"
publish = false

# A plugin is its own workspace.
[workspace]

[lib]
crate-type = ["cdylib"]

[dependencies]
rampart-sdk = { path = "{sdk}" }

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
# Function names stay in the component, so a trap's backtrace names the
# function; `strip = true` saves a few KiB and loses that.
strip = "debuginfo"
"#;

const CARGO_CONFIG: &str = r#"# Plugins are WebAssembly components (rustup target add wasm32-wasip2).
[build]
target = "wasm32-wasip2"
"#;

const ROUTER: &str = r#"//! A Rampart router: picks the node that serves each read.
//!
//! Rampart calls `configure` once with the text given at load time,
//! `update` whenever the shard's nodes change (role, health, fitness for
//! reads), and `route` for reads when `update` answered `Plan::PerRead`.
//! Node ids are 1, 2, ... in the order of the shard's `nodes` setting.
//! Keep away from `std::fs`, `std::env`, `println!` and threads: the
//! sandbox has none of them. A panic is reported with its message.

use std::cell::RefCell;

use rampart_sdk::router::{log, CommandClass, Guest, Level, Node, Plan, Request};

#[derive(Default)]
struct State {
    /// The replicas that may serve reads, from the last `update`.
    readable: Vec<u32>,
}

thread_local! {
    // One instance per Rampart worker thread: no locking needed.
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Router;

impl Guest for Router {
    fn configure(config: String) -> Result<(), String> {
        // Refuse what you do not understand: the load fails with this text.
        if !config.trim().is_empty() {
            return Err(format!("this router takes no configuration, got {config:?}"));
        }
        log(Level::Info, "{name} configured");
        Ok(())
    }

    fn update(nodes: Vec<Node>, _local_zone: u32) -> Plan {
        let readable: Vec<u32> = nodes.iter().filter(|n| n.serves_reads).map(|n| n.id).collect();
        STATE.with(|s| s.borrow_mut().readable = readable);
        // Plan::Rotate(ids) or Plan::ByKey(ids) let Rampart carry the
        // decision out without calling `route`; PerRead calls it per read.
        Plan::PerRead
    }

    fn route(req: Request) -> Option<u32> {
        if req.class != CommandClass::Read {
            return None; // None: the primary
        }
        STATE.with(|s| {
            let s = s.borrow();
            // The same key always from the same replica.
            let pick = (req.key_hash % s.readable.len().max(1) as u64) as usize;
            s.readable.get(pick).copied()
        })
    }
}

rampart_sdk::router::export_router!(Router);
"#;

const QUORUM: &str = r#"//! A Rampart quorum policy: how many replicas must have a write before
//! its client is answered, and which replica to promote when the primary
//! dies.
//!
//! Rampart calls `configure` once with the text given at load time,
//! `requirement` when the shard's replica count is known or changes, and
//! `elect` at failover with the replicas that answered. Ids are 1, 2, ...
//! in the order of the shard's `nodes` setting; `elect` must answer one of
//! the candidates' ids, or none. Keep away from `std::fs`, `std::env`,
//! `println!` and threads: the sandbox has none of them.

use rampart_sdk::quorum::{Candidate, Guest, Requirement};

struct Quorum;

impl Guest for Quorum {
    fn configure(config: String) -> Result<(), String> {
        if !config.trim().is_empty() {
            return Err(format!("this policy takes no configuration, got {config:?}"));
        }
        Ok(())
    }

    fn requirement(replicas: u32) -> Requirement {
        Requirement {
            // A majority of the replicas.
            acks: replicas / 2 + 1,
            timeout_ms: 1000,
            fail_on_shortfall: true,
        }
    }

    fn elect(candidates: Vec<Candidate>) -> Option<u32> {
        // Priority 0 is never promoted; then the most data, then the
        // lowest priority value.
        candidates
            .iter()
            .filter(|c| c.priority > 0)
            .max_by_key(|c| (c.offset, std::cmp::Reverse(c.priority)))
            .map(|c| c.id)
    }
}

rampart_sdk::quorum::export_quorum!(Quorum);
"#;

const DETECTOR: &str = r#"//! A Rampart failure detector: judges each node from its probe results.
//!
//! Rampart calls `configure` once with the text given at load time,
//! `observe` with every probe result (when the probe started, whether it
//! answered) and `assess` on every tick. `node` is the node's id (1, 2,
//! ... in configuration order). A `down` primary is failed over. Keep
//! away from `std::fs`, `std::env`, `println!` and threads.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rampart_sdk::detector::{Guest, Health};

/// After this long without an answer a node is down; before, suspect.
const DOWN_AFTER_MS: u64 = 1000;

#[derive(Clone, Copy)]
struct Seen {
    /// When its last answered probe started.
    last_ok_ms: u64,
    /// Whether its latest probe answered.
    answering: bool,
}

thread_local! {
    static NODES: RefCell<BTreeMap<u32, Seen>> = RefCell::new(BTreeMap::new());
}

struct Detector;

impl Guest for Detector {
    fn configure(config: String) -> Result<(), String> {
        if !config.trim().is_empty() {
            return Err(format!("this detector takes no configuration, got {config:?}"));
        }
        Ok(())
    }

    fn observe(node: u32, at_ms: u64, ok: bool) {
        NODES.with(|n| {
            let mut nodes = n.borrow_mut();
            let seen = nodes.entry(node).or_insert(Seen {
                last_ok_ms: at_ms,
                answering: ok,
            });
            seen.answering = ok;
            if ok {
                seen.last_ok_ms = at_ms;
            }
        });
    }

    fn assess(node: u32, now_ms: u64) -> Health {
        match NODES.with(|n| n.borrow().get(&node).copied()) {
            Some(seen) if seen.answering => Health::Up,
            Some(seen) if now_ms.saturating_sub(seen.last_ok_ms) < DOWN_AFTER_MS => {
                Health::Suspect
            }
            _ => Health::Down,
        }
    }
}

rampart_sdk::detector::export_detector!(Detector);
"#;

const ROUTER_SCENARIO: &str = r#"# rampart policy test target/wasm32-wasip2/release/{wasm} --scenario scenario.toml --expect
kind = "router"
config = ""

# The shard the router sees, in configuration order (node ids 1, 2, 3).
# Per node: role, health (up|suspect|down), zone, priority, offset,
# lag_ms, rtt_us, connected.
[[nodes]]
addr = "10.0.0.1:6379"
role = "primary"

[[nodes]]
addr = "10.0.0.2:6379"
role = "replica"

[[nodes]]
addr = "10.0.0.3:6379"
role = "replica"

# Reads to place; `expect` is a node's address or "primary".
[[reads]]
key = "user:1"
expect = "10.0.0.3:6379"

[[reads]]
key = "user:1"
client = 2
expect = "10.0.0.3:6379"
"#;

const QUORUM_SCENARIO: &str = r#"# rampart policy test target/wasm32-wasip2/release/{wasm} --scenario scenario.toml --expect
kind = "quorum"
config = ""

# The primary died; the replicas are the candidates.
[[nodes]]
addr = "10.0.0.1:6379"
role = "primary"
health = "down"

[[nodes]]
addr = "10.0.0.2:6379"
role = "replica"
offset = 900

[[nodes]]
addr = "10.0.0.3:6379"
role = "replica"
offset = 1000

[quorum]
expect_acks = 2
expect_elect = "10.0.0.3:6379"
"#;

const DETECTOR_SCENARIO: &str = r#"# rampart policy test target/wasm32-wasip2/release/{wasm} --scenario scenario.toml --expect
kind = "detector"
config = ""

[[nodes]]
addr = "10.0.0.1:6379"
role = "primary"

# Probe results in order, each judged as it arrives.
[[probes]]
node = "10.0.0.1:6379"
at_ms = 0
ok = true
expect = "up"

[[probes]]
node = "10.0.0.1:6379"
at_ms = 500
ok = false
expect = "suspect"

[[probes]]
node = "10.0.0.1:6379"
at_ms = 1500
ok = false
expect = "down"
"#;

const README: &str = r#"# {name}

A Rampart {kind} policy, made by `rampart policy new {kind} {name}`.

```sh
rustup target add wasm32-wasip2   # once
cargo build --release             # target/wasm32-wasip2/release/{wasm}
rampart policy test target/wasm32-wasip2/release/{wasm} --scenario scenario.toml --expect
rampart policy load {kind} target/wasm32-wasip2/release/{wasm} --name {name}
```

`src/lib.rs` is the policy; `scenario.toml` describes a shard and what
the policy should decide in it, and `rampart policy test` checks that
without Redis (add cases as you change the policy; run it in CI).
`rampart policy load` sends it to a running Rampart (`--admin` and
`--token`, or `RAMPART_ADMIN` and `RAMPART_ADMIN_TOKEN`, say which), which
checks it before it takes over; `rampart policy list` shows its calls,
traps and last error. Rampart's docs/policies.md has the whole contract.
"#;
