//! One task per client connection: `connection` reads, parses and
//! dispatches requests, `writer` keeps the replies the client is owed and
//! writes them in order. An ordinary read or write takes `forward` (the
//! node, with `reads` keeping replica reads consistent) and `batch` (one
//! batch per link); what is in flight is kept as `inflight` says. Commands
//! Rampart answers itself are in `local`, what it remembers about the
//! client in `session`, blocking commands in `blocking` (and `undo`, which
//! puts back what a departed client's pop took), the `CLIENT` commands
//! about other clients in `identity` (over the `registry` of connected
//! clients, which `publish` keeps up to date), and what clients may not do
//! in `guard`.

mod answer;
mod batch;
mod blocking;
mod connection;
mod durable;
mod fanout;
mod forward;
pub mod guard;
mod hold;
mod inflight;
mod interpose;
mod monitor;
mod moving;
mod pin;
mod pipe;
mod pipe_guard;
mod piped;
mod primary_feed;
mod publish;
mod reads;
mod redirect;
pub mod registry;
mod reissue;
mod routing;
mod serve;
pub mod throttle;
mod tracking;

pub use answer::auth::constant_time_eq;
mod session;
mod shards;
mod tx;
mod undo;
mod writer;

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::context::Context;
use crate::net::Stream;

/// A client that has not finished its TLS handshake this long after
/// connecting is closed: a connection that only holds a slot is not let
/// keep it.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves one client until it disconnects.
pub async fn serve(tcp: TcpStream, ctx: Arc<Context>, id: u64) {
    let _ = tcp.set_nodelay(true);
    let tcp_peer = tcp
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let stream = match &ctx.client_tls {
        None => Stream::Tcp(tcp),
        Some(tls) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tls_failed(&ctx, &tcp_peer, &e.to_string()),
            Err(_) => return tls_failed(&ctx, &tcp_peer, "timed out"),
        },
    };
    let unknown = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let peer = stream.peer_addr().unwrap_or(unknown);
    let local = stream.local_addr().unwrap_or(unknown);
    let user = ctx.config.proxy.username.as_deref().unwrap_or("default");
    let (registration, orders) = ctx.registry.register(id, peer, local, user);
    let (rd, wr) = stream.into_split();
    let connection = connection::Connection::new(ctx, id, wr, registration, orders);
    serve::Task::new(connection, rd).run().await;
}

/// A client's TLS handshake failed: counted, and logged at most once every
/// ten seconds (a scanner makes thousands).
fn tls_failed(ctx: &Context, peer: &str, why: &str) {
    static LOG: crate::observe::throttled::Throttled =
        crate::observe::throttled::Throttled::every(10);
    ctx.metrics.count_tls_handshake_failure();
    if let Some(quiet) = LOG.due() {
        tracing::warn!(target: "rampart::client", client = peer, error = why, not_logged = quiet, "TLS handshake failed (logged at most once every 10 s)");
    }
}
