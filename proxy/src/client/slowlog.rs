//! `SLOWLOG GET` through Rampart: the node's log, less what Rampart's own
//! connections ran (probes, role changes) and what replicas send
//! (`REPLCONF ACK`), so that the entries a client finds are its commands.

use bytes::{Bytes, BytesMut};

use super::connection::{Connection, Flow};
use super::undo::{decode, Plain};
use super::writer::Pending;
use crate::backend::own;
use crate::resp::{Proto, ReplyScanner, Request, Value};

impl Connection {
    pub(super) async fn slowlog_get(&mut self, req: Request) -> Flow {
        let wanted = match req.arg(2) {
            None => 10,
            Some(n) => match crate::resp::request::parse_i64(n) {
                Some(-1) => usize::MAX,
                Some(n) if n < 0 => {
                    return self
                        .reply(Value::err(
                            "ERR count should be greater than or equal to -1",
                        ))
                        .await
                }
                Some(n) => n as usize,
                None => {
                    return self
                        .reply(Value::err("ERR value is not an integer or out of range"))
                        .await
                }
            },
        };
        if req.argc() > 3 {
            return self
                .reply(Value::err(
                    "ERR wrong number of arguments for 'slowlog|get' command",
                ))
                .await;
        }
        let (primary, link) = match self.primary_link().await {
            Ok(pair) => pair,
            Err(error) => return self.reply(error).await,
        };
        let all = Request::from_args(&["SLOWLOG", "GET", "-1"]);
        let reply = match self.call(&primary, &link, vec![all.raw], "SLOWLOG").await {
            Ok(reply) => reply,
            Err(error) => return self.reply(error).await,
        };
        let filtered = clients_only(&reply, self.session.proto, wanted).unwrap_or(reply);
        self.push(Pending::Local(filtered))
    }
}

/// The entries of a `SLOWLOG GET` reply that clients ran, at most `wanted`;
/// `None` when the reply is not the array it should be.
fn clients_only(reply: &Bytes, proto: Proto, wanted: usize) -> Option<Bytes> {
    let header_end = reply.iter().position(|&b| b == b'\n')? + 1;
    if reply.first() != Some(&b'*') {
        return None;
    }
    let count: usize = std::str::from_utf8(&reply[1..header_end - 2])
        .ok()?
        .parse()
        .ok()?;
    let mut pos = header_end;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let len = ReplyScanner::new(16).scan(&reply[pos..]).ok()??;
        entries.push(&reply[pos..pos + len]);
        pos += len;
    }
    // Newest first in the reply; attributed oldest first, as they ran.
    let mut attribution = own::Attribution::default();
    let mut kept: Vec<&[u8]> = entries
        .into_iter()
        .rev()
        .filter(|entry| from_client(entry, proto, &mut attribution))
        .collect();
    kept.reverse();
    kept.truncate(wanted);
    let mut out = BytesMut::with_capacity(reply.len());
    out.extend_from_slice(format!("*{}\r\n", kept.len()).as_bytes());
    for entry in kept {
        out.extend_from_slice(entry);
    }
    Some(out.freeze())
}

/// Whether a slow log entry (`[id, time, duration, [args], addr, name]`)
/// is a client's command.
fn from_client(entry: &[u8], proto: Proto, attribution: &mut own::Attribution) -> bool {
    let Some(Plain::List(fields)) = decode(entry, proto) else {
        return true;
    };
    let text = |field: Option<&Plain>| match field {
        Some(Plain::Text(t)) => String::from_utf8_lossy(t).into_owned(),
        _ => String::new(),
    };
    let (command, first) = match fields.get(3) {
        Some(Plain::List(args)) => (text(args.first()), text(args.get(1))),
        _ => (String::new(), String::new()),
    };
    // Replicas' acknowledgements are no client's either.
    !command.eq_ignore_ascii_case("REPLCONF")
        && !attribution.is_internal(&text(fields.get(4)), &command, &first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_replica_entries_and_keeps_the_count() {
        let entry = |id: u8, cmd: &str| {
            format!(
                "*6\r\n:{id}\r\n:1\r\n:2\r\n*1\r\n${}\r\n{cmd}\r\n$11\r\n127.0.0.1:1\r\n$0\r\n\r\n",
                cmd.len()
            )
        };
        let reply = format!(
            "*3\r\n{}{}{}",
            entry(3, "REPLCONF"),
            entry(2, "spop"),
            entry(1, "get")
        );
        let out = clients_only(&Bytes::from(reply), Proto::Resp2, 1).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            format!("*1\r\n{}", entry(2, "spop"))
        );
    }
}
