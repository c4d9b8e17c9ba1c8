//! Rampart's own connections to the nodes, by their local address.
//!
//! A node's `MONITOR` shows every command with the address it came from.
//! Through Rampart, clients' commands arrive on Rampart's links, mixed with
//! what Rampart sends for itself (probes, role changes, the `WAIT` after
//! synchronous writes). Marking each connection Rampart opens lets a client's
//! `MONITOR` show the clients' commands and leave Rampart's own out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use dashmap::DashMap;

use crate::net::Stream;

/// What a connection of Rampart's carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Probes and control-loop commands: nothing of any client's.
    Control,
    /// A link shared by clients: their commands, and the `WAIT`s Rampart
    /// adds after synchronous writes.
    Shared,
    /// A link lent to one client (transactions, blocking commands).
    Dedicated,
}

fn own() -> &'static DashMap<SocketAddr, Kind> {
    static OWN: OnceLock<DashMap<SocketAddr, Kind>> = OnceLock::new();
    OWN.get_or_init(DashMap::new)
}

/// Connections of Rampart's that have closed, newest last, at most
/// [`DEPARTED`]: a node's `SLOWLOG` keeps entries long after the
/// connection that sent them is gone (a probe connection replaced after a
/// timeout, a client's dedicated connection), and they are still not the
/// clients'. The bound keeps this small; an address a closed connection
/// had is only reused by a connection to the same node from this host
/// once the kernel lets the port go, and then counts as Rampart's until
/// it is pushed out.
fn departed() -> &'static Mutex<VecDeque<(SocketAddr, Kind)>> {
    static DEPARTED_OWN: OnceLock<Mutex<VecDeque<(SocketAddr, Kind)>>> = OnceLock::new();
    DEPARTED_OWN.get_or_init(Mutex::default)
}

/// Closed connections remembered (see [`departed`]).
const DEPARTED: usize = 4096;

/// Forgets a live connection, remembering it among the departed.
fn depart(addr: SocketAddr) {
    let Some((_, kind)) = own().remove(&addr) else {
        return;
    };
    let mut gone = departed().lock().unwrap_or_else(|p| p.into_inner());
    if gone.len() == DEPARTED {
        gone.pop_front();
    }
    gone.push_back((addr, kind));
}

/// Marks a connection as Rampart's while it lives.
pub struct Mark(Option<SocketAddr>);

impl Mark {
    pub fn new(stream: &Stream, kind: Kind) -> Mark {
        let local = stream.local_addr().ok();
        if let Some(addr) = local {
            own().insert(addr, kind);
        }
        Mark(local)
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        if let Some(addr) = self.0 {
            depart(addr);
        }
    }
}

/// Marks a connection for its handshake (HELLO, AUTH, SELECT, CLIENT ID:
/// all Rampart's own), before the first byte is sent: the node shows those
/// commands in `MONITOR` at once, and the [`Mark`] its owner takes comes
/// only once the handshake is over. Kept as a control connection when the
/// handshake succeeds (the owner's mark then says what it really is);
/// forgotten if it fails or is abandoned.
pub(super) struct Handshake {
    addr: Option<SocketAddr>,
    done: bool,
}

impl Handshake {
    pub(super) fn new(stream: &Stream) -> Handshake {
        let addr = stream.local_addr().ok();
        if let Some(addr) = addr {
            own().insert(addr, Kind::Control);
        }
        Handshake { addr, done: false }
    }

    pub(super) fn succeeded(mut self) {
        self.done = true;
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        if let (false, Some(addr)) = (self.done, self.addr) {
            depart(addr);
        }
    }
}

/// The kind of Rampart connection `addr` (as a node prints it) is, if it is
/// one.
pub fn kind_of(addr: &str) -> Option<Kind> {
    let addr: SocketAddr = addr.parse().ok()?;
    if let Some(kind) = own().get(&addr) {
        return Some(*kind);
    }
    let gone = departed().lock().unwrap_or_else(|p| p.into_inner());
    gone.iter()
        .rev()
        .find(|(a, _)| *a == addr)
        .map(|(_, kind)| *kind)
}

/// The marker Rampart writes before a client's own `WAIT` (see
/// `client::connection`'s `wait`): replication is ordered, so waiting for
/// the marker waits for everything the client wrote before it.
pub const WAIT_MARKER: &str = "__rampart__:wait";

/// The marker Rampart writes, as a synchronous write of its own, to confirm
/// the writes of a client whose connection may not run `WAIT`.
pub const CONFIRM_MARKER: &str = "__rampart__:confirm";

/// Tells, in a node's feed of commands (MONITOR, SLOWLOG), the ones
/// Rampart sent for itself from the clients'. Commands must be fed in the
/// order the node ran them: a `WAIT` on one of Rampart's links is the
/// client's own exactly when the marker came just before it on that link.
#[derive(Default)]
pub struct Attribution {
    /// Connections whose next `WAIT` is a client's own.
    marked: std::collections::HashSet<String>,
    /// Connections whose next `WAIT` is Rampart's, though the connection
    /// may be closed (and so unknown) by the time the feed is read: a
    /// `SLOWLOG` shows a departed client's pop and what followed it.
    confirmed: std::collections::HashSet<String>,
}

impl Attribution {
    /// Whether a command the node saw coming from `addr` is Rampart's own:
    /// everything on a control connection, the `WAIT`s (and markers) after
    /// synchronous writes, its links' handshakes. `command` and `first` as
    /// the node shows them (any case).
    pub fn is_internal(&mut self, addr: &str, command: &str, first: &str) -> bool {
        let command = command.to_ascii_uppercase();
        // Rampart's markers, on whatever connection: the channels are its.
        if command == "PUBLISH" && first.starts_with("__rampart__:") {
            match first == WAIT_MARKER {
                true => self.marked.insert(addr.to_string()),
                false => self.confirmed.insert(addr.to_string()),
            };
            return true;
        }
        // The marker a piped client's interposed command or confirmed
        // write is followed by (`client::interpose`).
        if command == "PING" && first.starts_with("rampart:") {
            return true;
        }
        if command == "WAIT" {
            if self.marked.remove(addr) {
                return false;
            }
            if self.confirmed.remove(addr) {
                return true;
            }
        }
        let Some(kind) = kind_of(addr) else {
            return false;
        };
        match command.as_str() {
            _ if kind == Kind::Control => true,
            "WAIT" => true,
            "CLIENT" => first.eq_ignore_ascii_case("ID"),
            "HELLO" | "AUTH" => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_say_whose_wait_follows_even_on_a_closed_connection() {
        let gone = "127.0.0.1:1";
        let mut seen = Attribution::default();
        // A pop confirmed by Rampart: marker and WAIT are its own.
        assert!(seen.is_internal(gone, "publish", CONFIRM_MARKER));
        assert!(seen.is_internal(gone, "wait", "1"));
        // A client's WAIT, after the marker Rampart puts before it.
        assert!(seen.is_internal(gone, "PUBLISH", WAIT_MARKER));
        assert!(seen.is_internal(gone, "ping", "rampart:00ab:7:1"));
        assert!(!seen.is_internal(gone, "PING", "hello"));
        assert!(!seen.is_internal(gone, "WAIT", "1"));
        // Anything else from an unknown connection is a client's.
        assert!(!seen.is_internal(gone, "WAIT", "1"));
        assert!(!seen.is_internal(gone, "PUBLISH", "news"));
    }

    #[test]
    fn a_closed_connection_is_still_known_as_rampart_s() {
        let addr: SocketAddr = "127.0.0.1:2".parse().unwrap();
        own().insert(addr, Kind::Control);
        depart(addr);
        assert!(own().get(&addr).is_none());
        // Its probes, still in a node's slow log, are not a client's.
        assert_eq!(kind_of("127.0.0.1:2"), Some(Kind::Control));
        assert!(Attribution::default().is_internal("127.0.0.1:2", "INFO", ""));
        assert_eq!(kind_of("127.0.0.1:3"), None);
    }
}
