//! A RESP3 connection read frame by frame, for `CLIENT TRACKING` tests:
//! replies as their raw bytes, invalidation pushes kept apart.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A RESP3 connection read frame by frame, for `CLIENT TRACKING`: replies
/// as their raw bytes, invalidation pushes kept apart.
pub struct Resp3 {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
    /// Pushes read while waiting for replies.
    pub pushes: Vec<Vec<u8>>,
}

impl Resp3 {
    pub fn connect(port: u16) -> Resp3 {
        let mut conn = Resp3::connect_resp2(port);
        conn.call(&["HELLO", "3"]);
        conn
    }

    /// A connection left in RESP2.
    pub fn connect_resp2(port: u16) -> Resp3 {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Resp3 {
            stream,
            buf: Vec::new(),
            pushes: Vec::new(),
        }
    }

    /// `CLIENT ID`.
    pub fn id(&mut self) -> String {
        let reply = self.call(&["CLIENT", "ID"]);
        reply.trim_start_matches(':').trim_end().to_string()
    }

    pub fn send(&mut self, args: &[&str]) {
        use std::io::Write;
        let mut out = format!("*{}\r\n", args.len());
        for arg in args {
            out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.stream.write_all(out.as_bytes()).unwrap();
    }

    /// The raw reply to `args` (pushes before it set aside).
    pub fn call(&mut self, args: &[&str]) -> String {
        self.send(args);
        loop {
            let frame = self.frame().expect("a reply");
            if frame.starts_with(b">") {
                self.pushes.push(frame);
            } else {
                return String::from_utf8_lossy(&frame).into_owned();
            }
        }
    }

    /// The next frame; `None` when the connection closed.
    pub fn frame(&mut self) -> Option<Vec<u8>> {
        use std::io::Read;
        loop {
            if let Some(used) = complete(&self.buf) {
                return Some(self.buf.drain(..used).collect());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// The keys invalidated so far ("*" for a flush), once `until` holds
    /// of them or 5 s passed.
    pub fn invalidated(&mut self, until: impl Fn(&BTreeSet<String>) -> bool) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        loop {
            for push in self.pushes.drain(..) {
                let text = String::from_utf8_lossy(&push).into_owned();
                assert!(text.starts_with(">2\r\n$10\r\ninvalidate\r\n"), "{text}");
                match text.split("\r\n").nth(3) {
                    Some("_") => {
                        keys.insert("*".to_string());
                    }
                    _ => keys.extend(text.split("\r\n").skip(5).step_by(2).map(str::to_string)),
                }
                keys.remove("");
            }
            if until(&keys) {
                return keys;
            }
            self.stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            match self.frame_or_timeout() {
                Some(frame) => self.pushes.push(frame),
                None => return keys,
            }
        }
    }

    /// Whether Rampart closes the connection within `limit` (whatever it
    /// sends before).
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        use std::io::Read;
        let deadline = Instant::now() + limit;
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                _ => {}
            }
        }
        false
    }

    pub fn frame_or_timeout(&mut self) -> Option<Vec<u8>> {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(used) = complete(&self.buf) {
                return Some(self.buf.drain(..used).collect());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(n) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                Ok(_) => return None,
                Err(_) if Instant::now() < deadline => {}
                Err(_) => return None,
            }
        }
    }
}

/// The length of the complete frame `buf` starts with: RESP2 first (its
/// nulls are no RESP3), then RESP3.
fn complete(buf: &[u8]) -> Option<usize> {
    if let Ok(Some((_, used))) = redis_protocol::resp2::decode::decode(buf) {
        return Some(used);
    }
    let decoded = redis_protocol::resp3::decode::complete::decode(buf);
    decoded.ok().flatten().map(|(_, used)| used)
}
