//! `SLOWLOG GET` through Rampart: the node's log, less what Rampart's own
//! connections ran (probes, role changes) and what replicas send
//! (`REPLCONF ACK`), so that the entries a client finds are its commands.
//! With several shards, every shard's primary's log, merged newest first.

use bytes::{Bytes, BytesMut};

use crate::backend::own;
use crate::client::undo::{decode, Plain};
use crate::resp::{Proto, ReplyScanner, Request, Value};

/// The number of entries `SLOWLOG GET [count]` asks for, or Redis's error.
pub(super) fn wanted(req: &Request) -> Result<usize, Value> {
    if req.argc() > 3 {
        // Redis names the subcommand as the client wrote it.
        let sub = String::from_utf8_lossy(req.arg(1).unwrap_or_default());
        return Err(Value::err(format!(
            "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try SLOWLOG HELP."
        )));
    }
    match req.arg(2) {
        None => Ok(10),
        Some(n) => match crate::resp::request::parse_i64(n) {
            Some(-1) => Ok(usize::MAX),
            Some(n) if n >= 0 => Ok(n as usize),
            // Redis's one error for anything else, integer or not.
            _ => Err(Value::err(
                "ERR count should be greater than or equal to -1",
            )),
        },
    }
}

/// What each primary is asked: its whole log, filtered here.
pub(super) fn whole_log() -> Request {
    Request::from_args(&["SLOWLOG", "GET", "-1"])
}

/// The reply to `SLOWLOG GET`: the `wanted` newest entries clients ran
/// of every primary's log (`logs`, one per shard). With one shard, a
/// reply that is not the array it should be is passed on as the node
/// said it; with several it is left out.
pub(super) fn merged(logs: Vec<Bytes>, proto: Proto, wanted: usize) -> Bytes {
    let one = logs.len() == 1;
    let mut entries = Vec::new();
    for log in logs {
        match clients_only(&log, proto) {
            Some(mut kept) => entries.append(&mut kept),
            None if one => return log,
            None => {}
        }
    }
    newest(entries, wanted)
}

/// One slow log entry: when it ran (seconds, then the node's entry id,
/// for the order) and its bytes.
struct Entry {
    time: i64,
    id: i64,
    bytes: Bytes,
}

/// The `wanted` newest entries of several logs, as one `SLOWLOG GET`
/// reply.
fn newest(mut entries: Vec<Entry>, wanted: usize) -> Bytes {
    entries.sort_by_key(|e| std::cmp::Reverse((e.time, e.id)));
    entries.truncate(wanted);
    let mut out = BytesMut::new();
    out.extend_from_slice(format!("*{}\r\n", entries.len()).as_bytes());
    for entry in entries {
        out.extend_from_slice(&entry.bytes);
    }
    out.freeze()
}

/// The first two integers of an entry (`*6\r\n:id\r\n:time\r\n...`).
fn id_and_time(entry: &[u8]) -> (i64, i64) {
    let mut numbers = entry
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| line.strip_prefix(b":"))
        .filter_map(|n| {
            std::str::from_utf8(n.strip_suffix(b"\r").unwrap_or(n))
                .ok()?
                .parse()
                .ok()
        });
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// The entries of a `SLOWLOG GET` reply that clients ran, newest first;
/// `None` when the reply is not the array it should be.
fn clients_only(reply: &Bytes, proto: Proto) -> Option<Vec<Entry>> {
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
        entries.push(reply.slice(pos..pos + len));
        pos += len;
    }
    // Newest first in the reply; attributed oldest first, as they ran.
    let mut attribution = own::Attribution::default();
    let mut kept: Vec<Entry> = entries
        .into_iter()
        .rev()
        .filter(|entry| from_client(entry, proto, &mut attribution))
        .map(|bytes| {
            let (id, time) = id_and_time(&bytes);
            Entry { time, id, bytes }
        })
        .collect();
    kept.reverse();
    Some(kept)
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
        let kept = clients_only(&Bytes::from(reply), Proto::Resp2).unwrap();
        let out = newest(kept, 1);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            format!("*1\r\n{}", entry(2, "spop"))
        );
    }

    #[test]
    fn several_logs_merge_newest_first() {
        let entry = |id: u8, time: u32| Entry {
            time: i64::from(time),
            id: i64::from(id),
            bytes: Bytes::from(format!(
                "*6\r\n:{id}\r\n:{time}\r\n:1\r\n*0\r\n$0\r\n\r\n$0\r\n\r\n"
            )),
        };
        assert_eq!(id_and_time(&entry(7, 1700).bytes), (7, 1700));
        let merged = newest(
            vec![entry(1, 10), entry(2, 30), entry(9, 20), entry(3, 30)],
            3,
        );
        let text = std::str::from_utf8(&merged).unwrap();
        let order: Vec<&str> = text.split("*6\r\n").skip(1).map(|e| &e[..3]).collect();
        assert_eq!(order, [":3\r", ":2\r", ":9\r"]);
    }
}
