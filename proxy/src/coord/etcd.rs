//! A small client of etcd's v3 API through its JSON gateway (`/v3/...`,
//! served by every etcd since 3.3 on the client port): the handful of
//! calls coordination needs (range, transaction, lease grant, keep-alive
//! and revoke, authentication), each one HTTP/1.1 request with a deadline.
//!
//! Why the gateway and not gRPC: it is the same API message for message,
//! it needs no generated code (so no `protoc` at build time) and it rides
//! on hyper, which Rampart already has. Watches are not used: the
//! coordination loop reads its whole prefix every `poll_ms`, which also
//! gives every read a send time to count the view's age from.
//!
//! One connection at a time, to the first endpoint that answers; a
//! failed request drops it and the next request tries the next endpoint.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::net::tls::Connector;
use crate::net::Stream;

/// Replies larger than this are refused: the prefix Rampart reads holds a
/// few small records per shard and instance.
const MAX_REPLY: usize = 16 << 20;

/// What went wrong talking to etcd.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be reached, or the request timed out.
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error (bad credentials, no leader, ...).
    #[error("etcd refused: {0}")]
    Refused(String),
}

/// A key as read: its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// One comparison of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key does not exist (`create_revision == 0`).
    Absent(String),
    /// The key exists with this value.
    Value(String, Vec<u8>),
    /// The key was created at this revision (it is the same key, not one
    /// deleted and created again).
    Created(String, i64),
    /// The key was last written at this revision (0: it does not exist).
    Modified(String, i64),
}

/// One write of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Put, attached to a lease when `lease` is not 0.
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(String),
}

/// Where etcd is and how to log in.
#[derive(Clone)]
pub struct Endpoints {
    /// `host:port` of each member's client URL.
    pub addrs: Vec<String>,
    pub tls: Option<Arc<Connector>>,
    pub credentials: Option<(String, String)>,
    /// Every request's deadline, connecting included.
    pub timeout: Duration,
}

pub struct Etcd {
    endpoints: Endpoints,
    conn: Mutex<Conn>,
}

#[derive(Default)]
struct Conn {
    sender: Option<SendRequest<Full<Bytes>>>,
    /// The endpoint the next connection tries first.
    next: usize,
    token: Option<String>,
}

impl Etcd {
    pub fn new(endpoints: Endpoints) -> Etcd {
        Etcd {
            endpoints,
            conn: Mutex::new(Conn::default()),
        }
    }

    /// Every key under `prefix`, and the store's revision at the read.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Kv>), EtcdError> {
        self.range_bytes(prefix.as_bytes(), &prefix_end(prefix))
            .await
    }

    /// Every key from `start` (included) to `end` (excluded), in order.
    pub async fn range(&self, start: &str, end: &str) -> Result<(i64, Vec<Kv>), EtcdError> {
        self.range_bytes(start.as_bytes(), end.as_bytes()).await
    }

    async fn range_bytes(&self, start: &[u8], end: &[u8]) -> Result<(i64, Vec<Kv>), EtcdError> {
        let reply = self
            .call(
                "/v3/kv/range",
                json!({"key": b64(start), "range_end": b64(end)}),
            )
            .await?;
        Ok((header_revision(&reply), kvs(&reply)))
    }

    /// Runs the writes if every comparison holds. Returns whether they
    /// held, and the store's revision after the transaction (the writes'
    /// `mod_revision` when they ran).
    pub async fn txn(&self, compare: &[Compare], ops: &[Op]) -> Result<(bool, i64), EtcdError> {
        let compare: Vec<Value> = compare.iter().map(compare_json).collect();
        let success: Vec<Value> = ops.iter().map(op_json).collect();
        let reply = self
            .call(
                "/v3/kv/txn",
                json!({"compare": compare, "success": success}),
            )
            .await?;
        let succeeded = reply.get("succeeded").and_then(Value::as_bool) == Some(true);
        Ok((succeeded, header_revision(&reply)))
    }

    /// A new lease of `ttl_s` seconds; returns its id and granted TTL.
    pub async fn grant(&self, ttl_s: u64) -> Result<(i64, u64), EtcdError> {
        let reply = self
            .call("/v3/lease/grant", json!({"TTL": ttl_s.to_string()}))
            .await?;
        let id = int(&reply, "ID");
        if id == 0 {
            return Err(EtcdError::Refused(format!("lease grant: {reply}")));
        }
        Ok((id, int(&reply, "TTL").max(0) as u64))
    }

    /// Renews a lease; returns its TTL afterwards (0: the lease is gone).
    pub async fn keep_alive(&self, lease: i64) -> Result<u64, EtcdError> {
        let reply = self
            .call("/v3/lease/keepalive", json!({"ID": lease.to_string()}))
            .await?;
        // The gateway streams keep-alive answers as `{"result": {...}}`.
        let result = reply.get("result").unwrap_or(&reply);
        Ok(int(result, "TTL").max(0) as u64)
    }

    /// Ends a lease now: every key on it goes.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({"ID": lease.to_string()}))
            .await
            .map(|_| ())
    }

    /// One request, on the current connection or a new one; with
    /// credentials, logs in first (and again when the token expired).
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let timeout = self.endpoints.timeout;
        let mut conn = self.conn.lock().await;
        match tokio::time::timeout(timeout, self.call_locked(&mut conn, path, &body)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                if matches!(e, EtcdError::Unreachable(_)) {
                    conn.sender = None;
                }
                Err(e)
            }
            Err(_) => {
                conn.sender = None;
                conn.next += 1;
                Err(EtcdError::Unreachable(format!(
                    "{path}: no answer within {} ms",
                    timeout.as_millis()
                )))
            }
        }
    }

    async fn call_locked(
        &self,
        conn: &mut Conn,
        path: &str,
        body: &Value,
    ) -> Result<Value, EtcdError> {
        if self.endpoints.credentials.is_some() && conn.token.is_none() {
            conn.token = Some(self.authenticate(conn).await?);
        }
        match self.post(conn, path, body).await {
            Err(EtcdError::Refused(e)) if e.contains("token") && conn.token.is_some() => {
                conn.token = Some(self.authenticate(conn).await?);
                self.post(conn, path, body).await
            }
            other => other,
        }
    }

    async fn authenticate(&self, conn: &mut Conn) -> Result<String, EtcdError> {
        let Some((name, password)) = &self.endpoints.credentials else {
            return Err(EtcdError::Refused("no credentials".into()));
        };
        conn.token = None;
        let reply = self
            .post(
                conn,
                "/v3/auth/authenticate",
                &json!({"name": name, "password": password}),
            )
            .await?;
        reply
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| EtcdError::Refused(format!("authenticate: {reply}")))
    }

    async fn post(&self, conn: &mut Conn, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let sender = match conn.sender.as_mut() {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                conn.sender = Some(self.connect(conn).await?);
                conn.sender
                    .as_mut()
                    .ok_or_else(|| EtcdError::Unreachable("no connection".into()))?
            }
        };
        let mut request = hyper::Request::post(path)
            .header("host", "etcd")
            .header("content-type", "application/json");
        if let Some(token) = &conn.token {
            request = request.header("authorization", token.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| EtcdError::Refused(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| EtcdError::Unreachable(format!("{path}: {e}")))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| EtcdError::Unreachable(format!("{path}: {e}")))?
            .to_bytes();
        // The keep-alive endpoint streams; its first answer is all we need.
        let first = body.split(|&b| b == b'\n').next().unwrap_or(&body);
        let reply: Value = serde_json::from_slice(first)
            .map_err(|e| EtcdError::Refused(format!("{path}: not JSON ({e})")))?;
        if !status.is_success() || reply.get("error").is_some() {
            let message = reply
                .get("message")
                .or_else(|| reply.get("error"))
                .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                .unwrap_or_else(|| status.to_string());
            return Err(EtcdError::Refused(format!("{path}: {message}")));
        }
        Ok(reply)
    }

    /// Connects to the endpoints in turn, starting with `conn.next`.
    async fn connect(&self, conn: &mut Conn) -> Result<SendRequest<Full<Bytes>>, EtcdError> {
        let addrs = &self.endpoints.addrs;
        let mut last = String::from("no endpoints");
        for _ in 0..addrs.len() {
            let addr = &addrs[conn.next % addrs.len()];
            match self.open(addr).await {
                Ok(sender) => return Ok(sender),
                Err(e) => {
                    last = format!("{addr}: {e}");
                    conn.next += 1;
                }
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    async fn open(&self, addr: &str) -> std::io::Result<SendRequest<Full<Bytes>>> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let stream = match &self.endpoints.tls {
            Some(tls) => tls.connect(addr, tcp).await?,
            None => Stream::Tcp(tcp),
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The end of the range of keys starting with `prefix` (etcd's
/// `clientv3.GetPrefixRangeEnd`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd's JSON writes 64-bit integers as strings, and leaves out zeros.
fn int(value: &Value, field: &str) -> i64 {
    match value.get(field) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn header_revision(reply: &Value) -> i64 {
    reply.get("header").map_or(0, |h| int(h, "revision"))
}

fn kvs(reply: &Value) -> Vec<Kv> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        key: String,
        #[serde(default)]
        value: String,
    }
    let Some(list) = reply.get("kvs").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|kv| {
            let raw: Raw = serde_json::from_value(kv.clone()).ok()?;
            Some(Kv {
                key: String::from_utf8(B64.decode(raw.key).ok()?).ok()?,
                value: B64.decode(raw.value).ok()?,
                create_revision: int(kv, "create_revision"),
                mod_revision: int(kv, "mod_revision"),
                lease: int(kv, "lease"),
            })
        })
        .collect()
}

fn compare_json(compare: &Compare) -> Value {
    match compare {
        Compare::Absent(key) => {
            json!({"key": b64(key.as_bytes()), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
        }
        Compare::Value(key, value) => {
            json!({"key": b64(key.as_bytes()), "target": "VALUE", "result": "EQUAL", "value": b64(value)})
        }
        Compare::Created(key, revision) => {
            json!({"key": b64(key.as_bytes()), "target": "CREATE", "result": "EQUAL", "create_revision": revision.to_string()})
        }
        Compare::Modified(key, revision) => {
            json!({"key": b64(key.as_bytes()), "target": "MOD", "result": "EQUAL", "mod_revision": revision.to_string()})
        }
    }
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => {
            json!({"request_put": {"key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string()}})
        }
        Op::Delete(key) => json!({"request_delete_range": {"key": b64(key.as_bytes())}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn kvs_decode_etcd_json() {
        let reply = json!({"header": {"revision": "7"}, "kvs": [
            {"key": b64(b"/r/x"), "value": b64(b"v"), "create_revision": "3", "mod_revision": "5", "lease": "42"},
            {"key": b64(b"/r/y"), "create_revision": "6", "mod_revision": "6"}
        ]});
        let kvs = kvs(&reply);
        assert_eq!(header_revision(&reply), 7);
        assert_eq!(kvs.len(), 2);
        assert_eq!(kvs[0].key, "/r/x");
        assert_eq!(kvs[0].value, b"v");
        assert_eq!(
            (kvs[0].create_revision, kvs[0].mod_revision, kvs[0].lease),
            (3, 5, 42)
        );
        assert_eq!(kvs[1].value, b"");
    }
}
