//! The CLIENT subcommands about the client's own connection to Rampart
//! (its name, id and library info), kept in its session: the node never
//! sees them. (The ones about other clients are `client/identity.rs`.)

use bytes::Bytes;

use crate::client::session::{check_client_name, printable, Session};
use crate::client::writer::Replies;
use crate::resp::{Request, Value};

/// `CLIENT SETNAME name`.
pub(super) fn set_name(session: &mut Session, args: &[Bytes]) -> Value {
    if args.len() != 3 {
        return Value::wrong_args("client|setname");
    }
    let name = &args[2];
    if let Err(e) = check_client_name(name) {
        return e;
    }
    session.name = (!name.is_empty()).then(|| name.clone());
    Value::ok()
}

/// `CLIENT GETNAME`.
pub(super) fn get_name(session: &Session) -> Value {
    session.name.clone().map_or(Value::Null, Value::Bulk)
}

/// `CLIENT SETINFO lib-name|lib-ver value`: Redis 7.2's command (7.0 has
/// none; clients send it on every connection and ignore the error), with
/// 7.2's checks.
pub(super) fn set_info(args: &[Bytes]) -> Value {
    if args.len() != 4 {
        return Value::wrong_args("client|setinfo");
    }
    let attr = String::from_utf8_lossy(&args[2]).into_owned();
    let known = ["lib-name", "lib-ver"]
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&attr));
    if !known {
        Value::err(format!("ERR Unrecognized option '{attr}'"))
    } else if !printable(&args[3]) {
        Value::err(format!(
            "ERR {attr} cannot contain spaces, newlines or special characters."
        ))
    } else {
        Value::ok()
    }
}

/// `CLUSTER KEYSLOT key`: the slot Rampart routes the key by.
pub(super) fn key_slot(args: &[Bytes]) -> Value {
    match args.len() {
        3 => Value::Int(i64::from(crate::shard::slots::slot(&args[2]))),
        _ => Value::wrong_args("cluster|keyslot"),
    }
}

/// What `CLIENT REPLY` asks for.
pub(super) enum ReplyMode {
    On,
    Off,
    /// Not the next reply (nor this one).
    Skip,
}

/// `CLIENT REPLY ON|OFF|SKIP`: which, or Redis's error.
pub(super) fn reply_mode(req: &Request) -> Result<ReplyMode, Value> {
    let mode = req.arg_upper(2);
    match mode.as_ref().map(|m| m.as_bytes()) {
        Some(b"ON") if req.argc() == 3 => Ok(ReplyMode::On),
        Some(b"OFF") if req.argc() == 3 => Ok(ReplyMode::Off),
        Some(b"SKIP") if req.argc() == 3 => Ok(ReplyMode::Skip),
        _ => Err(Value::err("ERR syntax error")),
    }
}

/// Applies `CLIENT REPLY`: Rampart drops the replies the client asked not
/// to get. Its own answer, if it gets one.
pub(super) fn set_reply_mode(
    session: &mut Session,
    replies: &mut Replies,
    mode: ReplyMode,
) -> Option<Value> {
    match mode {
        ReplyMode::On => {
            session.replies_off = false;
            session.skip_next_reply = false;
            replies.set_muted(false);
            Some(Value::ok())
        }
        ReplyMode::Off => {
            session.replies_off = true;
            replies.set_muted(true);
            None
        }
        ReplyMode::Skip => {
            // The SKIP itself is not answered either.
            if !session.replies_off {
                session.skip_next_reply = true;
            }
            None
        }
    }
}
