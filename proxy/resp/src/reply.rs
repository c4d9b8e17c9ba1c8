//! Finding where a backend reply ends, without building it.
//!
//! Replies from a backend are forwarded to the client as the backend wrote
//! them: Rampart only needs to know where each one ends to match it to its
//! request. Building a frame tree for every reply (an `LRANGE` of 100 items is
//! 101 allocations) would cost more than the forwarding itself, so this scanner
//! walks RESP2 and RESP3 types, keeping only a stack of counts. It is resumable
//! so a large reply arriving in pieces is scanned once, and nesting depth is
//! bounded so a garbled or hostile backend cannot make it grow without limit.

/// A backend sent bytes that are not RESP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reply from backend: {0}")]
pub struct ReplyError(pub &'static str);

/// `levels` nested aggregates in a row, each with `remaining` elements
/// still to finish (counting the one open inside it). Runs keep deep
/// replies cheap: Redis nests a Lua table's reply as deep as the script
/// built it, one single-element array inside the next, and a chain of
/// those thousands deep is one entry here, not thousands.
#[derive(Debug, Clone, Copy)]
struct Open {
    remaining: u64,
    /// Attribute maps (`|`) decorate the value that follows them, so finishing
    /// one does not finish an element of the enclosing aggregate.
    attribute: bool,
    levels: u64,
}

/// Resumable scanner for one reply at a time.
#[derive(Debug)]
pub struct ReplyScanner {
    /// Bytes of the current reply already walked.
    pos: usize,
    stack: Vec<Open>,
    max_depth: usize,
}

impl ReplyScanner {
    pub fn new(max_depth: usize) -> ReplyScanner {
        ReplyScanner {
            pos: 0,
            stack: Vec::new(),
            max_depth,
        }
    }

    /// The nesting bound this scanner enforces.
    pub fn depth(&self) -> usize {
        self.max_depth
    }

    /// `buf` starts at the first byte of a reply. Returns the reply's length
    /// once it is complete, `None` while more bytes are needed. Call again with
    /// the same start (and more bytes) after `None`.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ReplyError> {
        loop {
            let Some(&kind) = buf.get(self.pos) else {
                return Ok(None);
            };
            match kind {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
                    let Some(line_end) = find_crlf(buf, self.pos + 1) else {
                        return Ok(None);
                    };
                    self.pos = line_end + 2;
                }
                b'$' | b'!' | b'=' => {
                    if self.blob(buf, kind)?.is_none() {
                        return Ok(None);
                    }
                }
                b'*' | b'%' | b'~' | b'>' | b'|' => {
                    let Some((n, after_line)) = read_len(buf, self.pos + 1)? else {
                        return Ok(None);
                    };
                    self.pos = after_line;
                    if n == -1 && kind == b'*' {
                        // RESP2 null array: a complete element.
                    } else if n < 0 {
                        return Err(ReplyError("bad aggregate length"));
                    } else {
                        let items = if kind == b'%' || kind == b'|' {
                            (n as u64) * 2
                        } else {
                            n as u64
                        };
                        if items > 0 {
                            self.open(items, kind == b'|')?;
                            continue;
                        }
                        if kind == b'|' {
                            // An empty attribute map: the value still follows.
                            continue;
                        }
                    }
                }
                _ => return Err(ReplyError("unknown type byte")),
            }
            // An element is finished. The commonest aggregate is an array
            // of bulk strings (LRANGE, HGETALL, MGET ...): take those in
            // this tight loop rather than through the general dispatch.
            loop {
                if self.element_done() {
                    let len = self.pos;
                    self.pos = 0;
                    return Ok(Some(len));
                }
                if !self.run_of_bulks(buf)? {
                    return Ok(None);
                }
                if buf.get(self.pos) != Some(&b'$') {
                    break;
                }
                if self.blob(buf, b'$')?.is_none() {
                    return Ok(None);
                }
            }
        }
    }

    /// Consumes the blob (`$`, `!`, `=`) at `pos`; `None` if it has not
    /// fully arrived (nothing is consumed then).
    #[inline(always)]
    fn blob(&mut self, buf: &[u8], kind: u8) -> Result<Option<()>, ReplyError> {
        let Some(end) = blob_end(buf, self.pos, kind == b'$')? else {
            return Ok(None);
        };
        self.pos = end;
        Ok(Some(()))
    }

    /// Walks the bulk strings of a plain array one after another, short of
    /// its last element, with the position and count in registers rather
    /// than through `element_done` per element: that bookkeeping was half
    /// the cost of an `LRANGE` reply. False if a bulk string has not fully
    /// arrived (what came before it is consumed, the count kept).
    #[inline(always)]
    fn run_of_bulks(&mut self, buf: &[u8]) -> Result<bool, ReplyError> {
        let Some(top) = self.stack.last_mut() else {
            return Ok(true);
        };
        if top.levels != 1 || top.attribute {
            return Ok(true);
        }
        let mut pos = self.pos;
        let mut left = top.remaining;
        let mut whole = true;
        while left > 1 && buf.get(pos) == Some(&b'$') {
            match blob_end(buf, pos, true)? {
                Some(end) => {
                    pos = end;
                    left -= 1;
                }
                None => {
                    whole = false;
                    break;
                }
            }
        }
        self.pos = pos;
        top.remaining = left;
        Ok(whole)
    }

    /// Enters an aggregate of `items` elements.
    fn open(&mut self, items: u64, attribute: bool) -> Result<(), ReplyError> {
        if let Some(top) = self.stack.last_mut() {
            if top.remaining == items && top.attribute == attribute {
                top.levels += 1;
                return Ok(());
            }
        }
        if self.stack.len() >= self.max_depth {
            return Err(ReplyError("reply nested too deeply"));
        }
        self.stack.push(Open {
            remaining: items,
            attribute,
            levels: 1,
        });
        Ok(())
    }

    /// Records one finished element; true when the whole reply is finished.
    fn element_done(&mut self) -> bool {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return true;
            };
            if top.remaining > 1 {
                // The innermost level of the run has one fewer left; the
                // levels outside it do not.
                let inner = Open {
                    remaining: top.remaining - 1,
                    attribute: top.attribute,
                    levels: 1,
                };
                top.levels -= 1;
                if top.levels == 0 {
                    *top = inner;
                } else {
                    // Never past the bound by more than this one entry,
                    // which goes as the run unwinds.
                    self.stack.push(inner);
                }
                return false;
            }
            if top.attribute {
                // A finished attribute map finishes nothing around it.
                top.levels -= 1;
                if top.levels == 0 {
                    self.stack.pop();
                }
                return false;
            }
            // Every level of the run had one element left: all finish.
            self.stack.pop();
        }
    }
}

/// Where the blob (`$`, `!`, `=`) starting at `at` ends; `None` if it has
/// not fully arrived. `nullable`: `$-1` (RESP2's null) is allowed.
#[inline(always)]
fn blob_end(buf: &[u8], at: usize, nullable: bool) -> Result<Option<usize>, ReplyError> {
    // Most values are short: a one-digit length needs no loop.
    let header = match buf.get(at + 1..at + 4) {
        Some(&[d @ b'0'..=b'9', b'\r', b'\n']) => Some(((d - b'0') as i64, at + 4)),
        _ => read_len(buf, at + 1)?,
    };
    let Some((len, after_line)) = header else {
        return Ok(None);
    };
    if len == -1 && nullable {
        return Ok(Some(after_line));
    }
    if len < 0 {
        return Err(ReplyError("bad blob length"));
    }
    let end = after_line + len as usize + 2;
    if buf.len() < end {
        return Ok(None);
    }
    if buf[end - 2] != b'\r' || buf[end - 1] != b'\n' {
        return Err(ReplyError("blob not terminated by CRLF"));
    }
    Ok(Some(end))
}

/// Reads a length line (`-1\r\n`, `42\r\n`) starting at `from` in one pass.
/// `Ok(None)`: the line has not fully arrived.
#[inline(always)]
fn read_len(buf: &[u8], from: usize) -> Result<Option<(i64, usize)>, ReplyError> {
    const BAD: ReplyError = ReplyError("bad length");
    let mut i = from;
    let negative = buf.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let digits_start = i;
    let mut value: i64 = 0;
    loop {
        let Some(&c) = buf.get(i) else {
            return Ok(None);
        };
        match c {
            b'0'..=b'9' => {
                // 18 digits cannot overflow an i64; no length is that long.
                if i - digits_start >= 18 {
                    return Err(BAD);
                }
                value = value * 10 + (c - b'0') as i64;
                i += 1;
            }
            b'\r' => break,
            _ => return Err(BAD),
        }
    }
    if i == digits_start {
        return Err(BAD);
    }
    match buf.get(i + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((if negative { -value } else { value }, i + 2))),
        Some(_) => Err(BAD),
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        match buf[i..].iter().position(|&b| b == b'\r') {
            Some(off) => {
                let cr = i + off;
                if cr + 1 >= buf.len() {
                    return None;
                }
                if buf[cr + 1] == b'\n' {
                    return Some(cr);
                }
                i = cr + 1;
            }
            None => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(input: &[u8]) -> Option<usize> {
        ReplyScanner::new(64).scan(input).unwrap()
    }

    #[test]
    fn every_type() {
        for frame in [
            &b"+OK\r\n"[..],
            b"-ERR no\r\n",
            b":12\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"$3\r\na\rb\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"%1\r\n+k\r\n~2\r\n#t\r\n,1.5\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n",
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
            b"=8\r\ntxt:abcd\r\n",
            b"*0\r\n",
            b"_\r\n",
        ] {
            assert_eq!(
                whole(frame),
                Some(frame.len()),
                "{:?}",
                String::from_utf8_lossy(frame)
            );
            let mut extended = frame.to_vec();
            extended.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(whole(&extended), Some(frame.len()));
        }
    }

    #[test]
    fn resumes_byte_by_byte_through_arrays_of_bulks() {
        let frame = b"*2\r\n*4\r\n$1\r\na\r\n$-1\r\n$2\r\nbc\r\n$0\r\n\r\n*1\r\n$1\r\nz\r\n";
        // Every split point, fed in two steps and one byte at a time.
        for split in 0..frame.len() {
            let mut scanner = ReplyScanner::new(64);
            assert_eq!(
                scanner.scan(&frame[..split]).unwrap(),
                None,
                "split {split}"
            );
            assert_eq!(
                scanner.scan(frame).unwrap(),
                Some(frame.len()),
                "split {split}"
            );
        }
        let mut scanner = ReplyScanner::new(64);
        for end in 1..frame.len() {
            assert_eq!(scanner.scan(&frame[..end]).unwrap(), None, "at {end}");
        }
        assert_eq!(scanner.scan(frame).unwrap(), Some(frame.len()));
    }

    #[test]
    fn resumes_byte_by_byte() {
        let frame = b"*3\r\n$5\r\nhello\r\n%1\r\n:1\r\n:2\r\n+x\r\n";
        let mut scanner = ReplyScanner::new(64);
        for end in 1..frame.len() {
            assert_eq!(scanner.scan(&frame[..end]).unwrap(), None, "at {end}");
        }
        assert_eq!(scanner.scan(frame).unwrap(), Some(frame.len()));
    }

    #[test]
    fn rejects_garbage_and_depth() {
        let mut s = ReplyScanner::new(4);
        assert!(s.scan(b"?what\r\n").is_err());
        let mut s = ReplyScanner::new(4);
        assert!(s.scan(b"*1\r\n*2\r\n*1\r\n*2\r\n*1\r\n:1\r\n").is_err());
        let mut s = ReplyScanner::new(4);
        assert!(s.scan(b"$-7\r\n").is_err());
    }

    /// A Lua table nested a million deep (one element per level, as Redis
    /// replies it) scans in constant memory.
    #[test]
    fn deep_chains_are_one_run() {
        let depth = 1_000_000;
        let mut frame = b"*1\r\n".repeat(depth);
        frame.extend_from_slice(b":7\r\n+after\r\n");
        let mut s = ReplyScanner::new(4);
        assert_eq!(s.scan(&frame).unwrap(), Some(depth * 4 + 4));
        assert!(s.stack.capacity() <= 4, "{}", s.stack.capacity());
    }

    /// Runs split and unwind exactly as a plain stack would.
    #[test]
    fn runs_finish_where_a_plain_stack_would() {
        let frames: [&[u8]; 6] = [
            b"*2\r\n*2\r\n*2\r\n:1\r\n:2\r\n:3\r\n:4\r\n",
            b"*2\r\n*2\r\n:1\r\n*2\r\n:2\r\n:3\r\n:4\r\n",
            b"*1\r\n*1\r\n*2\r\n*1\r\n:1\r\n:2\r\n",
            b"*3\r\n%1\r\n+k\r\n*1\r\n*1\r\n:1\r\n|1\r\n+a\r\n+b\r\n:2\r\n:3\r\n",
            b"|1\r\n+a\r\n+b\r\n:1\r\n",
            b"*2\r\n|1\r\n+a\r\n+x\r\n:1\r\n|1\r\n+b\r\n+y\r\n:2\r\n",
        ];
        for frame in frames {
            let mut s = ReplyScanner::new(64);
            let mut padded = frame.to_vec();
            padded.extend_from_slice(b"+next\r\n");
            assert_eq!(
                s.scan(&padded).unwrap(),
                Some(frame.len()),
                "{}",
                String::from_utf8_lossy(frame)
            );
            assert!(s.stack.is_empty());
        }
    }
}

/// The text of `reply` when it is a simple error (`-ERR ...\r\n`), as a
/// node wrote it.
pub fn error_text(reply: &[u8]) -> Option<String> {
    let text = reply.strip_prefix(b"-")?;
    let end = text
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(text.len());
    Some(String::from_utf8_lossy(&text[..end]).into_owned())
}

/// Whether the complete reply `reply` (already checked to be valid RESP)
/// nests aggregates deeper than `max`, counted level by level.
pub fn nesting_exceeds(reply: &[u8], max: usize) -> bool {
    let mut open: Vec<u64> = Vec::new();
    let mut pos = 0;
    while pos < reply.len() {
        let kind = reply[pos];
        let Some(end) = reply[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| pos + i)
            .filter(|end| *end > pos)
        else {
            return false;
        };
        let n: i64 = std::str::from_utf8(&reply[pos + 1..end])
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        pos = end + 2;
        let mut done = true;
        match kind {
            b'$' | b'!' | b'=' if n >= 0 => pos = pos.saturating_add(n as usize).saturating_add(2),
            b'*' | b'~' | b'>' | b'%' | b'|' if n > 0 => {
                let items = if matches!(kind, b'%' | b'|') {
                    n.saturating_mul(2)
                } else {
                    n
                };
                open.push(items as u64);
                if open.len() > max {
                    return true;
                }
                done = false;
            }
            _ => {}
        }
        while done {
            match open.last_mut() {
                Some(left) if *left > 1 => {
                    *left -= 1;
                    done = false;
                }
                Some(_) => {
                    open.pop();
                }
                None => done = false,
            }
        }
    }
    false
}

#[cfg(test)]
mod nesting_tests {
    use super::nesting_exceeds;

    #[test]
    fn nesting_is_measured_level_by_level() {
        let deep = "*1\r\n".repeat(5000) + ":1\r\n";
        assert!(nesting_exceeds(deep.as_bytes(), 128));
        let ok = "*1\r\n".repeat(100) + ":1\r\n";
        assert!(!nesting_exceeds(ok.as_bytes(), 128));
        // Siblings do not add up: a map of arrays is two levels.
        let wide = "%2\r\n$1\r\na\r\n*2\r\n:1\r\n:2\r\n$1\r\nb\r\n*1\r\n$3\r\nxyz\r\n";
        assert!(!nesting_exceeds(wide.as_bytes(), 2));
        assert!(nesting_exceeds(wide.as_bytes(), 1));
        // Empty blobs and anything else never panic.
        assert!(!nesting_exceeds(b"*2\r\n$0\r\n\r\n$-1\r\n", 4));
        for garbage in [
            &b"\r\n\r\n"[..],
            b"*9223372036854775807\r\n",
            b"$9223372036854775807\r\n",
            b"%9223372036854775807\r\n",
        ] {
            let _ = nesting_exceeds(garbage, 4);
        }
    }
}
