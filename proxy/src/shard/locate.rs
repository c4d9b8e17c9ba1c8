//! Where a request goes when there are several shards: the one shard its
//! keys live in, every shard (keyless commands about the whole data set),
//! or split by key (the multi-key commands Redis Cluster proxies split).
//! Anything else whose keys span shards is refused with Redis Cluster's
//! `CROSSSLOT` error.

use super::slots::{pattern_slot, SlotMap};
use crate::resp::keyspecs;
use crate::resp::Request;

/// Redis Cluster's answer to keys in several slots (here: shards).
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The shard (by index) owning every key of the request.
    One(usize),
    /// No key, and nothing about the whole data set: the shard the client
    /// is already on (in a transaction), otherwise the first.
    Any,
    /// Keys on several shards, in a command split by key.
    Split(Split),
    /// A keyless command about the whole data set.
    Every(Every),
    /// Keys on several shards, in a command that cannot be split.
    CrossSlot,
}

/// Commands split by key, and how their replies are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `MGET`: the values, in the order the keys were asked.
    Mget,
    /// `MSET`: `+OK` when every shard said so.
    Mset,
    /// `DEL`, `UNLINK`, `EXISTS`, `TOUCH`: the counts summed.
    Count,
}

/// Keyless commands sent to every shard, and how their replies combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    /// `DBSIZE`: summed.
    Sum,
    /// `KEYS`: every shard's keys in one array.
    Concat,
    /// `SCAN`: one shard at a time, the cursor saying which.
    Scan,
    /// `RANDOMKEY`: a key from a shard that has one.
    Random,
    /// `FLUSHALL`, `FLUSHDB`, `SCRIPT LOAD|FLUSH`, `FUNCTION LOAD|DELETE|
    /// FLUSH|RESTORE`, `CONFIG RESETSTAT`: every shard must do it; the
    /// first shard's reply, or the first error.
    Same,
    /// `SCRIPT EXISTS`: a script exists when it exists on every shard.
    All,
}

/// Commands Redis Cluster refuses, with its words: those reaching another
/// database (every shard's data is in database 0; `SELECT` is answered by
/// Rampart itself), and `SORT` patterns that may read keys of another
/// shard.
pub fn refused_with_shards(req: &Request, slots: &SlotMap) -> Option<&'static str> {
    let name = req.name();
    match name.as_bytes() {
        b"SORT" | b"SORT_RO" => sort_reaches_another_shard(req, slots),
        b"MOVE" => Some("ERR MOVE is not allowed in cluster mode"),
        b"SWAPDB" => Some("ERR SWAPDB is not allowed in cluster mode"),
        b"COPY"
            if (3..req.argc())
                .any(|i| req.arg(i).is_some_and(|a| a.eq_ignore_ascii_case(b"DB"))) =>
        {
            Some("ERR Copying to another database is not allowed in cluster mode")
        }
        _ => None,
    }
}

/// `SORT key [BY pattern] [GET pattern ...]`: a pattern names other keys
/// (`*` replaced by each element, `->field` for a hash field). Allowed
/// only when every key it can name is on the shard owning `key`: a pattern
/// without `*` is one key; one with `*` outside a `{hash tag}` may be any.
/// Otherwise Redis Cluster's refusal (a node would read the other shard's
/// keys as missing and answer wrongly).
fn sort_reaches_another_shard(req: &Request, slots: &SlotMap) -> Option<&'static str> {
    let key = req.arg(1)?;
    let home = slots.shard_of(key);
    let elsewhere = |pattern: &[u8]| {
        let key_part = match pattern.windows(2).position(|w| w == b"->") {
            Some(at) if at > 0 => &pattern[..at],
            _ => pattern,
        };
        pattern_slot(key_part).is_none_or(|slot| slots.owner(slot) != home)
    };
    let mut i = 2;
    while i < req.argc() {
        let word = req.arg_upper(i)?;
        match word.as_bytes() {
            b"BY" => {
                let pattern = req.arg(i + 1)?;
                // Without `*` BY means "do not sort": no key is read.
                if pattern.contains(&b'*') && elsewhere(pattern) {
                    return Some("ERR BY option of SORT denied in Cluster mode.");
                }
                i += 2;
            }
            b"GET" => {
                let pattern = req.arg(i + 1)?;
                if pattern != b"#" && elsewhere(pattern) {
                    return Some("ERR GET option of SORT denied in Cluster mode.");
                }
                i += 2;
            }
            b"LIMIT" => i += 3,
            b"STORE" => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// Where `req` goes, among `shards` shards placed by `slots`.
pub fn locate(req: &Request, slots: &SlotMap, shards: usize) -> Place {
    if shards <= 1 {
        return Place::One(0);
    }
    let name = req.name();
    let name = name.as_bytes();
    if let Some(every) = every(name, req) {
        return Place::Every(every);
    }
    let Some(keys) = keyspecs::keys(req) else {
        return Place::Any;
    };
    let mut owners = keys.iter().map(|key| slots.shard_of(key));
    let Some(first) = owners.next() else {
        return Place::Any;
    };
    if owners.all(|owner| owner == first) {
        return Place::One(first);
    }
    match split(name, req) {
        Some(split) => Place::Split(split),
        // `MSET k v k`: the node answers Redis's arity error.
        None if name == b"MSET" => Place::One(first),
        None => Place::CrossSlot,
    }
}

fn split(name: &[u8], req: &Request) -> Option<Split> {
    match name {
        b"MGET" => Some(Split::Mget),
        b"MSET" if req.argc() % 2 == 1 => Some(Split::Mset),
        b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" => Some(Split::Count),
        _ => None,
    }
}

fn every(name: &[u8], req: &Request) -> Option<Every> {
    let sub_is = |names: &[&[u8]]| {
        req.arg_upper(1)
            .is_some_and(|s| names.contains(&s.as_bytes()))
    };
    Some(match name {
        b"DBSIZE" => Every::Sum,
        b"KEYS" => Every::Concat,
        b"SCAN" => Every::Scan,
        b"RANDOMKEY" => Every::Random,
        b"FLUSHALL" | b"FLUSHDB" => Every::Same,
        b"SCRIPT" if sub_is(&[b"LOAD", b"FLUSH"]) => Every::Same,
        b"SCRIPT" if sub_is(&[b"EXISTS"]) => Every::All,
        b"FUNCTION" if sub_is(&[b"LOAD", b"DELETE", b"FLUSH", b"RESTORE"]) => Every::Same,
        b"CONFIG" if sub_is(&[b"RESETSTAT"]) => Every::Same,
        b"SLOWLOG" if sub_is(&[b"LEN"]) => Every::Sum,
        b"SLOWLOG" if sub_is(&[b"RESET"]) => Every::Same,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> SlotMap {
        SlotMap::build([("a", Some("0-8191")), ("b", Some("8192-16383"))]).unwrap()
    }

    fn place(args: &[&str]) -> Place {
        locate(&Request::from_args(args), &two(), 2)
    }

    #[test]
    fn keys_choose_the_shard() {
        // bar -> 5061 (a), foo -> 12182 (b).
        assert_eq!(place(&["GET", "bar"]), Place::One(0));
        assert_eq!(place(&["GET", "foo"]), Place::One(1));
        assert_eq!(place(&["MGET", "{foo}1", "{foo}2"]), Place::One(1));
        assert_eq!(place(&["MGET", "foo", "bar"]), Place::Split(Split::Mget));
        assert_eq!(place(&["DEL", "foo", "bar"]), Place::Split(Split::Count));
        assert_eq!(
            place(&["MSET", "foo", "1", "bar", "2"]),
            Place::Split(Split::Mset)
        );
        assert_eq!(place(&["MSETNX", "foo", "1", "bar", "2"]), Place::CrossSlot);
        assert_eq!(place(&["RENAME", "foo", "bar"]), Place::CrossSlot);
        assert_eq!(
            place(&["EVAL", "return 1", "2", "foo", "bar"]),
            Place::CrossSlot
        );
        assert_eq!(place(&["EVAL", "return 1", "0"]), Place::Any);
        assert_eq!(place(&["DBSIZE"]), Place::Every(Every::Sum));
        assert_eq!(place(&["script", "load", "x"]), Place::Every(Every::Same));
        assert_eq!(place(&["PUBLISH", "news", "x"]), Place::Any);
        assert_eq!(place(&["SPUBLISH", "foo", "x"]), Place::One(1));
        assert_eq!(
            locate(&Request::from_args(&["MGET", "foo", "bar"]), &two(), 1),
            Place::One(0)
        );
    }
}
