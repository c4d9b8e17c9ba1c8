//! The reply side of a client connection.
//!
//! The reader hands this task one [`Pending`] per thing the client will get
//! back, in request order; this task waits for each in turn and writes them,
//! gathering every reply that is already there into one write. Because only
//! this task writes to the socket and it takes items strictly in order, a
//! client's replies can never overtake each other, whichever nodes they come
//! from.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use crate::backend::BatchReply;

/// Something the client will receive, in order.
pub enum Pending {
    /// Replies to a batch sent to a backend link.
    Remote {
        reply: oneshot::Receiver<BatchReply>,
        replies: usize,
        /// Released once written: bounds requests in flight per client.
        permit: OwnedSemaphorePermit,
    },
    /// A reply Rampart made itself, already encoded.
    Local(Bytes),
    /// Signalled once everything before it has been written: lets the reader
    /// move the client to another backend connection without reordering.
    Barrier(oneshot::Sender<()>),
    /// From here on the client gets whatever this backend connection sends
    /// (SUBSCRIBE, MONITOR); ends when either side closes.
    Pipe(OwnedReadHalf),
    /// Write what came before, then close the connection.
    Close,
}

/// Writes past this size go out without waiting for more replies.
const FLUSH_AT: usize = 64 * 1024;

pub async fn run(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Pending>) {
    let mut out = BytesMut::with_capacity(16 * 1024);
    let _ = write_all(&mut wr, &mut out, &mut rx).await;
    let _ = wr.shutdown().await;
}

async fn write_all(
    wr: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    rx: &mut mpsc::Receiver<Pending>,
) -> std::io::Result<()> {
    loop {
        let item = if out.is_empty() {
            match rx.recv().await {
                Some(item) => item,
                None => return Ok(()),
            }
        } else {
            match rx.try_recv() {
                Ok(item) => item,
                Err(mpsc::error::TryRecvError::Empty) => {
                    flush(wr, out).await?;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return flush(wr, out).await,
            }
        };
        match item {
            Pending::Remote {
                mut reply,
                replies,
                permit,
            } => {
                let reply = match reply.try_recv() {
                    Ok(reply) => reply,
                    Err(oneshot::error::TryRecvError::Empty) => {
                        flush(wr, out).await?;
                        reply.await.unwrap_or_else(|_| dropped())
                    }
                    Err(oneshot::error::TryRecvError::Closed) => dropped(),
                };
                if reply.data.len() >= FLUSH_AT {
                    flush(wr, out).await?;
                    wr.write_all(&reply.data).await?;
                } else {
                    out.extend_from_slice(&reply.data);
                }
                if let Some(error) = &reply.error {
                    for _ in reply.got..replies {
                        out.extend_from_slice(b"-");
                        out.extend_from_slice(error.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                }
                drop(permit);
            }
            Pending::Local(bytes) => out.extend_from_slice(&bytes),
            Pending::Barrier(done) => {
                let _ = done.send(());
            }
            Pending::Pipe(mut backend) => {
                flush(wr, out).await?;
                return pipe(&mut backend, wr).await;
            }
            Pending::Close => return flush(wr, out).await,
        }
        if out.len() >= FLUSH_AT {
            flush(wr, out).await?;
        }
    }
}

async fn flush(wr: &mut OwnedWriteHalf, out: &mut BytesMut) -> std::io::Result<()> {
    if !out.is_empty() {
        wr.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

async fn pipe(backend: &mut OwnedReadHalf, wr: &mut OwnedWriteHalf) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = backend.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        wr.write_all(&buf[..n]).await?;
    }
}

fn dropped() -> BatchReply {
    BatchReply {
        data: Bytes::new(),
        got: 0,
        error: Some("ERR rampart: the backend link went away before replying".into()),
    }
}
