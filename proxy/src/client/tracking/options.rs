//! What a client asks of `CLIENT TRACKING`, `CACHING` and
//! `TRACKINGINFO`: parsed and checked as Redis 7.0 does, in its order and
//! with its error texts.

use bytes::{Bytes, BytesMut};

use crate::resp::{Proto, Request, Value};

pub(super) const NO_SUCH_CLIENT: &str = "ERR The client ID you want redirect to does not exist";

/// What the client asked to be told about.
#[derive(Default, Clone, PartialEq, Debug)]
pub(super) struct Mode {
    pub(super) bcast: bool,
    pub(super) optin: bool,
    pub(super) optout: bool,
    pub(super) noloop: bool,
    /// Sorted, as Redis lists them; `""` (every key) for `BCAST` without
    /// `PREFIX`.
    pub(super) prefixes: Vec<Bytes>,
    /// The Rampart client the invalidations go to.
    pub(super) redirect: Option<u64>,
}

/// What `CLIENT TRACKING ON` asks for, parsed.
#[derive(Default)]
pub(super) struct Asked {
    pub(super) on: bool,
    pub(super) mode: Mode,
}

/// Argument `i` in upper case (empty when absent).
fn upper(req: &Request, i: usize) -> Vec<u8> {
    req.arg(i).unwrap_or_default().to_ascii_uppercase()
}

/// `CLIENT TRACKING <ON|OFF> [options]`, parsed, or Redis's error
/// (`exists`: whether a client of that id is connected).
pub(super) fn parse(req: &Request, exists: impl Fn(u64) -> bool) -> Result<Asked, String> {
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
pub(super) fn check(asked: &Mode, now: Option<&Mode>) -> Result<(), String> {
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

/// `CLIENT CACHING yes|no` for a client tracking in `mode`: the word to
/// keep for its next command, or Redis's error.
pub(super) fn caching(mode: Option<&Mode>, req: &Request) -> Result<bool, Value> {
    if req.argc() != 3 {
        return Err(Value::wrong_args("client|caching"));
    }
    let Some(mode) = mode.filter(|m| m.optin || m.optout) else {
        return Err(Value::err("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled"));
    };
    match upper(req, 2).as_slice() {
        b"YES" if mode.optin => Ok(true),
        b"YES" => Err(Value::err(
            "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
        )),
        b"NO" if mode.optout => Ok(false),
        b"NO" => Err(Value::err(
            "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
        )),
        _ => Err(Value::err("ERR syntax error")),
    }
}

/// What `CLIENT TRACKINGINFO` shows of a client's tracking.
pub(super) struct Info<'a> {
    /// `None`: tracking is off.
    pub(super) mode: Option<&'a Mode>,
    pub(super) caching: Option<bool>,
    pub(super) broken: bool,
    /// -1 off, 0 without a redirect.
    pub(super) redirect: i64,
}

/// `CLIENT TRACKINGINFO`, encoded as Redis encodes it (its flags are a set
/// in RESP3).
pub(super) fn info(info: Info<'_>, proto: Proto) -> Bytes {
    let mut flags: Vec<&str> = Vec::new();
    let mut prefixes: &[Bytes] = &[];
    match info.mode {
        None => flags.push("off"),
        Some(m) => {
            flags.push("on");
            let named = [
                (m.bcast, "bcast"),
                (m.optin, "optin"),
                (m.optout, "optout"),
                (info.caching == Some(true), "caching-yes"),
                (info.caching == Some(false), "caching-no"),
                (m.noloop, "noloop"),
                (info.broken, "broken_redirect"),
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
    out.extend_from_slice(format!(":{}\r\n", info.redirect).as_bytes());
    bulk(&mut out, b"prefixes");
    out.extend_from_slice(format!("*{}\r\n", prefixes.len()).as_bytes());
    for prefix in prefixes {
        bulk(&mut out, prefix);
    }
    out.freeze()
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
}
