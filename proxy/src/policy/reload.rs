//! Reloading the configuration file while running: on SIGHUP, and when the
//! file changes (checked every two seconds). What can change live is each
//! shard's router (`router`, `router_config`, `read_from`): a changed one
//! is loaded as a new generation, exactly as `RAMPART POLICY LOAD` would.
//! A file that does not parse changes nothing and is reported with the
//! field at fault; other settings take effect on the next start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::swap::{Mode, Source};
use crate::config::Config;
use crate::server::{router_source, Context};

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
                    (router_source(shard), shard.router_config.clone()),
                )
            })
            .collect();
        let mut modified = modified_at(&path);
        loop {
            let signalled = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = signalled => tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration"),
                _ = tokio::time::sleep(POLL) => {
                    let now = modified_at(&path);
                    if now == modified {
                        continue;
                    }
                    modified = now;
                    tracing::info!(path = %path.display(), "configuration file changed: reloading");
                }
                _ = shutdown.changed() => return,
            }
            reload(&ctx, &path, &mut applied).await;
        }
    });
}

fn modified_at(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

async fn reload(
    ctx: &Context,
    path: &std::path::Path,
    applied: &mut HashMap<String, (String, String)>,
) {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "the new configuration is invalid; nothing changed");
            return;
        }
    };
    for (name, shard) in &config.shards {
        let wanted = (router_source(shard), shard.router_config.clone());
        if applied.get(name) == Some(&wanted) {
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
                applied.insert(name.clone(), wanted);
            }
            Err(e) => {
                tracing::error!(shard = %name, error = %e, "router reload refused; the active one stays")
            }
        }
    }
}
