//! `SCRIPT KILL` and `FUNCTION KILL`: whichever node runs the script.

use redis_protocol::resp3::types::OwnedFrame;

use crate::context::Context;
use crate::resp::{Request, Value};

/// `SCRIPT KILL` / `FUNCTION KILL`, sent to every node of every shard on
/// connections of their own (the script may be a read-only one on a
/// replica, and the client's shared connection waits behind it). One
/// node killing it answers OK; otherwise `UNKILLABLE` wins over
/// `NOTBUSY`, as that is what the client needs to know.
pub(super) async fn kill_script(ctx: &Context, req: &Request) -> Value {
    let args = req.args();
    let mut calls = tokio::task::JoinSet::new();
    for (_, node) in ctx.topology.nodes() {
        let node = node.clone();
        let args = args.clone();
        calls.spawn(async move {
            let mut control = node.pool.control().await.ok()?;
            control
                .call(&args, std::time::Duration::from_secs(2))
                .await
                .ok()
        });
    }
    // What says most about the script: it cannot be killed, or it is
    // of the other kind (a function for SCRIPT KILL), or none runs.
    let rank = |e: &str| match e.split(' ').next() {
        Some("UNKILLABLE") => 3,
        Some("BUSY") => 2,
        _ => 1,
    };
    let mut best: Option<String> = None;
    while let Some(done) = calls.join_next().await {
        let Ok(Some(frame)) = done else { continue };
        match frame {
            OwnedFrame::SimpleString { .. } => return Value::ok(),
            OwnedFrame::SimpleError { data, .. }
                if best.as_deref().is_none_or(|b| rank(&data) > rank(b)) =>
            {
                best = Some(data);
            }
            _ => {}
        }
    }
    best.map_or_else(
        || Value::err("ERR rampart: no node answered SCRIPT KILL"),
        Value::err,
    )
}
