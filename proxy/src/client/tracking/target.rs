//! The receiving end of a `REDIRECT`: invalidations other clients'
//! tracking hands this one.

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::resp::Proto;

/// The next invalidation another client's tracking redirected here;
/// `None` once some were lost (the client is then disconnected).
pub(crate) async fn inbox(
    inbox: Option<&mut mpsc::Receiver<Bytes>>,
    entry: &crate::client::registry::Entry,
) -> Option<Bytes> {
    let message = inbox?.recv().await;
    message.filter(|_| !entry.lost_invalidations())
}

/// A redirected invalidation as a piped client receives it: a push in
/// RESP3, a `__redis__:invalidate` message to a RESP2 subscriber, nothing
/// otherwise (as Redis).
pub(crate) fn for_pipe(message: Bytes, session: &crate::client::session::Session) -> Bytes {
    const HEADER: &[u8] = b">2\r\n$10\r\ninvalidate\r\n";
    match (session.proto, session.pubsub) {
        (Proto::Resp3, _) => message,
        (_, true) if message.starts_with(HEADER) => {
            let keys = &message[HEADER.len()..];
            let keys: &[u8] = if keys == b"_\r\n" { b"$-1\r\n" } else { keys };
            let mut out =
                BytesMut::from(&b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n"[..]);
            out.extend_from_slice(keys);
            out.freeze()
        }
        _ => Bytes::new(),
    }
}
