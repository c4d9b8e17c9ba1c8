//! `rampart run` and `rampart check-config`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::Failure;
use crate::config::LogFormat;
use crate::{Config, Server};

pub fn check_config(path: &Path, since: Option<&Path>) -> Result<(), Failure> {
    Config::load(path).map_err(|e| Failure::Usage(e.to_string()))?;
    println!("{}: ok", path.display());
    if let Some(old) = since {
        let table = |p: &Path| -> Result<toml::Table, Failure> {
            std::fs::read_to_string(p)
                .map_err(|e| Failure::Usage(format!("{}: {e}", p.display())))?
                .parse()
                .map_err(|e| Failure::Usage(format!("{}: {e}", p.display())))
        };
        let changes = crate::reload::Changes::between(&table(old)?, &table(path)?);
        println!("applied at once by a reload: {}", changes.live_text());
        println!("at the next start: {}", changes.later_text());
    }
    Ok(())
}

pub fn run(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rampart: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rampart: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::start(config).await {
            Ok(server) => server,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        crate::reload::spawn(server.context.clone(), path);
        wait_for_stop_signal().await;
        drain(&server).await;
        ExitCode::SUCCESS
    })
}

/// Graceful shutdown: no new clients, then wait (up to the configured
/// grace) for the connected ones to finish.
pub async fn drain(server: &Server) {
    tracing::info!("shutting down: no new clients, draining the rest");
    let grace = server.context.config.proxy.shutdown_grace();
    let left = server.shutdown(grace).await;
    if left > 0 {
        tracing::warn!(clients = left, "grace period over, closing anyway");
    }
}

/// SIGTERM (systemd, Kubernetes) or SIGINT (Ctrl-C).
pub async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Text or JSON on stderr. `RUST_LOG` overrides the configured level;
/// without it, a reload can change the level (`log.level`).
pub fn init_logging(config: &Config) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&config.log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only for a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match config.log.format {
        LogFormat::Json => registry.with(output.json()).try_init(),
        LogFormat::Text => registry.with(output).try_init(),
    };
    if installed.is_ok() && !fixed {
        crate::reload::set_log_level_with(Box::new(move |level| {
            let filter = EnvFilter::try_new(level)?;
            Ok(handle.reload(filter)?)
        }));
    }
}
