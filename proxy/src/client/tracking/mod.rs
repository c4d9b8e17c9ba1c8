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
//!   reported on every change (up to 10,000 keys, or 1 MiB of them, per
//!   client; past that, every key is).
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

mod feed;
mod options;
mod target;

pub(super) use target::{for_pipe, inbox};

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::Session;
use crate::resp::{Proto, Request, Value};
use feed::{invalidated, invalidation, Feeds};
use options::{check, parse, Mode};

/// Keys remembered per client, and their bytes; past either, every
/// invalidation is passed on.
const MAX_KEYS: usize = 10_000;
const MAX_KEY_BYTES: usize = 1024 * 1024;

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
        let mode = tracking.as_deref().map(|t| &t.mode);
        match (options::caching(mode, req), tracking) {
            (Ok(word), Some(tracking)) => {
                tracking.caching = Some(word);
                Value::ok()
            }
            (Err(error), _) => error,
            (Ok(_), None) => Value::ok(),
        }
    }

    /// `CLIENT TRACKINGINFO`, encoded.
    pub(super) fn info(tracking: Option<&Tracking>, proto: Proto) -> Bytes {
        let info = options::Info {
            mode: tracking.map(|t| &t.mode),
            caching: tracking.and_then(|t| t.caching),
            broken: tracking.is_some_and(|t| t.broken),
            redirect: redirect_id(tracking),
        };
        options::info(info, proto)
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
