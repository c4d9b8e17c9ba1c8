//! Which writes may be fanned out, and in what form.
//!
//! In fan-out mode every node runs every write itself, so a write must do
//! the same thing on every node, whenever that node runs it: a node
//! replaying its backlog runs a write minutes after the others did. A write
//! whose effect depends on chance or on the node's clock is therefore either
//! rewritten into a deterministic form (relative expiry becomes absolute,
//! `XADD *` gets its millisecond from Rampart) or refused with an error that
//! says why. Anything Rampart cannot tell is a deterministic data change
//! (an unknown command, say) is refused too: sent to one node it would let
//! the nodes drift apart silently.
//!
//! Admin commands that change no data (INFO, CONFIG GET, PUBLISH ...) run on
//! the primary alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use sha1::{Digest, Sha1};

use crate::resp::Request;

/// What happens to a write in fan-out mode.
#[derive(Debug)]
pub enum Verdict {
    /// Every node runs it (possibly rewritten).
    Fanout(Request),
    /// Changes no data: the primary alone runs it.
    Primary(Request),
    /// Answered with this error; no node runs it.
    Refused(String),
}

/// Per shard: the state the rewriting needs.
#[derive(Default)]
pub struct Rewriter {
    /// The millisecond part of the last `XADD *` ID handed out, so IDs
    /// never go backwards if the clock does.
    last_xadd_ms: AtomicU64,
    /// Scripts seen through `EVAL` or `SCRIPT LOAD`, by SHA1 (lower-case
    /// hex): `None` if deterministic as far as Rampart can tell, else why
    /// not. `EVALSHA` of a script not in here is refused.
    scripts: DashMap<String, Option<String>>,
}

/// Non-data commands the primary alone runs.
const PRIMARY_ONLY: &[&str] = &[
    "INFO",
    "CONFIG",
    "SLOWLOG",
    "LATENCY",
    "MEMORY",
    "COMMAND",
    "LASTSAVE",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "TIME",
    "LOLWUT",
    "ACL",
    "MODULE",
    "PUBLISH",
    "SPUBLISH",
    "PUBSUB",
    "ROLE",
    "READONLY",
    "READWRITE",
    "CLIENT",
    "DEBUG",
    "OBJECT",
];

/// Data changes that are the same on every node as they are.
const AS_IS: &[&str] = &[
    "APPEND",
    "BITFIELD",
    "BITOP",
    "DECR",
    "DECRBY",
    "DEL",
    "EXPIREAT",
    "PEXPIREAT",
    "FLUSHALL",
    "FLUSHDB",
    "GEOADD",
    "GEORADIUS",
    "GEORADIUSBYMEMBER",
    "GEOSEARCHSTORE",
    "GETDEL",
    "GETSET",
    "HDEL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HMSET",
    "HSET",
    "HSETNX",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "LINSERT",
    "LMOVE",
    "LMPOP",
    "LPOP",
    "LPUSH",
    "LPUSHX",
    "LREM",
    "LSET",
    "LTRIM",
    "MSET",
    "MSETNX",
    "PERSIST",
    "PFADD",
    "PFMERGE",
    "RENAME",
    "RENAMENX",
    "RPOP",
    "RPOPLPUSH",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SDIFFSTORE",
    "SETBIT",
    "SETNX",
    "SETRANGE",
    "SINTERSTORE",
    "SMOVE",
    "SREM",
    "SUNIONSTORE",
    "UNLINK",
    "XACK",
    "XDEL",
    "XGROUP",
    "XREADGROUP",
    "XSETID",
    "XTRIM",
    "ZADD",
    "ZDIFFSTORE",
    "ZINCRBY",
    "ZINTERSTORE",
    "ZMPOP",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZRANGESTORE",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
    "ZUNIONSTORE",
];

/// Refused, and why.
const REFUSED: &[(&str, &str)] = &[
    ("SPOP", "SPOP removes members chosen at random, so each node would remove different ones (use SRANDMEMBER, then SREM)"),
    ("XCLAIM", "XCLAIM compares idle times on each node's own clock"),
    ("XAUTOCLAIM", "XAUTOCLAIM compares idle times on each node's own clock"),
    ("MIGRATE", "MIGRATE moves keys out of one node only"),
    ("MOVE", "only database 0 is kept in sync"),
    ("SWAPDB", "only database 0 is kept in sync"),
    ("FCALL", "functions cannot be checked for non-deterministic commands (use EVAL)"),
    ("FUNCTION", "functions cannot be checked for non-deterministic commands (use EVAL)"),
];

/// Words that make a script non-deterministic, or dependent on the clock of
/// the node that runs it, when they appear in its source.
const SCRIPT_DENYLIST: &[&str] = &[
    "spop",
    "srandmember",
    "randomkey",
    "hrandfield",
    "zrandmember",
    "time",
    "math.random",
    "xadd",
    "xclaim",
    "xautoclaim",
    "expire",
    "pexpire",
    "setex",
    "psetex",
    "getex",
    "restore",
    "ex",
    "px",
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn refused(name: &str, why: &str) -> Verdict {
    Verdict::Refused(format!(
        "ERR rampart: {name} is not allowed in fan-out mode: {why}"
    ))
}

impl Rewriter {
    /// The fate of a request that is not a read.
    pub fn judge(&self, req: Request) -> Verdict {
        self.judge_at(req, now_ms())
    }

    fn judge_at(&self, req: Request, now: u64) -> Verdict {
        let name = req.name();
        let name = name.as_str();
        if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name) {
            return refused(name, why);
        }
        if AS_IS.contains(&name) {
            return Verdict::Fanout(req);
        }
        if PRIMARY_ONLY.contains(&name) {
            return Verdict::Primary(req);
        }
        match name {
            "SET" => Verdict::Fanout(option_to_pxat(req, 3, now)),
            "GETEX" => Verdict::Fanout(option_to_pxat(req, 2, now)),
            "EXPIRE" => Verdict::Fanout(expire_to_pexpireat(req, 1000, now)),
            "PEXPIRE" => Verdict::Fanout(expire_to_pexpireat(req, 1, now)),
            "SETEX" => Verdict::Fanout(setex_to_set(req, 1000, now)),
            "PSETEX" => Verdict::Fanout(setex_to_set(req, 1, now)),
            "RESTORE" => Verdict::Fanout(restore_absolute(req, now)),
            "XADD" => Verdict::Fanout(self.xadd(req, now)),
            "COPY" if has_option(&req, 3, b"DB") => refused(name, "only database 0 is kept in sync"),
            "COPY" => Verdict::Fanout(req),
            // A set's own order (BY nosort) depends on how each node's hash
            // table grew; stored, it would differ per node.
            "SORT" if has_option(&req, 2, b"NOSORT") && has_option(&req, 2, b"STORE") => refused(
                name,
                "SORT ... BY nosort ... STORE keeps a set's internal order, which differs per node (sort by something, or drop BY nosort)",
            ),
            "SORT" => Verdict::Fanout(req),
            "EVAL" => self.eval(req),
            "EVALSHA" => self.evalsha(req),
            "SCRIPT" => self.script(req),
            _ => Verdict::Refused(format!(
                "ERR rampart: '{name}' is refused in fan-out mode: Rampart cannot tell whether it changes data the same way on every node"
            )),
        }
    }

    /// `XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] n [LIMIT c]] * ...`: the
    /// `*` becomes `<ms>-*`, Rampart's millisecond with the sequence number
    /// still chosen by the node (the same on every node, since each holds
    /// the same stream).
    fn xadd(&self, req: Request, now: u64) -> Request {
        let mut i = 2;
        loop {
            match req.arg_upper(i).as_ref().map(|n| n.as_bytes()) {
                Some(b"NOMKSTREAM") => i += 1,
                Some(b"MAXLEN" | b"MINID") => {
                    i += 1;
                    if matches!(req.arg(i), Some(b"=" | b"~")) {
                        i += 1;
                    }
                    i += 1;
                    if req.arg_upper(i).is_some_and(|n| n.as_bytes() == b"LIMIT") {
                        i += 2;
                    }
                }
                _ => break,
            }
        }
        if req.arg(i) != Some(b"*") {
            return req;
        }
        let ms = self.last_xadd_ms.fetch_max(now, Ordering::AcqRel).max(now);
        replace_args(&req, i, 1, &[format!("{ms}-*").into()])
    }

    fn eval(&self, req: Request) -> Verdict {
        let Some(body) = req.arg(1) else {
            return Verdict::Fanout(req);
        };
        let verdict = script_verdict(body);
        self.scripts.insert(sha1_hex(body), verdict.clone());
        self.keyed_script(req, verdict)
    }

    fn evalsha(&self, req: Request) -> Verdict {
        let sha = String::from_utf8_lossy(req.arg(1).unwrap_or_default()).to_ascii_lowercase();
        let Some(verdict) = self.scripts.get(&sha).map(|v| v.clone()) else {
            return Verdict::Refused(
                "ERR rampart: EVALSHA of a script Rampart has not seen is refused in fan-out mode: send it once with EVAL or SCRIPT LOAD through Rampart, which checks it".into(),
            );
        };
        self.keyed_script(req, verdict)
    }

    fn keyed_script(&self, req: Request, verdict: Option<String>) -> Verdict {
        if let Some(why) = verdict {
            return refused("this script", &why);
        }
        if req.arg(2) == Some(b"0") {
            return refused(
                "a script with no keys",
                "Rampart cannot see what it touches",
            );
        }
        Verdict::Fanout(req)
    }

    /// `SCRIPT LOAD` is checked and fanned out, so `EVALSHA` finds the
    /// script on every node; `SCRIPT FLUSH` too; the rest runs on the
    /// primary.
    fn script(&self, req: Request) -> Verdict {
        let sub = req.arg_upper(1);
        match sub.as_ref().map(|s| s.as_bytes()) {
            Some(b"LOAD") => {
                let body = req.arg(2).unwrap_or_default();
                let verdict = script_verdict(body);
                self.scripts.insert(sha1_hex(body), verdict.clone());
                match verdict {
                    Some(why) => refused("this script", &why),
                    None => Verdict::Fanout(req),
                }
            }
            Some(b"FLUSH") => {
                self.scripts.clear();
                Verdict::Fanout(req)
            }
            _ => Verdict::Primary(req),
        }
    }
}

/// `None` when no word of the script's source is on the denylist; else
/// which one is.
fn script_verdict(body: &[u8]) -> Option<String> {
    let source = String::from_utf8_lossy(body).to_ascii_lowercase();
    source
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .find(|word| SCRIPT_DENYLIST.contains(word))
        .map(|word| format!("its source uses '{word}', whose effect differs per node or per moment (Rampart checks scripts by the words in their source)"))
}

fn sha1_hex(body: &[u8]) -> String {
    Sha1::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn has_option(req: &Request, from: usize, option: &[u8]) -> bool {
    (from..req.argc()).any(|i| req.arg_upper(i).is_some_and(|n| n.as_bytes() == option))
}

/// A copy of `req` with `count` arguments from `at` replaced by `with`.
fn replace_args(req: &Request, at: usize, count: usize, with: &[Bytes]) -> Request {
    let mut args = req.args();
    let end = (at + count).min(args.len());
    args.splice(at..end, with.iter().cloned());
    Request::from_args(&args)
}

/// A positive integer argument, or `None` (the node will answer the error
/// or the immediate deletion itself, the same on every node).
fn positive(arg: Option<&[u8]>) -> Option<u64> {
    let n = crate::resp::request::parse_i64(arg?)?;
    (n > 0).then_some(n as u64)
}

/// Relative time `amount * unit_ms` from `now` as absolute milliseconds.
fn absolute(amount: u64, unit_ms: u64, now: u64) -> Option<u64> {
    amount.checked_mul(unit_ms)?.checked_add(now)
}

/// `SET`/`GETEX` with `EX s` or `PX ms` among the options from `from` on:
/// the pair becomes `PXAT <absolute ms>`.
fn option_to_pxat(req: Request, from: usize, now: u64) -> Request {
    for i in from..req.argc() {
        let unit = match req.arg_upper(i).as_ref().map(|n| n.as_bytes()) {
            Some(b"EX") => 1000,
            Some(b"PX") => 1,
            _ => continue,
        };
        let Some(at) = positive(req.arg(i + 1)).and_then(|n| absolute(n, unit, now)) else {
            return req;
        };
        return replace_args(
            &req,
            i,
            2,
            &[Bytes::from_static(b"PXAT"), at.to_string().into()],
        );
    }
    req
}

/// `EXPIRE key s [NX|XX|GT|LT]` (or `PEXPIRE`) -> `PEXPIREAT key abs [...]`.
fn expire_to_pexpireat(req: Request, unit: u64, now: u64) -> Request {
    let Some(at) = positive(req.arg(2)).and_then(|n| absolute(n, unit, now)) else {
        return req;
    };
    let mut args = req.args();
    args[0] = Bytes::from_static(b"PEXPIREAT");
    args[2] = at.to_string().into();
    Request::from_args(&args)
}

/// `SETEX key s value` (or `PSETEX`) -> `SET key value PXAT abs`; both
/// answer `+OK`.
fn setex_to_set(req: Request, unit: u64, now: u64) -> Request {
    let (Some(key), Some(value), 4) = (req.arg(1), req.arg(3), req.argc()) else {
        return req;
    };
    let Some(at) = positive(req.arg(2)).and_then(|n| absolute(n, unit, now)) else {
        return req;
    };
    Request::from_args(&[b"SET", key, value, b"PXAT", at.to_string().as_bytes()])
}

/// `RESTORE key ttl payload [...]` with a relative ttl -> absolute, with
/// `ABSTTL` added.
fn restore_absolute(req: Request, now: u64) -> Request {
    if has_option(&req, 4, b"ABSTTL") {
        return req;
    }
    let Some(at) = positive(req.arg(2)).and_then(|n| absolute(n, 1, now)) else {
        return req;
    };
    let mut args = req.args();
    args[2] = at.to_string().into();
    args.push(Bytes::from_static(b"ABSTTL"));
    Request::from_args(&args)
}

#[cfg(test)]
mod tests;
