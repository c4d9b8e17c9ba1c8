//! Putting it together: builds the topology from the configuration, starts
//! the probes and the listeners, and hands every accepted client to its own
//! task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::backend::{ConnectOptions, LinkOptions};
use crate::config::{Config, FailoverRole, Mode};
use crate::context::{ClientSlot, Context};
use crate::failover::detect::DetectorSource;
use crate::failover::state::StateStore;
use crate::net::tls::{Acceptor, Connector};
use crate::observe::events::Events;
use crate::policy::slot::RouterSlot;
use crate::policy::swap::{self, Source};
use crate::replicate::fanout::Fanout;
use crate::topology::{Shard, Topology};
use crate::worker::{NewClient, Workers};
use crate::{admin, failover};

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
    /// picture of every shard, then starts accepting clients.
    pub async fn start(config: Config) -> std::io::Result<Server> {
        // Certificates first: a file that does not read stops the start
        // before anything listens.
        let tls = |section: &str, e: crate::net::tls::TlsError| invalid(format!("{section}: {e}"));
        let client_tls = match &config.proxy.tls {
            Some(files) => Some(Acceptor::new(files).map_err(|e| tls("proxy.tls", e))?),
            None => None,
        };
        let admin_tls = match &config.admin.tls {
            Some(files) => Some(Arc::new(
                Acceptor::new(files).map_err(|e| tls("admin.tls", e))?,
            )),
            None => None,
        };
        let backend_tls = match &config.backend.tls {
            Some(files) => Some(Arc::new(
                Connector::new(files).map_err(|e| tls("backend.tls", e))?,
            )),
            None => None,
        };
        let listener = TcpListener::bind(&config.proxy.listen).await?;
        let client_addr = listener.local_addr()?;
        let admin_listener = match &config.admin.listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let admin_addr = admin_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;

        let connect = ConnectOptions {
            username: config.backend.username.clone(),
            password: config.backend.password.clone(),
            timeout: config.backend.connect_timeout(),
            tls: backend_tls.clone(),
        };
        let link_options = LinkOptions {
            connect: connect.clone(),
            max_reply_depth: config.limits.max_reply_depth,
            reply_timeout: Some(config.backend.reply_timeout()),
            window: config.backend.max_inflight_per_link,
            stats: Default::default(),
        };
        let slots = crate::reshard::initial(&config).map_err(|e| invalid(e.to_string()))?;
        let mut shards = Vec::new();
        let members = Arc::new(failover::members::Members::new(
            link_options,
            config.backend.clone(),
            config.proxy.worker_count(),
            config.zone_numbers(),
        ));
        let changes = members.changes.clone();
        let zones = config.zone_numbers();
        let resolver = crate::net::dns::Resolver::new(
            config
                .discovery
                .nameserver
                .as_deref()
                .and_then(|n| n.parse().ok()),
        );
        for (name, shard_config) in &config.shards {
            let addrs = crate::net::dns::expand(&resolver, &shard_config.nodes)
                .await
                .map_err(|e| invalid(format!("shards.{name}.nodes: {e}")))?;
            let nodes = addrs
                .iter()
                .map(|addr| members.make(addr, shard_config, false))
                .collect();
            shards.push(Arc::new(
                Shard::new(
                    name.clone(),
                    nodes,
                    shard_config.read_from,
                    // With [coordination] every instance routes by the
                    // records in etcd instead.
                    config.failover.role == FailoverRole::Follower && config.coordination.is_none(),
                    shard_config.replication.max_read_lag_ms,
                )
                .with_client_zone(config.proxy.zone.as_ref().map_or(0, |z| zones[z]))
                .with_fanout(shard_config.replication.mode == Mode::Fanout)
                .with_reads(
                    shard_config.read_consistency,
                    Duration::from_millis(config.probe.interval_ms),
                )
                .with_slots(crate::shard::slots::ranges_text(
                    &slots.ranges_of(shards.len()),
                )),
            ));
        }
        let limits = crate::policy::Limits::of(&config.plugins);
        let mut routers = Vec::new();
        for (shard, shard_config) in shards.iter().zip(config.shards.values()) {
            let source = Source::parse(&shard_config.router_source());
            let generation = swap::build(
                &source,
                &shard_config.router_config,
                shard,
                changes.clone(),
                1,
                limits,
            )
            .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("shards.{}.router: {e}", shard.name),
                )
            })?;
            tracing::info!(shard = %shard.name, router = %generation.source, "router loaded");
            routers.push(RouterSlot::from_generation(generation));
        }
        let mut quorum_policies = Vec::new();
        for (shard, shard_config) in shards.iter().zip(config.shards.values()) {
            let replication = &shard_config.replication;
            let source = swap::quorum_source(replication);
            let built = swap::build_quorum(
                &source,
                &replication.quorum_config,
                replication,
                shard.replica_count(),
                limits,
            )
            .map_err(|e| invalid(format!("shards.{}.replication: {e}", shard.name)))?;
            let generation = built.generation(1, source.label());
            shard
                .durability
                .set(generation.policy.requirement(shard.replica_count()));
            quorum_policies.push(ArcSwap::from_pointee(generation));
        }
        let source = swap::detector_source(&config.probe);
        let built = swap::build_detector(
            &source,
            &config.probe.detector_config,
            &config.probe,
            limits,
        )
        .map_err(|e| invalid(format!("probe: {e}")))?;
        let detector = Arc::new(DetectorSource::new(built.generation(1, source.label())));
        let (switchovers, mut switchover_rx): (Vec<_>, Vec<_>) =
            shards.iter().map(|_| mpsc::channel(4)).unzip();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let events = Arc::new(Events::new(config.failover.event_history));
        let fanouts: Vec<Option<Arc<Fanout>>> = shards
            .iter()
            .zip(config.shards.values())
            .map(|(shard, shard_config)| {
                shard.is_fanout().then(|| {
                    Arc::new(Fanout::new(
                        shard.clone(),
                        crate::replicate::fanout::Limits {
                            backlog_mb: shard_config.replication.backlog_mb,
                            reply_timeout: config.backend.reply_timeout(),
                            max_reply_depth: config.limits.max_reply_depth,
                        },
                        connect.clone(),
                        StateStore::new(config.failover.state_dir.as_deref()),
                        events.clone(),
                    ))
                })
            })
            .collect();
        let owned: Vec<Arc<crate::shard::Shard>> = shards
            .iter()
            .zip(routers)
            .zip(quorum_policies)
            .zip(fanouts)
            .zip(switchovers)
            .map(|((((topology, router), quorum), fanout), controller)| {
                Arc::new(crate::shard::Shard {
                    topology: topology.clone(),
                    router,
                    quorum,
                    fanout,
                    controller,
                })
            })
            .collect();
        let slots = Arc::new(crate::reshard::Slots::new(slots));
        let resharder = Arc::new(crate::reshard::mover::Resharder {
            slots: slots.clone(),
            shards: owned.clone(),
            store: crate::reshard::state::MapStore::new(config.failover.state_dir.as_deref()),
            events: events.clone(),
            hold: Duration::from_millis(config.failover.hold_writes_ms),
            shutdown: shutdown_rx.clone(),
        });
        let coordination = match &config.coordination {
            Some(settings) => {
                let tls = match &settings.tls {
                    Some(files) => Some(Arc::new(
                        Connector::new(files).map_err(|e| tls("coordination.tls", e))?,
                    )),
                    None => None,
                };
                Some(Arc::new(crate::coord::Coordination::new(
                    settings,
                    tls,
                    config.failover.role == FailoverRole::Leader,
                    client_addr.to_string(),
                    admin_addr.map(|a| a.to_string()),
                    shards.clone(),
                    events.clone(),
                )))
            }
            None => None,
        };
        let context = Arc::new(Context {
            secrets: crate::secrets::Secrets::new(&config),
            slots,
            resharder: resharder.clone(),
            members: members.clone(),
            resolver,
            wanted_nodes: std::sync::Mutex::new(config.shards.clone()),
            coordination: coordination.clone(),
            topology: Topology { shards },
            shards: owned,
            topology_changes: changes.clone(),
            detector,
            clients: AtomicUsize::new(0),
            events,
            metrics: Arc::default(),
            history: Arc::default(),
            budget: crate::backend::charge::Budget::new(crate::backend::charge::Caps::of(
                &config.limits,
            )),
            client_tls,
            admin_tls,
            backend_tls,
            next_client_id: AtomicU64::new(1),
            shutdown: shutdown_rx.clone(),
            guard: crate::client::guard::Guard::new(
                &config.proxy.deny_commands,
                &config.proxy.managed_settings,
                config.backend.username.as_deref(),
            ),
            registry: Arc::default(),
            auth_throttle: Default::default(),
            config,
        });

        for fanout in context.shards.iter().filter_map(|s| s.fanout.as_ref()) {
            fanout.start();
        }
        let probed = Arc::new(Semaphore::new(0));
        let probing = Arc::new(failover::probe::Probing {
            config: context.config.probe.clone(),
            detectors: context.detector.clone(),
            opts: connect.clone(),
            first_round: probed.clone(),
            events: context.events.clone(),
            shutdown: shutdown_rx.clone(),
        });
        let node_count = members.start_probes(&context.topology.shards, probing);
        // Accepting clients before the first probes answer would refuse their
        // first commands for want of a known primary.
        let first_round = probed.acquire_many(node_count as u32);
        let _ = tokio::time::timeout(Duration::from_secs(3), first_round).await;
        let services = crate::services::Services::default();
        if let Some(coordination) = &coordination {
            services.start(
                "coordination",
                coordination.clone().run(shutdown_rx.clone()),
            );
        }
        services.start("slot-mover", resharder.run());
        services.start("discovery", context.clone().discover());
        match context.config.failover.role {
            FailoverRole::Follower if coordination.is_some() => {}
            FailoverRole::Leader => {
                for (index, requests) in switchover_rx.drain(..).enumerate() {
                    // A fan-out shard's primary is chosen by its writer, from
                    // the nodes in sync; nobody is promoted or repointed.
                    if let Some(fanout) = &context.shards[index].fanout {
                        fanout.pick_first_primary().await;
                        continue;
                    }
                    let shard = context.shards[index].clone();
                    let settings = failover::controller::Settings {
                        interval: Duration::from_millis(context.config.probe.interval_ms),
                        timeout: Duration::from_millis(context.config.probe.timeout_ms),
                        replication: context.config.shards[shard.name()].replication.clone(),
                        store: StateStore::new(context.config.failover.state_dir.as_deref()),
                        coordination: coordination.clone(),
                    };
                    failover::controller::spawn(
                        shard,
                        settings,
                        context.events.clone(),
                        shutdown_rx.clone(),
                        connect.clone(),
                        requests,
                    );
                }
                // The controllers' first ticks pick the primaries (with
                // [coordination]: the records, or the lease holder's
                // discovery).
                let wait = match &context.config.coordination {
                    Some(c) => Duration::from_millis(c.poll_ms * 3 + c.request_timeout_ms * 2)
                        .max(Duration::from_secs(1)),
                    None => Duration::from_secs(1),
                };
                let _ = tokio::time::timeout(wait, async {
                    for shard in &context.topology.shards {
                        let mut changed = shard.watch();
                        while shard.primary().is_none() && changed.changed().await.is_ok() {}
                    }
                })
                .await;
            }
            FailoverRole::Follower => {
                for shard in &context.topology.shards {
                    shard.refresh();
                }
            }
        }

        let workers = Workers::start(&context, context.config.proxy.worker_count())?;
        services.start(
            "accept",
            accept_loop(listener, context.clone(), workers, shutdown_rx.clone()),
        );
        services.start(
            "router-rollback",
            crate::operate::roll_back_failing_routers(context.clone()),
        );
        services.start(
            "shared-policies",
            crate::operate::follow_shared_policies(context.clone()),
        );
        services.start(
            "risks",
            crate::observe::risks::watch(
                context.topology.shards.clone(),
                context.events.clone(),
                shutdown_rx.clone(),
            ),
        );
        services.start(
            "history",
            crate::observe::history::sample(
                context.history.clone(),
                context.topology.shards.clone(),
                context.metrics.clone(),
                shutdown_rx.clone(),
            ),
        );
        if let Some(listener) = admin_listener {
            services.start(
                "admin",
                admin::serve(listener, context.clone(), shutdown_rx),
            );
        }
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
        for fanout in self.context.shards.iter().filter_map(|s| s.fanout.as_ref()) {
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
