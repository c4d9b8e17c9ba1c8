//! A connection that is plain TCP or TLS over TCP, and its two halves.
//!
//! Everything that talks to a client or a node holds one of these, so
//! TLS is decided where a connection is opened or accepted and nowhere
//! else. A plain connection splits into tokio's owned TCP halves (no lock
//! on the hot path); a TLS one into tokio's generic halves, which share the
//! TLS session behind a lock, as they must.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// One connection, either way.
pub enum Stream {
    Tcp(TcpStream),
    /// A client's connection to Rampart's TLS listener.
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Rampart's TLS connection to a node.
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Accepted(s) => s.get_ref().0,
            Stream::Connected(s) => s.get_ref().0,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (rd, wr) = s.into_split();
                (ReadHalf::Tcp(rd), WriteHalf::Tcp(wr))
            }
            tls => {
                let (rd, wr) = tokio::io::split(tls);
                (ReadHalf::Tls(rd), WriteHalf::Tls(wr))
            }
        }
    }
}

/// The reading half of a [`Stream`].
pub enum ReadHalf {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Stream>),
}

/// The writing half of a [`Stream`].
pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Stream>),
}

/// `AsyncRead` by passing each call to the variant's own stream.
macro_rules! delegate_read {
    ($type:ty: $($variant:path),+) => {
        impl AsyncRead for $type {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

/// `AsyncWrite` likewise, vectored writes included (the client writer
/// gathers replies into one vectored write).
macro_rules! delegate_write {
    ($type:ty: $($variant:path),+) => {
        impl AsyncWrite for $type {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $($variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $($variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $($variant(s) => s.is_write_vectored(),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_read!(Stream: Stream::Tcp, Stream::Accepted, Stream::Connected);
delegate_write!(Stream: Stream::Tcp, Stream::Accepted, Stream::Connected);
delegate_read!(ReadHalf: ReadHalf::Tcp, ReadHalf::Tls);
delegate_write!(WriteHalf: WriteHalf::Tcp, WriteHalf::Tls);
