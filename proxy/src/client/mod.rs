//! One task per client connection: `connection` reads, parses and
//! dispatches requests, `writer` keeps the replies the client is owed and
//! writes them in order. Commands Rampart answers itself are in `local`, and what it
//! remembers about the client in `session`.

mod blocking;
mod connection;
pub mod guard;
pub(crate) mod local;

pub use local::constant_time_eq;
mod session;
mod writer;

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::server::Context;

/// Serves one client until it disconnects.
pub async fn serve(stream: TcpStream, ctx: Arc<Context>, id: u64) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    connection::Connection::new(ctx, id, wr).run(rd).await;
}
