//! Reduces a node's reply to a blocking pop to what putting the popped
//! element back needs, and makes the command that puts it back: for a
//! client that left while its pop was being answered (see `blocking.rs`).

use bytes::Bytes;

use crate::resp::{Proto, Request};

/// A reply, reduced to what undoing a pop needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plain {
    Null,
    Text(Bytes),
    List(Vec<Plain>),
    Other,
}

impl Plain {
    fn text(&self) -> Option<&Bytes> {
        match self {
            Plain::Text(t) => Some(t),
            _ => None,
        }
    }

    fn list(&self) -> Option<&[Plain]> {
        match self {
            Plain::List(items) => Some(items),
            _ => None,
        }
    }
}

/// Decodes one reply in the client's protocol.
pub(crate) fn decode(data: &[u8], proto: Proto) -> Option<Plain> {
    // `redis-protocol` decodes recursively: a node's reply nested thousands
    // deep must not reach it.
    if crate::resp::reply::nesting_exceeds(data, crate::backend::frame::MAX_DEPTH) {
        return None;
    }
    match proto {
        Proto::Resp2 => {
            use redis_protocol::resp2::types::OwnedFrame as F;
            fn plain(f: F) -> Plain {
                match f {
                    F::Null => Plain::Null,
                    F::BulkString(b) | F::SimpleString(b) => Plain::Text(b.into()),
                    F::Integer(i) => Plain::Text(i.to_string().into()),
                    F::Array(items) => Plain::List(items.into_iter().map(plain).collect()),
                    F::Error(_) => Plain::Other,
                }
            }
            let (frame, _) = redis_protocol::resp2::decode::decode(data).ok()??;
            Some(plain(frame))
        }
        Proto::Resp3 => {
            use redis_protocol::resp3::types::OwnedFrame as F;
            fn plain(f: F) -> Plain {
                match f {
                    F::Null => Plain::Null,
                    F::BlobString { data, .. }
                    | F::SimpleString { data, .. }
                    | F::VerbatimString { data, .. } => Plain::Text(data.into()),
                    F::Number { data, .. } => Plain::Text(data.to_string().into()),
                    F::Double { data, .. } => Plain::Text(format_score(data).into()),
                    F::Array { data, .. } | F::Push { data, .. } => {
                        Plain::List(data.into_iter().map(plain).collect())
                    }
                    F::Set { data, .. } => Plain::List(data.into_iter().map(plain).collect()),
                    F::Map { data, .. } => Plain::List(
                        data.into_iter()
                            .flat_map(|(k, v)| [plain(k), plain(v)])
                            .collect(),
                    ),
                    _ => Plain::Other,
                }
            }
            let (frame, _) = redis_protocol::resp3::decode::complete::decode(data).ok()??;
            Some(plain(frame))
        }
    }
}

/// A score as ZADD takes it back.
fn format_score(score: f64) -> String {
    if score == f64::INFINITY {
        "+inf".into()
    } else if score == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{score}")
    }
}

/// The command that puts back what `request` popped, given its reply; none
/// when nothing was popped or nothing needs to go back.
pub(crate) fn undo(request: &Request, reply: &Plain) -> Option<Request> {
    let items = reply.list()?;
    let name = request.name();
    let upper = |i: usize| request.arg_upper(i);
    match name.as_bytes() {
        b"BLPOP" | b"BRPOP" => {
            let (key, element) = (items.first()?.text()?, items.get(1)?.text()?);
            let push: &[u8] = if name.as_bytes() == b"BLPOP" {
                b"LPUSH"
            } else {
                b"RPUSH"
            };
            Some(Request::from_args(&[push, key, element]))
        }
        b"BLMPOP" => {
            // BLMPOP timeout numkeys key... LEFT|RIGHT [COUNT n]
            let numkeys = request
                .arg(2)
                .and_then(crate::resp::request::parse_i64)
                .filter(|n| *n > 0)? as usize;
            let left = upper(3 + numkeys).is_some_and(|w| w.as_bytes() == b"LEFT");
            let key = items.first()?.text()?;
            let elements = items.get(1)?.list()?;
            // Popped in order from one end: pushing them back in reverse
            // order restores the list as it was.
            let mut args: Vec<Bytes> = vec![
                Bytes::from_static(if left { b"LPUSH" } else { b"RPUSH" }),
                key.clone(),
            ];
            for element in elements.iter().rev() {
                args.push(element.text()?.clone());
            }
            (args.len() > 2).then(|| Request::from_args(&args))
        }
        b"BZPOPMIN" | b"BZPOPMAX" => {
            let (key, member, score) = (
                items.first()?.text()?,
                items.get(1)?.text()?,
                items.get(2)?.text()?,
            );
            Some(Request::from_args(&[&b"ZADD"[..], key, score, member]))
        }
        b"BZMPOP" => {
            let key = items.first()?.text()?;
            let pairs = items.get(1)?.list()?;
            let mut args: Vec<Bytes> = vec![Bytes::from_static(b"ZADD"), key.clone()];
            for pair in pairs {
                let pair = pair.list()?;
                args.push(pair.get(1)?.text()?.clone());
                args.push(pair.first()?.text()?.clone());
            }
            (args.len() > 2).then(|| Request::from_args(&args))
        }
        // Moves keep the element in the destination; XREADGROUP keeps it
        // pending in the group; XREAD and WAIT consume nothing.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> Request {
        Request::from_args(args)
    }

    fn args(r: &Request) -> Vec<String> {
        r.args()
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    #[test]
    fn undoes_pops_in_both_protocols() {
        let blpop = decode(b"*2\r\n$1\r\nq\r\n$3\r\njob\r\n", Proto::Resp2).unwrap();
        let undo_l = undo(&req(&["blpop", "q", "0"]), &blpop).unwrap();
        assert_eq!(args(&undo_l), ["LPUSH", "q", "job"]);
        let undo_r = undo(&req(&["BRPOP", "q", "0"]), &blpop).unwrap();
        assert_eq!(args(&undo_r), ["RPUSH", "q", "job"]);

        let nil2 = decode(b"*-1\r\n", Proto::Resp2).unwrap();
        assert!(undo(&req(&["BLPOP", "q", "0"]), &nil2).is_none());
        let nil3 = decode(b"_\r\n", Proto::Resp3).unwrap();
        assert!(undo(&req(&["BLPOP", "q", "0"]), &nil3).is_none());

        let zpop = decode(b"*3\r\n$1\r\nz\r\n$1\r\nm\r\n,1.5\r\n", Proto::Resp3).unwrap();
        let undo_z = undo(&req(&["BZPOPMIN", "z", "0"]), &zpop).unwrap();
        assert_eq!(args(&undo_z), ["ZADD", "z", "1.5", "m"]);

        let mpop = decode(
            b"*2\r\n$1\r\nl\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n",
            Proto::Resp2,
        )
        .unwrap();
        let undo_m = undo(
            &req(&["BLMPOP", "0", "2", "k", "l", "LEFT", "COUNT", "2"]),
            &mpop,
        )
        .unwrap();
        assert_eq!(args(&undo_m), ["LPUSH", "l", "b", "a"]);

        let zmpop = decode(
            b"*2\r\n$1\r\nz\r\n*1\r\n*2\r\n$1\r\nm\r\n$1\r\n2\r\n",
            Proto::Resp2,
        )
        .unwrap();
        let undo_zm = undo(&req(&["BZMPOP", "0", "1", "z", "MIN"]), &zmpop).unwrap();
        assert_eq!(args(&undo_zm), ["ZADD", "z", "2", "m"]);

        let moved = decode(b"$3\r\njob\r\n", Proto::Resp2).unwrap();
        assert!(undo(&req(&["BLMOVE", "a", "b", "LEFT", "LEFT", "0"]), &moved).is_none());
    }
}
