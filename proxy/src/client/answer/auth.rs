//! Who the client is: `AUTH` (one or two arguments), `HELLO` with `AUTH`
//! and `SETNAME`, and `RESET`. Rampart's own password guards the default
//! user whatever the nodes say; named users are checked by the nodes, and
//! wrong passwords are slowed per source (`throttle.rs`).

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::Credentials;
use crate::client::connection::{Connection, Flow};
use crate::client::session::Session;
use crate::observe::throttled::Throttled;
use crate::resp::request::parse_i64;
use crate::resp::{Proto, Request, Value};

impl Connection {
    /// `AUTH [user] password`: Rampart's own password (`proxy.password`)
    /// when one is set and matches; otherwise the nodes' ACL users, checked
    /// by the primary itself, so its answers (`WRONGPASS`, the error for a
    /// password with none configured) are Redis's own.
    ///
    /// `None`: too many wrong passwords from this client's address; the
    /// connection is closed without an answer.
    pub(super) async fn authenticate(
        &mut self,
        user: Option<&Bytes>,
        password: &Bytes,
    ) -> Option<Value> {
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
    /// (see [`crate::client::throttle`]). False: close the connection unanswered.
    pub(super) async fn auth_failed(&mut self) -> bool {
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
        use crate::client::throttle::Verdict;
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
    pub(super) async fn check_credentials(
        &mut self,
        user: Option<&Bytes>,
        password: &Bytes,
    ) -> Value {
        let config = &self.ctx.config.proxy;
        let secrets = self.ctx.secrets.current();
        if let Some(expected) = &secrets.password {
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

    pub(super) async fn node_auth(&mut self, user: Option<&Bytes>, password: &Bytes) -> Value {
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
        let timeout = self
            .ctx
            .probe_timings
            .timeout()
            .max(std::time::Duration::from_millis(1000));
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
    pub(super) async fn switch_user(&mut self, user: Option<Arc<Credentials>>) {
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
    pub(super) async fn hello(&mut self, req: Request) -> Flow {
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
            if let Err(e) = crate::client::session::check_client_name(&name) {
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

    pub(super) async fn reset(&mut self) -> Flow {
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
        let authed = self.ctx.secrets.current().password.is_none();
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
}

pub(super) const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

pub use crate::secrets::constant_time_eq;
