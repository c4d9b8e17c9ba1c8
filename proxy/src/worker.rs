//! Worker threads: each runs its own single-threaded event loop, serves the
//! clients handed to it, and owns its own shared backend links.
//!
//! Measured on a 2-core machine, tokio's work-stealing scheduler spent more
//! time waking idle threads than the proxy spent proxying: a request's hops
//! (client -> link -> backend -> link -> client) kept landing on different
//! threads. With one event loop per thread and links per thread, a request
//! never leaves the thread its client lives on, the way twemproxy and
//! Envoy's workers do it.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::context::Context;

/// A client connection on its way to a worker.
pub struct NewClient {
    pub stream: std::net::TcpStream,
    pub id: u64,
    pub peer: std::net::SocketAddr,
    /// Held while the client is connected.
    pub slot: crate::context::ClientSlot,
}

/// Handles to the worker threads.
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<NewClient>>,
}

impl Workers {
    pub fn start(ctx: &Arc<Context>, count: usize) -> std::io::Result<Workers> {
        let mut senders = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name(format!("rampart-worker-{index}"))
                .spawn(move || run(index, ctx, rx))?;
            senders.push(tx);
        }
        Ok(Workers { senders })
    }

    /// Hands a client to a worker, spreading clients evenly.
    pub fn dispatch(&self, client: NewClient) {
        let index = (client.id % self.senders.len() as u64) as usize;
        let _ = self.senders[index].send(client);
    }
}

fn run(index: usize, ctx: Arc<Context>, mut clients: mpsc::UnboundedReceiver<NewClient>) {
    crate::backend::pool::enter_worker(index);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, worker = index, "cannot start worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        for (_, node) in ctx.topology.nodes() {
            node.pool.warm_up();
        }
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                client = clients.recv() => {
                    let Some(client) = client else { break };
                    let ctx = ctx.clone();
                    // Per-connection logs are opt-in (`rampart::client=debug`):
                    // one line per connection is too many for a busy proxy.
                    let span = tracing::debug_span!(target: "rampart::client", "client", id = client.id, peer = %client.peer, worker = index);
                    tasks.spawn(
                        async move {
                            tracing::debug!(target: "rampart::client", "connected");
                            match tokio::net::TcpStream::from_std(client.stream) {
                                Ok(stream) => crate::client::serve(stream, ctx, client.id).await,
                                Err(e) => tracing::warn!(error = %e, "cannot adopt client socket"),
                            }
                            tracing::debug!(target: "rampart::client", "disconnected");
                            drop(client.slot);
                        }
                        .instrument(span),
                    );
                }
                // Reap finished clients so the set does not grow.
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // No more clients: let the connected ones finish what they are owed
        // (they were told to close), within the grace period.
        let grace = ctx.config.proxy.shutdown_grace();
        let _ = tokio::time::timeout(grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    });
}
