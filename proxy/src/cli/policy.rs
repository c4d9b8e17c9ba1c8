//! `rampart policy ...`: the policies of a running Rampart, listed and
//! changed through its admin API (changes need the admin token when one
//! is set).

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use serde_json::Value;

use super::admin::{encode, Admin};
use super::progress::Step;
use super::status::{cells, str, table};
use super::{Failure, Target};

#[derive(Subcommand)]
pub enum Action {
    /// Every shard's policies: active, previous and shadow router
    /// generations, quorum and detector, with calls, traps and fallbacks.
    List {
        #[command(flatten)]
        target: Target,
        /// Print the JSON as the admin API returns it.
        #[arg(long)]
        json: bool,
    },
    /// Load a policy and make it active. SOURCE is a `.wasm` component
    /// (uploaded from here) or `builtin:<name>`.
    Load(Load),
    /// Load a router beside the active one: it sees the same reads, its
    /// choices are only counted (`policy list` shows agree/differ).
    Shadow(Load),
    /// Make the shadow router active.
    Activate(Which),
    /// Go back to the previous router generation.
    Rollback(Which),
    /// Run a plugin against a shard described in a scenario file, without
    /// Redis or a running Rampart, and print each decision.
    Test(super::policy_test::Test),
    /// Make a ready plugin crate: `rampart policy new router my-router`.
    New(super::policy_new::New),
}

#[derive(clap::Args)]
pub struct Load {
    #[command(flatten)]
    target: Target,
    kind: Kind,
    source: String,
    /// The text handed to the plugin's `configure`.
    #[arg(long, value_name = "CONFIG", default_value = "")]
    with: String,
    /// The shard; default: the first.
    #[arg(long)]
    shard: Option<String>,
    /// What logs, views and metrics call it; default: the file's name.
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::Args)]
pub struct Which {
    #[command(flatten)]
    target: Target,
    kind: Kind,
    #[arg(long)]
    shard: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Router,
    Quorum,
    Detector,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Router => "router",
            Kind::Quorum => "quorum",
            Kind::Detector => "detector",
        }
    }
}

/// Runs `action`: against the Rampart its target names, or, for `test`
/// and `new`, here with no Rampart at all.
pub fn policy(action: Action) -> Result<(), Failure> {
    match action {
        Action::List { target, json } => list(&Admin::connect(&target)?, json),
        Action::Load(load) => upload(&Admin::connect(&load.target)?, load, ""),
        Action::Shadow(load) => upload(&Admin::connect(&load.target)?, load, "/shadow"),
        Action::Activate(which) => post(&Admin::connect(&which.target)?, which, "activate"),
        Action::Rollback(which) => post(&Admin::connect(&which.target)?, which, "rollback"),
        Action::Test(test) => super::policy_test::test(test),
        Action::New(new) => super::policy_new::new(new),
    }
}

/// `policy list`: one table row per generation of each kind, then the
/// last errors; long for the columns it fills.
fn list(admin: &Admin, json: bool) -> Result<(), Failure> {
    if json {
        print!("{}", admin.get("/v1/policies")?);
        return Ok(());
    }
    let policies = admin.get_json("/v1/policies")?;
    let mut rows = vec![cells(&[
        "SHARD",
        "KIND",
        "SLOT",
        "POLICY",
        "GEN",
        "CALLS",
        "TRAPS",
        "FALLBACKS",
        "SOURCE",
    ])];
    let row = |shard: &str, kind: &str, slot: &str, p: &Value| {
        vec![
            shard.to_string(),
            kind.to_string(),
            slot.to_string(),
            format!("{} ({})", str(&p["name"]), str(&p["kind"])),
            p.get("generation").map(str).unwrap_or_else(|| "-".into()),
            p["calls"].to_string(),
            p["traps"].to_string(),
            p["fallbacks"].to_string(),
            match p["sha256"].as_str() {
                Some(sha) => format!("{} sha256:{}", str(&p["source"]), &sha[..sha.len().min(12)]),
                None => p.get("source").map(str).unwrap_or_else(|| "-".into()),
            },
        ]
    };
    for entry in policies["router"].as_array().into_iter().flatten() {
        let shard = str(&entry[0]);
        let slot = &entry[1];
        rows.push(row(&shard, "router", "active", &slot["active"]));
        if let Some(shadow) = slot["shadow"].as_object() {
            let (agree, differ) = shadow["by_active_choice"]
                .as_array()
                .into_iter()
                .flatten()
                .fold((0, 0), |(a, d), c| {
                    (
                        a + c["agree"].as_u64().unwrap_or(0),
                        d + c["disagree"].as_u64().unwrap_or(0),
                    )
                });
            let label = format!("shadow ({agree} agree, {differ} differ)");
            rows.push(row(&shard, "router", &label, &shadow["candidate"]));
        }
        if !slot["previous"].is_null() {
            rows.push(row(&shard, "router", "previous", &slot["previous"]));
        }
        for retired in slot["retired"].as_array().into_iter().flatten() {
            rows.push(row(&shard, "router", "retired", retired));
        }
    }
    for entry in policies["quorum"].as_array().into_iter().flatten() {
        rows.push(row(&str(&entry[0]), "quorum", "active", &entry[1]));
    }
    rows.push(row("*", "detector", "active", &policies["detector"]));
    print!("{}", table(&rows));
    print_notes(&policies);
    Ok(())
}

/// What is too long for the table: why each generation that was rolled
/// back left, the last error of every policy that has one, and where each
/// shadow would have sent the reads it saw.
fn print_notes(policies: &Value) {
    for entry in policies["router"].as_array().into_iter().flatten() {
        for retired in entry[1]["retired"].as_array().into_iter().flatten() {
            println!(
                "router generation {} of {}: {}; last error: {}",
                str(&retired["generation"]),
                str(&entry[0]),
                str(&retired["reason"]),
                retired["last_error"].as_str().unwrap_or("none")
            );
        }
        for which in ["active", "previous"] {
            if let Some(error) = entry[1][which]["last_error"].as_str() {
                println!("last error of {}'s {which} router: {error}", str(&entry[0]));
            }
        }
    }
    for entry in policies["quorum"].as_array().into_iter().flatten() {
        if let Some(error) = entry[1]["last_error"].as_str() {
            println!("last error of {}'s quorum policy: {error}", str(&entry[0]));
        }
    }
    if let Some(error) = policies["detector"]["last_error"].as_str() {
        println!("last error of the detector: {error}");
    }
    for entry in policies["router"].as_array().into_iter().flatten() {
        let chosen = &entry[1]["shadow"]["by_shadow_choice"];
        if let Some(choices) = chosen.as_array() {
            let text: Vec<String> = choices
                .iter()
                .map(|c| format!("{} {}", str(&c[0]), c[1]))
                .collect();
            println!(
                "shadow of {} would have sent reads to: {}",
                str(&entry[0]),
                text.join(", ")
            );
        }
    }
}

fn upload(admin: &Admin, load: Load, mode: &str) -> Result<(), Failure> {
    let mut query = format!("config={}", encode(&load.with));
    if let Some(shard) = &load.shard {
        query.push_str(&format!("&shard={}", encode(shard)));
    }
    let body = match load.source.strip_prefix("builtin:") {
        Some(name) => {
            query.push_str(&format!("&builtin={}", encode(name)));
            Vec::new()
        }
        None => {
            let path = PathBuf::from(&load.source);
            let name = load
                .name
                .clone()
                .or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()));
            if let Some(name) = name {
                query.push_str(&format!("&name={}", encode(&name)));
            }
            crate::policy::file::read(&path, &path.display().to_string())
                .map_err(|e| Failure::Usage(e.to_string()))?
        }
    };
    let path = format!("/v1/policies/{}{mode}?{query}", load.kind.path());
    let step = Step::start(&format!(
        "sending {} ({}) to {}; Rampart compiles, configures and self-checks it",
        load.source,
        size(body.len()),
        admin.addr
    ));
    let answer = step.finish(admin.request("PUT", &path, &body), "accepted")?;
    let view: Value = serde_json::from_str(&answer)
        .map_err(|e| Failure::Remote(format!("unexpected answer ({e}): {answer}")))?;
    let what = if mode.is_empty() {
        "active"
    } else {
        "in shadow"
    };
    let generation = match view["generation"].as_u64() {
        Some(n) => format!(" generation {n}"),
        None => String::new(),
    };
    let origin = match (view["sha256"].as_str(), view["source"].as_str()) {
        (Some(sha), _) => format!(" (sha256 {sha})"),
        (None, Some(source)) => format!(" ({source})"),
        (None, None) => String::new(),
    };
    println!(
        "{}{generation} {what}: {} ({}){origin}",
        load.kind.path(),
        str(&view["name"]),
        str(&view["kind"]),
    );
    Ok(())
}

fn post(admin: &Admin, which: Which, action: &str) -> Result<(), Failure> {
    let mut path = format!("/v1/policies/{}/{action}", which.kind.path());
    if let Some(shard) = &which.shard {
        path.push_str(&format!("?shard={}", encode(shard)));
    }
    let answer = admin.request("POST", &path, &[])?;
    println!("{} {}", which.kind.path(), answer.trim_end());
    Ok(())
}

fn size(bytes: usize) -> String {
    if bytes == 0 {
        "built in".into()
    } else if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    }
}
