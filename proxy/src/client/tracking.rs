//! `CLIENT TRACKING` over several shards (client-side caching).
//!
//! Over one shard a tracking client is piped to the primary, which tracks
//! what it reads (see [`super::pipe`]). Over several, the client's reads go
//! to every shard's primary on Rampart's shared connections, where a node
//! cannot tell whose read it was. So each shard's primary is asked for
//! every invalidation instead: one connection per shard, logged in as the
//! client, in `BCAST` mode (with the client's prefixes, or none), and Rampart
//! passes on what the client asked for:
//!
//! - in `BCAST` mode, every message (the nodes filtered by prefix);
//! - otherwise, the keys the client read (with `OPTIN`, only reads after
//!   `CLIENT CACHING yes`; with `OPTOUT`, not those after `CLIENT CACHING
//!   no`), as Redis tracks them. Redis forgets a key once it sent its
//!   invalidation; Rampart keeps it until tracking ends: a read of the key
//!   may be on its way to the node while the invalidation is on its way
//!   back, and forgetting the key then would leave the value that read
//!   returns cached with nothing to invalidate it. So a key read once is
//!   reported on every change (up to 10,000 keys per client; past that,
//!   every key is).
//!
//! An invalidation is queued among the client's replies behind those of
//! every request sent before it arrived: a read that ran before the write
//! is answered before the client hears the key changed, so it can never
//! cache the old value after dropping it. A tracking client's reads go to
//! the primary (a replica may not have the write it was told about). A feed
//! that ends (its primary changed, its connection broke) disconnects the
//! client, as a piped tracking client is: a client-side cache is flushed
//! when its connection is lost. So does a change of the slot map while a
//! shard without a feed serves (one added by a reload): keys moved there
//! would change unseen.
//!
//! With `REDIRECT <id>` the invalidations go to that Rampart client
//! instead (see [`crate::client::registry::Entry::invalidate`]): as pushes
//! to a RESP3 one, as `__redis__:invalidate` messages to a subscribed RESP2
//! one, and nowhere to others, as Redis sends them; once the target is gone
//! a RESP3 tracking client is told (`tracking-redir-broken`).
//!
//! `CLIENT TRACKING`, `CACHING`, `TRACKINGINFO` and `GETREDIR` are answered
//! here, with Redis's own checks and error texts. Not kept over several
//! shards: `NOLOOP`'s promise (the client also hears of keys it changed
//! itself: harmless for a cache).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::backend::Session;
use crate::resp::{Proto, ReplyScanner, Request, Value};
use crate::shard::Shard;

/// Keys remembered per client, and their bytes; past either, every
/// invalidation is passed on.
const MAX_KEYS: usize = 10_000;
const MAX_KEY_BYTES: usize = 1024 * 1024;
/// Invalidations waiting to be queued for the client: past it the feeds
/// stop reading their nodes.
const FEED_QUEUE: usize = 64;
/// How long `CLIENT TRACKING ON` waits for every feed to start.
const START_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
/// Nesting of an invalidation message (a push of a string and an array).
const DEPTH: usize = 4;

const NO_SUCH_CLIENT: &str = "ERR The client ID you want redirect to does not exist";

/// What the client asked to be told about.
#[derive(Default, Clone, PartialEq, Debug)]
struct Mode {
    bcast: bool,
    optin: bool,
    optout: bool,
    noloop: bool,
    /// Sorted, as Redis lists them; `""` (every key) for `BCAST` without
    /// `PREFIX`.
    prefixes: Vec<Bytes>,
    /// The Rampart client the invalidations go to.
    redirect: Option<u64>,
}

/// A client's tracking over several shards.
pub(super) struct Tracking {
    mode: Mode,
    /// `CLIENT CACHING yes|no`, for the next command but `CLIENT`'s own.
    caching: Option<bool>,
    /// Keys read (not in `BCAST` mode), and their bytes.
    keys: HashSet<Bytes>,
    key_bytes: usize,
    /// The shards with a feed, by name, and the slot map's changes.
    covered: Vec<String>,
    slots: tokio::sync::watch::Receiver<u64>,
    shards: Arc<crate::shard::Shards>,
    /// More keys were read than are remembered: every invalidation goes on.
    overflowed: bool,
    /// The redirect target is gone (the client was told once).
    broken: bool,
    feeds: Feeds,
}

/// What `CLIENT TRACKING ON` asks for, parsed.
#[derive(Default)]
struct Asked {
    on: bool,
    mode: Mode,
}

/// Argument `i` in upper case (empty when absent).
fn upper(req: &Request, i: usize) -> Vec<u8> {
    req.arg(i).unwrap_or_default().to_ascii_uppercase()
}

/// `CLIENT TRACKING <ON|OFF> [options]`, parsed, or Redis's error
/// (`exists`: whether a client of that id is connected).
fn parse(req: &Request, exists: impl Fn(u64) -> bool) -> Result<Asked, String> {
    let mut asked = Asked::default();
    let mut i = 3;
    while i < req.argc() {
        match upper(req, i).as_slice() {
            b"REDIRECT" if i + 1 < req.argc() => {
                i += 1;
                if asked.mode.redirect.is_some() {
                    return Err("ERR A client can only redirect to a single other client".into());
                }
                let id = req
                    .arg(i)
                    .and_then(crate::resp::request::parse_i64)
                    .ok_or("ERR value is not an integer or out of range")?;
                match u64::try_from(id) {
                    Ok(id) if exists(id) => asked.mode.redirect = Some(id),
                    _ => return Err(NO_SUCH_CLIENT.into()),
                }
            }
            b"BCAST" => asked.mode.bcast = true,
            b"OPTIN" => asked.mode.optin = true,
            b"OPTOUT" => asked.mode.optout = true,
            b"NOLOOP" => asked.mode.noloop = true,
            b"PREFIX" if i + 1 < req.argc() => {
                i += 1;
                let prefix = req.arg(i).unwrap_or_default();
                asked.mode.prefixes.push(Bytes::copy_from_slice(prefix));
            }
            _ => return Err("ERR syntax error".into()),
        }
        i += 1;
    }
    match upper(req, 2).as_slice() {
        b"ON" => asked.on = true,
        b"OFF" => {}
        _ => return Err("ERR syntax error".into()),
    }
    Ok(asked)
}

/// Redis's checks of `CLIENT TRACKING ON`, in its order, against what the
/// client tracks now.
fn check(asked: &Mode, now: Option<&Mode>) -> Result<(), String> {
    if !asked.bcast && !asked.prefixes.is_empty() {
        return Err("ERR PREFIX option requires BCAST mode to be enabled".into());
    }
    if now.is_some_and(|now| now.bcast != asked.bcast) {
        return Err("ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.".into());
    }
    if asked.bcast && (asked.optin || asked.optout) {
        return Err("ERR OPTIN and OPTOUT are not compatible with BCAST".into());
    }
    if asked.optin && asked.optout {
        return Err("ERR You can't specify both OPTIN mode and OPTOUT mode".into());
    }
    if now.is_some_and(|now| (asked.optin && now.optout) || (asked.optout && now.optin)) {
        return Err("ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.".into());
    }
    if !asked.bcast {
        return Ok(());
    }
    let text = String::from_utf8_lossy;
    for (i, prefix) in asked.prefixes.iter().enumerate() {
        let overlap = |a: &[u8], b: &[u8]| a.starts_with(b) || b.starts_with(a);
        let existing = now.map_or(&[][..], |now| &now.prefixes[..]);
        if let Some(old) = existing.iter().find(|old| overlap(old, prefix)) {
            return Err(format!("ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.", text(prefix), text(old)));
        }
        if let Some(other) = asked.prefixes[i + 1..].iter().find(|o| overlap(prefix, o)) {
            return Err(format!("ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.", text(prefix), text(other)));
        }
    }
    Ok(())
}

impl Tracking {
    /// Handles `CLIENT TRACKING ...` for a client with tracking `now`:
    /// the tracking it has afterwards, and the answer.
    pub(super) async fn command(
        now: Option<Box<Tracking>>,
        req: &Request,
        ctx: &crate::context::Context,
        session: Session,
    ) -> (Option<Box<Tracking>>, Value) {
        if req.argc() < 3 {
            return (now, Value::wrong_args("client|tracking"));
        }
        let asked = match parse(req, |id| ctx.registry.get(id).is_some()) {
            Ok(asked) => asked,
            Err(error) => return (now, Value::err(error)),
        };
        if !asked.on {
            return (None, Value::ok());
        }
        if let Err(error) = check(&asked.mode, now.as_ref().map(|t| &t.mode)) {
            return (now, Value::err(error));
        }
        // As Redis: the options are replaced, the prefixes added to.
        let mut mode = asked.mode;
        let mut prefixes = now
            .as_ref()
            .map_or_else(Vec::new, |t| t.mode.prefixes.clone());
        let added = match (mode.bcast, mode.prefixes.is_empty()) {
            (true, true) => vec![Bytes::new()],
            _ => std::mem::take(&mut mode.prefixes),
        };
        let grew = added.iter().any(|p| !prefixes.contains(p));
        prefixes.extend(
            added
                .into_iter()
                .filter(|p| !prefixes.contains(p))
                .collect::<Vec<_>>(),
        );
        prefixes.sort();
        mode.prefixes = prefixes;
        let mut tracking = match now {
            // The nodes already send what this mode needs.
            Some(tracking) if !grew => tracking,
            now => {
                // The new feeds start before the old ones stop: nothing is
                // missed in between (what both report comes twice).
                let slots = ctx.slots.watch();
                let shards = ctx.shards.all_serving();
                let covered = shards.iter().map(|s| s.name().to_string()).collect();
                let feeds = match Feeds::start(shards, session, &mode).await {
                    Ok(feeds) => feeds,
                    Err(error) => return (now, Value::err(error)),
                };
                let (keys, key_bytes, overflowed) = match now {
                    Some(t) => (t.keys, t.key_bytes, t.overflowed),
                    None => Default::default(),
                };
                Box::new(Tracking {
                    mode: mode.clone(),
                    caching: None,
                    keys,
                    key_bytes,
                    overflowed,
                    broken: false,
                    covered,
                    slots,
                    shards: ctx.shards.clone(),
                    feeds,
                })
            }
        };
        tracking.mode = mode;
        tracking.caching = None;
        tracking.broken = false;
        (Some(tracking), Value::ok())
    }

    /// `CLIENT CACHING yes|no`.
    pub(super) fn caching(tracking: Option<&mut Tracking>, req: &Request) -> Value {
        if req.argc() != 3 {
            return Value::wrong_args("client|caching");
        }
        let Some(tracking) = tracking.filter(|t| t.mode.optin || t.mode.optout) else {
            return Value::err("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled");
        };
        match upper(req, 2).as_slice() {
            b"YES" if tracking.mode.optin => tracking.caching = Some(true),
            b"YES" => {
                return Value::err(
                    "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
                )
            }
            b"NO" if tracking.mode.optout => tracking.caching = Some(false),
            b"NO" => {
                return Value::err(
                    "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
                )
            }
            _ => return Value::err("ERR syntax error"),
        }
        Value::ok()
    }

    /// `CLIENT GETREDIR`: -1 without tracking, else the target (0: none).
    pub(super) fn getredir(tracking: Option<&Tracking>) -> Value {
        Value::Int(redirect_id(tracking))
    }

    /// Where the invalidations go instead, if elsewhere.
    pub(super) fn redirect(&self) -> Option<u64> {
        self.mode.redirect
    }

    /// The redirect target is gone: what the client is told, the first
    /// time.
    pub(super) fn redirect_broken(&mut self) -> Option<Bytes> {
        if std::mem::replace(&mut self.broken, true) {
            return None;
        }
        let id = self.mode.redirect.unwrap_or_default();
        let push = Value::Push(vec![
            Value::Bulk(Bytes::from_static(b"tracking-redir-broken")),
            Value::Int(i64::try_from(id).unwrap_or(i64::MAX)),
        ]);
        Some(push.encode(Proto::Resp3))
    }

    /// `CLIENT TRACKINGINFO`, encoded as Redis encodes it (its flags are
    /// a set in RESP3).
    pub(super) fn info(tracking: Option<&Tracking>, proto: Proto) -> Bytes {
        let mut flags: Vec<&str> = Vec::new();
        let mut prefixes: &[Bytes] = &[];
        match tracking {
            None => flags.push("off"),
            Some(t) => {
                let m = &t.mode;
                flags.push("on");
                let named = [
                    (m.bcast, "bcast"),
                    (m.optin, "optin"),
                    (m.optout, "optout"),
                    (t.caching == Some(true), "caching-yes"),
                    (t.caching == Some(false), "caching-no"),
                    (m.noloop, "noloop"),
                    (t.broken, "broken_redirect"),
                ];
                flags.extend(named.iter().filter(|(on, _)| *on).map(|(_, name)| *name));
                prefixes = &m.prefixes;
            }
        }
        let resp3 = proto == Proto::Resp3;
        let mut out = BytesMut::new();
        let bulk = |out: &mut BytesMut, s: &[u8]| {
            out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
            out.extend_from_slice(s);
            out.extend_from_slice(b"\r\n");
        };
        out.extend_from_slice(if resp3 { b"%3\r\n" } else { b"*6\r\n" });
        bulk(&mut out, b"flags");
        let set = if resp3 { '~' } else { '*' };
        out.extend_from_slice(format!("{set}{}\r\n", flags.len()).as_bytes());
        for flag in flags {
            bulk(&mut out, flag.as_bytes());
        }
        bulk(&mut out, b"redirect");
        out.extend_from_slice(format!(":{}\r\n", redirect_id(tracking)).as_bytes());
        bulk(&mut out, b"prefixes");
        out.extend_from_slice(format!("*{}\r\n", prefixes.len()).as_bytes());
        for prefix in prefixes {
            bulk(&mut out, prefix);
        }
        out.freeze()
    }

    /// The client ran `req` (of class `read`): its keys are remembered
    /// as Redis remembers them. `CLIENT CACHING`'s word lasts until a
    /// command other than `CLIENT ...` ran outside a transaction.
    pub(super) fn ran(&mut self, req: &Request, read: bool, in_multi: bool) {
        let wanted = match (self.mode.optin, self.mode.optout) {
            (true, _) => self.caching == Some(true),
            (_, true) => self.caching != Some(false),
            _ => true,
        };
        if read && wanted && !self.mode.bcast && !self.overflowed {
            for key in crate::resp::keyspecs::keys(req).unwrap_or_default() {
                if self.keys.len() >= MAX_KEYS || self.key_bytes + key.len() > MAX_KEY_BYTES {
                    self.overflowed = true;
                    self.keys = HashSet::new();
                    break;
                }
                if self.keys.insert(Bytes::copy_from_slice(key)) {
                    self.key_bytes += key.len();
                }
            }
        }
        if !in_multi && req.name().as_bytes() != b"CLIENT" {
            self.caching = None;
        }
    }

    /// The next invalidation the client is to hear, encoded; `None` once a
    /// feed has ended. Never resolves without tracking.
    pub(super) async fn next(tracking: Option<&mut Box<Tracking>>) -> Option<Bytes> {
        let Some(tracking) = tracking else {
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                message = tracking.feeds.messages.recv() => {
                    if let Some(message) = tracking.filter(message??) {
                        return Some(message);
                    }
                }
                changed = tracking.slots.changed() => {
                    if changed.is_err() || !tracking.covers_every_shard() {
                        return None;
                    }
                }
            }
        }
    }

    fn covers_every_shard(&self) -> bool {
        let serving = self.shards.all_serving();
        serving
            .iter()
            .all(|s| self.covered.iter().any(|c| c == s.name()))
    }

    /// What the client hears of one invalidation: all of it in `BCAST`
    /// mode or for a flush, else the keys it read.
    fn filter(&self, message: Bytes) -> Option<Bytes> {
        if self.mode.bcast || self.overflowed {
            return Some(message);
        }
        let Some(keys) = invalidated(&message) else {
            return Some(message);
        };
        let told: Vec<Bytes> = keys.into_iter().filter(|k| self.keys.contains(k)).collect();
        (!told.is_empty()).then(|| invalidation(&told))
    }
}

/// A script or function: Redis tracks its declared keys when it read
/// anything, which only the node knows; Rampart tracks them always (one
/// message too many at worst, never a stale value).
pub(super) fn is_script(req: &Request) -> bool {
    let name = req.name();
    let scripts: [&[u8]; 6] = [
        b"EVAL",
        b"EVALSHA",
        b"EVAL_RO",
        b"EVALSHA_RO",
        b"FCALL",
        b"FCALL_RO",
    ];
    scripts.contains(&name.as_bytes())
}

/// `GETREDIR`'s number: -1 without tracking, 0 without a redirect.
fn redirect_id(tracking: Option<&Tracking>) -> i64 {
    match tracking {
        None => -1,
        Some(t) => t
            .mode
            .redirect
            .map_or(0, |id| i64::try_from(id).unwrap_or(i64::MAX)),
    }
}

/// The next invalidation another client's tracking redirected here;
/// `None` once some were lost (the client is then disconnected).
pub(super) async fn inbox(
    inbox: Option<&mut mpsc::Receiver<Bytes>>,
    entry: &super::registry::Entry,
) -> Option<Bytes> {
    let message = inbox?.recv().await;
    message.filter(|_| !entry.lost_invalidations())
}

/// A redirected invalidation as a piped client receives it: a push in
/// RESP3, a `__redis__:invalidate` message to a RESP2 subscriber, nothing
/// otherwise (as Redis).
pub(super) fn for_pipe(message: Bytes, session: &super::session::Session) -> Bytes {
    const HEADER: &[u8] = b">2\r\n$10\r\ninvalidate\r\n";
    match (session.proto, session.pubsub) {
        (Proto::Resp3, _) => message,
        (_, true) if message.starts_with(HEADER) => {
            let keys = &message[HEADER.len()..];
            let keys: &[u8] = if keys == b"_\r\n" { b"$-1\r\n" } else { keys };
            let mut out =
                BytesMut::from(&b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n"[..]);
            out.extend_from_slice(keys);
            out.freeze()
        }
        _ => Bytes::new(),
    }
}

/// The keys an invalidation names; `None` for a flush (every key).
fn invalidated(message: &[u8]) -> Option<Vec<Bytes>> {
    let decoded = redis_protocol::resp3::decode::complete::decode(message);
    let Ok(Some((OwnedFrame::Push { data, .. }, _))) = decoded else {
        return None;
    };
    match data.get(1) {
        Some(OwnedFrame::Array { data, .. }) => Some(
            data.iter()
                .filter_map(|k| match k {
                    OwnedFrame::BlobString { data, .. } => Some(Bytes::from(data.clone())),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// An invalidation of `keys`, as Redis sends it.
fn invalidation(keys: &[Bytes]) -> Bytes {
    let keys = keys.iter().map(|k| Value::Bulk(k.clone())).collect();
    let push = Value::Push(vec![
        Value::Bulk(Bytes::from_static(b"invalidate")),
        Value::Array(keys),
    ]);
    push.encode(Proto::Resp3)
}

/// One feed per shard, merged.
struct Feeds {
    messages: mpsc::Receiver<Option<Bytes>>,
    /// Dropped with the client (or its tracking): the feeds end with it.
    _tasks: tokio::task::JoinSet<()>,
}

impl Feeds {
    /// Starts a feed on every shard's primary; the first refusal (or a
    /// primary that cannot be reached) is the error, and none is kept.
    async fn start(
        shards: Vec<Arc<Shard>>,
        session: Session,
        mode: &Mode,
    ) -> Result<Feeds, String> {
        // RESP3 whatever the client speaks: a node pushes invalidations to
        // a RESP3 connection only (a RESP2 client's are encoded for it or
        // its redirect target here).
        let session = Session {
            proto: Proto::Resp3,
            ..session
        };
        let (tx, messages) = mpsc::channel(FEED_QUEUE);
        let mut tasks = tokio::task::JoinSet::new();
        let mut starting = Vec::with_capacity(shards.len());
        let command = feed_command(mode);
        for shard in shards {
            let (tx, session, command) = (tx.clone(), session.clone(), command.clone());
            let (started, started_rx) = oneshot::channel();
            starting.push(started_rx);
            tasks.spawn(async move {
                feed(&shard, session, &command, &tx, started).await;
                let _ = tx.send(None).await;
            });
        }
        for started in starting {
            match tokio::time::timeout(START_WITHIN, started).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => return Err(error),
                _ => {
                    return Err(
                        "ERR rampart: a shard's primary did not start tracking in time".into(),
                    )
                }
            }
        }
        Ok(Feeds {
            messages,
            _tasks: tasks,
        })
    }
}

/// What a feed asks its node for: every invalidation in the client's
/// prefixes (every key outside `BCAST` mode).
fn feed_command(mode: &Mode) -> Bytes {
    let mut args = vec![
        Bytes::from_static(b"CLIENT"),
        Bytes::from_static(b"TRACKING"),
        Bytes::from_static(b"ON"),
        Bytes::from_static(b"BCAST"),
    ];
    // `""` among the prefixes (`BCAST` without `PREFIX`) is every key.
    if mode.bcast && !mode.prefixes.iter().any(|p| p.is_empty()) {
        for prefix in &mode.prefixes {
            args.push(Bytes::from_static(b"PREFIX"));
            args.push(prefix.clone());
        }
    }
    Request::from_args(&args).raw
}

/// One shard's feed, until its primary changes, its connection breaks or
/// the client's tracking ends.
async fn feed(
    shard: &Shard,
    session: Session,
    command: &[u8],
    tx: &mpsc::Sender<Option<Bytes>>,
    started: oneshot::Sender<Result<(), String>>,
) {
    let topology = &shard.topology;
    let mut changed = topology.watch();
    let Some(primary) = topology.primary_node().cloned() else {
        let _ = started.send(Err(format!(
            "ERR rampart: shard '{}' has no primary",
            shard.name()
        )));
        return;
    };
    let unavailable =
        |e: std::io::Error| format!("ERR rampart: {} unavailable ({e})", primary.addr);
    let (mut rd, mut wr) = match primary.pool.raw(session).await {
        Ok((stream, _)) => stream.into_split(),
        Err(e) => {
            let _ = started.send(Err(unavailable(e)));
            return;
        }
    };
    if let Err(e) = wr.write_all(command).await {
        let _ = started.send(Err(unavailable(e)));
        return;
    }
    let mut started = Some(started);
    let mut buf = BytesMut::with_capacity(4096);
    let mut scanner = ReplyScanner::new(DEPTH);
    loop {
        while let Ok(Some(len)) = scanner.scan(&buf) {
            let frame = buf.split_to(len).freeze();
            match started.take() {
                // The answer to the feed's own command.
                Some(started) => {
                    let answer = match frame.first() {
                        Some(b'+') => Ok(()),
                        _ => Err(String::from_utf8_lossy(
                            frame.get(1..len.saturating_sub(2)).unwrap_or_default(),
                        )
                        .into_owned()),
                    };
                    let refused = answer.is_err();
                    let _ = started.send(answer);
                    if refused {
                        return;
                    }
                }
                None if frame.first() == Some(&b'>') => {
                    if tx.send(Some(frame)).await.is_err() {
                        return;
                    }
                }
                None => return,
            }
        }
        if buf.len() > 64 * 1024 * 1024 {
            return;
        }
        tokio::select! {
            change = changed.changed() => {
                let same = topology.primary_node().is_some_and(|p| std::sync::Arc::ptr_eq(p, &primary));
                if change.is_err() || !same {
                    return;
                }
            }
            read = rd.read_buf(&mut buf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> Request {
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.to_string())).collect();
        Request::from_args(&args)
    }

    #[test]
    fn checks_follow_redis_order_and_wording() {
        let on = |args: &[&str]| parse(&req(args), |id| id == 5).map(|a| a.mode);
        let bcast_a = on(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "a"]).unwrap();
        let plain = on(&["CLIENT", "TRACKING", "on", "optin"]).unwrap();
        let optout = on(&["CLIENT", "TRACKING", "on", "optout"]).unwrap();
        assert!(check(&optout, Some(&plain))
            .unwrap_err()
            .contains("OPTIN/OPTOUT mode"));
        assert!(check(&bcast_a, Some(&plain))
            .unwrap_err()
            .contains("switch BCAST"));
        let ab = on(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "ab"]).unwrap();
        assert_eq!(
            check(&ab, Some(&bcast_a)).unwrap_err(),
            "ERR Prefix 'ab' overlaps with an existing prefix 'a'. Prefixes for a single client must not overlap."
        );
        let both = on(&[
            "CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "a", "PREFIX", "ab",
        ])
        .unwrap();
        assert!(check(&both, None)
            .unwrap_err()
            .contains("another provided prefix 'ab'"));
        assert!(on(&["CLIENT", "TRACKING", "ON", "PREFIX"]).is_err());
        assert_eq!(
            on(&["CLIENT", "TRACKING", "ON", "REDIRECT", "5"])
                .unwrap()
                .redirect,
            Some(5)
        );
        assert_eq!(
            on(&["CLIENT", "TRACKING", "ON", "REDIRECT", "6"]).unwrap_err(),
            NO_SUCH_CLIENT
        );
        let twice = on(&["CLIENT", "TRACKING", "ON", "REDIRECT", "5", "REDIRECT", "5"]);
        assert!(twice.unwrap_err().contains("single other client"));
    }

    #[test]
    fn an_invalidation_is_cut_to_the_keys_read() {
        let message = invalidation(&[Bytes::from("a"), Bytes::from("b")]);
        assert_eq!(
            &message[..],
            b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
        assert_eq!(
            invalidated(&message).unwrap(),
            [Bytes::from("a"), Bytes::from("b")]
        );
        assert!(invalidated(b">2\r\n$10\r\ninvalidate\r\n_\r\n").is_none());
    }
}
