//! `MONITOR` through Rampart: the node's feed of commands, less those
//! Rampart sends for itself (probes, role changes, the `WAIT` after
//! synchronous writes, its links' handshakes), which a client watching for
//! its own commands would otherwise see first. See [`crate::backend::own`].

use bytes::{Buf, BytesMut};

use crate::backend::own;

#[derive(Default)]
pub struct MonitorFilter {
    /// An incomplete line from the last read.
    partial: BytesMut,
    attribution: own::Attribution,
}

impl MonitorFilter {
    /// Takes bytes from the node; returns the complete lines the client
    /// should see.
    pub fn feed(&mut self, data: &[u8]) -> BytesMut {
        self.partial.extend_from_slice(data);
        let mut out = BytesMut::with_capacity(self.partial.len());
        while let Some(end) = memchr_crlf(&self.partial) {
            let line = &self.partial[..end + 2];
            if keep(line, &mut self.attribution) {
                out.extend_from_slice(line);
            }
            self.partial.advance(end + 2);
        }
        out
    }
}

fn memchr_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Whether a MONITOR line is a client's command (or not a command at all,
/// like the `+OK` that starts the feed).
fn keep(line: &[u8], attribution: &mut own::Attribution) -> bool {
    let text = String::from_utf8_lossy(line);
    let (Some(open), Some(close)) = (text.find('['), text.find("] ")) else {
        return true;
    };
    let Some((_db, addr)) = text[open + 1..close].split_once(' ') else {
        return true;
    };
    let mut args = quoted(&text[close + 2..]);
    let command = args.next().unwrap_or_default();
    let first = args.next().unwrap_or_default();
    !attribution.is_internal(addr, &command, &first)
}

/// The quoted arguments of a MONITOR line, unescaped just enough to compare.
fn quoted(rest: &str) -> impl Iterator<Item = String> + '_ {
    let mut chars = rest.chars().peekable();
    std::iter::from_fn(move || {
        while chars.peek().is_some_and(|c| *c != '"') {
            chars.next();
        }
        chars.next()?;
        let mut arg = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => arg.extend(chars.next()),
                '"' => return Some(arg),
                c => arg.push(c),
            }
        }
        Some(arg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_client_lines_and_splits_across_reads() {
        let mut f = MonitorFilter::default();
        let a = f.feed(b"+OK\r\n+1.0 [0 127.0.0.1:1] \"SET\" \"k");
        assert_eq!(&a[..], b"+OK\r\n");
        let b = f.feed(b"\" \"v\"\r\n");
        assert_eq!(&b[..], b"+1.0 [0 127.0.0.1:1] \"SET\" \"k\" \"v\"\r\n");
        let args: Vec<String> = quoted("\"a\\\"b\" \"c\"").collect();
        assert_eq!(args, ["a\"b", "c"]);
    }
}
