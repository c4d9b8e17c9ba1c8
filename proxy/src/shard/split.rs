//! Requests that go to several shards: what each shard is sent, and how
//! the shards' replies are combined into the one reply a single Redis
//! would have given.
//!
//! Replies are combined from the bytes the nodes wrote, in the client's
//! protocol: values are copied as they are (a RESP3 client's `MGET` stays
//! RESP3), only the enclosing array and the counts are written anew. An
//! error from any shard is the reply, as Envoy and twemproxy answer a
//! fragment's failure.

use bytes::{BufMut, Bytes, BytesMut};

use super::locate::{Every, Split};
use super::slots::SlotMap;
use crate::resp::{ReplyScanner, Request};

/// What one shard is sent.
#[derive(Debug)]
pub struct Part {
    pub shard: usize,
    pub request: Request,
}

/// How the parts' replies become the client's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Combine {
    /// `MGET`: element `j` of part `i`, for each key in request order.
    Values(Vec<(usize, usize)>),
    /// Every part said `+OK`.
    AllOk,
    /// Integers summed.
    Sum,
    /// Arrays joined.
    Concat,
    /// The first reply that is not nil.
    Random,
    /// The first part's reply, unless some part failed.
    Same,
    /// Arrays of 0/1 combined element by element with AND.
    All,
    /// A `SCAN` page from shard `shard`: its cursor is turned into one
    /// that names the shard; when the shard is done, `next` starts.
    Scan { shard: usize, next: Option<usize> },
    /// A `SCAN` cursor past every shard in service: an empty last page.
    ScanOver,
}

/// Splits a multi-key command by the shard of each key.
pub fn split(kind: Split, req: &Request, slots: &SlotMap) -> (Vec<Part>, Combine) {
    let name = req.arg(0).unwrap_or(b"");
    let group = if kind == Split::Mset { 2 } else { 1 };
    let mut args: Vec<(usize, Vec<&[u8]>)> = Vec::new();
    let mut order = Vec::new();
    let mut at = 1;
    while at + group <= req.argc() {
        let key = req.arg(at).unwrap_or(b"");
        let shard = slots.shard_of(key);
        let part = match args.iter().position(|(s, _)| *s == shard) {
            Some(part) => part,
            None => {
                args.push((shard, vec![name]));
                args.len() - 1
            }
        };
        order.push((part, args[part].1.len() - 1));
        args[part]
            .1
            .extend((at..at + group).filter_map(|i| req.arg(i)));
        at += group;
    }
    let parts = args
        .into_iter()
        .map(|(shard, args)| Part {
            shard,
            request: Request::from_args(&args),
        })
        .collect();
    let combine = match kind {
        Split::Mget => Combine::Values(order),
        Split::Mset => Combine::AllOk,
        Split::Count => Combine::Sum,
    };
    (parts, combine)
}

/// A `SCAN` cursor through Rampart is the node's cursor times this, plus
/// the shard's index: fixed (shards are at most `u16::MAX`), so a cursor
/// keeps naming the same shard when shards are added or removed while an
/// iteration runs.
const SCAN_SHARDS: u64 = 1 << 16;

/// Sends a keyless command to every shard in service, `serving` (their
/// indices, in order); `SCAN` to the one its cursor names, with the
/// shard's own cursor.
pub fn every(kind: Every, req: &Request, serving: &[usize]) -> (Vec<Part>, Combine) {
    let combine = match kind {
        Every::Sum => Combine::Sum,
        Every::Concat => Combine::Concat,
        Every::Random => Combine::Random,
        Every::Same => Combine::Same,
        Every::All => Combine::All,
        Every::Scan => return scan(req, serving),
    };
    let parts = serving
        .iter()
        .map(|&shard| Part {
            shard,
            request: req.clone(),
        })
        .collect();
    (parts, combine)
}

/// `SCAN cursor ...`: the shard the cursor names (or, when that one was
/// removed meanwhile, the next in service from its start), with its own
/// cursor.
fn scan(req: &Request, serving: &[usize]) -> (Vec<Part>, Combine) {
    let first = serving.first().copied().unwrap_or(0);
    let Some(cursor) = req.arg(1).and_then(parse_u64) else {
        // The node explains what is wrong with it.
        let part = Part {
            shard: first,
            request: req.clone(),
        };
        return (vec![part], Combine::Same);
    };
    let named = (cursor % SCAN_SHARDS) as usize;
    let (shard, node_cursor) = match serving.iter().find(|&&s| s >= named) {
        Some(&s) if s == named => (s, cursor / SCAN_SHARDS),
        Some(&s) => (s, 0),
        // Past the last shard in service: the iteration is over.
        None => return (Vec::new(), Combine::ScanOver),
    };
    let mut args = req.args();
    args[1] = Bytes::from(node_cursor.to_string());
    let part = Part {
        shard,
        request: Request::from_args(&args),
    };
    let next = serving.iter().find(|&&s| s > shard).copied();
    (vec![part], Combine::Scan { shard, next })
}

/// The client's reply from the parts' replies, in part order. Each reply
/// is one whole RESP value as a node wrote it.
pub fn combine(how: &Combine, replies: &[Bytes]) -> Bytes {
    if let Some(error) = replies.iter().find(|r| is_error(r)) {
        return error.clone();
    }
    let malformed = || Bytes::from_static(b"-ERR rampart: unexpected reply from a shard\r\n");
    match how {
        Combine::Same | Combine::AllOk => replies.first().cloned().unwrap_or_else(malformed),
        Combine::ScanOver => Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n"),
        Combine::Sum => {
            let sum = replies.iter().map(|r| integer(r)).sum::<Option<i64>>();
            match sum {
                Some(sum) => Bytes::from(format!(":{sum}\r\n")),
                None => malformed(),
            }
        }
        Combine::Random => {
            // Which shard answers first varies; any non-empty one will do.
            let start = random_index(replies.len());
            let found = (0..replies.len())
                .map(|i| &replies[(start + i) % replies.len()])
                .find(|r| !is_nil(r));
            found.or(replies.first()).cloned().unwrap_or_else(malformed)
        }
        Combine::Concat => {
            let Some(parts) = every_elements(replies) else {
                return malformed();
            };
            array(parts.iter().flatten().copied())
        }
        Combine::Values(order) => {
            let Some(parts) = every_elements(replies) else {
                return malformed();
            };
            let values: Option<Vec<&[u8]>> = order
                .iter()
                .map(|&(part, index)| parts.get(part)?.get(index).copied())
                .collect();
            values.map_or_else(malformed, array)
        }
        Combine::All => {
            let Some(parts) = every_elements(replies) else {
                return malformed();
            };
            let Some(first) = parts.first() else {
                return malformed();
            };
            let flags = (0..first.len()).map(|i| {
                let all = parts
                    .iter()
                    .all(|p| p.get(i).and_then(|e| integer(e)) == Some(1));
                if all {
                    &b":1\r\n"[..]
                } else {
                    &b":0\r\n"[..]
                }
            });
            array(flags)
        }
        Combine::Scan { shard, next } => {
            let Some(page) = replies.first().and_then(|r| elements(r)) else {
                return malformed();
            };
            let (Some(cursor), Some(keys)) = (page.first().and_then(|c| bulk(c)), page.get(1))
            else {
                return malformed();
            };
            let Some(cursor) = parse_u64(cursor) else {
                return malformed();
            };
            let next = if cursor == 0 {
                // This shard is done: the next one starts from 0, or the
                // iteration is over.
                Some(next.map_or(0, |n| n as u64))
            } else {
                cursor
                    .checked_mul(SCAN_SHARDS)
                    .and_then(|c| c.checked_add(*shard as u64))
            };
            let Some(next) = next else {
                return Bytes::from_static(
                    b"-ERR rampart: this node's SCAN cursor is too large to carry its shard\r\n",
                );
            };
            let next = next.to_string();
            let mut cursor = BytesMut::new();
            cursor.put_slice(format!("${}\r\n{next}\r\n", next.len()).as_bytes());
            array([&cursor[..], keys])
        }
    }
}

fn array<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let items: Vec<&[u8]> = items.into_iter().collect();
    let mut out = BytesMut::with_capacity(16 + items.iter().map(|i| i.len()).sum::<usize>());
    out.put_slice(format!("*{}\r\n", items.len()).as_bytes());
    for item in items {
        out.put_slice(item);
    }
    out.freeze()
}

fn is_error(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'-') | Some(b'!'))
}

fn is_nil(reply: &[u8]) -> bool {
    reply.starts_with(b"$-1\r\n") || reply.starts_with(b"_\r\n") || reply.starts_with(b"*-1\r\n")
}

/// The first line of a reply, after its type byte.
fn line(reply: &[u8]) -> Option<&[u8]> {
    let end = reply.windows(2).position(|w| w == b"\r\n")?;
    reply.get(1..end)
}

fn integer(reply: &[u8]) -> Option<i64> {
    if reply.first() != Some(&b':') {
        return None;
    }
    crate::resp::request::parse_i64(line(reply)?)
}

/// A bulk string's content.
fn bulk(reply: &[u8]) -> Option<&[u8]> {
    if reply.first() != Some(&b'$') {
        return None;
    }
    let head = line(reply)?;
    let len = usize::try_from(crate::resp::request::parse_i64(head)?).ok()?;
    let start = head.len() + 3;
    reply.get(start..start + len)
}

/// Each reply's elements; `None` if any reply is not an array.
fn every_elements(replies: &[Bytes]) -> Option<Vec<Vec<&[u8]>>> {
    replies.iter().map(|r| elements(r)).collect()
}

/// The elements of an array (or RESP3 set) reply, each whole.
fn elements(reply: &[u8]) -> Option<Vec<&[u8]>> {
    if !matches!(reply.first(), Some(b'*') | Some(b'~')) {
        return None;
    }
    let head = line(reply)?;
    let count = usize::try_from(crate::resp::request::parse_i64(head)?).ok()?;
    let mut at = head.len() + 3;
    let mut items = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let mut scanner = ReplyScanner::new(64);
        let len = scanner.scan(reply.get(at..)?).ok()??;
        items.push(&reply[at..at + len]);
        at += len;
    }
    Some(items)
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Cheap, good-enough randomness for picking a shard.
fn random_index(len: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(len);
    (hasher.finish() % len.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> SlotMap {
        SlotMap::build([("a", Some("0-8191")), ("b", Some("8192-16383"))]).unwrap()
    }

    #[test]
    fn mget_values_come_back_in_request_order() {
        // foo -> b, bar -> a.
        let req = Request::from_args(&["MGET", "foo", "bar", "foo2"]);
        let (parts, how) = split(Split::Mget, &req, &two());
        let shards: Vec<_> = parts.iter().map(|p| p.shard).collect();
        assert_eq!(shards[0], 1);
        assert_eq!(shards[1], 0);
        let replies: Vec<Bytes> = parts
            .iter()
            .map(|p| {
                let values: Vec<String> = p.request.args()[1..]
                    .iter()
                    .map(|k| String::from_utf8_lossy(k).to_uppercase())
                    .collect();
                let mut out = format!("*{}\r\n", values.len());
                for v in values {
                    out.push_str(&format!("${}\r\n{v}\r\n", v.len()));
                }
                Bytes::from(out)
            })
            .collect();
        let merged = combine(&how, &replies);
        assert_eq!(
            &merged[..],
            b"*3\r\n$3\r\nFOO\r\n$3\r\nBAR\r\n$4\r\nFOO2\r\n"
        );
    }

    #[test]
    fn counts_sum_and_errors_win() {
        let req = Request::from_args(&["DEL", "foo", "bar"]);
        let (parts, how) = split(Split::Count, &req, &two());
        assert_eq!(parts.len(), 2);
        let sum = combine(
            &how,
            &[Bytes::from_static(b":1\r\n"), Bytes::from_static(b":2\r\n")],
        );
        assert_eq!(&sum[..], b":3\r\n");
        let failed = combine(
            &how,
            &[
                Bytes::from_static(b":1\r\n"),
                Bytes::from_static(b"-NOQUORUM x\r\n"),
            ],
        );
        assert_eq!(&failed[..], b"-NOQUORUM x\r\n");
        let (parts, _) = split(
            Split::Mset,
            &Request::from_args(&["MSET", "foo", "1", "bar", "2"]),
            &two(),
        );
        assert_eq!(parts[0].request.args().len(), 3);
    }

    #[test]
    fn scan_cursors_name_their_shard() {
        let base = SCAN_SHARDS;
        let req = Request::from_args(&["SCAN", "0", "COUNT", "10"]);
        let (parts, how) = every(Every::Scan, &req, &[0, 1, 2]);
        assert_eq!(parts[0].shard, 0);
        let page = |cursor: &str| {
            Bytes::from(format!(
                "*2\r\n${}\r\n{cursor}\r\n*1\r\n$1\r\nk\r\n",
                cursor.len()
            ))
        };
        let cursor = |c: u64| {
            let c = c.to_string();
            format!("*2\r\n${}\r\n{c}\r\n*1\r\n$1\r\nk\r\n", c.len())
        };
        // Shard 0 not done: its cursor 5 becomes 5 * base + 0.
        assert_eq!(combine(&how, &[page("5")]), cursor(5 * base));
        // Shard 0 done: shard 1 from its start.
        assert_eq!(combine(&how, &[page("0")]), cursor(1));
        let at = |c: u64, serving: &[usize]| {
            let req = Request::from_args(&["SCAN".to_string(), c.to_string()]);
            let (parts, how) = every(Every::Scan, &req, serving);
            let part = parts
                .first()
                .map(|p| (p.shard, p.request.args()[1].clone()));
            (part, how)
        };
        let (part, _) = at(5 * base + 1, &[0, 1, 2]);
        assert_eq!(part, Some((1, Bytes::from("5"))));
        // The last shard done: the iteration is over.
        let (_, last) = at(7 * base + 2, &[0, 1, 2]);
        assert_eq!(combine(&last, &[page("0")]), cursor(0));
        // A shard added meanwhile: the cursor still names its shard, and
        // the new one is visited after the others.
        let (part, how) = at(5 * base + 1, &[0, 1, 2, 3]);
        assert_eq!(part, Some((1, Bytes::from("5"))));
        assert_eq!(
            how,
            Combine::Scan {
                shard: 1,
                next: Some(2)
            }
        );
        // Shard 1 removed meanwhile: its cursor goes on at the next shard
        // in service, from its start; past the last, the page is empty.
        let (part, how) = at(5 * base + 1, &[0, 2]);
        assert_eq!(part, Some((2, Bytes::from("0"))));
        assert_eq!(
            how,
            Combine::Scan {
                shard: 2,
                next: None
            }
        );
        let (part, how) = at(5 * base + 1, &[0]);
        assert_eq!(part, None);
        assert_eq!(&combine(&how, &[])[..], b"*2\r\n$1\r\n0\r\n*0\r\n");
    }

    /// Whatever the nodes answer, combining never panics.
    #[test]
    fn any_reply_is_safe_to_combine() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"*$:-+~_\r\n0123456789-1x";
        let hows = [
            Combine::Values(vec![(0, 0), (1, 0), (0, 1), (5, 9)]),
            Combine::AllOk,
            Combine::Sum,
            Combine::Concat,
            Combine::Random,
            Combine::Same,
            Combine::All,
            Combine::Scan {
                shard: 1,
                next: Some(2),
            },
            Combine::ScanOver,
        ];
        for _ in 0..20_000 {
            let replies: Vec<Bytes> = (0..1 + next() % 3)
                .map(|_| {
                    let len = (next() % 24) as usize;
                    (0..len)
                        .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                        .collect::<Vec<u8>>()
                        .into()
                })
                .collect();
            for how in &hows {
                let _ = combine(how, &replies);
            }
        }
        assert_eq!(&combine(&Combine::Sum, &[])[..], b":0\r\n");
    }

    #[test]
    fn script_exists_needs_every_shard() {
        let both = combine(
            &Combine::All,
            &[
                Bytes::from_static(b"*2\r\n:1\r\n:1\r\n"),
                Bytes::from_static(b"*2\r\n:1\r\n:0\r\n"),
            ],
        );
        assert_eq!(&both[..], b"*2\r\n:1\r\n:0\r\n");
    }
}
