//! UNSUBSCRIBE / PUNSUBSCRIBE / SUNSUBSCRIBE from a client that is not
//! subscribed (a subscribed client is piped to its node and never gets
//! here): one confirmation per channel, count 0, as Redis answers.

use bytes::{Bytes, BytesMut};

use crate::resp::{Proto, Request, Value};

pub(super) fn confirmations(req: &Request, proto: Proto) -> Bytes {
    let args = req.args();
    let kind = Bytes::from(req.name().as_str().to_lowercase());
    let channels: Vec<Value> = if args.len() > 1 {
        args[1..].iter().cloned().map(Value::Bulk).collect()
    } else {
        vec![Value::Null]
    };
    let mut out = BytesMut::new();
    for channel in channels {
        Value::Push(vec![Value::Bulk(kind.clone()), channel, Value::Int(0)])
            .encode_into(proto, &mut out);
    }
    out.freeze()
}
