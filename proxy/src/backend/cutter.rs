//! Replies read from a node connection, cut off the read buffer as they
//! complete without copying, and the idle read that notices a connection
//! the server closes (shared by links and fan-out streams).

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::LinkError;
use crate::net::ReadHalf;
use crate::resp::ReplyScanner;

/// An empty read buffer larger than this is replaced by a small one.
pub(crate) const RETURN_ABOVE: usize = 1024 * 1024;

/// Replies read from a backend connection, cut off the read buffer as
/// they complete, without copying (shared by links and fan-out streams).
pub(crate) struct ReplyCutter {
    pub buf: BytesMut,
    pub scanner: ReplyScanner,
    /// Bytes at the front of `buf` holding complete replies not taken yet.
    pub(super) consumed: usize,
    /// How many replies those are.
    pub done: usize,
}

impl ReplyCutter {
    pub fn new(max_depth: usize) -> ReplyCutter {
        ReplyCutter {
            buf: BytesMut::with_capacity(16 * 1024),
            scanner: ReplyScanner::new(max_depth),
            consumed: 0,
            done: 0,
        }
    }

    /// Walks past the next complete reply; false while more bytes are
    /// needed. A RESP3 push answers no request and is dropped.
    pub fn advance(&mut self) -> Result<bool, LinkError> {
        loop {
            let Some(len) = self.scanner.scan(&self.buf[self.consumed..])? else {
                return Ok(false);
            };
            if self.buf[self.consumed] == b'>' {
                let mut rest = self.buf.split_off(self.consumed);
                let _ = rest.split_to(len);
                self.buf.unsplit(rest);
                continue;
            }
            self.consumed += len;
            self.done += 1;
            return Ok(true);
        }
    }

    /// Drops the complete replies walked past so far, keeping their
    /// count: for a batch nobody will read.
    pub fn discard(&mut self) {
        let _ = self.buf.split_to(self.consumed);
        self.consumed = 0;
    }

    /// The replies walked past so far, and how many.
    pub fn take(&mut self) -> (Bytes, usize) {
        let data = self.buf.split_to(self.consumed).freeze();
        let done = self.done;
        self.consumed = 0;
        self.done = 0;
        (data, done)
    }

    /// Room for the next read. A buffer that grew for a large reply and is
    /// empty again is given back rather than kept for the link's life.
    pub fn make_room(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > RETURN_ABOVE {
            self.buf = BytesMut::with_capacity(16 * 1024);
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(64 * 1024);
        }
    }
}

/// What an idle reader saw first.
pub(crate) enum Idle<T> {
    /// Something was written and awaits its replies.
    Next(T),
    /// Every writer is gone.
    Done,
    /// Bytes nobody asked for (pushes, or a broken connection): the caller
    /// looks at them.
    Read,
}

/// A reader with nothing in flight waits for the next thing written while
/// still reading, so a connection the server closes is noticed at once.
pub(crate) async fn idle_read<T>(
    items: &mut mpsc::UnboundedReceiver<T>,
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
) -> Result<Idle<T>, LinkError> {
    tokio::select! {
        next = items.recv() => Ok(next.map_or(Idle::Done, Idle::Next)),
        read = rd.read_buf(buf) => match read? {
            0 => Err(LinkError::Closed),
            _ => Ok(Idle::Read),
        },
    }
}
