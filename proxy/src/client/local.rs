//! Commands Rampart answers itself: connection-level commands whose effect
//! belongs to the client's connection to Rampart, not to any backend
//! connection (PING, HELLO, AUTH, CLIENT SETNAME ...), and the `RAMPART`
//! admin namespace. Error texts are Redis's own.

use std::sync::Arc;

use bytes::Bytes;

use super::connection::{Connection, Flow};
use super::session::{check_client_name, printable};
use super::writer::Pending;
use crate::backend::Link;
use crate::observe::throttled::Throttled;
use crate::resp::command::Local;
use crate::resp::request::parse_i64;
use crate::resp::{Request, Value};
use crate::topology::Node;

impl Connection {
    pub(super) async fn local(&mut self, local: Local, req: Request) -> Flow {
        let in_multi = self.session.in_multi;
        let args = &req.args();
        match local {
            // Inside a transaction these are queued by the server like any
            // other command and answered in EXEC's reply.
            Local::Ping
            | Local::Echo
            | Local::ClientSetName
            | Local::ClientGetName
            | Local::ClientSetInfo
                if in_multi =>
            {
                self.pinned(req).await
            }
            Local::KillScript
            | Local::Client
            | Local::AclChange
            | Local::SlowlogGet
            | Local::Info
            | Local::Pause
                if in_multi =>
            {
                self.pinned(req).await
            }
            Local::AclChange => self.acl_change(req).await,
            Local::SlowlogGet => self.slowlog_get(req).await,
            Local::Pause => {
                let reply = self.pause(&req).await;
                self.reply(reply).await
            }
            Local::Info => self.info(req).await,
            Local::Client => self.client_command(req).await,
            Local::KillScript => {
                let reply = self.kill_script(&req).await;
                self.reply(reply).await
            }
            Local::Hello | Local::Auth | Local::Select if in_multi => {
                self.reply(Value::err(crate::resp::command::NOT_IN_MULTI))
                    .await
            }
            // A node running a long script answers PING with -BUSY: while
            // the probe sees the primary busy, its own answer is passed on,
            // so clients see why nothing runs (and when it is over).
            Local::Ping if self.primary_busy() => {
                let reply = self.ping_primary(&req).await;
                self.reply(reply).await
            }
            Local::Ping => match args.len() {
                1 => self.reply(Value::Simple("PONG".into())).await,
                2 => self.reply(Value::Bulk(args[1].clone())).await,
                _ => self.reply(Value::wrong_args("ping")).await,
            },
            Local::Echo => match args.len() {
                2 => self.reply(Value::Bulk(args[1].clone())).await,
                _ => self.reply(Value::wrong_args("echo")).await,
            },
            Local::Quit => {
                self.reply(Value::ok()).await;
                Flow::Stop
            }
            Local::Auth => {
                let reply = match args.len() {
                    2 => self.authenticate(None, &args[1]).await,
                    3 => self.authenticate(Some(&args[1]), &args[2]).await,
                    _ => Some(Value::wrong_args("auth")),
                };
                match reply {
                    Some(reply) => self.reply(reply).await,
                    None => Flow::Stop,
                }
            }
            Local::Hello => self.hello(req).await,
            Local::Select => self.select(req).await,
            Local::Reset => self.reset().await,
            Local::ClientSetName => {
                if args.len() != 3 {
                    return self.reply(Value::wrong_args("client|setname")).await;
                }
                let name = &args[2];
                if let Err(e) = check_client_name(name) {
                    return self.reply(e).await;
                }
                self.session.name = (!name.is_empty()).then(|| name.clone());
                self.reply(Value::ok()).await
            }
            Local::ClientGetName => {
                let name = self.session.name.clone().map_or(Value::Null, Value::Bulk);
                self.reply(name).await
            }
            Local::ClientId => self.reply(Value::Int(self.session.id as i64)).await,
            // Redis 7.2's command (7.0 has none; clients send it on every
            // connection and ignore the error), with 7.2's checks.
            Local::ClientSetInfo => match args.len() {
                4 => {
                    let attr = String::from_utf8_lossy(&args[2]).into_owned();
                    let known = ["lib-name", "lib-ver"]
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(&attr));
                    let reply = if !known {
                        Value::err(format!("ERR Unrecognized option '{attr}'"))
                    } else if !printable(&args[3]) {
                        Value::err(format!(
                            "ERR {attr} cannot contain spaces, newlines or special characters."
                        ))
                    } else {
                        Value::ok()
                    };
                    self.reply(reply).await
                }
                _ => self.reply(Value::wrong_args("client|setinfo")).await,
            },
            Local::KeySlot => match args.len() {
                3 => {
                    let slot = crate::shard::slots::slot(&args[2]);
                    self.reply(Value::Int(i64::from(slot))).await
                }
                _ => self.reply(Value::wrong_args("cluster|keyslot")).await,
            },
            Local::Unsubscribe => {
                // Not subscribed (a subscribed client is piped and never gets
                // here): one confirmation per channel, count 0.
                let kind = Bytes::from(req.name().as_str().to_lowercase());
                let channels: Vec<Value> = if args.len() > 1 {
                    args[1..].iter().cloned().map(Value::Bulk).collect()
                } else {
                    vec![Value::Null]
                };
                if self.flush().await == Flow::Stop {
                    return Flow::Stop;
                }
                let mut out = bytes::BytesMut::new();
                for channel in channels {
                    Value::Push(vec![Value::Bulk(kind.clone()), channel, Value::Int(0)])
                        .encode_into(self.session.proto, &mut out);
                }
                self.push(Pending::Local(out.freeze()))
            }
            Local::Rampart if req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"AUTH") => {
                let reply = self.admin_auth(&req);
                self.reply(reply).await
            }
            Local::Rampart if self.rampart_change_refused(&req) => {
                let reply = self.admin_refusal();
                self.reply(reply).await
            }
            Local::Rampart
                if req
                    .arg_upper(1)
                    .is_some_and(|s| s.as_bytes() == b"SWITCHOVER") =>
            {
                self.switchover(&req).await
            }
            Local::Rampart if req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"POLICY") => {
                let reply = self.policy(&req).await;
                self.reply(reply).await
            }
            Local::CrossProtocol => self.cross_protocol().await,
            Local::Rampart => {
                let reply = self.rampart(&req);
                self.reply(reply).await
            }
        }
    }

    /// `ACL SETUSER | DELUSER`: the primary decides, with the client's own
    /// rights; what it accepted is then applied to every other node, so
    /// the user still exists after a failover.
    pub(super) async fn acl_change(&mut self, req: Request) -> Flow {
        let (node, link) = match self.primary_link().await {
            Ok(pair) => pair,
            Err(error) => return self.reply(error).await,
        };
        let reply = match self.call(&node, &link, vec![req.raw.clone()], "ACL").await {
            Ok(reply) => reply,
            Err(error) => return self.reply(error).await,
        };
        if !reply.starts_with(b"-") {
            let args = req.args();
            // Every node of every shard: ACLs are not replicated.
            let others: Vec<_> = self
                .ctx
                .topology
                .nodes()
                .map(|(_, n)| n)
                .filter(|n| n.id != node.id)
                .cloned()
                .collect();
            for other in others {
                let args = args.clone();
                tokio::spawn(async move {
                    use redis_protocol::resp3::types::OwnedFrame;
                    let result = match other.pool.control().await {
                        Ok(mut control) => {
                            control.call(&args, std::time::Duration::from_secs(2)).await
                        }
                        Err(e) => Err(e),
                    };
                    let failed = match result {
                        Ok(OwnedFrame::SimpleError { data, .. }) => Some(data),
                        Ok(_) => None,
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(error) = failed {
                        tracing::warn!(node = %other.addr, %error, "ACL change not applied on this node; define the user there by hand");
                    }
                });
            }
        }
        self.push(Pending::Local(reply))
    }

    /// The connection to the primary a command Rampart inspects runs on:
    /// the client's dedicated one when it has state there (an ACL user, a
    /// database), a shared link otherwise.
    pub(super) async fn primary_link(&mut self) -> Result<(Arc<Node>, Link), Value> {
        if !self.session.is_clean() || self.session.pinned.is_some() {
            self.pin().await?;
            return self.session.pinned.clone().ok_or_else(|| self.no_primary());
        }
        if !self.await_primary().await {
            return Err(self.no_primary());
        }
        let Some(primary) = self.shard.topology.primary().cloned() else {
            return Err(self.no_primary());
        };
        let link = primary
            .pool
            .shared(self.session.proto, self.session.id)
            .clone();
        Ok((primary, link))
    }

    /// `INFO [section ...]` from the primary, with `connected_clients` as
    /// Rampart's clients (a client counting its peers must not see
    /// Rampart's own connections to the node).
    pub(super) async fn info(&mut self, req: Request) -> Flow {
        let (node, link) = match self.primary_link().await {
            Ok(pair) => pair,
            Err(error) => return self.reply(error).await,
        };
        let reply = match self.call(&node, &link, vec![req.raw], "INFO").await {
            Ok(reply) => reply,
            Err(error) => return self.reply(error).await,
        };
        let text = match super::undo::decode(&reply, self.session.proto) {
            Some(super::undo::Plain::Text(text)) => text,
            _ => return self.push(Pending::Local(reply)),
        };
        let text = String::from_utf8_lossy(&text);
        let text = text.strip_prefix("txt:").unwrap_or(&text);
        let clients = self.ctx.registry.len();
        let text = self.with_every_shards_counts(text).await;
        let patched: String = text
            .split_inclusive('\n')
            .map(|line| match line.strip_prefix("connected_clients:") {
                Some(_) => format!("connected_clients:{clients}\r\n"),
                None => line.to_string(),
            })
            .collect();
        self.reply(Value::Verbatim(Bytes::from(patched))).await
    }

    /// With several shards, the sections of one shard's INFO that count
    /// the data set and the commands (`Stats`, `Keyspace`, `Errorstats`,
    /// `Commandstats`) made those of every shard (each primary asked).
    pub(super) async fn with_every_shards_counts(&self, text: &str) -> String {
        use crate::backend::control::frame_text;
        use crate::shard::info::SUMMED;
        let summed = SUMMED.iter().any(|s| text.contains(&format!("# {s}")));
        if self.ctx.shards.len() < 2 || !summed {
            return text.to_string();
        }
        let mut sections = Vec::new();
        for shard in &self.ctx.shards {
            let Some(primary) = shard.topology.primary() else {
                continue;
            };
            let timeout = std::time::Duration::from_secs(1);
            let ask = ["INFO", "stats", "keyspace", "errorstats", "commandstats"];
            let answer = primary.pool.call_once(&ask, timeout).await;
            if let Some(section) = answer.ok().as_ref().and_then(frame_text) {
                sections.push(section);
            }
        }
        crate::shard::info::with_sums(text, &sections)
    }

    /// `CLIENT PAUSE <ms> WRITE` and `CLIENT UNPAUSE`, run on the primary at
    /// once (another client's paused write may hold the shared connection).
    /// Pausing everything would stop Rampart's probes and every connection
    /// other clients share: only WRITE is allowed.
    pub(super) async fn pause(&mut self, req: &Request) -> Value {
        use redis_protocol::resp3::types::OwnedFrame;
        let unpause = req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"UNPAUSE");
        let duration = if unpause {
            None
        } else {
            let write = req.arg_upper(3).is_some_and(|m| m.as_bytes() == b"WRITE");
            if (req.argc() == 4 && !write) || req.argc() == 3 {
                return Value::err(
                    "ERR rampart: CLIENT PAUSE ALL would stop Rampart's probes and every connection clients share; CLIENT PAUSE <ms> WRITE pauses writes",
                );
            }
            req.arg(2)
                .and_then(parse_i64)
                .map(|ms| std::time::Duration::from_millis(ms.max(0) as u64))
        };
        // Every shard's primary: the client pauses one big Redis.
        for shard in self.ctx.shards.clone() {
            let Some(primary) = shard.topology.primary().cloned() else {
                return Value::err(format!(
                    "ERR rampart: no reachable primary for shard '{}'",
                    shard.name()
                ));
            };
            let timeout = std::time::Duration::from_secs(2);
            let answer = primary.pool.call_once(&req.args(), timeout).await;
            let error = match answer {
                Ok(OwnedFrame::SimpleString { .. }) => {
                    primary.pool.stats().pause_for(duration);
                    continue;
                }
                Ok(OwnedFrame::SimpleError { data, .. }) => Value::err(data),
                Ok(other) => Value::err(format!("ERR rampart: unexpected reply {other:?}")),
                Err(e) => Value::err(format!("ERR rampart: {} unavailable ({e})", primary.addr)),
            };
            return error;
        }
        Value::ok()
    }

    /// Whether the primary's probe last found it busy.
    pub(super) fn primary_busy(&self) -> bool {
        let shard = &self.shard.topology;
        shard.primary().is_some_and(|p| p.pool.stats().is_busy())
    }

    /// PING sent to the primary on a connection of its own (its shared one
    /// may wait behind the script).
    pub(super) async fn ping_primary(&self, req: &Request) -> Value {
        use redis_protocol::resp3::types::OwnedFrame;
        let Some(primary) = self.shard.topology.primary().cloned() else {
            return self.no_primary();
        };
        let timeout = std::time::Duration::from_secs(1);
        let answer = primary.pool.call_once(&req.args(), timeout).await;
        match answer {
            Ok(OwnedFrame::SimpleError { data, .. }) => Value::err(data),
            Ok(OwnedFrame::SimpleString { data, .. }) => {
                Value::Simple(String::from_utf8_lossy(&data).into_owned())
            }
            Ok(OwnedFrame::BlobString { data, .. }) => Value::Bulk(data.into()),
            _ => match req.arg(1) {
                Some(message) => Value::Bulk(Bytes::copy_from_slice(message)),
                None => Value::Simple("PONG".into()),
            },
        }
    }

    /// `SCRIPT KILL` / `FUNCTION KILL`, sent to every node of every shard on
    /// connections of their own (the script may be a read-only one on a
    /// replica, and the client's shared connection waits behind it). One
    /// node killing it answers OK; otherwise `UNKILLABLE` wins over
    /// `NOTBUSY`, as that is what the client needs to know.
    pub(super) async fn kill_script(&mut self, req: &Request) -> Value {
        let args = req.args();
        let mut calls = tokio::task::JoinSet::new();
        for (_, node) in self.ctx.topology.nodes() {
            let node = node.clone();
            let args = args.clone();
            calls.spawn(async move {
                let mut control = node.pool.control().await.ok()?;
                control
                    .call(&args, std::time::Duration::from_secs(2))
                    .await
                    .ok()
            });
        }
        // What says most about the script: it cannot be killed, or it is
        // of the other kind (a function for SCRIPT KILL), or none runs.
        let rank = |e: &str| match e.split(' ').next() {
            Some("UNKILLABLE") => 3,
            Some("BUSY") => 2,
            _ => 1,
        };
        let mut best: Option<String> = None;
        while let Some(done) = calls.join_next().await {
            let Ok(Some(frame)) = done else { continue };
            use redis_protocol::resp3::types::OwnedFrame;
            match frame {
                OwnedFrame::SimpleString { .. } => return Value::ok(),
                OwnedFrame::SimpleError { data, .. }
                    if best.as_deref().is_none_or(|b| rank(&data) > rank(b)) =>
                {
                    best = Some(data);
                }
                _ => {}
            }
        }
        best.map_or_else(
            || Value::err("ERR rampart: no node answered SCRIPT KILL"),
            Value::err,
        )
    }

    /// `POST` / `Host:` as a command: what Redis does, word for word in
    /// the log (at most once a second), and the connection closed with no
    /// reply. Nothing of it reaches a node.
    pub(super) async fn cross_protocol(&mut self) -> Flow {
        static LOG: Throttled = Throttled::every(1);
        if let Some(quiet) = LOG.due() {
            tracing::warn!(
                client = %self.registration.entry.addr,
                not_logged = quiet,
                "Possible SECURITY ATTACK detected. It looks like somebody is sending POST or Host: commands to Redis. This is likely due to an attacker attempting to use Cross Protocol Scripting to compromise your Redis instance. Connection aborted."
            );
        }
        Flow::Stop
    }

    /// `SELECT n`: the database lives on the client's dedicated connection,
    /// so it is switched there and the server's own answer decides.
    pub(super) async fn select(&mut self, req: Request) -> Flow {
        if req.argc() != 2 {
            return self.reply(Value::wrong_args("select")).await;
        }
        let Some(db) = req.arg(1).and_then(parse_i64) else {
            return self
                .reply(Value::err("ERR value is not an integer or out of range"))
                .await;
        };
        if db == self.session.db {
            return self.reply(Value::ok()).await;
        }
        if self.ctx.shards.len() > 1 {
            // As Redis Cluster: every shard's data is in database 0.
            return self
                .reply(Value::err("ERR SELECT is not allowed in cluster mode"))
                .await;
        }
        if self.fanout().is_some() {
            return self
                .reply(Value::err(
                    "ERR rampart: only database 0 is kept in sync in fan-out mode",
                ))
                .await;
        }
        if let Err(error) = self.pin().await {
            return self.reply(error).await;
        }
        let Some((node, link)) = self.session.pinned.clone() else {
            return Flow::Continue;
        };
        let reply = match self.call(&node, &link, vec![req.raw], "SELECT").await {
            Ok(data) => data,
            Err(error) => error.encode(self.session.proto),
        };
        if reply.starts_with(b"+") {
            self.session.db = db;
        }
        self.push(Pending::Local(reply))
    }
}
