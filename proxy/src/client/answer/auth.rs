//! Who the client is: `AUTH` (one or two arguments), `HELLO` with `AUTH`
//! and `SETNAME`, and `RESET`. Rampart's own password guards the default
//! user whatever the nodes say; named users are checked by the nodes, and
//! wrong passwords are slowed per source (`throttle.rs`). The checks are
//! here; what they change on the connection (its user, its dedicated
//! connection) is the connection's, in `answer/mod.rs` and `pin.rs`.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::Credentials;
use crate::context::Context;
use crate::observe::throttled::Throttled;
use crate::resp::request::parse_i64;
use crate::resp::{Proto, Request, Value};
use crate::topology::Node;

/// Who checks a pair of credentials.
pub(super) enum Checker {
    /// Rampart, against `proxy.password`.
    Rampart,
    /// The nodes (their ACL users), asked on the primary.
    Nodes,
}

/// With `proxy.password` set, Rampart's password alone guards its own user
/// (`proxy.username`, `default` unless set) and the `default` user, however
/// the request names them (`AUTH pass`, `AUTH default pass`, `HELLO 3 AUTH
/// default pass`): the nodes' `default` user is usually `nopass` and would
/// accept anything. Only other user names are the nodes' ACL users.
pub(super) fn checker(ctx: &Context, user: Option<&Bytes>) -> Checker {
    if ctx.secrets.current().password.is_none() {
        return Checker::Nodes;
    }
    let own = proxy_user(ctx).as_bytes();
    let guarded = user.is_none_or(|u| &u[..] == own || &u[..] == b"default");
    if guarded {
        Checker::Rampart
    } else {
        Checker::Nodes
    }
}

/// Rampart's own user (`proxy.username`, `default` unless set).
fn proxy_user(ctx: &Context) -> &str {
    ctx.config.proxy.username.as_deref().unwrap_or("default")
}

/// The user a client's commands run as on the nodes once it has
/// authenticated: `None` is Rampart's own backend user.
pub(super) type RunAs = Option<Arc<Credentials>>;

/// Checks credentials against `proxy.password` (see [`checker`]).
pub(super) fn check_rampart(
    ctx: &Context,
    user: Option<&Bytes>,
    password: &Bytes,
) -> Result<RunAs, Value> {
    let secrets = ctx.secrets.current();
    let user_ok = user.is_none_or(|u| &u[..] == proxy_user(ctx).as_bytes());
    match &secrets.password {
        Some(expected) if user_ok && constant_time_eq(password, expected.as_bytes()) => Ok(None),
        _ => Err(Value::err(WRONGPASS)),
    }
}

/// Checks credentials on `primary` (`AUTH` on a connection of Rampart's
/// own), so its answers (`WRONGPASS`, the error for a password with none
/// configured) are Redis's own.
pub(super) async fn check_on_node(
    ctx: &Context,
    primary: &Node,
    user: Option<&Bytes>,
    password: &Bytes,
) -> Result<RunAs, Value> {
    let mut control = primary.pool.control().await.map_err(|e| {
        Value::err(format!(
            "ERR rampart: cannot check credentials on {} ({e})",
            primary.addr
        ))
    })?;
    let mut args: Vec<&[u8]> = vec![b"AUTH"];
    args.extend(user.map(|u| &u[..]));
    args.push(password);
    let timeout = ctx
        .probe_timings
        .timeout()
        .max(std::time::Duration::from_millis(1000));
    use redis_protocol::resp3::types::OwnedFrame;
    match control.call(&args, timeout).await {
        Ok(OwnedFrame::SimpleString { .. }) => {}
        Ok(OwnedFrame::SimpleError { data, .. }) => return Err(Value::err(data)),
        Ok(other) => {
            return Err(Value::err(format!(
                "ERR rampart: unexpected AUTH reply {other:?}"
            )))
        }
        Err(e) => {
            return Err(Value::err(format!(
                "ERR rampart: cannot check credentials ({e})"
            )))
        }
    }
    let username = user.map_or_else(
        || "default".to_string(),
        |u| String::from_utf8_lossy(u).into_owned(),
    );
    let backend = &ctx.config.backend;
    let is_rampart = username == backend.username.as_deref().unwrap_or("default")
        && backend
            .password
            .as_deref()
            .is_none_or(|p| p.as_bytes() == &password[..]);
    Ok((!is_rampart).then(|| {
        Arc::new(Credentials {
            username,
            password: String::from_utf8_lossy(password).into_owned(),
        })
    }))
}

/// A wrong password from `addr`, this connection's `failures`-th: counted,
/// logged (at most once a second for the whole process, so a flood of
/// guesses cannot flood the log), and answered when the address may have
/// its next wrong answer (see [`crate::client::throttle`]). False: close
/// the connection unanswered.
pub(super) async fn wrong_password(ctx: &Context, addr: IpAddr, failures: u32) -> bool {
    static LOG: Throttled = Throttled::every(1);
    ctx.metrics.count_auth_failure();
    if let Some(quiet) = LOG.due() {
        tracing::warn!(
            client = %addr,
            failures,
            not_logged = quiet,
            "AUTH with a wrong password (logged at most once a second)"
        );
    }
    use crate::client::throttle::Verdict;
    match ctx.auth_throttle.failed(addr) {
        Verdict::AnswerAt(at) => {
            tokio::time::sleep_until(at.into()).await;
            true
        }
        Verdict::Close => false,
    }
}

/// Whether a check's answer is a wrong password.
pub(super) fn is_wrong_password(reply: &Value) -> bool {
    matches!(reply, Value::Error(e) if e.starts_with("WRONGPASS"))
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`, parsed.
pub(super) struct Hello {
    pub proto: Option<Proto>,
    pub auth: Option<(Bytes, Bytes)>,
    pub name: Option<Bytes>,
}

impl Hello {
    /// Parsed as Redis parses it: the version, then every option, before
    /// anything is checked or changed.
    pub(super) fn parse(req: &Request) -> Result<Hello, Value> {
        let args = req.args();
        let proto = match args.get(1) {
            None => None,
            Some(version) => Some(match parse_i64(version) {
                Some(2) => Proto::Resp2,
                Some(3) => Proto::Resp3,
                Some(_) => return Err(Value::err("NOPROTO unsupported protocol version")),
                None => {
                    return Err(Value::err(
                        "ERR Protocol version is not an integer or out of range",
                    ))
                }
            }),
        };
        let mut hello = Hello {
            proto,
            auth: None,
            name: None,
        };
        let mut i = 2;
        while i < args.len() {
            let option = crate::resp::request::CommandName::new(&args[i]);
            match option.as_bytes() {
                b"AUTH" if i + 2 < args.len() => {
                    hello.auth = Some((args[i + 1].clone(), args[i + 2].clone()));
                    i += 3;
                }
                b"SETNAME" if i + 1 < args.len() => {
                    hello.name = Some(args[i + 1].clone());
                    i += 2;
                }
                _ => {
                    return Err(Value::err(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&args[i])
                    )))
                }
            }
        }
        Ok(hello)
    }
}

/// `HELLO`'s answer for a client `id` now speaking `proto`, in front of a
/// primary running `version`.
pub(super) fn hello_reply(version: Option<String>, proto: Proto, id: u64) -> Value {
    let version = version.unwrap_or_else(|| "7.0.0".into());
    Value::Map(vec![
        (Value::text("server"), Value::text("redis")),
        (Value::text("version"), Value::text(&version)),
        (Value::text("proto"), Value::Int(proto.number())),
        (Value::text("id"), Value::Int(id as i64)),
        (Value::text("mode"), Value::text("standalone")),
        (Value::text("role"), Value::text("master")),
        (Value::text("modules"), Value::Array(vec![])),
        (Value::text("proxy"), Value::text("rampart")),
    ])
}

pub(super) const NOAUTH_HELLO: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time";

pub(super) const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

pub use crate::secrets::constant_time_eq;
