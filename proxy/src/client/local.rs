//! Commands Rampart answers itself: connection-level commands whose effect
//! belongs to the client's connection to Rampart, not to any backend
//! connection (PING, HELLO, AUTH, CLIENT SETNAME ...), and the `RAMPART`
//! admin namespace. Error texts are Redis's own.

use std::sync::Arc;

use bytes::Bytes;

use super::connection::{Connection, Flow};
use super::session::Session;
use super::writer::Pending;
use crate::backend::{Credentials, Link};
use crate::observe::throttled::Throttled;
use crate::resp::command::Local;
use crate::resp::request::parse_i64;
use crate::resp::{Proto, Request, Value};
use crate::topology::Node;

fn wrong_args(name: &str) -> Value {
    Value::err(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_lowercase()
    ))
}

pub(super) const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

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
                _ => self.reply(wrong_args("ping")).await,
            },
            Local::Echo => match args.len() {
                2 => self.reply(Value::Bulk(args[1].clone())).await,
                _ => self.reply(wrong_args("echo")).await,
            },
            Local::Quit => {
                self.reply(Value::ok()).await;
                Flow::Stop
            }
            Local::Auth => {
                let reply = match args.len() {
                    2 => self.authenticate(None, &args[1]).await,
                    3 => self.authenticate(Some(&args[1]), &args[2]).await,
                    _ => Some(wrong_args("auth")),
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
                    return self.reply(wrong_args("client|setname")).await;
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
                _ => self.reply(wrong_args("client|setinfo")).await,
            },
            Local::KeySlot => match args.len() {
                3 => {
                    let slot = crate::shard::slots::slot(&args[2]);
                    self.reply(Value::Int(i64::from(slot))).await
                }
                _ => self.reply(wrong_args("cluster|keyslot")).await,
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
            Local::Rampart if changes_rampart(&req) && !self.may_change_rampart() => {
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

    /// `RAMPART AUTH <admin.token>`: lets this connection change Rampart
    /// (with `proxy.admin_commands` on).
    fn admin_auth(&mut self, req: &Request) -> Value {
        if req.argc() != 3 {
            return wrong_args("rampart|auth");
        }
        match &self.ctx.config.admin.token {
            Some(token) if constant_time_eq(req.arg(2).unwrap_or_default(), token.as_bytes()) => {
                self.session.admin = true;
                Value::ok()
            }
            Some(_) => Value::err("WRONGPASS invalid admin token"),
            None => Value::err("ERR rampart: no admin.token is configured"),
        }
    }

    /// Whether this connection may run the commands that change Rampart.
    fn may_change_rampart(&self) -> bool {
        self.ctx.config.proxy.admin_commands
            && (self.ctx.config.admin.token.is_none() || self.session.admin)
    }

    fn admin_refusal(&self) -> Value {
        if !self.ctx.config.proxy.admin_commands {
            Value::err("ERR rampart: commands that change Rampart are off on the client port (proxy.admin_commands); use the admin API or the rampart CLI")
        } else {
            Value::err("NOAUTH rampart: send RAMPART AUTH <admin token> first")
        }
    }

    /// `ACL SETUSER | DELUSER`: the primary decides, with the client's own
    /// rights; what it accepted is then applied to every other node, so
    /// the user still exists after a failover.
    async fn acl_change(&mut self, req: Request) -> Flow {
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
    async fn info(&mut self, req: Request) -> Flow {
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
    async fn with_every_shards_counts(&self, text: &str) -> String {
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
    async fn pause(&mut self, req: &Request) -> Value {
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
    fn primary_busy(&self) -> bool {
        let shard = &self.shard.topology;
        shard.primary().is_some_and(|p| p.pool.stats().is_busy())
    }

    /// PING sent to the primary on a connection of its own (its shared one
    /// may wait behind the script).
    async fn ping_primary(&self, req: &Request) -> Value {
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
    async fn kill_script(&mut self, req: &Request) -> Value {
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

    /// `AUTH [user] password`: Rampart's own password (`proxy.password`)
    /// when one is set and matches; otherwise the nodes' ACL users, checked
    /// by the primary itself, so its answers (`WRONGPASS`, the error for a
    /// password with none configured) are Redis's own.
    ///
    /// `None`: too many wrong passwords from this client's address; the
    /// connection is closed without an answer.
    async fn authenticate(&mut self, user: Option<&Bytes>, password: &Bytes) -> Option<Value> {
        let reply = self.check_credentials(user, password).await;
        if matches!(&reply, Value::Error(e) if e.starts_with("WRONGPASS"))
            && !self.auth_failed().await
        {
            return None;
        }
        Some(reply)
    }

    /// A wrong password: counted, logged (at most once a second for the
    /// whole process, so a flood of guesses cannot flood the log), and
    /// answered when the client's address may have its next wrong answer
    /// (see [`super::throttle`]). False: close the connection unanswered.
    async fn auth_failed(&mut self) -> bool {
        static LOG: Throttled = Throttled::every(1);
        self.session.auth_failures += 1;
        self.ctx.metrics.count_auth_failure();
        if let Some(quiet) = LOG.due() {
            tracing::warn!(
                client = %self.registration.entry.addr,
                failures = self.session.auth_failures,
                not_logged = quiet,
                "AUTH with a wrong password (logged at most once a second)"
            );
        }
        use super::throttle::Verdict;
        match self
            .ctx
            .auth_throttle
            .failed(self.registration.entry.addr.ip())
        {
            Verdict::AnswerAt(at) => {
                tokio::time::sleep_until(at.into()).await;
                true
            }
            Verdict::Close => false,
        }
    }

    /// With `proxy.password` set, Rampart's password alone guards its own
    /// user (`proxy.username`, `default` unless set) and the `default`
    /// user, however the request names them (`AUTH pass`, `AUTH default
    /// pass`, `HELLO 3 AUTH default pass`): the nodes' `default` user is
    /// usually `nopass` and would accept anything. Only other user names
    /// are the nodes' ACL users, checked by the primary.
    async fn check_credentials(&mut self, user: Option<&Bytes>, password: &Bytes) -> Value {
        let config = &self.ctx.config.proxy;
        if let Some(expected) = &config.password {
            let expected_user = config.username.as_deref().unwrap_or("default");
            let guarded =
                user.is_none_or(|u| &u[..] == expected_user.as_bytes() || &u[..] == b"default");
            if !guarded {
                return self.node_auth(user, password).await;
            }
            let user_ok = user.is_none_or(|u| &u[..] == expected_user.as_bytes());
            if user_ok && constant_time_eq(password, expected.as_bytes()) {
                self.session.authed = true;
                self.switch_user(None).await;
                return Value::ok();
            }
            return Value::err(WRONGPASS);
        }
        self.node_auth(user, password).await
    }

    async fn node_auth(&mut self, user: Option<&Bytes>, password: &Bytes) -> Value {
        if !self.await_primary().await {
            return self.no_primary();
        }
        let Some(primary) = self.shard.topology.primary().cloned() else {
            return self.no_primary();
        };
        let mut control = match primary.pool.control().await {
            Ok(control) => control,
            Err(e) => {
                return Value::err(format!(
                    "ERR rampart: cannot check credentials on {} ({e})",
                    primary.addr
                ))
            }
        };
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        args.extend(user.map(|u| &u[..]));
        args.push(password);
        let timeout = std::time::Duration::from_millis(self.ctx.config.probe.timeout_ms.max(1000));
        use redis_protocol::resp3::types::OwnedFrame;
        match control.call(&args, timeout).await {
            Ok(OwnedFrame::SimpleString { .. }) => {}
            Ok(OwnedFrame::SimpleError { data, .. }) => return Value::err(data),
            Ok(other) => {
                return Value::err(format!("ERR rampart: unexpected AUTH reply {other:?}"))
            }
            Err(e) => return Value::err(format!("ERR rampart: cannot check credentials ({e})")),
        }
        self.session.authed = true;
        let username = user.map_or_else(
            || "default".to_string(),
            |u| String::from_utf8_lossy(u).into_owned(),
        );
        let backend = &self.ctx.config.backend;
        let is_rampart = username == backend.username.as_deref().unwrap_or("default")
            && backend
                .password
                .as_deref()
                .is_none_or(|p| p.as_bytes() == &password[..]);
        let creds = (!is_rampart).then(|| {
            Arc::new(Credentials {
                username,
                password: String::from_utf8_lossy(password).into_owned(),
            })
        });
        self.switch_user(creds).await;
        Value::ok()
    }

    /// Runs the client's commands as `user` from now on: connections held
    /// for the previous user are let go.
    async fn switch_user(&mut self, user: Option<Arc<Credentials>>) {
        if self.session.user == user {
            return;
        }
        if self.session.pinned.is_some() {
            let clean = self.session.is_clean();
            self.unpin().await;
            if !clean {
                self.session.lose_pinned();
            }
        }
        let name = user.as_ref().map_or_else(
            || {
                self.ctx
                    .config
                    .backend
                    .username
                    .clone()
                    .unwrap_or_else(|| "default".into())
            },
            |u| u.username.clone(),
        );
        self.registration.entry.publish(|snap| snap.user = name);
        self.session.user = user;
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    async fn hello(&mut self, req: Request) -> Flow {
        let args = &req.args();
        let mut proto = self.session.proto;
        if let Some(version) = args.get(1) {
            proto = match parse_i64(version) {
                Some(2) => Proto::Resp2,
                Some(3) => Proto::Resp3,
                Some(_) => {
                    return self
                        .reply(Value::err("NOPROTO unsupported protocol version"))
                        .await
                }
                None => {
                    return self
                        .reply(Value::err(
                            "ERR Protocol version is not an integer or out of range",
                        ))
                        .await
                }
            };
        }
        let mut i = 2;
        let mut name = None;
        while i < args.len() {
            let option = crate::resp::request::CommandName::new(&args[i]);
            match option.as_bytes() {
                b"AUTH" if i + 2 < args.len() => {
                    let Some(reply) = self
                        .authenticate(Some(&args[i + 1].clone()), &args[i + 2].clone())
                        .await
                    else {
                        return Flow::Stop;
                    };
                    if matches!(reply, Value::Error(_)) {
                        return self.reply(reply).await;
                    }
                    i += 3;
                }
                b"SETNAME" if i + 1 < args.len() => {
                    name = Some(args[i + 1].clone());
                    i += 2;
                }
                _ => {
                    return self
                        .reply(Value::err(format!(
                            "ERR Syntax error in HELLO option '{}'",
                            String::from_utf8_lossy(&args[i])
                        )))
                        .await
                }
            }
        }
        if !self.session.authed {
            return self
                .reply(Value::err(
                    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                ))
                .await;
        }
        if let Some(name) = name {
            // Checked once authenticated and before the protocol changes,
            // as Redis does.
            if let Err(e) = check_client_name(&name) {
                return self.reply(e).await;
            }
            self.session.name = (!name.is_empty()).then_some(name);
        }
        if proto != self.session.proto {
            // Dedicated connections speak the old protocol: let go of ours.
            if self.session.pinned.is_some() {
                let clean = self.session.is_clean();
                self.unpin().await;
                if !clean {
                    self.session.lose_pinned();
                }
            }
            self.session.proto = proto;
        }
        let version = self
            .shard
            .topology
            .primary()
            .and_then(|p| p.version.lock().ok().and_then(|v| v.clone()))
            .unwrap_or_else(|| "7.0.0".into());
        let reply = Value::Map(vec![
            (Value::text("server"), Value::text("redis")),
            (Value::text("version"), Value::text(&version)),
            (Value::text("proto"), Value::Int(proto.number())),
            (Value::text("id"), Value::Int(self.session.id as i64)),
            (Value::text("mode"), Value::text("standalone")),
            (Value::text("role"), Value::text("master")),
            (Value::text("modules"), Value::Array(vec![])),
            (Value::text("proxy"), Value::text("rampart")),
        ]);
        self.reply(reply).await
    }

    /// `SELECT n`: the database lives on the client's dedicated connection,
    /// so it is switched there and the server's own answer decides.
    async fn select(&mut self, req: Request) -> Flow {
        if req.argc() != 2 {
            return self.reply(wrong_args("select")).await;
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

    async fn reset(&mut self) -> Flow {
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        let clean = self.session.is_clean();
        if let Some((node, link)) = self.session.pinned.take() {
            // A connection left in a transaction or another database is
            // simply closed; a clean one is reused.
            if clean {
                node.pool.give_back(link, self.session.proto);
            }
        }
        let authed = self.ctx.config.proxy.password.is_none();
        let user = self.session.user.is_some();
        // Wrong passwords are remembered across RESET, or it would undo
        // the slowing down of guesses.
        let failures = self.session.auth_failures;
        self.session = Session::new(self.session.id, authed);
        self.session.auth_failures = failures;
        if user {
            let name = self.ctx.config.backend.username.clone();
            self.registration
                .entry
                .publish(|snap| snap.user = name.unwrap_or_else(|| "default".into()));
        }
        self.replies.set_muted(false);
        self.reply(Value::Simple("RESET".into())).await
    }

    /// `RAMPART SWITCHOVER <shard> [host:port]`: answered once the new
    /// primary takes writes, or with why it could not.
    async fn switchover(&mut self, req: &Request) -> Flow {
        let args = req.args();
        if !(3..=4).contains(&args.len()) {
            return self
                .reply(Value::err(
                    "ERR wrong number of arguments for 'rampart|switchover' command",
                ))
                .await;
        }
        let shard = String::from_utf8_lossy(&args[2]).into_owned();
        let target = args.get(3).map(|t| String::from_utf8_lossy(t).into_owned());
        let ctx = self.ctx.clone();
        let reply = match ctx.switchover(&shard, target).await {
            Ok(done) => Value::Simple(done),
            Err(e) => Value::err(e.resp()),
        };
        self.reply(reply).await
    }

    /// `RAMPART POLICY LOAD|SHADOW <kind> <file in plugins.dir|builtin:name> [config]`,
    /// `RAMPART POLICY ACTIVATE|ROLLBACK <kind>`, `RAMPART POLICY LIST`.
    /// Applies to the first (today the only) shard.
    async fn policy(&mut self, req: &Request) -> Value {
        use crate::policy::swap::{Kind, Mode, Source};
        const USAGE: &str = "ERR usage: RAMPART POLICY LOAD router|quorum|detector <file in plugins.dir|builtin:name> [config] | SHADOW router <file in plugins.dir|builtin:name> [config] | ACTIVATE|ROLLBACK router | LIST";
        let args = req.args();
        let text = |i: usize| args.get(i).map(|a| String::from_utf8_lossy(a).into_owned());
        let action = text(2).unwrap_or_default().to_uppercase();
        if action == "LIST" {
            return match serde_json::to_string_pretty(&self.ctx.policies()) {
                Ok(json) => Value::bulk(json),
                Err(e) => Value::err(format!("ERR {e}")),
            };
        }
        let Some(kind) = text(3).as_deref().and_then(Kind::parse) else {
            return Value::err(USAGE);
        };
        let ctx = self.ctx.clone();
        let shard = ctx.topology.first().name.clone();
        let result = match (action.as_str(), text(4)) {
            ("LOAD" | "SHADOW", Some(source)) if args.len() <= 6 => {
                let mode = if action == "LOAD" {
                    Mode::Activate
                } else {
                    Mode::Shadow
                };
                let config = text(5).unwrap_or_default();
                let source = match Source::named(&source, ctx.config.plugins.dir.as_deref()) {
                    Ok(source) => source,
                    Err(e) => return Value::err(format!("ERR rampart: {e}")),
                };
                ctx.load_policy(kind, &shard, source, config, mode)
                    .await
                    .map(|view| match view["generation"].as_u64() {
                        Some(generation) => format!("OK generation {generation}"),
                        None => format!("OK {}", view["name"].as_str().unwrap_or_default()),
                    })
            }
            ("ACTIVATE" | "ROLLBACK", None) if kind != Kind::Router => {
                return Value::err("ERR rampart: only routers have a shadow and a previous generation; load the policy you want instead")
            }
            ("ACTIVATE", None) => ctx
                .activate_shadow(&shard)
                .await
                .map(|n| format!("OK generation {n}")),
            ("ROLLBACK", None) => ctx
                .rollback_router(&shard)
                .await
                .map(|n| format!("OK generation {n}")),
            _ => return Value::err(USAGE),
        };
        match result {
            Ok(done) => Value::Simple(done),
            Err(e) => Value::err(e.resp()),
        }
    }

    fn rampart(&self, req: &Request) -> Value {
        let sub = req.arg_upper(1);
        match sub.as_ref().map(|s| s.as_bytes()) {
            Some(b"TOPOLOGY") => {
                match serde_json::to_string_pretty(&self.ctx.topology.snapshot()) {
                    Ok(json) => Value::bulk(json),
                    Err(e) => Value::err(format!("ERR {e}")),
                }
            }
            Some(b"POLICIES") => {
                match serde_json::to_string_pretty(&self.ctx.policies()) {
                    Ok(json) => Value::bulk(json),
                    Err(e) => Value::err(format!("ERR {e}")),
                }
            }
            Some(b"HELP") => Value::Array(
                [
                    "RAMPART <subcommand>. Subcommands are:",
                    "TOPOLOGY",
                    "    Shards, nodes, roles and health as JSON.",
                    "POLICIES",
                    "    Each shard's read policy, with calls, traps and fallbacks, as JSON.",
                    "POLICY LOAD router|quorum|detector <file in plugins.dir|builtin:name> [config]",
                    "    Load a policy and make it active.",
                    "POLICY SHADOW router <file in plugins.dir|builtin:name> [config]",
                    "    Run a router beside the active one, only counting where they agree.",
                    "POLICY ACTIVATE|ROLLBACK router",
                    "    Make the shadow router active, or go back to the previous generation.",
                    "POLICY LIST",
                    "    Routers (active, previous, shadow), quorums and the detector, as JSON.",
                    "SWITCHOVER <shard> [<host:port>]",
                    "    Move the primary role to the given replica (or the best one) without losing a write.",
                    "AUTH <admin token>",
                    "    Allow this connection to change Rampart (SWITCHOVER, POLICY LOAD ...); needs proxy.admin_commands.",
                    "HELP",
                    "    Print this help.",
                ]
                .iter()
                .map(|line| Value::Simple((*line).into()))
                .collect(),
            ),
            _ => Value::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try RAMPART HELP.",
                sub.map(|s| s.as_str().to_string()).unwrap_or_default()
            )),
        }
    }
}

/// `RAMPART SWITCHOVER` and `RAMPART POLICY` other than `LIST`: they
/// change how Rampart routes, replicates or fails over.
fn changes_rampart(req: &Request) -> bool {
    match req.arg_upper(1).as_ref().map(|s| s.as_bytes()) {
        Some(b"SWITCHOVER") => true,
        Some(b"POLICY") => req.arg_upper(2).is_none_or(|a| a.as_bytes() != b"LIST"),
        _ => false,
    }
}

/// Compares secrets without an early exit that would leak how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every byte from `!` to `~`: what Redis allows in client names and
/// client attributes.
fn printable(value: &[u8]) -> bool {
    value.iter().all(|c| (b'!'..=b'~').contains(c))
}

/// A client name as `CLIENT SETNAME` and `HELLO ... SETNAME` accept it.
fn check_client_name(name: &[u8]) -> Result<(), Value> {
    if printable(name) {
        Ok(())
    } else {
        Err(Value::err(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ))
    }
}
