//! Rampart's own connections to the nodes, by their local address.
//!
//! A node's `MONITOR` shows every command with the address it came from.
//! Through Rampart, clients' commands arrive on Rampart's links, mixed with
//! what Rampart sends for itself (probes, role changes, the `WAIT` after
//! synchronous writes). Marking each connection Rampart opens lets a client's
//! `MONITOR` show the clients' commands and leave Rampart's own out.

use std::net::SocketAddr;
use std::sync::OnceLock;

use dashmap::DashMap;
use tokio::net::TcpStream;

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

/// Marks a connection as Rampart's while it lives.
pub struct Mark(Option<SocketAddr>);

impl Mark {
    pub fn new(stream: &TcpStream, kind: Kind) -> Mark {
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
            own().remove(&addr);
        }
    }
}

/// The kind of Rampart connection `addr` (as a node prints it) is, if it is
/// one.
pub fn kind_of(addr: &str) -> Option<Kind> {
    let addr: SocketAddr = addr.parse().ok()?;
    own().get(&addr).map(|k| *k)
}

/// Whether a command a node saw coming from `addr` is one Rampart sent for
/// itself rather than for a client: everything on a control connection,
/// the `WAIT`s (and their marker `PUBLISH`) after synchronous writes, the
/// handshakes of its links. `command` and `first` are as the node shows
/// them (any case).
pub fn is_internal(addr: &str, command: &str, first: &str) -> bool {
    let Some(kind) = kind_of(addr) else {
        return false;
    };
    match command.to_ascii_uppercase().as_str() {
        _ if kind == Kind::Control => true,
        "WAIT" => kind == Kind::Shared,
        "PUBLISH" => first == "__rampart__:wait",
        "CLIENT" => first.eq_ignore_ascii_case("ID"),
        "HELLO" | "AUTH" => true,
        _ => false,
    }
}
