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
        })
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
            match redis_protocol::resp3::decode::complete::decode(&self.buf) {
                Ok(Some((frame, used))) => {
                    let _ = self.buf.split_to(used);
                    if matches!(frame, OwnedFrame::Push { .. }) {
                        continue;
                    }
                    return Ok(frame);
                }
                Ok(None) => {
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e.to_string(),
                    ))
                }
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
