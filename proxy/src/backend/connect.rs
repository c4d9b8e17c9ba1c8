//! Opening a connection to a node: TCP, then the handshake that puts the
//! connection in the state the link needs (credentials, protocol, database).

use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp3;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::net::tls::Connector;
use crate::net::Stream;

use crate::resp::encode::multibulk;
use crate::resp::Proto;

/// Credentials and timeouts for the nodes.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub username: Option<String>,
    pub password: Option<String>,
    pub timeout: Duration,
    /// TLS to the nodes (`[backend.tls]`), none for plain TCP.
    pub tls: Option<std::sync::Arc<Connector>>,
}

/// An ACL user a client authenticated as: its connections to the nodes
/// log in as that user, so the nodes' ACLs apply to it exactly.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// What a connection must look like once open.
#[derive(Debug, Clone)]
pub struct Session {
    pub proto: Proto,
    pub db: i64,
    /// Log in as this user instead of with Rampart's own credentials.
    pub user: Option<std::sync::Arc<Credentials>>,
}

impl Session {
    pub const DEFAULT: Session = Session {
        proto: Proto::Resp2,
        db: 0,
        user: None,
    };
}

/// Connects and runs the handshake, all within the connect timeout.
/// The largest handshake reply accepted (HELLO's map is a few hundred bytes).
const HANDSHAKE_MAX_REPLY: usize = 1024 * 1024;

pub async fn connect(
    addr: &str,
    opts: &ConnectOptions,
    session: Session,
) -> std::io::Result<Stream> {
    Ok(connect_as(addr, opts, session, false).await?.0)
}

/// Connects as [`connect`] does and also asks the node for the connection's
/// `CLIENT ID` (in the same round trip as the handshake): Rampart needs it
/// to unblock the connection from another one when its client leaves.
pub async fn connect_with_id(
    addr: &str,
    opts: &ConnectOptions,
    session: Session,
) -> std::io::Result<(Stream, Option<i64>)> {
    connect_as(addr, opts, session, true).await
}

async fn connect_as(
    addr: &str,
    opts: &ConnectOptions,
    session: Session,
    want_id: bool,
) -> std::io::Result<(Stream, Option<i64>)> {
    match tokio::time::timeout(opts.timeout, connect_inner(addr, opts, session, want_id)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

async fn connect_inner(
    addr: &str,
    opts: &ConnectOptions,
    session: Session,
    want_id: bool,
) -> std::io::Result<(Stream, Option<i64>)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut stream = match &opts.tls {
        Some(tls) => tls.connect(addr, tcp).await?,
        None => Stream::Tcp(tcp),
    };
    let handshake = super::own::Handshake::new(&stream);
    let mut out = BytesMut::new();
    let mut expected = 0;
    let auth = match &session.user {
        Some(user) => Some((user.username.clone(), user.password.clone())),
        None => opts.password.as_ref().map(|pass| {
            let user = opts.username.clone().unwrap_or_else(|| "default".into());
            (user, pass.clone())
        }),
    };
    match session.proto {
        Proto::Resp3 => {
            let mut args = vec!["HELLO".to_string(), "3".into()];
            if let Some((user, pass)) = &auth {
                args.extend(["AUTH".into(), user.clone(), pass.clone()]);
            }
            multibulk(&mut out, &args);
            expected += 1;
        }
        Proto::Resp2 => {
            if let Some((user, pass)) = &auth {
                multibulk(&mut out, &["AUTH", user, pass]);
                expected += 1;
            }
        }
    }
    if session.db != 0 {
        multibulk(&mut out, &["SELECT", &session.db.to_string()]);
        expected += 1;
    }
    if want_id {
        multibulk(&mut out, &["CLIENT", "ID"]);
        expected += 1;
    }
    if expected == 0 {
        handshake.succeeded();
        return Ok((stream, None));
    }
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut seen = 0;
    let mut id = None;
    while seen < expected {
        let frame = super::frame::read_frame(&mut stream, &mut buf, HANDSHAKE_MAX_REPLY)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("handshake reply: {e}")))?;
        seen += 1;
        // The CLIENT ID comes last; a user whose ACL does not allow
        // it simply has no id (its blocked commands are then ended by
        // closing the connection rather than by CLIENT UNBLOCK).
        let is_id = want_id && seen == expected;
        match frame {
            resp3::types::OwnedFrame::SimpleError { .. } if is_id => {}
            resp3::types::OwnedFrame::SimpleError { data, .. } => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("handshake refused: {data}"),
                ));
            }
            resp3::types::OwnedFrame::Number { data, .. } if is_id => id = Some(data),
            _ => {}
        }
    }
    handshake.succeeded();
    Ok((stream, id))
}
