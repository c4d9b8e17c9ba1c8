//! A key copied from one fan-out node to another during a resync: the
//! source's `DUMP` and `PEXPIRETIME` replies read back, and the `RESTORE`
//! (or `DEL`) that writes the key on the target as the source held it.

use bytes::{Bytes, BytesMut};

use super::log::Dumped;
use crate::resp::encode::multibulk;

/// Writes one key as the source held it: `RESTORE ... REPLACE` with its
/// absolute expiry, or `DEL` if it did not exist.
pub(super) fn restore(out: &mut BytesMut, key: &Dumped) {
    match &key.payload {
        None => multibulk(out, &[&b"DEL"[..], &key.key]),
        Some(payload) if key.expire_at >= 0 => {
            let at = key.expire_at.to_string();
            multibulk(
                out,
                &[
                    &b"RESTORE"[..],
                    &key.key,
                    at.as_bytes(),
                    payload,
                    b"REPLACE",
                    b"ABSTTL",
                ],
            )
        }
        Some(payload) => multibulk(out, &[&b"RESTORE"[..], &key.key, b"0", payload, b"REPLACE"]),
    }
}

/// One RESP2 reply at the front of `data`: its kind byte, its body (a bulk's
/// payload, a number's or an error's text; `None` for a null), and its
/// length.
fn next_reply(data: &[u8]) -> Option<(u8, Option<&[u8]>, usize)> {
    let line_end = data.windows(2).position(|w| w == b"\r\n")?;
    let kind = *data.first()?;
    let line = &data[1..line_end];
    if kind != b'$' {
        return Some((kind, Some(line), line_end + 2));
    }
    let len: i64 = std::str::from_utf8(line).ok()?.parse().ok()?;
    if len < 0 {
        return Some((kind, None, line_end + 2));
    }
    let start = line_end + 2;
    let end = start.checked_add(len as usize)?;
    let body = data.get(start..end)?;
    Some((kind, Some(body), end + 2))
}

/// The source's `DUMP` and `PEXPIRETIME` replies, key by key.
pub(super) fn parse_dumps(keys: &[Bytes], data: &Bytes) -> Result<Vec<Dumped>, String> {
    let mut rest = &data[..];
    let mut read = || -> Result<(u8, Option<Bytes>), String> {
        let (kind, body, len) =
            next_reply(rest).ok_or("resync: a reply from the source could not be read")?;
        let body = body.map(Bytes::copy_from_slice);
        rest = &rest[len..];
        if kind == b'-' {
            let text = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
            return Err(format!("resync: the source refused: {text}"));
        }
        Ok((kind, body))
    };
    let mut dumped = Vec::with_capacity(keys.len());
    for key in keys {
        let (_, payload) = read()?;
        let (_, expiry) = read()?;
        let expire_at = expiry
            .and_then(|e| std::str::from_utf8(&e).ok()?.parse::<i64>().ok())
            .ok_or("resync: PEXPIRETIME did not answer a number")?;
        // -2: the key is gone since SCAN listed it.
        let payload = if expire_at == -2 { None } else { payload };
        dumped.push(Dumped {
            key: key.clone(),
            payload,
            expire_at: expire_at.max(-1),
        });
    }
    Ok(dumped)
}

/// The first error reply among `data`'s replies.
pub(super) fn first_error(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while let Some((kind, body, len)) = next_reply(rest) {
        if kind == b'-' {
            return Some(String::from_utf8_lossy(body.unwrap_or_default()).into_owned());
        }
        rest = &rest[len..];
    }
    None
}
