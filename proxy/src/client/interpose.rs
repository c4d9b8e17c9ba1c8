//! Commands about the client's own connection (`CLIENT ID`, `GETNAME`,
//! `LIST` ...) sent while the client is piped to a node connection of its
//! own (subscribed, tracking). Only Rampart knows the client: the node
//! knows Rampart's connection, with another id and name. But the answer
//! must come in its place among the node's replies, which Rampart copies
//! as they come. So the command is sent to the node as `PING <marker>`,
//! and where the node's echo of the marker appears, Rampart answers the
//! command itself. The echo also says what Redis would answer: in RESP2
//! subscribed mode a node answers `PING` with an array and refuses every
//! command but a few; so does Rampart then.

use bytes::{Bytes, BytesMut};

use super::piped::{Amend, Interposed, Interposer};
use super::session::Session;
use crate::resp::command::{classify, Answer, Class};
use crate::resp::{Request, Value};

/// Random for each process, so that no client can guess a marker and
/// publish it to a subscriber to make it look like an echo.
fn salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SALT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SALT.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    })
}

/// Whether the node runs `req` but Rampart amends its reply.
fn translated(req: &Request) -> bool {
    req.name().as_bytes() == b"CLIENT"
        && req
            .arg_upper(1)
            .is_some_and(|s| matches!(s.as_bytes(), b"GETREDIR" | b"TRACKINGINFO"))
}

/// `reply` (to GETREDIR or TRACKINGINFO) with the node's id of the
/// redirect target replaced by its Rampart id, when known.
pub(super) fn translate(reply: &[u8], client_of: impl Fn(i64) -> Option<u64>) -> Option<BytesMut> {
    // GETREDIR: an integer; TRACKINGINFO: "redirect" then an integer, in
    // a RESP2 array or a RESP3 map alike.
    let at = match reply.first() {
        Some(b':') => 0,
        _ => {
            let key = b"$8\r\nredirect\r\n";
            reply.windows(key.len()).position(|w| w == key)? + key.len()
        }
    };
    let rest = reply.get(at..)?.strip_prefix(b":")?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    let id: i64 = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    let client = client_of(id)?;
    let mut out = BytesMut::with_capacity(reply.len() + 8);
    out.extend_from_slice(&reply[..at]);
    out.extend_from_slice(format!(":{client}").as_bytes());
    out.extend_from_slice(&rest[end..]);
    Some(out)
}

/// The local command `req` is, if it must be answered by Rampart even on
/// a piped connection. `CLIENT REPLY` and `TRACKING` stay with the node,
/// which runs the piped connection's replies and tracking.
fn interposed(req: &Request) -> Option<Answer> {
    if req.name().as_bytes() != b"CLIENT" {
        return None;
    }
    let reply = req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"REPLY");
    match classify(req) {
        Class::Answer(local @ (Answer::Client | Answer::Pause)) if !reply => Some(local),
        Class::Answer(
            local @ (Answer::ClientId
            | Answer::ClientGetName
            | Answer::ClientSetName
            | Answer::ClientSetInfo),
        ) => Some(local),
        _ => None,
    }
}

/// How the node echoed a marker.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Echo {
    /// A bulk string: the command runs.
    Plain,
    /// `pong` and the marker in an array: RESP2 subscribed mode, where
    /// Redis refuses the command.
    Subscribed,
}

/// Whether `frame` (one complete reply) echoes `marker`, and how.
pub(super) fn echo(frame: &[u8], marker: &[u8]) -> Option<Echo> {
    let bulk = |at: &[u8]| -> bool {
        let head = format!("${}\r\n", marker.len());
        at.len() == head.len() + marker.len() + 2
            && at.starts_with(head.as_bytes())
            && &at[head.len()..head.len() + marker.len()] == marker
            && at.ends_with(b"\r\n")
    };
    if bulk(frame) {
        return Some(Echo::Plain);
    }
    frame
        .strip_prefix(b"*2\r\n$4\r\npong\r\n".as_slice())
        .filter(|rest| bulk(rest))
        .map(|_| Echo::Subscribed)
}

/// Redis's refusal of a command in RESP2 subscribed mode.
pub(super) fn refusal(req: &Request) -> Value {
    let name = match req.arg(1) {
        Some(sub) => format!(
            "{}|{}",
            req.name().as_str().to_lowercase(),
            String::from_utf8_lossy(sub).to_lowercase()
        ),
        None => req.name().as_str().to_lowercase(),
    };
    Value::err(format!(
        "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
    ))
}

impl Interposer {
    /// For a piped client's request: if Rampart answers or amends it, the
    /// bytes to send the node in its place (the request itself for a reply
    /// to amend, then `PING <marker>`).
    pub(super) fn interpose(&mut self, req: &Request, session: &Session) -> Option<Bytes> {
        if session.monitor || self.multi || self.muted() {
            return None;
        }
        let entry = |marker| match interposed(req) {
            Some(local) => Some(Interposed::Answer {
                marker,
                local,
                req: req.clone(),
            }),
            None if translated(req) => Some(Interposed::Amend {
                marker,
                how: Amend::RedirectId,
            }),
            None if req.name().as_bytes() == b"HELLO" => Some(Interposed::Amend {
                marker,
                how: Amend::Replace {
                    local: Answer::Hello,
                    req: req.clone(),
                },
            }),
            None => None,
        };
        let marker = self.next_marker(session);
        let entry = entry(marker.clone())?;
        let mut out = BytesMut::new();
        match &entry {
            // The node's connection switches protocol with the client, and
            // learns nothing else: credentials and the name are Rampart's
            // to check and keep (the piped connection already runs as the
            // client's user).
            Interposed::Amend {
                how: Amend::Replace { .. },
                ..
            } => {
                let version = req.args().into_iter().nth(1);
                let hello: Vec<Bytes> = std::iter::once(Bytes::from_static(b"HELLO"))
                    .chain(version)
                    .collect();
                out.extend_from_slice(&Request::from_args(&hello).raw);
            }
            Interposed::Amend { .. } => out.extend_from_slice(&req.raw),
            Interposed::Answer { .. } | Interposed::Refused { .. } => {}
        }
        out.extend_from_slice(&Request::from_args(&[Bytes::from_static(b"PING"), marker]).raw);
        self.queue.push_back(entry);
        Some(out.freeze())
    }

    /// A marker for this session's next interposed command: unique, and
    /// unguessable by other clients.
    pub(super) fn next_marker(&mut self, session: &Session) -> Bytes {
        self.sent += 1;
        Bytes::from(format!(
            "rampart:{:016x}:{}:{}",
            salt(),
            session.id,
            self.sent
        ))
    }

    /// The node will not answer the next command (`CLIENT REPLY OFF` or
    /// `SKIP`), so it would never echo a marker either.
    pub(super) fn muted(&self) -> bool {
        self.replies_off || self.skip_next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_told_apart_from_other_replies() {
        let marker = b"rampart:1:2:3";
        assert_eq!(echo(b"$13\r\nrampart:1:2:3\r\n", marker), Some(Echo::Plain));
        assert_eq!(
            echo(b"*2\r\n$4\r\npong\r\n$13\r\nrampart:1:2:3\r\n", marker),
            Some(Echo::Subscribed)
        );
        assert_eq!(echo(b"$13\r\nrampart:1:2:4\r\n", marker), None);
        assert_eq!(
            echo(
                b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$13\r\nrampart:1:2:3\r\n",
                marker
            ),
            None
        );
        assert_eq!(echo(b"+PONG\r\n", marker), None);
    }

    #[test]
    fn only_connection_commands_are_interposed() {
        let req = |args: &[&str]| Request::from_args(args);
        assert!(interposed(&req(&["CLIENT", "ID"])).is_some());
        assert!(interposed(&req(&["client", "getname"])).is_some());
        assert!(interposed(&req(&["CLIENT", "LIST"])).is_some());
        assert!(interposed(&req(&["CLIENT", "REPLY", "OFF"])).is_none());
        assert!(interposed(&req(&["CLIENT", "TRACKING", "ON"])).is_none());
        assert!(interposed(&req(&["PING"])).is_none());
        assert!(interposed(&req(&["SUBSCRIBE", "a"])).is_none());
    }

    #[test]
    fn redirect_ids_are_translated_back() {
        let known = |id| (id == 42).then_some(7);
        assert_eq!(&translate(b":42\r\n", known).unwrap()[..], b":7\r\n");
        assert!(translate(b":-1\r\n", known).is_none());
        assert!(translate(b":43\r\n", known).is_none());
        let info = b"*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$8\r\nredirect\r\n:42\r\n$8\r\nprefixes\r\n*0\r\n";
        let amended = translate(info, known).unwrap();
        assert_eq!(
            &amended[..],
            b"*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$8\r\nredirect\r\n:7\r\n$8\r\nprefixes\r\n*0\r\n"
        );
        let map = b"%3\r\n$5\r\nflags\r\n~1\r\n$2\r\non\r\n$8\r\nredirect\r\n:42\r\n$8\r\nprefixes\r\n*0\r\n";
        assert!(translate(map, known).is_some());
    }

    #[test]
    fn the_refusal_is_redis_own() {
        let req = Request::from_args(&["CLIENT", "ID"]);
        assert_eq!(
            refusal(&req),
            Value::err("ERR Can't execute 'client|id': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
        );
    }
}
