//! What a start builds from the configuration before anything runs: the
//! TLS set-ups, every shard (nodes, router, quorum policy, fan-out
//! writer) and the coordination client.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::invalid;
use crate::backend::{ConnectOptions, LinkOptions};
use crate::config::{Config, FailoverRole};
use crate::failover;
use crate::failover::state::StateStore;
use crate::net::tls::{Acceptor, Connector};
use crate::observe::events::Events;
use crate::policy::slot::RouterSlot;
use crate::policy::swap::{self};
use crate::replicate::fanout::Fanout;
use crate::shard::build;
use crate::topology::ReplicaSet;

/// The TLS set-ups of the client listener, the admin listener and the
/// links to the nodes, each when configured.
pub(super) struct Tls {
    pub client: Option<Acceptor>,
    pub admin: Option<Arc<Acceptor>>,
    pub backend: Option<Arc<Connector>>,
}

impl Tls {
    /// Reads every certificate: a file that does not read is an error
    /// naming its section.
    pub fn load(config: &Config) -> std::io::Result<Tls> {
        let tls = |section: &str, e: crate::net::tls::TlsError| invalid(format!("{section}: {e}"));
        Ok(Tls {
            client: match &config.proxy.tls {
                Some(files) => Some(Acceptor::new(files).map_err(|e| tls("proxy.tls", e))?),
                None => None,
            },
            admin: match &config.admin.tls {
                Some(files) => Some(Arc::new(
                    Acceptor::new(files).map_err(|e| tls("admin.tls", e))?,
                )),
                None => None,
            },
            backend: match &config.backend.tls {
                Some(files) => Some(Arc::new(
                    Connector::new(files).map_err(|e| tls("backend.tls", e))?,
                )),
                None => None,
            },
        })
    }
}

/// `[coordination]`'s client, when configured.
pub(super) fn coordination(
    config: &Config,
    client_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shards: &[Arc<ReplicaSet>],
    events: &Arc<Events>,
) -> std::io::Result<Option<Arc<crate::coord::Coordination>>> {
    let Some(settings) = &config.coordination else {
        return Ok(None);
    };
    let tls = match &settings.tls {
        Some(files) => Some(Arc::new(
            Connector::new(files).map_err(|e| invalid(format!("coordination.tls: {e}")))?,
        )),
        None => None,
    };
    Ok(Some(Arc::new(crate::coord::Coordination::new(
        settings,
        tls,
        config.failover.role == FailoverRole::Leader,
        client_addr.to_string(),
        admin_addr.map(|a| a.to_string()),
        shards.to_vec(),
        events.clone(),
    ))))
}

/// Every shard's replica set: its nodes (DNS entries looked up now), its
/// read settings and its slots.
pub(super) async fn shards(
    config: &Config,
    members: &failover::members::Members,
    resolver: &crate::net::dns::Resolver,
    slots: &crate::shard::slots::SlotMap,
) -> std::io::Result<Vec<Arc<ReplicaSet>>> {
    let mut shards = Vec::new();
    for (index, (name, section)) in config.shards.iter().enumerate() {
        let owned = crate::shard::slots::ranges_text(&slots.ranges_of(index));
        let set = build::replica_set(config, name, section, members, resolver, owned)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        shards.push(set);
    }
    Ok(shards)
}

/// Each shard's router, as its configuration names it (generation 1).
pub(super) fn routers(
    config: &Config,
    shards: &[Arc<ReplicaSet>],
    changes: &Arc<std::sync::atomic::AtomicU64>,
    limits: crate::policy::Limits,
) -> std::io::Result<Vec<RouterSlot>> {
    shards
        .iter()
        .zip(config.shards.values())
        .map(|(set, section)| {
            build::router(section, set, changes, limits).map_err(|e| invalid(e.to_string()))
        })
        .collect()
}

/// Each shard's quorum policy, its requirement put in force.
pub(super) fn quorums(
    config: &Config,
    shards: &[Arc<ReplicaSet>],
    limits: crate::policy::Limits,
) -> std::io::Result<Vec<ArcSwap<crate::shard::QuorumGeneration>>> {
    shards
        .iter()
        .zip(config.shards.values())
        .map(|(set, section)| {
            build::quorum(section, set, limits).map_err(|e| invalid(e.to_string()))
        })
        .collect()
}

/// The fan-out writer of each fan-out shard.
pub(super) fn fanouts(
    config: &Config,
    shards: &[Arc<ReplicaSet>],
    connect: &ConnectOptions,
    events: &Arc<Events>,
) -> Vec<Option<Arc<Fanout>>> {
    shards
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
        .collect()
}

/// How Rampart connects to the nodes: for probes and dedicated
/// connections, and for links (which add reply bounds).
pub(super) fn options(
    config: &Config,
    tls: &Option<Arc<Connector>>,
) -> (ConnectOptions, LinkOptions) {
    let connect = ConnectOptions {
        username: config.backend.username.clone(),
        password: config.backend.password.clone(),
        timeout: config.backend.connect_timeout(),
        tls: tls.clone(),
    };
    let link = LinkOptions {
        connect: connect.clone(),
        max_reply_depth: config.limits.max_reply_depth,
        reply_timeout: Some(config.backend.reply_timeout()),
        window: config.backend.max_inflight_per_link,
        stats: Default::default(),
    };
    (connect, link)
}

/// The detector `[probe]` names (built in, or a plugin), as generation 1.
pub(super) fn detector(
    config: &Config,
    limits: crate::policy::Limits,
) -> std::io::Result<Arc<failover::detect::DetectorSource>> {
    let source = swap::detector_source(&config.probe);
    let built = swap::build_detector(
        &source,
        &config.probe.detector_config,
        &config.probe,
        limits,
    )
    .map_err(|e| invalid(format!("probe: {e}")))?;
    Ok(Arc::new(failover::detect::DetectorSource::new(
        built.generation(1, source.label()),
    )))
}

/// Each shard as the request path holds it: its replica set with its
/// router, quorum policy, fan-out writer and controller's channel.
pub(super) fn assemble(
    sets: &[Arc<ReplicaSet>],
    routers: Vec<RouterSlot>,
    quorums: Vec<ArcSwap<crate::shard::QuorumGeneration>>,
    fanouts: Vec<Option<Arc<Fanout>>>,
    controllers: Vec<tokio::sync::mpsc::Sender<crate::failover::request::PrimaryChange>>,
) -> Vec<Arc<crate::shard::Shard>> {
    sets.iter()
        .zip(routers)
        .zip(quorums)
        .zip(fanouts)
        .zip(controllers)
        .map(|((((topology, router), quorum), fanout), controller)| {
            Arc::new(crate::shard::Shard {
                topology: topology.clone(),
                router,
                quorum,
                fanout,
                controller,
            })
        })
        .collect()
}

/// The client listener and, when `admin.listen` is set, the admin one.
pub(super) async fn listeners(
    config: &Config,
) -> std::io::Result<(tokio::net::TcpListener, Option<tokio::net::TcpListener>)> {
    let client = tokio::net::TcpListener::bind(&config.proxy.listen).await?;
    let admin = match &config.admin.listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    Ok((client, admin))
}

/// The nodes' factory (and membership keeper) and the DNS resolver they
/// are looked up with.
pub(super) fn members(
    config: &Config,
    link_options: LinkOptions,
) -> (Arc<failover::members::Members>, crate::net::dns::Resolver) {
    let members = Arc::new(failover::members::Members::new(
        link_options,
        config.backend.clone(),
        config.proxy.worker_count(),
        config.zone_numbers(),
    ));
    let nameserver = config.discovery.nameserver.as_deref();
    let resolver = crate::net::dns::Resolver::new(nameserver.and_then(|n| n.parse().ok()));
    (members, resolver)
}

/// What moves slots: the walk of a move, and saving the map it leaves.
pub(super) fn resharder(
    config: &Config,
    slots: &Arc<crate::reshard::Slots>,
    shards: &Arc<crate::shard::Shards>,
    events: &Arc<Events>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
    coordination: &Option<Arc<crate::coord::Coordination>>,
) -> std::io::Result<Arc<crate::reshard::mover::Resharder>> {
    let store = crate::reshard::state::MapStore::new(config.failover.state_dir.as_deref());
    let shared = match (coordination, &config.coordination) {
        (Some(coord), Some(settings)) => Some(Arc::new(crate::reshard::shared::Shared::new(
            coord.clone(),
            slots.clone(),
            shards.clone(),
            store.clone(),
            &settings.prefix,
            crate::reshard::own(config).map_err(|e| invalid(e.to_string()))?,
        ))),
        _ => None,
    };
    Ok(Arc::new(crate::reshard::mover::Resharder {
        slots: slots.clone(),
        shards: shards.clone(),
        store,
        events: events.clone(),
        hold: std::time::Duration::from_millis(config.failover.hold_writes_ms),
        shutdown: shutdown.clone(),
        changing: Default::default(),
        shared,
    }))
}

/// How slot moves carry keys: with `MIGRATE` when other instances may
/// move the same keys (see `reshard::keys`).
pub(super) fn transfer(config: &Config) -> crate::reshard::keys::Transfer {
    use crate::reshard::keys::Transfer;
    match &config.coordination {
        None => Transfer::Copy,
        Some(_) => Transfer::Migrate {
            auth: config
                .backend
                .password
                .clone()
                .map(|password| (config.backend.username.clone(), password)),
        },
    }
}

/// The commands and settings clients may not use.
pub(super) fn guard(config: &Config) -> crate::client::guard::Guard {
    crate::client::guard::Guard::new(
        &config.proxy.deny_commands,
        &config.proxy.managed_settings,
        config.backend.username.as_deref(),
    )
}
