//! `CLIENT PAUSE <ms> WRITE` and `CLIENT UNPAUSE`, on every shard's
//! primary: the client pauses one big Redis.

use redis_protocol::resp3::types::OwnedFrame;

use crate::context::Context;
use crate::resp::request::parse_i64;
use crate::resp::{Request, Value};

/// `CLIENT PAUSE <ms> WRITE` and `CLIENT UNPAUSE`, run on the primary at
/// once (another client's paused write may hold the shared connection).
/// Pausing everything would stop Rampart's probes and every connection
/// other clients share: only WRITE is allowed.
pub(super) async fn pause(ctx: &Context, req: &Request) -> Value {
    let unpause = req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"UNPAUSE");
    let duration = if unpause {
        None
    } else {
        let write = req.arg_upper(3).is_some_and(|m| m.as_bytes() == b"WRITE");
        if (req.argc() == 4 && !write) || req.argc() == 3 {
            return Value::err(
                "ERR rampart: CLIENT PAUSE ALL would stop Rampart's probes and every connection clients share; CLIENT PAUSE <ms> WRITE pauses writes",
            );
        }
        req.arg(2)
            .and_then(parse_i64)
            .map(|ms| std::time::Duration::from_millis(ms.max(0) as u64))
    };
    // Every shard's primary: the client pauses one big Redis.
    for shard in ctx.shards.all_serving().iter() {
        let Some(primary) = shard.topology.primary().cloned() else {
            return Value::err(format!(
                "ERR rampart: no reachable primary for shard '{}'",
                shard.name()
            ));
        };
        let timeout = std::time::Duration::from_secs(2);
        let answer = primary.pool.call_once(&req.args(), timeout).await;
        let error = match answer {
            Ok(OwnedFrame::SimpleString { .. }) => {
                primary.pool.stats().pause_for(duration);
                continue;
            }
            Ok(OwnedFrame::SimpleError { data, .. }) => Value::err(data),
            Ok(other) => Value::err(format!("ERR rampart: unexpected reply {other:?}")),
            Err(e) => Value::err(format!("ERR rampart: {} unavailable ({e})", primary.addr)),
        };
        return error;
    }
    Value::ok()
}
