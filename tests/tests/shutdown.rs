//! Graceful shutdown: no new clients, every reply already owed is
//! delivered, then connections close.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rampart_tests::{Cluster, Proxy, Setup};
use redis::Commands;

fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn shutdown_delivers_what_is_owed_then_closes() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let _: () = proxy.conn().set("k", "v").unwrap();

    let mut idle = TcpStream::connect(proxy.addr).unwrap();
    let mut busy = TcpStream::connect(proxy.addr).unwrap();
    // A blocking command that answers after 400 ms, and a GET queued behind it.
    busy.write_all(b"BLPOP nothing 0.4\r\nGET k\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let started = Instant::now();
    proxy.server.stop();

    // The idle client is closed at once, the busy one after its replies.
    assert_eq!(read_to_eof(&mut idle), b"");
    let replies = read_to_eof(&mut busy);
    assert_eq!(
        replies,
        b"*-1\r\n$1\r\nv\r\n",
        "{}",
        String::from_utf8_lossy(&replies)
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // No new clients.
    let refused = match TcpStream::connect(proxy.addr) {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"PING\r\n");
            read_to_eof(&mut s).is_empty()
        }
    };
    assert!(refused, "a new client was served after shutdown");
}
