//! `CLIENT LIST | INFO | KILL | UNBLOCK | REPLY`, answered about Rampart's
//! clients rather than about Rampart's connections to the nodes (which is
//! all a node could tell). Texts and formats are Redis 7.0's.

use std::time::Instant;

use bytes::Bytes;

use crate::client::registry::{Entry, Order};
use crate::client::session::Asker;
use crate::resp::request::parse_i64;
use crate::resp::{Request, Value};
use crate::topology::ReplicaSet;

/// Which clients a `CLIENT KILL` or `CLIENT LIST` names.
#[derive(Default)]
struct Filter {
    ids: Option<Vec<u64>>,
    addr: Option<String>,
    laddr: Option<String>,
    user: Option<String>,
    /// `pubsub` or `normal`; Rampart has no replica or master clients.
    kind: Option<&'static str>,
    skip_me: bool,
}

impl Filter {
    fn matches(&self, entry: &Entry) -> bool {
        let snapshot = entry.snapshot();
        self.ids.as_ref().is_none_or(|ids| ids.contains(&entry.id))
            && self
                .addr
                .as_ref()
                .is_none_or(|a| *a == entry.addr.to_string())
            && self
                .laddr
                .as_ref()
                .is_none_or(|a| *a == entry.laddr.to_string())
            && self.user.as_ref().is_none_or(|u| *u == snapshot.user)
            && self.kind.is_none_or(|k| match k {
                "pubsub" => snapshot.subscribed,
                "normal" => !snapshot.subscribed,
                _ => false,
            })
    }
}

/// A client type as `CLIENT KILL TYPE` / `CLIENT LIST TYPE` take it.
fn kind(word: &[u8]) -> Result<&'static str, Value> {
    match word.to_ascii_lowercase().as_slice() {
        b"normal" => Ok("normal"),
        b"pubsub" => Ok("pubsub"),
        b"master" | b"slave" | b"replica" => Ok("none"),
        _ => Err(Value::err(format!(
            "ERR Unknown client type '{}'",
            String::from_utf8_lossy(word)
        ))),
    }
}

/// `CLIENT LIST [TYPE t] [ID id ...]`. `qbuf`: the size of this request,
/// the asking client's query buffer as Redis would show it.
pub(super) fn list(asker: &Asker<'_>, req: &Request) -> Value {
    let mut filter = Filter::default();
    let mut i = 2;
    while i < req.argc() {
        let option = req.arg_upper(i);
        match option.as_ref().map(|o| o.as_bytes()) {
            Some(b"TYPE") if i + 1 < req.argc() => {
                match kind(req.arg(i + 1).unwrap_or_default()) {
                    Ok(k) => filter.kind = Some(k),
                    Err(e) => return e,
                }
                i += 2;
            }
            Some(b"ID") if i + 1 < req.argc() => {
                let mut ids = Vec::new();
                for j in i + 1..req.argc() {
                    match req.arg(j).and_then(parse_i64).filter(|id| *id > 0) {
                        Some(id) => ids.push(id as u64),
                        None => return Value::err("ERR Invalid client ID"),
                    }
                }
                filter.ids = Some(ids);
                i = req.argc();
            }
            _ => return Value::err("ERR syntax error"),
        }
    }
    let now = Instant::now();
    let mut text = String::new();
    for entry in asker.ctx.registry.all() {
        if filter.matches(&entry) {
            let qbuf = if entry.id == asker.session.id {
                req.raw.len()
            } else {
                0
            };
            text.push_str(&entry.line(now, qbuf));
            text.push('\n');
        }
    }
    Value::Verbatim(Bytes::from(text))
}

/// `CLIENT INFO`: the asking client's line.
pub(super) fn info(asker: &Asker<'_>, req: &Request) -> Value {
    let line = asker.registration.entry.line(Instant::now(), req.raw.len());
    Value::Verbatim(Bytes::from(format!("{line}\n")))
}

/// What `CLIENT KILL` did.
pub(super) struct Killed {
    pub reply: Value,
    /// The asking client was among those killed: its connection closes
    /// once the reply is out.
    pub myself: bool,
}

impl From<Value> for Killed {
    fn from(reply: Value) -> Killed {
        Killed {
            reply,
            myself: false,
        }
    }
}

/// `CLIENT KILL addr` (answers OK or an error) and `CLIENT KILL <filter>
/// <value> ...` (answers how many). `shard`: where an ACL user named by
/// `USER` is looked up.
pub(super) async fn kill(asker: &Asker<'_>, shard: &ReplicaSet, req: &Request) -> Killed {
    let args = req.args();
    let text = |i: usize| String::from_utf8_lossy(&args[i]).into_owned();
    if args.len() < 3 {
        return Value::err("ERR wrong number of arguments for 'client|kill' command").into();
    }
    let old_style = args.len() == 3;
    let mut filter = Filter {
        skip_me: true,
        ..Filter::default()
    };
    if old_style {
        filter.addr = Some(text(2));
        filter.skip_me = false;
    } else if args.len() % 2 != 0 {
        return Value::err("ERR syntax error").into();
    } else {
        for i in (2..args.len()).step_by(2) {
            let value = &args[i + 1];
            match args[i].to_ascii_uppercase().as_slice() {
                b"ID" => match parse_i64(value) {
                    Some(id) if id > 0 => filter.ids = Some(vec![id as u64]),
                    _ => return Value::err("ERR client-id should be greater than 0").into(),
                },
                b"TYPE" => match kind(value) {
                    Ok(k) => filter.kind = Some(k),
                    Err(e) => return e.into(),
                },
                b"ADDR" => filter.addr = Some(text(i + 1)),
                b"LADDR" => filter.laddr = Some(text(i + 1)),
                b"USER" => filter.user = Some(text(i + 1)),
                b"SKIPME" => match value.to_ascii_lowercase().as_slice() {
                    b"yes" => filter.skip_me = true,
                    b"no" => filter.skip_me = false,
                    _ => return Value::err("ERR syntax error").into(),
                },
                _ => return Value::err("ERR syntax error").into(),
            }
        }
    }
    if let Some(user) = &filter.user {
        if !user_exists(shard, user).await {
            return Value::err(format!("ERR No such user '{user}'")).into();
        }
    }
    let me = asker.session.id;
    let mut killed = 0;
    let mut myself = false;
    for entry in asker.ctx.registry.all() {
        if !filter.matches(&entry) || (filter.skip_me && entry.id == me) {
            continue;
        }
        killed += 1;
        if entry.id == me {
            myself = true;
        } else {
            entry.order(Order::Kill);
        }
    }
    let reply = match (old_style, killed) {
        (true, 0) => Value::err("ERR No such client"),
        (true, _) => Value::ok(),
        (false, n) => Value::Int(n),
    };
    Killed { reply, myself }
}

/// Whether the primary knows the ACL user (so `CLIENT KILL USER` of an
/// unknown one errs as on Redis). When it cannot be asked, assume so.
async fn user_exists(shard: &ReplicaSet, user: &str) -> bool {
    use redis_protocol::resp3::types::OwnedFrame;
    let Some(primary) = shard.primary().cloned() else {
        return true;
    };
    let timeout = std::time::Duration::from_secs(1);
    let answer = primary
        .pool
        .call_once(&["ACL", "GETUSER", user], timeout)
        .await;
    !matches!(answer, Ok(OwnedFrame::Null))
}

/// `CLIENT UNBLOCK <id> [TIMEOUT|ERROR]`: 1 if that client was blocked.
pub(super) async fn unblock(asker: &Asker<'_>, req: &Request) -> Value {
    let error = match req.arg_upper(3).as_ref().map(|m| m.as_bytes()) {
        None | Some(b"TIMEOUT") => false,
        Some(b"ERROR") => true,
        Some(_) => return Value::err("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"),
    };
    if !(3..=4).contains(&req.argc()) {
        return Value::err("ERR syntax error");
    }
    let Some(id) = req.arg(2).and_then(parse_i64) else {
        return Value::err("ERR value is not an integer or out of range");
    };
    let Some(entry) = u64::try_from(id)
        .ok()
        .and_then(|id| asker.ctx.registry.get(id))
    else {
        return Value::Int(0);
    };
    if entry.id == asker.session.id {
        return Value::Int(0);
    }
    let (done, answer) = tokio::sync::oneshot::channel();
    if !entry.order(Order::Unblock { error, done }) {
        return Value::Int(0);
    }
    Value::Int(i64::from(answer.await.unwrap_or(false)))
}
