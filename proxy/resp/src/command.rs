//! The command table: what kind of thing each command is, as far as routing
//! and connection state are concerned.
//!
//! Rampart does not need Redis's full command metadata. It needs to know
//! whether a command may be served by a replica, whether it changes the state
//! of the connection it runs on (and so cannot share a backend link with other
//! clients), whether it blocks, and whether Rampart answers it itself.
//! Anything not listed is forwarded to the primary unchanged, so a command
//! added in a future Redis works through Rampart on day one.

use super::request::Request;

/// How a command travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Read-only: may be served by a replica when the routing policy says so.
    Read,
    /// Read-only, but its answer holds a cursor only the node that gave it
    /// understands (`SCAN`, `HSCAN` ...): always the primary, so that every
    /// call of an iteration reaches the same node.
    CursorRead,
    /// Everything else that runs on a backend: writes, admin, unknown commands.
    /// Goes to the primary on a shared link.
    Write,
    /// Blocks on the server (BLPOP, XREAD BLOCK ...): needs a link of its own
    /// so it delays nobody else.
    Blocking,
    /// `WAIT`/`WAITAOF`: must cover the writes this client made on a shared link.
    Wait,
    /// Starts or belongs to a transaction, or watches keys: the client is
    /// pinned to a dedicated primary connection.
    Transaction(Tx),
    /// Changes how the server treats the connection it runs on (CLIENT
    /// NO-EVICT ...): the client keeps a dedicated connection until RESET.
    Pin,
    /// Turns the connection into a stream of pushed messages (SUBSCRIBE,
    /// MONITOR, CLIENT TRACKING): the client gets a dedicated connection piped
    /// straight through for the rest of its life.
    Stream,
    /// Answered by Rampart itself: the connection's own commands, and some
    /// it puts to the nodes on its own terms (INFO, ACL changes, SCRIPT
    /// KILL). The proxy answers them in `client/answer/`.
    Answer(Answer),
    /// Refused through the proxy; the text says why.
    Refused(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tx {
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
}

/// The commands Rampart answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ping,
    Echo,
    Quit,
    Hello,
    Auth,
    Select,
    Reset,
    ClientSetName,
    ClientGetName,
    ClientId,
    ClientSetInfo,
    /// `CLIENT LIST | INFO | KILL | UNBLOCK | REPLY`: about Rampart's
    /// clients, not its connections to the nodes.
    Client,
    /// `ACL SETUSER | DELUSER`: run on the primary as the client, then
    /// copied to every other node (Redis does not replicate ACLs).
    AclChange,
    /// `CONFIG SET`: run on every shard's primary as the client, then
    /// copied to every replica (a setting lives on the node that takes it).
    ConfigSet,
    /// `SLOWLOG GET`: the node's log without Rampart's own entries.
    SlowlogGet,
    /// `CLIENT PAUSE <ms> WRITE` and `CLIENT UNPAUSE`: on the primary, at
    /// once, on a connection of their own.
    Pause,
    /// `INFO`: the primary's, with `connected_clients` counting Rampart's
    /// clients rather than the node's connections.
    Info,
    /// `SCRIPT KILL`, `FUNCTION KILL`: must reach the node running the
    /// script at once, never queue behind it on a shared connection.
    KillScript,
    /// (P|S)UNSUBSCRIBE while not subscribed: Redis answers one frame per
    /// channel, which a shared link could not match to requests.
    Unsubscribe,
    /// `CLUSTER KEYSLOT key`: the hash slot Rampart places the key by, as
    /// Redis Cluster computes it (a node outside cluster mode refuses it).
    KeySlot,
    Rampart,
    /// `POST` or `Host:`: an HTTP request sent to the Redis port (a
    /// cross-protocol attack from a browser, or a misdirected client).
    /// Redis logs it and closes the connection without a reply; so does
    /// Rampart, and never forwards it, since a node would close the shared
    /// link it arrived on.
    CrossProtocol,
}

/// Redis's refusal of a command that may not run inside `MULTI`.
pub const NOT_IN_MULTI: &str = "ERR Command not allowed inside a transaction";

/// Why SHUTDOWN, SYNC and PSYNC are refused.
pub const NOT_THROUGH_RAMPART: &str = "ERR this command is not allowed through Rampart";

/// Classifies a request. Allocation-free: it runs for every command.
pub fn classify(req: &Request) -> Class {
    let name = req.name();
    let n = name.as_bytes();
    if let Some(class) = exact(n) {
        return class;
    }
    match n {
        b"CLIENT" => client_subcommand(req),
        b"CLUSTER" if req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"KEYSLOT") => {
            Class::Answer(Answer::KeySlot)
        }
        b"SCRIPT" | b"FUNCTION" if req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"KILL") => {
            Class::Answer(Answer::KillScript)
        }
        b"SLOWLOG" if req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"GET") => {
            Class::Answer(Answer::SlowlogGet)
        }
        b"ACL"
            if req
                .arg_upper(1)
                .is_some_and(|s| matches!(s.as_bytes(), b"SETUSER" | b"DELUSER")) =>
        {
            Class::Answer(Answer::AclChange)
        }
        b"CONFIG" if req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"SET") => {
            Class::Answer(Answer::ConfigSet)
        }
        b"XREAD" | b"XREADGROUP" => {
            if has_option(req, b"BLOCK") {
                Class::Blocking
            } else if n == b"XREAD" {
                Class::Read
            } else {
                // XREADGROUP updates the consumer group: a write.
                Class::Write
            }
        }
        b"SCAN" | b"HSCAN" | b"SSCAN" | b"ZSCAN" => Class::CursorRead,
        _ if is_read(n) => Class::Read,
        _ => Class::Write,
    }
}

fn exact(n: &[u8]) -> Option<Class> {
    use Class::*;
    Some(match n {
        b"PING" => Answer(self::Answer::Ping),
        b"ECHO" => Answer(self::Answer::Echo),
        b"QUIT" => Answer(self::Answer::Quit),
        b"POST" | b"HOST:" => Answer(self::Answer::CrossProtocol),
        b"HELLO" => Answer(self::Answer::Hello),
        b"AUTH" => Answer(self::Answer::Auth),
        b"SELECT" => Answer(self::Answer::Select),
        b"RESET" => Answer(self::Answer::Reset),
        b"RAMPART" => Answer(self::Answer::Rampart),
        b"INFO" => Answer(self::Answer::Info),
        b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"SUNSUBSCRIBE" => Answer(self::Answer::Unsubscribe),
        b"MULTI" => Transaction(Tx::Multi),
        b"EXEC" => Transaction(Tx::Exec),
        b"DISCARD" => Transaction(Tx::Discard),
        b"WATCH" => Transaction(Tx::Watch),
        b"UNWATCH" => Transaction(Tx::Unwatch),
        b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"MONITOR" => Stream,
        b"BLPOP" | b"BRPOP" | b"BRPOPLPUSH" | b"BLMOVE" | b"BLMPOP" | b"BZPOPMIN" | b"BZPOPMAX"
        | b"BZMPOP" => Blocking,
        b"WAIT" | b"WAITAOF" => Wait,
        b"REPLICAOF" | b"SLAVEOF" | b"FAILOVER" => {
            Refused("ERR replication is managed by Rampart; use its admin API to change roles")
        }
        b"SHUTDOWN" | b"SYNC" | b"PSYNC" => Refused(NOT_THROUGH_RAMPART),
        _ => return None,
    })
}

fn client_subcommand(req: &Request) -> Class {
    let Some(sub) = req.arg_upper(1) else {
        return Class::Write;
    };
    match sub.as_bytes() {
        b"SETNAME" => Class::Answer(Answer::ClientSetName),
        b"GETNAME" => Class::Answer(Answer::ClientGetName),
        b"ID" => Class::Answer(Answer::ClientId),
        b"SETINFO" => Class::Answer(Answer::ClientSetInfo),
        b"TRACKING" => Class::Stream,
        b"LIST" | b"INFO" | b"KILL" | b"UNBLOCK" | b"REPLY" => Class::Answer(Answer::Client),
        b"PAUSE" | b"UNPAUSE" => Class::Answer(Answer::Pause),
        // Options that change how the server treats the connection they run
        // on must not reach a shared link.
        b"NO-EVICT" | b"NO-TOUCH" | b"CACHING" => Class::Pin,
        _ => Class::Write,
    }
}

fn has_option(req: &Request, option: &[u8]) -> bool {
    (1..req.argc()).any(|i| req.arg_upper(i).is_some_and(|a| a.as_bytes() == option))
}

/// Commands flagged `readonly` by Redis that a replica can answer.
fn is_read(n: &[u8]) -> bool {
    matches!(
        n,
        b"GET"
            | b"MGET"
            | b"STRLEN"
            | b"GETRANGE"
            | b"SUBSTR"
            | b"LCS"
            | b"EXISTS"
            | b"TYPE"
            | b"TTL"
            | b"PTTL"
            | b"EXPIRETIME"
            | b"PEXPIRETIME"
            | b"TOUCH"
            | b"DUMP"
            | b"OBJECT"
            | b"KEYS"
            | b"RANDOMKEY"
            | b"DBSIZE"
            | b"SORT_RO"
            | b"HGET"
            | b"HMGET"
            | b"HGETALL"
            | b"HKEYS"
            | b"HVALS"
            | b"HLEN"
            | b"HEXISTS"
            | b"HSTRLEN"
            | b"HRANDFIELD"
            | b"LRANGE"
            | b"LINDEX"
            | b"LLEN"
            | b"LPOS"
            | b"SMEMBERS"
            | b"SISMEMBER"
            | b"SMISMEMBER"
            | b"SCARD"
            | b"SRANDMEMBER"
            | b"SINTER"
            | b"SINTERCARD"
            | b"SUNION"
            | b"SDIFF"
            | b"ZRANGE"
            | b"ZRANGEBYSCORE"
            | b"ZREVRANGEBYSCORE"
            | b"ZRANGEBYLEX"
            | b"ZREVRANGEBYLEX"
            | b"ZREVRANGE"
            | b"ZSCORE"
            | b"ZMSCORE"
            | b"ZCARD"
            | b"ZCOUNT"
            | b"ZLEXCOUNT"
            | b"ZRANK"
            | b"ZREVRANK"
            | b"ZRANDMEMBER"
            | b"ZINTER"
            | b"ZINTERCARD"
            | b"ZUNION"
            | b"ZDIFF"
            | b"XRANGE"
            | b"XREVRANGE"
            | b"XLEN"
            | b"XINFO"
            | b"XPENDING"
            | b"GETBIT"
            | b"BITCOUNT"
            | b"BITPOS"
            | b"BITFIELD_RO"
            | b"PFCOUNT"
            | b"GEOPOS"
            | b"GEODIST"
            | b"GEOHASH"
            | b"GEOSEARCH"
            | b"GEORADIUS_RO"
            | b"GEORADIUSBYMEMBER_RO"
            | b"EVAL_RO"
            | b"EVALSHA_RO"
            | b"FCALL_RO"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(args: &[&str]) -> Class {
        classify(&Request::from_args(args))
    }

    #[test]
    fn classes() {
        assert_eq!(class(&["get", "k"]), Class::Read);
        assert_eq!(class(&["scan", "0"]), Class::CursorRead);
        assert_eq!(class(&["HSCAN", "h", "0"]), Class::CursorRead);
        assert_eq!(class(&["SET", "k", "v"]), Class::Write);
        assert_eq!(class(&["NOSUCHCMD"]), Class::Write);
        assert_eq!(
            class(&["xread", "block", "0", "streams", "s", "$"]),
            Class::Blocking
        );
        assert_eq!(class(&["XREAD", "STREAMS", "s", "0"]), Class::Read);
        assert_eq!(
            class(&["client", "setname", "x"]),
            Class::Answer(Answer::ClientSetName)
        );
        assert_eq!(class(&["CLIENT", "TRACKING", "on"]), Class::Stream);
        assert_eq!(class(&["blpop", "q", "0"]), Class::Blocking);
        assert_eq!(
            class(&["script", "kill"]),
            Class::Answer(Answer::KillScript)
        );
        assert_eq!(
            class(&["FUNCTION", "KILL"]),
            Class::Answer(Answer::KillScript)
        );
        assert_eq!(class(&["SCRIPT", "LOAD", "return 1"]), Class::Write);
        assert_eq!(
            class(&["config", "set", "maxmemory", "1"]),
            Class::Answer(Answer::ConfigSet)
        );
        assert!(matches!(
            class(&["replicaof", "no", "one"]),
            Class::Refused(_)
        ));
    }
}
