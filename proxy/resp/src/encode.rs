//! Encoding: requests Rampart sends itself, and replies Rampart answers itself.
//!
//! Replies that come from a backend are forwarded as the bytes the backend
//! wrote; only replies Rampart produces go through here, encoded with
//! `redis-protocol` in whichever protocol version the client negotiated.

use bytes::{BufMut, Bytes, BytesMut};
use redis_protocol::{resp2, resp3};

/// Protocol version a client negotiated with HELLO (2 until it asks for 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

impl Proto {
    pub fn number(self) -> i64 {
        match self {
            Proto::Resp2 => 2,
            Proto::Resp3 => 3,
        }
    }
}

/// Appends `*<n>\r\n$<len>\r\n<arg>\r\n...`.
pub fn multibulk<A: AsRef<[u8]>>(buf: &mut BytesMut, args: &[A]) {
    let mut int = itoa::Buffer::new();
    buf.put_u8(b'*');
    buf.put_slice(int.format(args.len()).as_bytes());
    buf.put_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        buf.put_u8(b'$');
        buf.put_slice(int.format(arg.len()).as_bytes());
        buf.put_slice(b"\r\n");
        buf.put_slice(arg);
        buf.put_slice(b"\r\n");
    }
}

/// A reply Rampart builds itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Simple(String),
    /// Full error text including its code, e.g. `ERR unknown command`.
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// Text for people (`CLIENT LIST`, `INFO`): verbatim in RESP3, bulk in
    /// RESP2.
    Verbatim(Bytes),
    Null,
    Array(Vec<Value>),
    /// A map in RESP3, a flat array of key, value, ... in RESP2.
    Map(Vec<(Value, Value)>),
    /// An out-of-band push in RESP3, an array in RESP2.
    Push(Vec<Value>),
}

impl Value {
    pub fn ok() -> Value {
        Value::Simple("OK".into())
    }

    /// An error reply. Line breaks become spaces, as Redis does: an error
    /// is one line of RESP (a plugin's trap message, say, has several).
    /// Redis's error for a command given the wrong number of arguments.
    pub fn wrong_args(name: &str) -> Value {
        Value::err(format!(
            "ERR wrong number of arguments for '{}' command",
            name.to_lowercase()
        ))
    }

    pub fn err(text: impl Into<String>) -> Value {
        let mut text = text.into();
        if text.contains(['\r', '\n']) {
            text = text.replace("\r\n", " ").replace(['\r', '\n'], " ");
        }
        Value::Error(text)
    }

    pub fn bulk(data: impl Into<Bytes>) -> Value {
        Value::Bulk(data.into())
    }

    pub fn text(data: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(data.as_bytes()))
    }

    /// Appends the encoding for a client speaking `proto`.
    pub fn encode_into(&self, proto: Proto, buf: &mut BytesMut) {
        // Encoding a well-formed frame into a growable buffer cannot fail.
        let _ = match proto {
            Proto::Resp2 => resp2::encode::extend_encode(buf, &self.to_resp2(), false),
            Proto::Resp3 => resp3::encode::complete::extend_encode(buf, &self.to_resp3(), false),
        };
    }

    pub fn encode(&self, proto: Proto) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode_into(proto, &mut buf);
        buf.freeze()
    }

    fn to_resp2(&self) -> resp2::types::BytesFrame {
        use resp2::types::BytesFrame as F;
        match self {
            Value::Simple(s) => F::SimpleString(Bytes::copy_from_slice(s.as_bytes())),
            Value::Error(e) => F::Error(e.as_str().into()),
            Value::Int(i) => F::Integer(*i),
            Value::Bulk(b) | Value::Verbatim(b) => F::BulkString(b.clone()),
            Value::Null => F::Null,
            Value::Array(items) | Value::Push(items) => {
                F::Array(items.iter().map(Value::to_resp2).collect())
            }
            Value::Map(pairs) => F::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [k.to_resp2(), v.to_resp2()])
                    .collect(),
            ),
        }
    }

    fn to_resp3(&self) -> resp3::types::BytesFrame {
        use resp3::types::BytesFrame as F;
        match self {
            Value::Simple(s) => F::SimpleString {
                data: Bytes::copy_from_slice(s.as_bytes()),
                attributes: None,
            },
            Value::Error(e) => F::SimpleError {
                data: e.as_str().into(),
                attributes: None,
            },
            Value::Int(i) => F::Number {
                data: *i,
                attributes: None,
            },
            Value::Bulk(b) => F::BlobString {
                data: b.clone(),
                attributes: None,
            },
            Value::Verbatim(b) => F::VerbatimString {
                data: b.clone(),
                format: resp3::types::VerbatimStringFormat::Text,
                attributes: None,
            },
            Value::Null => F::Null,
            Value::Array(items) => F::Array {
                data: items.iter().map(Value::to_resp3).collect(),
                attributes: None,
            },
            Value::Push(items) => F::Push {
                data: items.iter().map(Value::to_resp3).collect(),
                attributes: None,
            },
            Value::Map(pairs) => F::Map {
                data: pairs
                    .iter()
                    .map(|(k, v)| (k.to_resp3(), v.to_resp3()))
                    .collect(),
                attributes: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_flatten_for_resp2() {
        let v = Value::Map(vec![(Value::text("proto"), Value::Int(3))]);
        assert_eq!(&v.encode(Proto::Resp2)[..], b"*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(&v.encode(Proto::Resp3)[..], b"%1\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(&Value::Null.encode(Proto::Resp2)[..], b"$-1\r\n");
        assert_eq!(&Value::Null.encode(Proto::Resp3)[..], b"_\r\n");
    }
}
