//! Which arguments of a command are keys.
//!
//! With several shards every keyed command must go to the shard owning its
//! keys, so Rampart needs to find the keys of any command, not only of the
//! few it treats specially. Redis 7 describes that for every command with
//! *key specs* (`COMMAND INFO`): where the search for keys begins (an
//! argument index, or after a keyword such as `STREAMS`) and how the keys
//! are laid out from there (a range, or a count given in an argument, as
//! `EVAL`'s `numkeys`). The table is generated from Redis's own `COMMAND`
//! reply by `tests/tools/gen_keyspecs.py`, and this interpreter follows
//! Redis's `getKeysUsingKeySpecs`; a test compares it with `COMMAND
//! GETKEYS` on a real redis-server.
//!
//! A command missing from the table (a module's, a newer Redis's) is
//! treated as keyless.

use smallvec::SmallVec;

use super::request::{parse_i64, Request};

/// Where the search for a spec's keys begins.
#[derive(Debug, Clone, Copy)]
pub enum Begin {
    /// At this argument.
    Index(i32),
    /// After this keyword, searched from `startfrom` (from the end when
    /// negative).
    Keyword(&'static [u8], i32),
}

/// How the keys lie from where the search began.
#[derive(Debug, Clone, Copy)]
pub enum Find {
    /// `last`: relative to the first key (or from the end when negative);
    /// `limit`: with a negative `last`, only `1/limit` of what is left
    /// (`XREAD ... STREAMS k1 k2 id1 id2`: half).
    Range { last: i32, step: i32, limit: i32 },
    /// The number of keys is argument `index` (relative to the begin), the
    /// keys start `first` after it.
    Keynum { index: i32, first: i32, step: i32 },
}

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub begin: Begin,
    pub find: Find,
}

/// Commands (`NAME` or `CONTAINER|SUB`) and where their keys are, sorted
/// by name.
static TABLE: &[(&str, &[Spec])] = include!("keyspecs_table.rs");

/// Argument positions of keys, usually few.
pub type KeyPositions = SmallVec<[usize; 4]>;

/// The positions of the keys in `req`, in the order the specs give them.
/// `None` when the request is malformed in a way that hides its keys (a
/// `numkeys` that is not a number or exceeds the arguments): the node will
/// refuse it, so it may go anywhere.
pub fn key_positions(req: &Request) -> Option<KeyPositions> {
    let mut positions = KeyPositions::new();
    let Some(specs) = specs_of(req) else {
        return Some(positions);
    };
    let argc = req.argc() as i64;
    for spec in specs {
        let first = match spec.begin {
            Begin::Index(i) => i64::from(i),
            Begin::Keyword(keyword, from) => match find_keyword(req, keyword, from) {
                Some(at) => at + 1,
                None => continue,
            },
        };
        let (first, last, step) = match spec.find {
            Find::Range { last, step, limit } => {
                let last = if last >= 0 {
                    first + i64::from(last)
                } else if limit <= 1 {
                    argc + i64::from(last)
                } else {
                    first + (argc - first) / i64::from(limit) + i64::from(last)
                };
                (first, last, i64::from(step))
            }
            Find::Keynum {
                index,
                first: start,
                step,
            } => {
                let count = req
                    .arg((first + i64::from(index)) as usize)
                    .and_then(parse_i64)?;
                let start = first + i64::from(start);
                if count < 0 || start + (count - 1) * i64::from(step) >= argc {
                    return None;
                }
                (
                    start,
                    start + (count - 1) * i64::from(step),
                    i64::from(step),
                )
            }
        };
        let mut at = first;
        while at <= last && at < argc && step > 0 {
            if at >= 1 {
                positions.push(at as usize);
            }
            at += step;
        }
    }
    if let Some(store) = sort_store(req) {
        positions.push(store);
    }
    // `MIGRATE host port "" db timeout KEYS k1 k2`: the empty key argument
    // stands for none (Redis's `migrateGetKeys`).
    if req.name().as_bytes() == b"MIGRATE" && req.arg(3) == Some(b"") {
        positions.retain(|&mut at| at != 3);
    }
    Some(positions)
}

/// The keys of `req` (see [`key_positions`]).
pub fn keys(req: &Request) -> Option<SmallVec<[&[u8]; 4]>> {
    Some(
        key_positions(req)?
            .into_iter()
            .filter_map(|i| req.arg(i))
            .collect(),
    )
}

fn specs_of(req: &Request) -> Option<&'static [Spec]> {
    let name = req.name();
    let name = name.as_bytes();
    // Compared in place as `NAME` or `NAME|SUB`: this runs for every
    // command, and most keyless ones are in no table entry at all.
    let find = |sub: Option<&[u8]>| {
        TABLE
            .binary_search_by(|(n, _)| {
                let wanted = name
                    .iter()
                    .chain(sub.map_or(&[][..], |_| b"|"))
                    .chain(sub.unwrap_or(&[]));
                n.as_bytes().iter().cmp(wanted)
            })
            .ok()
            .map(|i| TABLE[i].1)
    };
    if let Some(specs) = find(None) {
        return Some(specs);
    }
    let sub = req.arg_upper(1)?;
    find(Some(sub.as_bytes()))
}

/// Where `keyword` is, searching as Redis does: forwards from `from`, or
/// backwards from `argc + from` when `from` is negative (never
/// reaching argument 1, as Redis).
fn find_keyword(req: &Request, keyword: &[u8], from: i32) -> Option<i64> {
    let argc = req.argc() as i64;
    let matches = |i: i64| {
        req.arg(i as usize)
            .is_some_and(|a| a.eq_ignore_ascii_case(keyword))
    };
    if from >= 0 {
        (i64::from(from)..argc).find(|&i| matches(i))
    } else {
        (2..argc + i64::from(from) + 1).rev().find(|&i| matches(i))
    }
}

/// `SORT key ... STORE dest`: Redis's spec for the destination is
/// "unknown" (SORT's options make it hard), so it is found by hand.
fn sort_store(req: &Request) -> Option<usize> {
    let name = req.name();
    if name.as_bytes() != b"SORT" {
        return None;
    }
    (2..req.argc())
        .find(|&i| req.arg(i).is_some_and(|a| a.eq_ignore_ascii_case(b"STORE")))
        .map(|i| i + 1)
        .filter(|&i| i < req.argc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(args: &[&str]) -> Option<Vec<String>> {
        let req = Request::from_args(args);
        keys(&req).map(|k| {
            k.iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect()
        })
    }

    #[test]
    fn finds_keys_as_redis_does() {
        assert_eq!(keys_of(&["get", "a"]).unwrap(), ["a"]);
        assert_eq!(keys_of(&["MSET", "a", "1", "b", "2"]).unwrap(), ["a", "b"]);
        assert_eq!(keys_of(&["mget", "a", "b", "c"]).unwrap(), ["a", "b", "c"]);
        assert_eq!(
            keys_of(&["EVAL", "return 1", "2", "k1", "k2", "arg"]).unwrap(),
            ["k1", "k2"]
        );
        assert!(keys_of(&["EVAL", "return 1", "0"]).unwrap().is_empty());
        assert_eq!(keys_of(&["EVAL", "return 1", "x", "k"]), None);
        assert_eq!(keys_of(&["EVAL", "return 1", "5", "k"]), None);
        assert_eq!(
            keys_of(&["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"]).unwrap(),
            ["s1", "s2"]
        );
        assert_eq!(
            keys_of(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]).unwrap(),
            ["d", "a", "b"]
        );
        assert_eq!(keys_of(&["OBJECT", "ENCODING", "k"]).unwrap(), ["k"]);
        assert_eq!(
            keys_of(&["SORT", "l", "LIMIT", "0", "1", "STORE", "d"]).unwrap(),
            ["l", "d"]
        );
        assert_eq!(
            keys_of(&["BLMPOP", "0", "2", "a", "b", "LEFT"]).unwrap(),
            ["a", "b"]
        );
        assert!(keys_of(&["PING"]).unwrap().is_empty());
        assert!(keys_of(&["NOSUCHCOMMAND", "x"]).unwrap().is_empty());
    }

    /// Whatever a client sends, finding its keys never panics and never
    /// names an argument the request does not have.
    #[test]
    fn any_request_is_safe() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let names: Vec<&str> = TABLE
            .iter()
            .map(|(n, _)| n.split('|').next().unwrap_or(n))
            .collect();
        let words = [
            "0",
            "1",
            "2",
            "-1",
            "-9223372036854775808",
            "99999999999",
            "k",
            "STREAMS",
            "STORE",
            "KEYS",
            "LIMIT",
            "",
            "ENCODING",
            "GET",
            "x",
        ];
        for _ in 0..50_000 {
            let mut args = vec![names[(next() % names.len() as u64) as usize].to_string()];
            for _ in 0..next() % 8 {
                args.push(words[(next() % words.len() as u64) as usize].to_string());
            }
            let req = Request::from_args(&args);
            if let Some(positions) = key_positions(&req) {
                assert!(
                    positions.iter().all(|&p| p >= 1 && p < req.argc()),
                    "{args:?}: {positions:?}"
                );
            }
        }
    }
}
