//! PING and ECHO, answered at once; but while the primary runs a long
//! script its own answer (`-BUSY ...`) is passed on, so clients see why
//! nothing runs and when it is over.

use bytes::Bytes;
use redis_protocol::resp3::types::OwnedFrame;

use crate::client::hold::no_primary;
use crate::resp::{Request, Value};
use crate::shard::Shard;

pub(super) fn ping(args: &[Bytes]) -> Value {
    match args.len() {
        1 => Value::Simple("PONG".into()),
        2 => Value::Bulk(args[1].clone()),
        _ => Value::wrong_args("ping"),
    }
}

pub(super) fn echo(args: &[Bytes]) -> Value {
    match args.len() {
        2 => Value::Bulk(args[1].clone()),
        _ => Value::wrong_args("echo"),
    }
}

/// Whether the primary's probe last found it busy.
pub(super) fn primary_busy(shard: &Shard) -> bool {
    let primary = shard.topology.primary();
    primary.is_some_and(|p| p.pool.stats().is_busy())
}

/// PING sent to the primary on a connection of its own (its shared one
/// may wait behind the script).
pub(super) async fn ping_primary(shard: &Shard, req: &Request) -> Value {
    let Some(primary) = shard.topology.primary().cloned() else {
        return no_primary(shard.name());
    };
    let timeout = std::time::Duration::from_secs(1);
    let answer = primary.pool.call_once(&req.args(), timeout).await;
    match answer {
        Ok(OwnedFrame::SimpleError { data, .. }) => Value::err(data),
        Ok(OwnedFrame::SimpleString { data, .. }) => {
            Value::Simple(String::from_utf8_lossy(&data).into_owned())
        }
        Ok(OwnedFrame::BlobString { data, .. }) => Value::Bulk(data.into()),
        _ => match req.arg(1) {
            Some(message) => Value::Bulk(Bytes::copy_from_slice(message)),
            None => Value::Simple("PONG".into()),
        },
    }
}
