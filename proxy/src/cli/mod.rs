//! The `rampart` command line. It lives in the library so the tests run
//! exactly the code users run; `main.rs` only calls [`main`].
//!
//! `run` and `demo` start a proxy in this process, `check-config` reads a
//! file; `status`, `events`, `doctor`, `policy`, `slots`, `switchover`,
//! `promote`, `resync` and `reload` talk to a running one over its admin HTTP
//! listener ([`admin::Admin`]), so they work from any machine that can
//! reach it (`policy test` and `policy new` need no Rampart at all).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod admin;
mod demo;
mod policy;
mod policy_new;
mod policy_test;
mod primary;
mod progress;
mod run;
mod slots;
mod status;

#[derive(Parser)]
#[command(
    name = "rampart",
    version,
    about = "A Redis high-availability proxy: routing, synchronous replication, failover",
    after_help = "Start with `rampart demo`, then `rampart status` in another terminal."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and exit (status 2 when it is invalid).
    /// With `--since OLD`: also say which of the changes from OLD a reload
    /// (SIGHUP) applies at once and which wait for a restart.
    CheckConfig {
        config: PathBuf,
        #[arg(long, value_name = "OLD")]
        since: Option<PathBuf>,
    },
    /// Start three local redis-server nodes (a primary and two replicas)
    /// and Rampart in front of them, or three per shard with `--shards N`;
    /// Ctrl-C stops everything.
    Demo(demo::DemoArgs),
    /// The topology of a running Rampart as a table.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the JSON as the admin API returns it.
        #[arg(long)]
        json: bool,
    },
    /// The failover and switchover events of a running Rampart.
    Events {
        #[command(flatten)]
        target: Target,
        /// Keep printing new events until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// With `[coordination]`: every instance's events (from etcd),
        /// each with the instance's name.
        #[arg(long, conflicts_with = "follow")]
        all: bool,
    },
    /// List, load, shadow, activate and roll back the policies (router,
    /// quorum, detector); test a plugin or start a new one.
    Policy {
        #[command(subcommand)]
        action: policy::Action,
    },
    /// Move a shard's primary to another node without losing writes.
    Switchover {
        #[command(flatten)]
        target: Target,
        /// The shard, e.g. `main`.
        shard: String,
        /// The node to promote (`host:port`); default: the most up to date.
        #[arg(long = "to")]
        to: Option<String>,
    },
    /// Make a node the primary now, without proof that it holds every
    /// acknowledged write: the way out when a shard waits for an operator
    /// (see `rampart status`). Needs `--force`.
    Promote {
        #[command(flatten)]
        target: Target,
        /// The shard, e.g. `main`.
        shard: String,
        /// The node to promote (`host:port` as configured).
        node: String,
        /// Say that you accept losing what the node may lack.
        #[arg(long)]
        force: bool,
    },
    /// Check a running deployment against the pitfalls that turn a
    /// failure into a loss or an outage, each with its fix (status 1 when
    /// any is found).
    Doctor {
        #[command(flatten)]
        target: Target,
        /// Print the JSON as the admin API returns it.
        #[arg(long)]
        json: bool,
    },
    /// Which shard owns which hash slots; `slots move` moves some.
    #[command(args_conflicts_with_subcommands = true)]
    Slots {
        #[command(subcommand)]
        action: Option<SlotsAction>,
        #[command(flatten)]
        target: Target,
        /// Print the `slots = ...` lines that make a configuration file
        /// match the running map.
        #[arg(long, conflicts_with = "json")]
        toml: bool,
        /// Print the JSON as the admin API returns it.
        #[arg(long)]
        json: bool,
    },
    /// Read the configuration file again now, as SIGHUP does, and say
    /// which changes applied at once and which wait for a restart.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// With `[coordination]`: forget an instance stopped for good, so
    /// slot moves stop waiting for it (never one that may still run).
    Forget {
        #[command(flatten)]
        target: Target,
        /// The instance's name (`coordination.instance`).
        instance: String,
    },
    /// Fan-out mode: copy a node afresh from a node in sync.
    Resync {
        #[command(flatten)]
        target: Target,
        /// The shard, e.g. `main`.
        shard: String,
        /// The node (`host:port` as configured).
        node: String,
    },
}

/// Which running Rampart to talk to.
/// What `rampart slots` can do besides showing the map.
#[derive(Subcommand)]
enum SlotsAction {
    /// Move hash slots to another shard while clients keep using them
    /// (needs `failover.state_dir`).
    Move {
        /// The slots, as in the configuration: `8192-16383`, `0-99,200`.
        slots: String,
        /// The shard that will own them.
        #[arg(long)]
        to: String,
        /// Keys per second the background walk moves at most (0: no
        /// limit); commands touching a moving key always move it at once.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Show the progress and return when the move is done.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Args, Clone)]
pub struct Target {
    /// Its admin listener, `host:port`.
    #[arg(long, env = "RAMPART_ADMIN", global = true)]
    admin: Option<String>,
    /// Its admin token, for changes (not needed to read).
    #[arg(
        long,
        env = "RAMPART_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    token: Option<String>,
    /// Take the admin address and token from this configuration file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The admin listener uses TLS (`[admin.tls]`): trust this CA (PEM).
    #[arg(long, env = "RAMPART_ADMIN_CACERT", global = true)]
    cacert: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => return run::run(config),
        Command::CheckConfig { config, since } => run::check_config(&config, since.as_deref()),
        Command::Demo(args) => return demo::demo(args),
        Command::Status { target, json } => {
            admin::Admin::connect(&target).and_then(|a| status::status(&a, json))
        }
        Command::Events {
            target,
            follow,
            all,
        } => admin::Admin::connect(&target).and_then(|a| status::events(&a, follow, all)),
        Command::Policy { action } => policy::policy(action),
        Command::Switchover { target, shard, to } => admin::Admin::connect(&target)
            .and_then(|a| primary::switchover(&a, &shard, to.as_deref())),
        Command::Promote {
            target,
            shard,
            node,
            force,
        } => {
            admin::Admin::connect(&target).and_then(|a| primary::promote(&a, &shard, &node, force))
        }
        Command::Resync {
            target,
            shard,
            node,
        } => admin::Admin::connect(&target).and_then(|a| primary::resync(&a, &shard, &node)),
        Command::Slots {
            action:
                Some(SlotsAction::Move {
                    slots,
                    to,
                    rate,
                    wait,
                }),
            target,
            ..
        } => admin::Admin::connect(&target)
            .and_then(|a| slots::move_slots(&a, &slots, &to, rate, wait)),
        Command::Slots {
            action: None,
            target,
            toml,
            json,
        } => admin::Admin::connect(&target).and_then(|a| slots::slots(&a, toml, json)),
        Command::Forget { target, instance } => admin::Admin::connect(&target).and_then(|a| {
            let path = format!("/v1/coordination/members/{}", admin::encode(&instance));
            let answer = a.request("DELETE", &path, &[])?;
            println!("{}", answer.trim_end());
            Ok(())
        }),
        Command::Reload { target } => admin::Admin::connect(&target).and_then(|a| {
            let answer = a.request("POST", "/v1/reload", &[])?;
            println!("{}", answer.trim_end());
            Ok(())
        }),
        Command::Doctor { target, json } => {
            admin::Admin::connect(&target).and_then(|a| status::doctor(&a, json))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rampart: {e}");
            ExitCode::from(e.code())
        }
    }
}

/// A command that failed, and the exit status that says how.
#[derive(Debug)]
pub enum Failure {
    /// The request was wrong or refused (status 2).
    Usage(String),
    /// Rampart could not be reached or answered with an error (status 1).
    Remote(String),
    /// What the command checked did not hold: a plugin that did not
    /// decide as its scenario expects (status 1).
    Failed(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Remote(_) | Failure::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Remote(m) | Failure::Failed(m) => {
                f.write_str(m.trim_end())
            }
        }
    }
}
