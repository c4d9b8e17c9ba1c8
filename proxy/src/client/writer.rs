//! The reply side of a client connection: the queue of replies the client
//! is owed, in request order, and writing them out.
//!
//! Only this queue writes to the client socket and it takes items strictly
//! from the front, so a client's replies can never overtake each other,
//! whichever nodes they come from. Every reply that is already complete is
//! gathered into one write.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;

use crate::backend::BatchReply;

/// Something the client will receive, in order.
pub enum Pending {
    /// Replies to a batch sent to a backend link.
    Remote {
        reply: oneshot::Receiver<BatchReply>,
        replies: usize,
    },
    /// A reply Rampart made itself, encoded.
    Local(Bytes),
    /// Replies from a backend that have arrived.
    Arrived { reply: BatchReply, replies: usize },
}

/// Writes past this size go out without waiting for more replies.
const FLUSH_AT: usize = 64 * 1024;

pub struct Replies {
    wr: OwnedWriteHalf,
    queue: VecDeque<Pending>,
    out: BytesMut,
    /// Replies owed for requests already sent to backends.
    owed: usize,
}

impl Replies {
    pub fn new(wr: OwnedWriteHalf) -> Replies {
        Replies {
            wr,
            queue: VecDeque::new(),
            out: BytesMut::with_capacity(16 * 1024),
            owed: 0,
        }
    }

    pub fn push(&mut self, item: Pending) {
        if let Pending::Remote { replies, .. } = &item {
            self.owed += replies;
        }
        self.queue.push_back(item);
    }

    /// Backend replies the client is still owed: bounds how far ahead of
    /// its reading a client may send.
    pub fn owed(&self) -> usize {
        self.owed
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Waits until the item at the front is complete. Cancel-safe: it only
    /// polls, the item stays queued.
    pub async fn front_ready(&mut self) {
        poll_fn(|cx| {
            let Some(Pending::Remote { reply, replies }) = self.queue.front_mut() else {
                return Poll::Ready(());
            };
            let replies = *replies;
            let Poll::Ready(result) = Pin::new(reply).poll(cx) else {
                return Poll::Pending;
            };
            let reply = result.unwrap_or_else(|_| dropped());
            if let Some(front) = self.queue.front_mut() {
                *front = Pending::Arrived { reply, replies };
            }
            Poll::Ready(())
        })
        .await
    }

    /// Writes every item at the front that is already complete.
    pub async fn write_ready(&mut self) -> std::io::Result<()> {
        while let Some(item) = self.queue.pop_front() {
            match item {
                Pending::Local(bytes) => self.append(bytes).await?,
                Pending::Arrived { reply, replies } => self.arrived(reply, replies).await?,
                Pending::Remote { mut reply, replies } => match reply.try_recv() {
                    Ok(reply) => self.arrived(reply, replies).await?,
                    Err(oneshot::error::TryRecvError::Empty) => {
                        self.queue.push_front(Pending::Remote { reply, replies });
                        break;
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {
                        self.arrived(dropped(), replies).await?
                    }
                },
            }
            if self.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
        self.flush().await
    }

    /// Writes everything queued, waiting for replies as needed.
    pub async fn drain(&mut self) -> std::io::Result<()> {
        while !self.queue.is_empty() {
            self.write_ready().await?;
            if !self.queue.is_empty() {
                self.front_ready().await;
            }
        }
        Ok(())
    }

    /// Writes raw bytes straight through (a piped session).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.flush().await?;
        self.wr.write_all(bytes).await
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.wr.shutdown().await;
    }

    async fn arrived(&mut self, reply: BatchReply, replies: usize) -> std::io::Result<()> {
        self.owed -= replies;
        if reply.error.is_none() {
            return self.append(reply.data).await;
        }
        encode(&mut self.out, reply, replies);
        Ok(())
    }

    async fn append(&mut self, bytes: Bytes) -> std::io::Result<()> {
        if bytes.len() >= FLUSH_AT {
            // Large replies go out as they are, without a copy.
            self.flush().await?;
            self.wr.write_all(&bytes).await
        } else {
            self.out.extend_from_slice(&bytes);
            Ok(())
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.wr.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}

/// The replies that arrived, then an error for each that never will.
fn encode(out: &mut BytesMut, reply: BatchReply, replies: usize) {
    out.extend_from_slice(&reply.data);
    if let Some(error) = &reply.error {
        for _ in reply.got..replies {
            out.extend_from_slice(b"-");
            out.extend_from_slice(error.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn dropped() -> BatchReply {
    BatchReply {
        data: Bytes::new(),
        got: 0,
        error: Some("ERR rampart: the backend link went away before replying".into()),
    }
}
