//! Starting what runs: the probes (and a brief wait for their first
//! round), the failover controllers, and the services clients need.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use super::accept_loop;
use crate::admin;
use crate::backend::ConnectOptions;
use crate::config::FailoverRole;
use crate::context::Context;
use crate::failover;
use crate::failover::state::StateStore;
use crate::worker::Workers;

/// Starts probing every node, and waits (at most 3 s) until each has been
/// probed once: accepting clients before would refuse their first
/// commands for want of a known primary.
pub(super) async fn probe_all(
    context: &Arc<Context>,
    members: &failover::members::Members,
    connect: &ConnectOptions,
    shutdown_rx: &watch::Receiver<bool>,
) {
    let probed = Arc::new(Semaphore::new(0));
    let probing = Arc::new(failover::probe::Probing {
        timings: context.probe_timings.clone(),
        detectors: context.detector.clone(),
        opts: connect.clone(),
        first_round: probed.clone(),
        events: context.events.clone(),
        shutdown: shutdown_rx.clone(),
    });
    let node_count = members.start_probes(&context.topology.shards(), probing);
    let first_round = probed.acquire_many(node_count as u32);
    let _ = tokio::time::timeout(Duration::from_secs(3), first_round).await;
}

/// A leader's failover controller per native shard (a fan-out shard's
/// writer picks its first primary instead), then a brief wait for the
/// first primaries; a follower routes by what the nodes say.
pub(super) async fn start_controllers(
    context: &Arc<Context>,
    coordination: &Option<Arc<crate::coord::Coordination>>,
    mut switchover_rx: Vec<mpsc::Receiver<crate::failover::request::PrimaryChange>>,
    connect: &ConnectOptions,
    shutdown_rx: &watch::Receiver<bool>,
) {
    match context.config.failover.role {
        FailoverRole::Follower if coordination.is_some() => {}
        FailoverRole::Leader => {
            for (index, requests) in switchover_rx.drain(..).enumerate() {
                // A fan-out shard's primary is chosen by its writer, from
                // the nodes in sync; nobody is promoted or repointed.
                if let Some(fanout) = &context.shards.at(index).fanout {
                    fanout.pick_first_primary().await;
                    continue;
                }
                let shard = context.shards.at(index);
                let replication = context.config.shards[shard.name()].replication.clone();
                spawn_controller(
                    context,
                    coordination,
                    shard,
                    replication,
                    connect,
                    shutdown_rx,
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
                for shard in context.topology.shards().iter() {
                    let mut changed = shard.watch();
                    while shard.primary().is_none() && changed.changed().await.is_ok() {}
                }
            })
            .await;
        }
        FailoverRole::Follower => {
            for shard in context.topology.shards().iter() {
                shard.refresh();
            }
        }
    }
}

/// Starts the failover controller of `shard` (on a leader).
fn spawn_controller(
    context: &Arc<Context>,
    coordination: &Option<Arc<crate::coord::Coordination>>,
    shard: Arc<crate::shard::Shard>,
    replication: crate::config::ReplicationConfig,
    connect: &ConnectOptions,
    shutdown_rx: &watch::Receiver<bool>,
    requests: mpsc::Receiver<crate::failover::request::PrimaryChange>,
) {
    let settings = failover::controller::Settings {
        timings: context.probe_timings.clone(),
        replication,
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

/// Starts what runs for each shard a reload adds: its probes and, on a
/// leader, its failover controller (a follower routes by what the nodes
/// say). Until shutdown.
async fn start_added_shards(
    context: Arc<Context>,
    members: Arc<failover::members::Members>,
    connect: ConnectOptions,
    mut added: mpsc::UnboundedReceiver<crate::shard::Added>,
    mut shutdown_rx: watch::Receiver<bool>,
) {
    loop {
        let added = tokio::select! {
            added = added.recv() => match added {
                Some(added) => added,
                None => return,
            },
            _ = shutdown_rx.changed() => return,
        };
        let set = added.shard.topology.clone();
        members.probe_shard(&set);
        match context.config.failover.role {
            FailoverRole::Leader => spawn_controller(
                &context,
                &context.coordination,
                added.shard,
                added.section.replication,
                &connect,
                &shutdown_rx,
                added.requests,
            ),
            // With [coordination], followers route by the records.
            FailoverRole::Follower if context.coordination.is_some() => {}
            FailoverRole::Follower => set.refresh(),
        }
    }
}

/// The services that run once clients may come: accepting them, the
/// admin listener, and the watchers.
pub(super) fn start_services(
    services: &crate::services::Services,
    context: &Arc<Context>,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    workers: Workers,
    shutdown_rx: watch::Receiver<bool>,
) {
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
            context.topology.clone(),
            context.events.clone(),
            shutdown_rx.clone(),
        ),
    );
    services.start(
        "history",
        crate::observe::history::sample(
            context.history.clone(),
            context.topology.clone(),
            context.metrics.clone(),
            shutdown_rx.clone(),
        ),
    );
    services.start(
        "node-settings",
        crate::failover::settings::catch_up(
            context.node_settings.clone(),
            context.topology.clone(),
            shutdown_rx.clone(),
        ),
    );
    services.start(
        "keyspace-notifications",
        crate::shard::notifications::relay_keyspace_events(
            context.shards.clone(),
            leads(context),
            shutdown_rx.clone(),
        ),
    );
    if let Some(listener) = admin_listener {
        services.start(
            "admin",
            admin::serve(listener, context.clone(), shutdown_rx),
        );
    }
}

/// Whether this instance runs a shard's failover, for what only one
/// instance may do: with `[coordination]`, while it holds the shard's
/// lease; otherwise when it is the leader.
fn leads(context: &Context) -> crate::shard::notifications::Leads {
    match (&context.coordination, context.config.failover.role) {
        (Some(coordination), _) => {
            let coordination = coordination.clone();
            Arc::new(move |shard: &str| coordination.holds(shard))
        }
        (None, FailoverRole::Leader) => Arc::new(|_: &str| true),
        (None, FailoverRole::Follower) => Arc::new(|_: &str| false),
    }
}

/// What a start built that the boot starts.
pub(super) struct Parts {
    pub members: Arc<failover::members::Members>,
    pub connect: ConnectOptions,
    pub coordination: Option<Arc<crate::coord::Coordination>>,
    pub resharder: Arc<crate::reshard::mover::Resharder>,
    pub switchover_rx: Vec<mpsc::Receiver<crate::failover::request::PrimaryChange>>,
    pub listener: TcpListener,
    pub admin_listener: Option<TcpListener>,
    pub added_shards: mpsc::UnboundedReceiver<crate::shard::Added>,
}

/// Starts everything, in order: the fan-out writers, the probes (and a
/// wait for their first round), coordination, the slot mover, discovery,
/// the failover controllers, the workers and the listeners.
pub(super) async fn boot(
    context: &Arc<Context>,
    parts: Parts,
    shutdown_rx: watch::Receiver<bool>,
) -> std::io::Result<crate::services::Services> {
    for fanout in context
        .shards
        .all()
        .iter()
        .filter_map(|s| s.fanout.as_ref())
    {
        fanout.start();
    }
    probe_all(context, &parts.members, &parts.connect, &shutdown_rx).await;
    let services = crate::services::Services::default();
    if let Some(coordination) = &parts.coordination {
        services.start(
            "coordination",
            coordination.clone().run(shutdown_rx.clone()),
        );
    }
    if let Some(shared) = &parts.resharder.shared {
        services.start("slot-map", shared.clone().follow(shutdown_rx.clone()));
    }
    services.start("slot-mover", parts.resharder.run());
    services.start("discovery", context.clone().discover());
    services.start(
        "shard-starter",
        start_added_shards(
            context.clone(),
            parts.members.clone(),
            parts.connect.clone(),
            parts.added_shards,
            shutdown_rx.clone(),
        ),
    );
    start_controllers(
        context,
        &parts.coordination,
        parts.switchover_rx,
        &parts.connect,
        &shutdown_rx,
    )
    .await;
    let workers = Workers::start(context, context.config.proxy.worker_count())?;
    start_services(
        &services,
        context,
        parts.listener,
        parts.admin_listener,
        workers,
        shutdown_rx,
    );
    Ok(services)
}
