//! Commands Rampart answers itself (`Class::Answer`), one file per
//! family, as mini-redis's `cmd/`: the client's own connection (PING,
//! ECHO, CLIENT SETNAME ..., SELECT, QUIT), and the commands Rampart puts
//! to the nodes on its own terms (INFO, ACL changes, CLIENT PAUSE, SCRIPT
//! KILL, SLOWLOG), AUTH/HELLO/RESET (`auth.rs`), the CLIENT commands about
//! other clients (`identity.rs`) and the RAMPART namespace (`rampart.rs`).
//! Error texts are Redis's own.

pub(super) mod auth;
mod client;
mod identity;
mod info;
mod pause;
mod ping;
mod rampart;
mod script;
mod slowlog;
mod unsubscribe;

use bytes::Bytes;

use super::connection::{Connection, Flow};
use super::session::{Asker, Session};
use super::writer::Pending;
use crate::observe::throttled::Throttled;
use crate::resp::command::Answer;
use crate::resp::request::parse_i64;
use crate::resp::{Request, Value};

impl Connection {
    /// One arm per command: a dispatch table, long because the commands
    /// are many; each arm is a line or two, the work is in the family files.
    pub(super) async fn answer(&mut self, answer: Answer, req: Request) -> Flow {
        let in_multi = self.session.in_multi;
        let args = &req.args();
        match answer {
            // Inside a transaction these are queued by the server like any
            // other command and answered in EXEC's reply.
            Answer::Ping
            | Answer::Echo
            | Answer::ClientSetName
            | Answer::ClientGetName
            | Answer::ClientSetInfo
                if in_multi =>
            {
                self.pinned(req).await
            }
            // Copied to the other nodes once EXEC ran them (a managed
            // parameter, as outside a transaction, is not).
            Answer::AclChange | Answer::ConfigSet if in_multi => {
                if self.ctx.guard.check(&req).is_none() {
                    self.session.tx_settings.push(req.args());
                }
                self.pinned(req).await
            }
            Answer::KillScript
            | Answer::Client
            | Answer::SlowlogGet
            | Answer::Info
            | Answer::Pause
                if in_multi =>
            {
                self.pinned(req).await
            }
            Answer::AclChange => match self.ask_primary(&req, "ACL").await {
                Err(error) => self.reply(error).await,
                Ok((node, reply)) => {
                    if !reply.starts_with(b"-") {
                        let settings = &self.ctx.node_settings;
                        settings.acl_changed(&node, &self.ctx.topology, req.args());
                    }
                    self.push(Pending::Local(reply))
                }
            },
            // Every shard's primary, as one Redis would take it; then the
            // replicas, so that a failover keeps the setting.
            Answer::ConfigSet => match self.ask_each_primary(&req, "CONFIG").await {
                Err(error) => self.reply(error).await,
                Ok(replies) => {
                    let done: Vec<u32> = replies.iter().map(|(node, _)| node.id).collect();
                    let mut replies = replies.into_iter().map(|(_, reply)| reply);
                    let first = replies.next().unwrap_or_default();
                    let reply = if first.starts_with(b"-") {
                        first
                    } else {
                        replies.find(|r| r.starts_with(b"-")).unwrap_or(first)
                    };
                    // A managed parameter passes only set to the value the
                    // primary has (see `guard.rs`); the replicas' own
                    // (`replica-priority` ...) are not the primary's to copy.
                    if !reply.starts_with(b"-") && self.ctx.guard.check(&req).is_none() {
                        let settings = &self.ctx.node_settings;
                        settings.config_set(&done, &self.ctx.topology, req.args());
                    }
                    self.push(Pending::Local(reply))
                }
            },
            Answer::SlowlogGet => match slowlog::wanted(&req) {
                Err(error) => self.reply(error).await,
                Ok(wanted) => match self
                    .ask_each_primary(&slowlog::whole_log(), "SLOWLOG")
                    .await
                {
                    Err(error) => self.reply(error).await,
                    Ok(logs) => {
                        let logs = logs.into_iter().map(|(_, log)| log).collect();
                        let merged = slowlog::merged(logs, self.session.proto, wanted);
                        self.push(Pending::Local(merged))
                    }
                },
            },
            Answer::Pause => {
                let reply = pause::pause(&self.ctx, &req).await;
                self.reply(reply).await
            }
            Answer::Info => match self.ask_primary(&req, "INFO").await {
                Err(error) => self.reply(error).await,
                Ok((_, reply)) => match info::patch(&self.ctx, &reply, self.session.proto).await {
                    Some(patched) => self.reply(patched).await,
                    None => self.push(Pending::Local(reply)),
                },
            },
            Answer::Client => self.client_command(&req).await,
            Answer::KillScript => {
                let reply = script::kill_script(&self.ctx, &req).await;
                self.reply(reply).await
            }
            Answer::Hello | Answer::Auth | Answer::Select if in_multi => {
                self.reply(Value::err(crate::resp::command::NOT_IN_MULTI))
                    .await
            }
            // A node running a long script answers PING with -BUSY: while
            // the probe sees the primary busy, its own answer is passed on,
            // so clients see why nothing runs (and when it is over).
            Answer::Ping if ping::primary_busy(&self.shard) => {
                let reply = ping::ping_primary(&self.shard, &req).await;
                self.reply(reply).await
            }
            Answer::Ping => self.reply(ping::ping(args)).await,
            Answer::Echo => self.reply(ping::echo(args)).await,
            Answer::Quit => {
                self.reply(Value::ok()).await;
                Flow::Stop
            }
            Answer::Auth => {
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
            Answer::Hello => self.hello(req).await,
            Answer::Select => self.select(req).await,
            Answer::Reset => self.reset().await,
            Answer::ClientSetName => {
                let reply = client::set_name(&mut self.session, args);
                self.reply(reply).await
            }
            Answer::ClientGetName => self.reply(client::get_name(&self.session)).await,
            Answer::ClientId => self.reply(Value::Int(self.session.id as i64)).await,
            Answer::ClientSetInfo => self.reply(client::set_info(args)).await,
            Answer::KeySlot => self.reply(client::key_slot(args)).await,
            Answer::Unsubscribe => {
                if self.flush().await == Flow::Stop {
                    return Flow::Stop;
                }
                let confirmations = unsubscribe::confirmations(&req, self.session.proto);
                self.push(Pending::Local(confirmations))
            }
            Answer::Rampart if req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"AUTH") => {
                let reply = rampart::admin_auth(&self.ctx, &mut self.session, &req);
                self.reply(reply).await
            }
            Answer::Rampart => {
                let ctx = self.ctx.clone();
                let reply = match rampart::change_refused(&ctx, &self.session, &req) {
                    Some(refusal) => refusal,
                    None => match req.arg_upper(1).as_ref().map(|s| s.as_bytes()) {
                        Some(b"SWITCHOVER") => rampart::switchover(&ctx, &req).await,
                        Some(b"POLICY") => rampart::policy(&ctx, &req).await,
                        _ => rampart::show(&ctx, &req),
                    },
                };
                self.reply(reply).await
            }
            Answer::CrossProtocol => {
                cross_protocol(&self.registration.entry.addr);
                Flow::Stop
            }
        }
    }

    /// `CLIENT LIST | INFO | KILL | UNBLOCK | REPLY` (see [`identity`]).
    async fn client_command(&mut self, req: &Request) -> Flow {
        let sub = req.arg_upper(1);
        let sub = sub.as_ref().map(|s| s.as_str());
        if sub == Some("REPLY") {
            return self.client_reply(req).await;
        }
        if sub == Some("LIST") || sub == Some("INFO") {
            // The client's own line shows it as it is now.
            let blocked = self.waits_on_blocked();
            let entry = &self.registration.entry;
            self.published
                .publish_now(entry, &self.session, sub.unwrap_or_default(), blocked);
        }
        let asker = Asker {
            ctx: &self.ctx,
            session: &self.session,
            registration: &self.registration,
        };
        let reply = match sub {
            Some("LIST") => identity::list(&asker, req),
            Some("INFO") if req.argc() == 2 => identity::info(&asker, req),
            Some("KILL") => {
                let killed = identity::kill(&asker, &self.shard.topology, req).await;
                let flow = self.reply(killed.reply).await;
                // Killing oneself closes the connection once the reply is out.
                return if killed.myself { Flow::Stop } else { flow };
            }
            Some("UNBLOCK") => identity::unblock(&asker, req).await,
            _ => Value::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                sub.unwrap_or_default().to_lowercase()
            )),
        };
        self.reply(reply).await
    }

    /// `CLIENT REPLY ON|OFF|SKIP`, after everything before it.
    async fn client_reply(&mut self, req: &Request) -> Flow {
        let mode = match client::reply_mode(req) {
            Ok(mode) => mode,
            Err(error) => return self.reply(error).await,
        };
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        match client::set_reply_mode(&mut self.session, &mut self.out.replies, mode) {
            Some(reply) => self.reply(reply).await,
            None => Flow::Continue,
        }
    }

    /// `AUTH [user] password` (see [`auth::checker`]). `None`: too many
    /// wrong passwords from this client's address; the connection is
    /// closed without an answer.
    pub(super) async fn authenticate(
        &mut self,
        user: Option<&Bytes>,
        password: &Bytes,
    ) -> Option<Value> {
        let checked = match auth::checker(&self.ctx, user) {
            auth::Checker::Rampart => auth::check_rampart(&self.ctx, user, password),
            auth::Checker::Nodes => match self.primary().await {
                Err(error) => Err(error),
                Ok(primary) => auth::check_on_node(&self.ctx, &primary, user, password).await,
            },
        };
        match checked {
            Ok(run_as) => {
                self.session.authed = true;
                self.switch_user(run_as).await;
                Some(Value::ok())
            }
            Err(reply) if auth::is_wrong_password(&reply) => {
                self.session.auth_failures += 1;
                let addr = self.registration.entry.addr.ip();
                let failures = self.session.auth_failures;
                auth::wrong_password(&self.ctx, addr, failures)
                    .await
                    .then_some(reply)
            }
            Err(reply) => Some(reply),
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    async fn hello(&mut self, req: Request) -> Flow {
        let hello = match auth::Hello::parse(&req) {
            Ok(hello) => hello,
            Err(error) => return self.reply(error).await,
        };
        if let Some((user, password)) = &hello.auth {
            match self.authenticate(Some(user), password).await {
                None => return Flow::Stop,
                Some(error @ Value::Error(_)) => return self.reply(error).await,
                Some(_) => {}
            }
        }
        if !self.session.authed {
            return self.reply(Value::err(auth::NOAUTH_HELLO)).await;
        }
        if let Some(name) = hello.name {
            // Checked once authenticated and before the protocol changes,
            // as Redis does.
            if let Err(e) = crate::client::session::check_client_name(&name) {
                return self.reply(e).await;
            }
            self.session.name = (!name.is_empty()).then_some(name);
        }
        let proto = hello.proto.unwrap_or(self.session.proto);
        if proto != self.session.proto {
            // Dedicated connections speak the old protocol.
            self.let_go_pinned().await;
            self.session.proto = proto;
        }
        let version = self
            .shard
            .topology
            .primary()
            .and_then(|p| p.version.lock().ok().and_then(|v| v.clone()));
        let reply = auth::hello_reply(version, proto, self.session.id);
        self.reply(reply).await
    }

    /// `RESET`: the connection as new, but still counting wrong passwords
    /// (or it would undo the slowing down of guesses).
    async fn reset(&mut self) -> Flow {
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        let clean = self.session.is_clean();
        if let Some((node, link)) = self.session.pinned.take() {
            // A connection left in a transaction or another database is
            // simply closed; a clean one is reused.
            if clean {
                node.pool.give_back(link, &self.session.link_session());
            }
        }
        let authed = self.ctx.secrets.current().password.is_none();
        let user = self.session.user.is_some();
        let failures = self.session.auth_failures;
        self.session = Session::new(self.session.id, authed);
        self.session.auth_failures = failures;
        self.tracking = None;
        if user {
            let name = self.ctx.config.backend.username.clone();
            self.registration
                .entry
                .publish(|snap| snap.user = name.unwrap_or_else(|| "default".into()));
        }
        self.out.replies.set_muted(false);
        self.reply(Value::Simple("RESET".into())).await
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

/// `POST` / `Host:` as a command: what Redis does, word for word in the
/// log (at most once a second); the caller closes the connection with no
/// reply. Nothing of it reaches a node.
fn cross_protocol(client: &std::net::SocketAddr) {
    static LOG: Throttled = Throttled::every(1);
    if let Some(quiet) = LOG.due() {
        tracing::warn!(
            client = %client,
            not_logged = quiet,
            "Possible SECURITY ATTACK detected. It looks like somebody is sending POST or Host: commands to Redis. This is likely due to an attacker attempting to use Cross Protocol Scripting to compromise your Redis instance. Connection aborted."
        );
    }
}
