//! Connections as bytes move over them: plain TCP or TLS (`stream`), and
//! the TLS set-up for Rampart's listeners and its links to the nodes
//! (`tls`), and the DNS lookups that discover nodes (`dns`).

pub mod dns;
pub mod stream;
pub mod tls;

pub use stream::{ReadHalf, Stream, WriteHalf};
