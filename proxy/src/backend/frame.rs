//! One reply read from a node outside the data path (control connections,
//! the connection handshake) and decoded, bounded in size and depth.

use bytes::BytesMut;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::io::AsyncReadExt;

use crate::net::Stream;

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

/// Whether `buf` holds a complete reply, so that [`read_frame`] would not
/// wait.
pub(super) fn buffered(buf: &[u8]) -> bool {
    matches!(
        crate::resp::ReplyScanner::new(MAX_DEPTH).scan(buf),
        Ok(Some(_))
    )
}
