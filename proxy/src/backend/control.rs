//! A control connection: one request, one decoded reply. Used by the control
//! loop (probes, role changes), never by the request path, so it decodes
//! replies fully with `redis-protocol` instead of forwarding bytes.

use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::io::AsyncWriteExt;

use crate::net::Stream;

use super::connect::{connect, ConnectOptions, Session};
use crate::resp::encode::multibulk;

pub struct Control {
    stream: Stream,
    /// Hides this connection's commands from clients' MONITOR.
    _mark: super::own::Mark,
    buf: BytesMut,
    /// The largest reply accepted, in bytes.
    max_reply: usize,
}

impl Control {
    pub async fn connect(addr: &str, opts: &ConnectOptions) -> std::io::Result<Control> {
        // RESP3 so replies arrive typed (maps, doubles) whatever the command.
        let session = Session {
            proto: crate::resp::Proto::Resp3,
            db: 0,
            user: None,
        };
        let stream = connect(addr, opts, session).await?;
        Ok(Control {
            _mark: super::own::Mark::new(&stream, super::own::Kind::Control),
            stream,
            buf: BytesMut::with_capacity(4096),
            max_reply: super::frame::MAX_REPLY,
        })
    }

    /// Refuses replies larger than `bytes` (probes expect small ones: a node
    /// answering INFO with a gigabyte must not make Rampart hold it).
    pub fn limit_replies(mut self, bytes: usize) -> Control {
        self.max_reply = bytes;
        self
    }

    /// Sends one command and waits up to `timeout` for its reply. An error
    /// reply is returned as `Ok(OwnedFrame::SimpleError ..)`; `Err` means the
    /// connection is no longer usable.
    pub async fn call<A: AsRef<[u8]>>(
        &mut self,
        args: &[A],
        timeout: Duration,
    ) -> std::io::Result<OwnedFrame> {
        match tokio::time::timeout(timeout, self.call_inner(args)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply within {} ms", timeout.as_millis()),
            )),
        }
    }

    /// Sends `commands` back to back and waits up to `timeout` for all
    /// their replies, in order (error replies included, as frames).
    pub async fn pipeline<A: AsRef<[u8]>>(
        &mut self,
        commands: &[Vec<A>],
        timeout: Duration,
    ) -> std::io::Result<Vec<OwnedFrame>> {
        let exchange = async {
            let mut out = BytesMut::new();
            for args in commands {
                multibulk(&mut out, args);
            }
            self.stream.write_all(&out).await?;
            self.stream.flush().await?;
            let mut replies = Vec::with_capacity(commands.len());
            while replies.len() < commands.len() {
                let frame =
                    super::frame::read_frame(&mut self.stream, &mut self.buf, self.max_reply)
                        .await?;
                if !matches!(frame, OwnedFrame::Push { .. }) {
                    replies.push(frame);
                }
            }
            Ok(replies)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply within {} ms", timeout.as_millis()),
            )),
        }
    }

    /// Sends one command without waiting for its reply: a subscription,
    /// whose confirmations and messages are read with [`Control::pushes`].
    pub async fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        multibulk(&mut out, args);
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// Waits for the node's next frame (as long as it takes), then takes
    /// every further one already received, up to `max` in all, without
    /// waiting: a burst of messages is handled as one.
    pub async fn pushes(&mut self, max: usize) -> std::io::Result<Vec<OwnedFrame>> {
        let mut frames = Vec::new();
        loop {
            frames.push(
                super::frame::read_frame(&mut self.stream, &mut self.buf, self.max_reply).await?,
            );
            if frames.len() >= max || !super::frame::buffered(&self.buf) {
                return Ok(frames);
            }
        }
    }

    async fn call_inner<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<OwnedFrame> {
        self.send(args).await?;
        loop {
            let frame =
                super::frame::read_frame(&mut self.stream, &mut self.buf, self.max_reply).await?;
            if !matches!(frame, OwnedFrame::Push { .. }) {
                return Ok(frame);
            }
        }
    }
}

/// Text of a string-like frame.
pub fn frame_text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BlobString { data, .. }
        | OwnedFrame::SimpleString { data, .. }
        | OwnedFrame::VerbatimString { data, .. } => {
            Some(String::from_utf8_lossy(data).into_owned())
        }
        OwnedFrame::Number { data, .. } => Some(data.to_string()),
        _ => None,
    }
}

/// Integer value of a number frame or a numeric string.
pub fn frame_int(frame: &OwnedFrame) -> Option<i64> {
    match frame {
        OwnedFrame::Number { data, .. } => Some(*data),
        other => frame_text(other)?.parse().ok(),
    }
}

/// `SCAN`'s reply: the next cursor and the keys.
pub fn scan_page(reply: &OwnedFrame) -> Option<(String, Vec<bytes::Bytes>)> {
    let OwnedFrame::Array { data, .. } = reply else {
        return None;
    };
    let [cursor, OwnedFrame::Array { data: keys, .. }] = &data[..] else {
        return None;
    };
    let keys = keys
        .iter()
        .map(|k| match k {
            OwnedFrame::BlobString { data, .. } | OwnedFrame::SimpleString { data, .. } => {
                Some(bytes::Bytes::copy_from_slice(data))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((frame_text(cursor)?, keys))
}
