//! One task pair per client connection: the reader parses and dispatches
//! requests (`connection`), the writer sends replies back in order
//! (`writer`). Commands Rampart answers itself are in `local`, and what it
//! remembers about the client in `session`.

mod connection;
mod local;
mod session;
mod writer;

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::server::Context;

/// Replies queued per client before its reader waits for its writer.
const PENDING: usize = 1024;

/// Serves one client until it disconnects.
pub async fn serve(stream: TcpStream, ctx: Arc<Context>, id: u64) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(PENDING);
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        writer::run(wr, rx).await;
        drop(done_tx);
    });
    connection::Connection::new(ctx, id, tx)
        .run(rd, done_rx)
        .await;
    let _ = writer.await;
}
