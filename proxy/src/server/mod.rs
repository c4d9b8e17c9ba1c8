//! Putting it together: builds the topology from the configuration, starts
//! the probes and the listeners, and hands every accepted client to its own
//! task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::context::{ClientSlot, Context};
use crate::failover;
use crate::observe::events::Events;
use crate::topology::Topology;
use crate::worker::{NewClient, Workers};

mod boot;
mod build;

/// A running Rampart.
pub struct Server {
    pub client_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub context: Arc<Context>,
    /// The background services, by name (see [`crate::services`]).
    pub services: crate::services::Services,
    shutdown: watch::Sender<bool>,
}

impl Server {
    /// Binds the listeners, starts probing, waits (briefly) for a first
    /// picture of every shard, then starts accepting clients. Long for the
    /// `Context` literal: what every task shares, one field a line.
    pub async fn start(config: Config) -> std::io::Result<Server> {
        // Certificates first: a file that does not read stops the start
        // before anything listens.
        let build::Tls {
            client: client_tls,
            admin: admin_tls,
            backend: backend_tls,
        } = build::Tls::load(&config)?;
        let (listener, admin_listener) = build::listeners(&config).await?;
        let client_addr = listener.local_addr()?;
        let admin_addr = admin_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;

        let (connect, link_options) = build::options(&config, &backend_tls);
        let slots = crate::reshard::initial(&config).map_err(|e| invalid(e.to_string()))?;
        let (members, resolver) = build::members(&config, link_options);
        let changes = members.changes.clone();
        let shards = build::shards(&config, &members, &resolver, &slots).await?;
        let limits = crate::policy::Limits::of(&config.plugins);
        let routers = build::routers(&config, &shards, &changes, limits)?;
        let quorum_policies = build::quorums(&config, &shards, limits)?;
        let detector = build::detector(&config, limits)?;
        let (switchovers, switchover_rx): (Vec<_>, Vec<_>) =
            shards.iter().map(|_| mpsc::channel(4)).unzip();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let events = Arc::new(Events::new(config.failover.event_history));
        let fanouts = build::fanouts(&config, &shards, &connect, &events);
        let owned = Arc::new(crate::shard::Shards::new(build::assemble(
            &shards,
            routers,
            quorum_policies,
            fanouts,
            switchovers,
        )));
        let slots = Arc::new(crate::reshard::Slots::new(slots, build::transfer(&config)));
        let coordination = build::coordination(&config, client_addr, admin_addr, &shards, &events)?;
        let resharder = build::resharder(
            &config,
            &slots,
            &owned,
            &events,
            &shutdown_rx,
            &coordination,
        )?;
        let (added_shards, added_rx) = mpsc::unbounded_channel();
        let node_settings = Arc::new(failover::settings::Settings::new(
            events.clone(),
            config.failover.state_dir.as_deref(),
        ));
        let context = Arc::new(Context {
            secrets: crate::secrets::Secrets::new(&config),
            slots,
            resharder: resharder.clone(),
            added_shards,
            reloads: Default::default(),
            members: members.clone(),
            resolver,
            wanted_nodes: std::sync::Mutex::new(config.shards.clone()),
            coordination: coordination.clone(),
            topology: Arc::new(Topology::new(shards)),
            shards: owned,
            topology_changes: changes.clone(),
            detector,
            probe_timings: Arc::new(failover::probe::Timings::new(&config.probe)),
            clients: AtomicUsize::new(0),
            events,
            metrics: Arc::default(),
            history: Arc::default(),
            limits: arc_swap::ArcSwap::from_pointee(config.limits),
            budget: crate::backend::budget::Budget::new(crate::backend::budget::Caps::of(
                &config.limits,
            )),
            client_tls,
            admin_tls,
            backend_tls,
            next_client_id: AtomicU64::new(1),
            shutdown: shutdown_rx.clone(),
            guard: build::guard(&config),
            registry: Arc::default(),
            auth_throttle: Default::default(),
            node_settings,
            config,
        });

        let services = boot::boot(
            &context,
            boot::Parts {
                members,
                connect,
                coordination,
                resharder,
                switchover_rx,
                listener,
                admin_listener,
                added_shards: added_rx,
            },
            shutdown_rx,
        )
        .await?;
        tracing::info!(%client_addr, ?admin_addr, services = ?services.running(), "rampart listening");
        Ok(Server {
            client_addr,
            admin_addr,
            context,
            services,
            shutdown,
        })
    }

    /// Stops accepting new clients and asks every connected client to
    /// finish: requests already sent to a node get their replies, then the
    /// connection closes. Requests read but not yet sent are dropped
    /// unanswered (never run), so a client sees a closed connection, not an
    /// error for a command that did or did not happen.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
        self.context.registry.wake_all();
    }

    /// [`stop`](Self::stop), then waits until every client has gone or
    /// `grace` has passed. Returns how many clients were still connected.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.stop();
        let deadline = tokio::time::Instant::now() + grace;
        let left = loop {
            let left = self.context.clients.load(Ordering::Acquire);
            if left == 0 || tokio::time::Instant::now() >= deadline {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Fan-out logs are closed last, once no client can add to them.
        let close_by = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        for fanout in self
            .context
            .shards
            .all()
            .iter()
            .filter_map(|s| s.fanout.as_ref())
        {
            fanout.close(close_by).await;
        }
        self.services.stop_all();
        left
    }
}

/// A policy that cannot be loaded at startup: the field, the step and the
/// reason, and Rampart does not start.
fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
    workers: Workers,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = ClientSlot::take(&ctx);
        if ctx.clients.load(Ordering::Acquire) > ctx.config.proxy.max_clients {
            tokio::spawn(async move {
                refuse(stream).await;
                drop(slot);
            });
            continue;
        }
        let id = ctx.next_client_id.fetch_add(1, Ordering::Relaxed);
        match stream.into_std() {
            Ok(stream) => workers.dispatch(NewClient {
                stream,
                id,
                peer,
                slot,
            }),
            Err(e) => tracing::warn!(error = %e, "cannot hand over a client"),
        }
    }
}

/// Redis's answer to one client too many.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
}
