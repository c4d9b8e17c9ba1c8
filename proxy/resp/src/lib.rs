//! The Redis protocol at the edges: parsing client requests, finding the end
//! of backend replies, encoding Rampart's own replies, and the command table.
//! Frames are kept apart from commands: nothing here knows about routing.

pub mod command;
pub mod encode;
pub mod keyspecs;
pub mod limits;
pub mod reply;
pub mod request;

pub use command::{classify, Class};
pub use encode::{Proto, Value};
pub use limits::Limits;
pub use reply::ReplyScanner;
pub use request::{Request, RequestParser};
