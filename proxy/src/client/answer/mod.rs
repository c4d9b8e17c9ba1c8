//! Commands Rampart answers itself (`Class::Answer`), one file per
//! family, as mini-redis's `cmd/`: the client's own connection (PING,
//! ECHO, CLIENT SETNAME ..., SELECT, QUIT), and the commands Rampart puts
//! to the nodes on its own terms (INFO, ACL changes, CLIENT PAUSE, SCRIPT
//! KILL, SLOWLOG), AUTH/HELLO/RESET (`auth.rs`), the CLIENT commands about
//! other clients (`identity.rs`) and the RAMPART namespace (`rampart.rs`).
//! Error texts are Redis's own.

mod acl;
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

use super::connection::{Connection, Flow};
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
            Answer::KillScript
            | Answer::Client
            | Answer::AclChange
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
                        acl::apply_elsewhere(&self.ctx, node.id, req.args());
                    }
                    self.push(Pending::Local(reply))
                }
            },
            Answer::SlowlogGet => self.slowlog_get(req).await,
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
            Answer::Client => self.client_command(req).await,
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
