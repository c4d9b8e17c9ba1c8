//! Reloading the configuration file while running: on SIGHUP, and when the
//! file changes (checked every two seconds), without dropping a client.
//!
//! What changes live: each shard's router (`router`, `router_config`,
//! `read_from`), loaded as a new generation exactly as `RAMPART POLICY
//! LOAD` would, each shard's `read_consistency`, its quorum and the
//! detector (their settings and plugins), the probe timings, `log.level`, the admin tokens
//! and `proxy.password` (see `secrets.rs`), each shard's `nodes` (see
//! `failover/members.rs`), a new shard that owns no slots and a shard
//! removed that owns none (see `operate/shards.rs`), and `[limits]` but `max_reply_depth` (which
//! Rampart's links to the nodes were made with). Every other changed field is logged by
//! name as applying at the next start, so an operator never wonders
//! whether an edit took. A file that does not parse changes nothing and is
//! reported with the field at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::context::{Context, ReloadAsk, Reloaded};
use crate::operate::file::list;
use crate::policy::swap::{self, Mode, Source};

/// Sets the log filter; installed by whoever set up logging (`rampart
/// run`), absent when `RUST_LOG` decides the level.
type SetLogLevel =
    Box<dyn Fn(&str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;
static LOG_LEVEL: OnceLock<SetLogLevel> = OnceLock::new();

/// Lets reloads change the log level through `set`.
pub fn set_log_level_with(set: SetLogLevel) {
    let _ = LOG_LEVEL.set(set);
}

/// Fields whose change a reload applies at once; the rest wait for a
/// restart. `*` stands for any shard's name.
const LIVE: &[&str] = &[
    "shards.*.nodes",
    "shards.*.router",
    "shards.*.router_config",
    "shards.*.read_from",
    "shards.*.read_consistency",
    "shards.*.replication.quorum",
    "shards.*.replication.timeout_ms",
    "shards.*.replication.on_shortfall",
    "shards.*.replication.quorum_plugin",
    "shards.*.replication.quorum_config",
    "probe.interval_ms",
    "probe.timeout_ms",
    "probe.busy_kill_after_ms",
    "probe.detector",
    "probe.down_after_ms",
    "probe.phi_threshold",
    "probe.phi_window",
    "probe.phi_min_std_ms",
    "probe.detector_plugin",
    "probe.detector_config",
    "log.level",
    "admin.token",
    "admin.tokens",
    "proxy.password",
    "limits.max_bulk_len",
    "limits.max_multibulk_len",
    "limits.max_inline_len",
    "limits.max_pipeline",
    "limits.client_output_hard_mb",
    "limits.client_output_soft_mb",
    "limits.client_output_soft_seconds",
    "limits.clients_output_total_mb",
    "limits.partial_requests_total_mb",
];

/// How often the file's modification time is checked.
const POLL: Duration = Duration::from_secs(2);

/// Watches `path` until shutdown.
pub fn spawn(ctx: Arc<Context>, path: PathBuf) {
    tokio::spawn(async move {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let mut shutdown = ctx.shutdown.clone();
        let mut applied: HashMap<String, (String, String)> = ctx
            .config
            .shards
            .iter()
            .map(|(name, shard)| {
                (
                    name.clone(),
                    (shard.router_source(), shard.router_config.clone()),
                )
            })
            .collect();
        let mut modified = modified_at(&path);
        let mut text = read_table(&path).unwrap_or_default();
        let (asks, mut asked) = tokio::sync::mpsc::channel::<ReloadAsk>(4);
        let _ = ctx.reloads.set(asks);
        loop {
            let signalled = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = signalled => {
                    tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration and the TLS certificates");
                    reload_certificates(&ctx);
                }
                _ = tokio::time::sleep(POLL) => {
                    let now = modified_at(&path);
                    if now == modified {
                        continue;
                    }
                    modified = now;
                    tracing::info!(path = %path.display(), "configuration file changed: reloading");
                }
                Some(ask) = asked.recv() => {
                    tracing::info!(path = %path.display(), "reload asked for by the admin API");
                    reload_certificates(&ctx);
                    let _ = ask.send(reload(&ctx, &path, &mut applied, &mut text).await);
                    modified = modified_at(&path);
                    continue;
                }
                _ = shutdown.changed() => return,
            }
            reload(&ctx, &path, &mut applied, &mut text).await;
        }
    });
}

/// Reads every TLS certificate and key again (on SIGHUP): new handshakes
/// use them, open connections keep theirs. A file that does not read
/// leaves the previous certificate in force.
pub fn reload_certificates(ctx: &Context) {
    let listeners = [
        ("proxy.tls", ctx.client_tls.as_ref()),
        ("admin.tls", ctx.admin_tls.as_deref()),
    ];
    for (section, acceptor) in listeners {
        if let Some(acceptor) = acceptor {
            match acceptor.reload() {
                Ok(()) => tracing::info!(section, "certificate reloaded"),
                Err(e) => {
                    tracing::error!(section, error = %e, "certificate reload failed; the previous one stays")
                }
            }
        }
    }
    if let Some(connector) = &ctx.backend_tls {
        match connector.reload() {
            Ok(()) => tracing::info!(section = "backend.tls", "certificates reloaded"),
            Err(e) => {
                tracing::error!(section = "backend.tls", error = %e, "certificate reload failed; the previous ones stay")
            }
        }
    }
}

fn modified_at(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

async fn reload(
    ctx: &Context,
    path: &Path,
    applied: &mut HashMap<String, (String, String)>,
    text: &mut toml::Table,
) -> Reloaded {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "the new configuration is invalid; nothing changed");
            return Reloaded::Invalid(e.to_string());
        }
    };
    let new_text = read_table(path).unwrap_or_default();
    let Changes { live, later } = Changes::between(text, &new_text);
    *text = new_text;
    for field in &later {
        tracing::warn!(field = %field, "changed in the configuration file; applies at the next start");
    }
    if live.iter().any(|field| field == "log.level") {
        set_log_level(&config.log.level);
    }
    for secret in ctx.secrets.update(&config) {
        tracing::info!(
            secret,
            "changed: the new value is in force for every check from now on"
        );
    }
    apply_policies(ctx, &config, &live).await;
    ctx.probe_timings.set(&config.probe);
    if live.iter().any(|field| field.starts_with("limits.")) {
        ctx.limits.store(std::sync::Arc::new(config.limits));
        ctx.budget
            .set_caps(crate::backend::budget::Caps::of(&config.limits));
        tracing::info!("[limits] changed: the memory caps apply at once, the request limits (sizes, max_pipeline) to connections opened from now on");
    }
    let refused = change_shards(ctx, &config, applied, &live).await;
    let (live, mut later): (Vec<String>, Vec<String>) = (
        live.into_iter().filter(|f| !refused.contains(f)).collect(),
        later,
    );
    later.extend(refused);
    ctx.set_wanted_nodes(&config.shards);
    for (name, shard) in &config.shards {
        if !live
            .iter()
            .any(|field| field == &format!("shards.{name}.nodes"))
        {
            continue;
        }
        if let Err(e) = ctx.apply_nodes(name, shard, "configuration reload").await {
            tracing::error!(shard = %name, error = %e, "the shard's nodes could not be looked up; they stay as they are");
        }
    }
    if !live.is_empty() || !later.is_empty() {
        // On the event timeline too, where operators watch the dashboard.
        let detail = format!(
            "applied now: {}; at the next start: {}",
            list(&live),
            list(&later)
        );
        ctx.events.record("*", "config-reloaded", None, 0, detail);
    }
    apply_routers(ctx, &config, applied).await;
    Reloaded::Done { now: live, later }
}

/// Shards the file names and Rampart does not run are added; shards it
/// runs and the file no longer names are removed (see
/// `operate/shards.rs`). Either may be refused (a shard removed still
/// owning slots, one added back after a removal): said with an event when
/// this reload's changes (`live`) name it, logged at every reload after.
/// Returns the changes refused: they wait for a restart.
async fn change_shards(
    ctx: &Context,
    config: &Config,
    applied: &mut HashMap<String, (String, String)>,
    live: &[String],
) -> Vec<String> {
    let mut refused = Vec::new();
    let mut refuse = |name: &str, change: String, error: String| {
        tracing::error!(shard = %name, error = %error, "{change} refused; it waits for a restart");
        if live.contains(&change) {
            ctx.events
                .record(name, "shard-change-refused", None, 0, error);
            refused.push(change);
        }
    };
    for (name, section) in &config.shards {
        let added = format!("shards.{name} (added)");
        match ctx.shards.named(name) {
            Some((_, shard)) if !shard.topology.is_retired() => continue,
            Some(_) if !live.contains(&added) => continue,
            _ => {}
        }
        match ctx.add_shard(name, section).await {
            Ok(done) => {
                tracing::info!(shard = %name, "{done}");
                // Built with the router its section names.
                let router = (section.router_source(), section.router_config.clone());
                applied.insert(name.clone(), router);
            }
            Err(e) => refuse(name, added, e.to_string()),
        }
    }
    for shard in ctx.shards.all_serving() {
        let name = shard.name();
        if config.shards.contains_key(name) {
            continue;
        }
        match ctx.remove_shard(name).await {
            Ok(done) => tracing::info!(shard = %name, "{done}"),
            Err(e) => refuse(name, format!("shards.{name} (removed)"), e.to_string()),
        }
    }
    refused
}

/// Each shard's quorum, and the detector, loaded again when a field they
/// are made from changed. (The probe timings are read at every round.)
async fn apply_policies(ctx: &Context, config: &Config, live: &[String]) {
    for (name, shard) in &config.shards {
        let prefix = format!("shards.{name}.replication.");
        if live.iter().any(|field| field.starts_with(&prefix)) {
            let replication = &shard.replication;
            let source = swap::quorum_source(replication);
            let loaded = ctx
                .load_quorum_with(
                    name,
                    source,
                    replication.quorum_config.clone(),
                    replication.clone(),
                )
                .await;
            report(name, "quorum", loaded);
        }
    }
    if live.iter().any(|field| {
        field.starts_with("probe.")
            && !matches!(
                field.as_str(),
                "probe.interval_ms" | "probe.timeout_ms" | "probe.busy_kill_after_ms"
            )
    }) {
        let probe = &config.probe;
        let source = swap::detector_source(probe);
        let loaded = ctx
            .load_detector_with(source, probe.detector_config.clone(), probe.clone())
            .await;
        report("*", "detector", loaded);
    }
}

/// Each shard's read consistency, and its router when its source or
/// configuration differs from the one applied.
async fn apply_routers(
    ctx: &Context,
    config: &Config,
    applied: &mut HashMap<String, (String, String)>,
) {
    for (name, shard) in &config.shards {
        if let Some(live) = ctx.shards.all().iter().find(|s| s.name() == name.as_str()) {
            let positions = &live.topology.positions;
            if positions.consistency() != shard.read_consistency {
                positions.set_consistency(shard.read_consistency);
                tracing::info!(shard = %name, read_consistency = shard.read_consistency.name(), "read consistency changed");
            }
        }
        let wanted = (shard.router_source(), shard.router_config.clone());
        if applied.get(name) == Some(&wanted) || ctx.shards.named(name).is_none() {
            continue;
        }
        match ctx
            .load_router(
                name,
                Source::parse(&wanted.0),
                wanted.1.clone(),
                Mode::Activate,
            )
            .await
        {
            Ok(view) => {
                tracing::info!(shard = %name, generation = view.generation, router = %view.source, "router reloaded");
                if let Some((_, live)) = ctx.shards.named(name) {
                    live.topology.set_read_from(shard.read_from);
                }
                applied.insert(name.clone(), wanted);
            }
            Err(e) => {
                tracing::error!(shard = %name, error = %e, "router reload refused; the active one stays")
            }
        }
    }
}

fn report<T>(shard: &str, kind: &str, loaded: Result<T, crate::operate::OpError>) {
    match loaded {
        Ok(_) => tracing::info!(shard, kind, "policy reloaded"),
        Err(e) => {
            tracing::error!(shard, kind, error = %e, "policy reload refused; the active one stays")
        }
    }
}

fn set_log_level(level: &str) {
    match LOG_LEVEL.get() {
        Some(set) => match set(level) {
            Ok(()) => tracing::info!(level, "log level changed"),
            Err(e) => tracing::error!(level, error = %e, "log level not changed"),
        },
        None => tracing::warn!("log.level changed but RUST_LOG sets the level; not changed"),
    }
}

/// The fields that differ between two versions of the file, as a reload
/// treats them: applied at once, or at the next start.
pub struct Changes {
    pub live: Vec<String>,
    pub later: Vec<String>,
}

impl Changes {
    pub fn between(old: &toml::Table, new: &toml::Table) -> Changes {
        let mut changed = Vec::new();
        diff("", old, new, &mut changed);
        // A shard added or removed is one change, applied at once (unless
        // refused, see `change_shards`).
        let (added, removed) = (shard_names(new, old), shard_names(old, new));
        let whole = |field: &String| {
            added
                .iter()
                .chain(&removed)
                .any(|name| field.starts_with(&format!("shards.{name}.")))
        };
        changed.retain(|field| !whole(field));
        let (mut live, later): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|field| LIVE.iter().any(|live| matches(live, field)));
        live.extend(added.iter().map(|name| format!("shards.{name} (added)")));
        live.extend(
            removed
                .iter()
                .map(|name| format!("shards.{name} (removed)")),
        );
        Changes { live, later }
    }

    pub fn live_text(&self) -> String {
        list(&self.live)
    }

    pub fn later_text(&self) -> String {
        list(&self.later)
    }
}

/// The shards `a` has and `b` has not.
fn shard_names(a: &toml::Table, b: &toml::Table) -> Vec<String> {
    let names = |t: &toml::Table| -> Vec<String> {
        t.get("shards")
            .and_then(toml::Value::as_table)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    };
    let theirs = names(b);
    names(a)
        .into_iter()
        .filter(|name| !theirs.contains(name))
        .collect()
}

fn read_table(path: &Path) -> Option<toml::Table> {
    std::fs::read_to_string(path).ok()?.parse().ok()
}

/// The dotted paths of every value that differs between `old` and `new`
/// (added, removed or changed).
fn diff(prefix: &str, old: &toml::Table, new: &toml::Table, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let empty = toml::Table::new();
        match (old.get(key), new.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => diff(&path, a, b, out),
            // A section added or removed: name its fields.
            (Some(toml::Value::Table(a)), None) => diff(&path, a, &empty, out),
            (None, Some(toml::Value::Table(b))) => diff(&path, &empty, b, out),
            (a, b) if a != b => out.push(path),
            _ => {}
        }
    }
}

/// `pattern` against a dotted path, `*` matching one segment.
fn matches(pattern: &str, path: &str) -> bool {
    let (p, f): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), path.split('.').collect());
    p.len() == f.len() && p.iter().zip(&f).all(|(p, f)| *p == "*" || p == f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_named_by_their_dotted_path() {
        let old: toml::Table = "[probe]\ninterval_ms = 100\n[shards.main]\nnodes = [\"a:1\"]\nread_from = \"primary\"\n".parse().unwrap();
        let new: toml::Table = "[probe]\ninterval_ms = 50\ntimeout_ms = 9\n[log]\nlevel = \"debug\"\n[shards.main]\nnodes = [\"a:1\"]\nread_from = \"replicas\"\n".parse().unwrap();
        let mut changed = Vec::new();
        diff("", &old, &new, &mut changed);
        assert_eq!(
            changed,
            [
                "log.level",
                "probe.interval_ms",
                "probe.timeout_ms",
                "shards.main.read_from"
            ]
        );
        assert!(LIVE.iter().any(|l| matches(l, "shards.main.read_from")));
        assert!(LIVE.iter().any(|l| matches(l, "probe.interval_ms")));
        assert!(!LIVE
            .iter()
            .any(|l| matches(l, "backend.connect_timeout_ms")));
        assert!(!matches("shards.*.router", "shards.main.router.x"));
    }

    #[test]
    fn a_shard_added_or_removed_is_one_change() {
        let old: toml::Table = "[shards.a]\nnodes = [\"a:1\"]\n[shards.gone]\nnodes = [\"g:1\"]\n"
            .parse()
            .unwrap();
        let new: toml::Table = "[shards.a]\nnodes = [\"a:1\"]\n[shards.b]\nnodes = [\"b:1\"]\nslots = \"\"\n[shards.b.replication]\nquorum = \"one\"\n"
            .parse()
            .unwrap();
        let changes = Changes::between(&old, &new);
        assert_eq!(changes.live, ["shards.b (added)", "shards.gone (removed)"]);
        assert!(changes.later.is_empty());
    }
}
