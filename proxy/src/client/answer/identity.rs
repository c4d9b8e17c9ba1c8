//! `CLIENT LIST | INFO | KILL | UNBLOCK | REPLY`, answered about Rampart's
//! clients rather than about Rampart's connections to the nodes (which is
//! all a node could tell). Texts and formats are Redis 7.0's.

use std::time::Instant;

use bytes::Bytes;

use crate::client::connection::{Connection, Flow};
use crate::client::registry::{Entry, Order};
use crate::resp::request::parse_i64;
use crate::resp::{Request, Value};

/// Which clients a `CLIENT KILL` or `CLIENT LIST` names.
#[derive(Default)]
struct Filter {
    ids: Option<Vec<u64>>,
    addr: Option<String>,
    laddr: Option<String>,
    user: Option<String>,
    /// `pubsub` or `normal`; Rampart has no replica or master clients.
    kind: Option<&'static str>,
    skip_me: bool,
}

impl Filter {
    fn matches(&self, entry: &Entry) -> bool {
        let snapshot = entry.snapshot();
        self.ids.as_ref().is_none_or(|ids| ids.contains(&entry.id))
            && self
                .addr
                .as_ref()
                .is_none_or(|a| *a == entry.addr.to_string())
            && self
                .laddr
                .as_ref()
                .is_none_or(|a| *a == entry.laddr.to_string())
            && self.user.as_ref().is_none_or(|u| *u == snapshot.user)
            && self.kind.is_none_or(|k| match k {
                "pubsub" => snapshot.subscribed,
                "normal" => !snapshot.subscribed,
                _ => false,
            })
    }
}

/// A client type as `CLIENT KILL TYPE` / `CLIENT LIST TYPE` take it.
fn kind(word: &[u8]) -> Result<&'static str, Value> {
    match word.to_ascii_lowercase().as_slice() {
        b"normal" => Ok("normal"),
        b"pubsub" => Ok("pubsub"),
        b"master" | b"slave" | b"replica" => Ok("none"),
        _ => Err(Value::err(format!(
            "ERR Unknown client type '{}'",
            String::from_utf8_lossy(word)
        ))),
    }
}

impl Connection {
    pub(super) async fn client_command(&mut self, req: Request) -> Flow {
        let sub = req.arg_upper(1);
        let reply = match sub.as_ref().map(|s| s.as_bytes()) {
            Some(b"LIST") => self.client_list(&req),
            Some(b"INFO") if req.argc() == 2 => {
                let blocked = self.waits_on_blocked();
                self.published.publish_now(
                    &self.registration.entry,
                    &self.session,
                    "INFO",
                    blocked,
                );
                Value::Verbatim(Bytes::from(format!(
                    "{}\n",
                    self.registration.entry.line(Instant::now(), req.raw.len())
                )))
            }
            Some(b"KILL") => return self.client_kill(&req).await,
            Some(b"UNBLOCK") => self.client_unblock(&req).await,
            Some(b"REPLY") => return self.client_reply(&req).await,
            _ => Value::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                sub.map(|s| s.as_str().to_lowercase()).unwrap_or_default()
            )),
        };
        self.reply(reply).await
    }

    fn client_list(&mut self, req: &Request) -> Value {
        let mut filter = Filter::default();
        let mut i = 2;
        while i < req.argc() {
            let option = req.arg_upper(i);
            match option.as_ref().map(|o| o.as_bytes()) {
                Some(b"TYPE") if i + 1 < req.argc() => {
                    match kind(req.arg(i + 1).unwrap_or_default()) {
                        Ok(k) => filter.kind = Some(k),
                        Err(e) => return e,
                    }
                    i += 2;
                }
                Some(b"ID") if i + 1 < req.argc() => {
                    let mut ids = Vec::new();
                    for j in i + 1..req.argc() {
                        match req.arg(j).and_then(parse_i64).filter(|id| *id > 0) {
                            Some(id) => ids.push(id as u64),
                            None => return Value::err("ERR Invalid client ID"),
                        }
                    }
                    filter.ids = Some(ids);
                    i = req.argc();
                }
                _ => return Value::err("ERR syntax error"),
            }
        }
        let blocked = self.waits_on_blocked();
        self.published
            .publish_now(&self.registration.entry, &self.session, "LIST", blocked);
        let now = Instant::now();
        let mut text = String::new();
        for entry in self.ctx.registry.all() {
            if filter.matches(&entry) {
                let qbuf = if entry.id == self.session.id {
                    req.raw.len()
                } else {
                    0
                };
                text.push_str(&entry.line(now, qbuf));
                text.push('\n');
            }
        }
        Value::Verbatim(Bytes::from(text))
    }

    /// `CLIENT KILL addr` (answers OK or an error) and `CLIENT KILL
    /// <filter> <value> ...` (answers how many).
    async fn client_kill(&mut self, req: &Request) -> Flow {
        let args = req.args();
        let text = |i: usize| String::from_utf8_lossy(&args[i]).into_owned();
        if args.len() < 3 {
            return self
                .reply(Value::err(
                    "ERR wrong number of arguments for 'client|kill' command",
                ))
                .await;
        }
        let old_style = args.len() == 3;
        let mut filter = Filter {
            skip_me: true,
            ..Filter::default()
        };
        if old_style {
            filter.addr = Some(text(2));
            filter.skip_me = false;
        } else if args.len() % 2 != 0 {
            return self.reply(Value::err("ERR syntax error")).await;
        } else {
            for i in (2..args.len()).step_by(2) {
                let value = &args[i + 1];
                match args[i].to_ascii_uppercase().as_slice() {
                    b"ID" => match parse_i64(value) {
                        Some(id) if id > 0 => filter.ids = Some(vec![id as u64]),
                        _ => {
                            return self
                                .reply(Value::err("ERR client-id should be greater than 0"))
                                .await
                        }
                    },
                    b"TYPE" => match kind(value) {
                        Ok(k) => filter.kind = Some(k),
                        Err(e) => return self.reply(e).await,
                    },
                    b"ADDR" => filter.addr = Some(text(i + 1)),
                    b"LADDR" => filter.laddr = Some(text(i + 1)),
                    b"USER" => filter.user = Some(text(i + 1)),
                    b"SKIPME" => match value.to_ascii_lowercase().as_slice() {
                        b"yes" => filter.skip_me = true,
                        b"no" => filter.skip_me = false,
                        _ => return self.reply(Value::err("ERR syntax error")).await,
                    },
                    _ => return self.reply(Value::err("ERR syntax error")).await,
                }
            }
        }
        if let Some(user) = &filter.user {
            if !self.user_exists(user).await {
                return self
                    .reply(Value::err(format!("ERR No such user '{user}'")))
                    .await;
            }
        }
        let me = self.session.id;
        let mut killed = 0;
        let mut myself = false;
        for entry in self.ctx.registry.all() {
            if !filter.matches(&entry) || (filter.skip_me && entry.id == me) {
                continue;
            }
            killed += 1;
            if entry.id == me {
                myself = true;
            } else {
                entry.order(Order::Kill);
            }
        }
        let reply = match (old_style, killed) {
            (true, 0) => Value::err("ERR No such client"),
            (true, _) => Value::ok(),
            (false, n) => Value::Int(n),
        };
        let flow = self.reply(reply).await;
        // Killing oneself closes the connection once the reply is out.
        if myself {
            Flow::Stop
        } else {
            flow
        }
    }

    /// Whether the primary knows the ACL user (so `CLIENT KILL USER` of an
    /// unknown one errs as on Redis). When it cannot be asked, assume so.
    async fn user_exists(&self, user: &str) -> bool {
        use redis_protocol::resp3::types::OwnedFrame;
        let Some(primary) = self.shard.topology.primary().cloned() else {
            return true;
        };
        let timeout = std::time::Duration::from_secs(1);
        let answer = primary
            .pool
            .call_once(&["ACL", "GETUSER", user], timeout)
            .await;
        !matches!(answer, Ok(OwnedFrame::Null))
    }

    /// `CLIENT UNBLOCK <id> [TIMEOUT|ERROR]`: 1 if that client was blocked.
    async fn client_unblock(&mut self, req: &Request) -> Value {
        let error = match req.arg_upper(3).as_ref().map(|m| m.as_bytes()) {
            None | Some(b"TIMEOUT") => false,
            Some(b"ERROR") => true,
            Some(_) => return Value::err("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"),
        };
        if !(3..=4).contains(&req.argc()) {
            return Value::err("ERR syntax error");
        }
        let Some(id) = req.arg(2).and_then(parse_i64) else {
            return Value::err("ERR value is not an integer or out of range");
        };
        let Some(entry) = u64::try_from(id)
            .ok()
            .and_then(|id| self.ctx.registry.get(id))
        else {
            return Value::Int(0);
        };
        if entry.id == self.session.id {
            return Value::Int(0);
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        if !entry.order(Order::Unblock { error, done }) {
            return Value::Int(0);
        }
        Value::Int(i64::from(answer.await.unwrap_or(false)))
    }

    /// `CLIENT REPLY ON|OFF|SKIP`: Rampart drops the replies the client
    /// asked not to get.
    async fn client_reply(&mut self, req: &Request) -> Flow {
        let mode = req.arg_upper(2);
        if req.argc() != 3 {
            return self.reply(Value::err("ERR syntax error")).await;
        }
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        match mode.as_ref().map(|m| m.as_bytes()) {
            Some(b"ON") => {
                self.session.replies_off = false;
                self.session.skip_next_reply = false;
                self.replies.set_muted(false);
                self.reply(Value::ok()).await
            }
            Some(b"OFF") => {
                self.session.replies_off = true;
                self.replies.set_muted(true);
                Flow::Continue
            }
            Some(b"SKIP") => {
                // The SKIP itself is not answered either.
                if !self.session.replies_off {
                    self.session.skip_next_reply = true;
                }
                Flow::Continue
            }
            _ => self.reply(Value::err("ERR syntax error")).await,
        }
    }
}
