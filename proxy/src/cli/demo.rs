//! `rampart demo`: three local redis-server nodes (a primary and two
//! replicas) with Rampart in front, configured exactly as
//! `examples/configs/local.toml` says except for the ports asked for. With
//! `--fanout`, three independent nodes and the shard in fan-out mode; with
//! `--shards N`, N such shards (three nodes each) sharing the hash slots. For
//! trying Rampart out, not for production: the nodes keep no data on disk
//! and everything stops with Ctrl-C.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use super::progress::Step;
use super::run::{drain, init_logging, wait_for_stop_signal};
use crate::{Config, Server};

/// The configuration the demo runs, ports and state directory aside.
const LOCAL_TOML: &str = include_str!("../../../examples/configs/local.toml");

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where Redis clients connect.
    #[arg(long, default_value_t = 6380)]
    port: u16,
    /// The admin HTTP listener (dashboard, API).
    #[arg(long, default_value_t = 6381)]
    admin_port: u16,
    /// Ports of the three nodes of each shard; the first of each three
    /// starts as the primary. Default: 7001, 7002, ... (three per shard).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<u16>,
    /// Shards, of three nodes each, sharing the hash slots evenly.
    #[arg(long, default_value_t = 1)]
    shards: u16,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Independent nodes (no Redis replication between them), the shard in
    /// fan-out mode: Rampart sends every write to each.
    #[arg(long)]
    fanout: bool,
}

pub fn demo(args: DemoArgs) -> ExitCode {
    match start_and_wait(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rampart demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start_and_wait(mut args: DemoArgs) -> Result<(), String> {
    if !(1..=8).contains(&args.shards) {
        return Err(format!("--shards: expected 1 to 8, got {}", args.shards));
    }
    let wanted = 3 * usize::from(args.shards);
    if args.nodes.is_empty() {
        args.nodes = (7001..).take(wanted).collect();
    }
    if args.nodes.len() != wanted {
        return Err(format!(
            "--nodes: expected {wanted} ports (three per shard, e.g. 7001,7002,7003), got {}",
            args.nodes.len()
        ));
    }
    let mut config = Config::parse(LOCAL_TOML).map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("rampart-demo-{}", std::process::id()));
    let mut nodes = Nodes {
        children: Vec::new(),
        dir: dir.clone(),
    };
    for group in args.nodes.chunks(3) {
        // In fan-out mode no node follows another.
        let primary = (!args.fanout).then_some(group[0]);
        for &port in group {
            let role = match primary {
                None => "independent",
                Some(p) if p == port => "primary",
                Some(_) => "replica",
            };
            let step = Step::start(&format!("starting redis-server 127.0.0.1:{port} ({role})"));
            let started = nodes.start(&args.redis_server, port, primary.filter(|&p| p != port));
            step.finish(started, "up")?;
        }
    }
    if !args.fanout {
        let step = Step::start("waiting for the replicas to copy their primary");
        let synced = wait(Duration::from_secs(30), || {
            args.nodes.chunks(3).all(|group| {
                group[1..].iter().all(|&port| {
                    call(port, "INFO replication")
                        .is_some_and(|info| info.contains("master_link_status:up"))
                })
            })
        });
        step.finish(synced, "in sync")?;
    }

    config.proxy.listen = format!("127.0.0.1:{}", args.port);
    config.admin.listen = Some(format!("127.0.0.1:{}", args.admin_port));
    config.failover.state_dir = Some(dir.join("state").display().to_string());
    let template = config
        .shards
        .values()
        .next()
        .cloned()
        .ok_or("examples/configs/local.toml has no shard")?;
    config.shards.clear();
    let count = args.nodes.len() / 3;
    for (i, group) in args.nodes.chunks(3).enumerate() {
        let mut shard = template.clone();
        shard.nodes = group.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        if count > 1 {
            let (first, last) = (16384 * i / count, 16384 * (i + 1) / count - 1);
            shard.slots = Some(format!("{first}-{last}"));
        }
        if args.fanout {
            shard.replication.mode = crate::config::Mode::Fanout;
            shard.replication.manage_replication = false;
        }
        config.shards.insert(shard_name(i, count), shard);
    }
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        eprintln!("starting Rampart on 127.0.0.1:{}", args.port);
        let server = Server::start(config)
            .await
            .map_err(|e| format!("cannot start Rampart: {e}"))?;
        println!("{}", instructions(&args, &dir));
        wait_for_stop_signal().await;
        drain(&server).await;
        Ok::<(), String>(())
    })?;
    drop(nodes);
    eprintln!("stopped the nodes and Rampart");
    Ok(())
}

/// `main` for the one shard of the usual demo, `shard1`, `shard2` ...
/// otherwise.
fn shard_name(index: usize, count: usize) -> String {
    if count == 1 {
        "main".into()
    } else {
        format!("shard{}", index + 1)
    }
}

/// How to run this very program from a shell: `rampart` when that is what
/// PATH finds, else its full path (`cargo run` leaves it in target/).
fn own_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "rampart".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::canonicalize(dir.join("rampart")).ok() == std::fs::canonicalize(&exe).ok()
        })
    });
    if on_path {
        "rampart".into()
    } else {
        exe.display().to_string()
    }
}

/// The demo's printed instructions: long because it is mostly text.
fn instructions(args: &DemoArgs, dir: &std::path::Path) -> String {
    let (port, admin) = (args.port, args.admin_port);
    let rampart = own_command();
    if args.nodes.len() > 3 {
        let shards: Vec<String> = args
            .nodes
            .chunks(3)
            .enumerate()
            .map(|(i, group)| {
                format!(
                    "{} on :{} (primary), :{} and :{}",
                    shard_name(i, args.nodes.len() / 3),
                    group[0],
                    group[1],
                    group[2]
                )
            })
            .collect();
        let second = args.nodes[3];
        return format_tips(
            format!(
                "\nRampart is up in front of {} shards: {}. Keys are placed by hash slot, as Redis Cluster places them.\n",
                shards.len(),
                shards.join("; ")
            ),
            [
                (format!("redis-cli -p {port}"), "talk to Redis through Rampart"),
                (
                    format!("redis-cli -p {port} MSET a 1 b 2 c 3"),
                    "keys spread over the shards; MGET/DEL/SCAN see them all",
                ),
                (
                    format!("redis-cli -p {port} CLUSTER KEYSLOT a"),
                    "the slot a key lives in",
                ),
                (
                    format!("{rampart} status --admin 127.0.0.1:{admin}"),
                    "every shard as a table",
                ),
                (
                    format!("redis-cli -p {second} SHUTDOWN NOSAVE"),
                    "kill shard2's primary: only shard2 fails over",
                ),
                (
                    format!("http://127.0.0.1:{admin}/dashboard"),
                    "the live dashboard",
                ),
            ],
        );
    }
    let [primary, second, third] = [args.nodes[0], args.nodes[1], args.nodes[2]];
    if args.fanout {
        return format_tips(
            format!("\nRampart is up, sending every write to 127.0.0.1:{primary}, :{second} and :{third} (independent nodes, fan-out mode).\n"),
            [
                (format!("redis-cli -p {port}"), "talk to Redis through Rampart"),
                (format!("redis-cli -p {third} GET <key>"), "every node has every write"),
                (
                    format!("http://127.0.0.1:{admin}/dashboard"),
                    "the live dashboard, each node's place in the write log",
                ),
                (
                    format!("redis-cli -p {third} CLIENT PAUSE 2000 WRITE"),
                    "pause a node: its writes wait in the backlog, then it catches up",
                ),
                (
                    format!("{rampart} resync main 127.0.0.1:{third} --admin 127.0.0.1:{admin}"),
                    "copy a node afresh while writes go on",
                ),
                (
                    format!("{rampart} events --admin 127.0.0.1:{admin}"),
                    "what Rampart did, step by step",
                ),
            ],
        );
    }
    let tips = [
        (
            format!("redis-cli -p {port}"),
            "talk to Redis through Rampart",
        ),
        (
            format!("http://127.0.0.1:{admin}/dashboard"),
            "the live dashboard",
        ),
        (
            format!("{rampart} status --admin 127.0.0.1:{admin}"),
            "the topology as a table",
        ),
        (
            format!("{rampart} switchover main --to 127.0.0.1:{second} --admin 127.0.0.1:{admin}"),
            "move the primary: no errors, no lost writes",
        ),
        (
            format!("redis-cli -p {primary} SHUTDOWN NOSAVE"),
            "or kill it: Rampart fails over in about a second",
        ),
        (
            format!(
                "redis-server --port {primary} --bind 127.0.0.1 --save '' --appendonly no --dir {}",
                dir.join(primary.to_string()).display()
            ),
            "start it again (another terminal): Rampart makes it a replica of the new primary",
        ),
        (
            format!("{rampart} events --admin 127.0.0.1:{admin}"),
            "what Rampart did, step by step",
        ),
    ];
    format_tips(
        format!(
            "\nRampart is up in front of 127.0.0.1:{primary} (primary), :{second} and :{third} (replicas).\n"
        ),
        tips,
    )
}

/// The heading, then one aligned line per (command, what it shows).
fn format_tips<const N: usize>(heading: String, tips: [(String, &str); N]) -> String {
    let width = tips
        .iter()
        .map(|(command, _)| command.len())
        .max()
        .unwrap_or(0);
    let mut out = heading;
    for (command, what) in tips {
        out.push_str(&format!("  {command:<width$}   {what}\n"));
    }
    out.push_str("Ctrl-C stops the nodes and Rampart.");
    out
}

/// The demo's redis-server processes; stopped and their directory removed
/// on drop, also when the demo fails half way.
struct Nodes {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Nodes {
    /// Starts a node on `port`, a replica of `primary` if given.
    fn start(&mut self, binary: &str, port: u16, primary: Option<u16>) -> Result<(), String> {
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut command = Command::new(binary);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // Replicas copy the primary at once rather than after 5 s.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(primary) = primary {
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let child = command.spawn().map_err(|e| {
            format!("cannot run {binary}: {e} (on Debian/Ubuntu: apt-get install -y redis-server)")
        })?;
        self.children.push(child);
        wait(Duration::from_secs(10), || {
            call(port, "PING").is_some_and(|r| r == "PONG")
        })
        .map_err(|e| {
            format!(
                "{e}: is port {port} taken? (see {})",
                dir.join("redis.log").display()
            )
        })
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait(timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("not ready after {} s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One inline command to a node; its simple-string or bulk reply as text.
fn call(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(simple) = text.strip_prefix('+') {
            if let Some((line, _)) = simple.split_once("\r\n") {
                return Some(line.to_string());
            }
        } else if let Some(bulk) = text.strip_prefix('$') {
            let (len, rest) = bulk.split_once("\r\n")?;
            let len: usize = len.parse().ok()?;
            if rest.len() >= len {
                return Some(rest[..len].to_string());
            }
        } else if !text.is_empty() {
            return None;
        }
    }
}
