//! `INFO [section ...]`, asked of the primary and patched: `connected_clients`
//! counts Rampart's clients (a client counting its peers must not see
//! Rampart's own connections to the node), and with several shards the
//! sections that count the data set and the commands sum every shard's.

use bytes::Bytes;

use crate::backend::control::frame_text;
use crate::client::undo::{decode, Plain};
use crate::context::Context;
use crate::resp::{Proto, Value};
use crate::shard::info::SUMMED;

/// The primary's reply as the client gets it; `None` when it is not text
/// (an error, say), passed on as it came.
pub(super) async fn patch(ctx: &Context, reply: &Bytes, proto: Proto) -> Option<Value> {
    let Some(Plain::Text(text)) = decode(reply, proto) else {
        return None;
    };
    let text = String::from_utf8_lossy(&text);
    let text = text.strip_prefix("txt:").unwrap_or(&text);
    let clients = ctx.registry.len();
    let text = with_every_shards_counts(ctx, text).await;
    let patched: String = text
        .split_inclusive('\n')
        .map(|line| match line.strip_prefix("connected_clients:") {
            Some(_) => format!("connected_clients:{clients}\r\n"),
            None => line.to_string(),
        })
        .collect();
    Some(Value::Verbatim(Bytes::from(patched)))
}

/// With several shards, the sections of one shard's INFO that count the
/// data set and the commands (`Stats`, `Keyspace`, `Errorstats`,
/// `Commandstats`), and the clients blocked, made those of every shard
/// (each primary asked).
async fn with_every_shards_counts(ctx: &Context, text: &str) -> String {
    let summed =
        SUMMED.iter().any(|s| text.contains(&format!("# {s}"))) || text.contains("# Clients");
    if ctx.shards.len() < 2 || !summed {
        return text.to_string();
    }
    let mut sections = Vec::new();
    for shard in ctx.shards.all_serving().iter() {
        let Some(primary) = shard.topology.primary() else {
            continue;
        };
        let timeout = std::time::Duration::from_secs(1);
        let ask = [
            "INFO",
            "clients",
            "stats",
            "keyspace",
            "errorstats",
            "commandstats",
        ];
        let answer = primary.pool.call_once(&ask, timeout).await;
        if let Some(section) = answer.ok().as_ref().and_then(frame_text) {
            sections.push(section);
        }
    }
    crate::shard::info::with_sums(text, &sections)
}
