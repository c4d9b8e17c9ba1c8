//! A control connection: one request, one decoded reply. Used by the control
//! loop (probes, role changes), never by the request path, so it decodes
//! replies fully with `redis-protocol` instead of forwarding bytes.

use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// The deepest reply a control connection decodes. `redis-protocol` decodes
/// recursively: a node answering a reply nested thousands deep (a hostile
/// node, or a script's reply) would overflow the stack, so the nesting is
/// measured first, without recursion.
pub const MAX_DEPTH: usize = 128;

/// The largest control reply by default: INFO, ROLE, CONFIG GET, a SCAN
/// page are far below it.
pub const MAX_REPLY: usize = 64 * 1024 * 1024;

/// Reads one complete reply from `stream` (appending to `buf`) and decodes
/// it: refused, with the connection to be dropped, when it grows past
/// `max_bytes` or nests deeper than [`MAX_DEPTH`].
pub(super) async fn read_frame(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max_bytes: usize,
) -> std::io::Result<OwnedFrame> {
    use crate::resp::ReplyScanner;
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut scanner = ReplyScanner::new(MAX_DEPTH);
    loop {
        match scanner.scan(buf) {
            Ok(Some(len)) => {
                if crate::resp::reply::nesting_exceeds(&buf[..len], MAX_DEPTH) {
                    let _ = buf.split_to(len);
                    return Err(invalid(format!(
                        "reply nested deeper than {MAX_DEPTH} levels"
                    )));
                }
                return match redis_protocol::resp3::decode::complete::decode(&buf[..len]) {
                    Ok(Some((frame, used))) => {
                        let _ = buf.split_to(used);
                        Ok(frame)
                    }
                    Ok(None) => Err(invalid("incomplete reply".into())),
                    Err(e) => Err(invalid(e.to_string())),
                };
            }
            Ok(None) => {
                if buf.len() > max_bytes {
                    return Err(invalid(format!("reply larger than {max_bytes} bytes")));
                }
                if stream.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Err(e) => return Err(invalid(e.to_string())),
        }
    }
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
            max_reply: MAX_REPLY,
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

    async fn call_inner<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<OwnedFrame> {
        let mut out = BytesMut::new();
        multibulk(&mut out, args);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        loop {
            let frame = read_frame(&mut self.stream, &mut self.buf, self.max_reply).await?;
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
