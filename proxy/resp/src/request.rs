//! Client requests: the two forms Redis accepts, multibulk (`*2\r\n$3\r\nGET\r\n...`)
//! and inline (`GET key\r\n`, as telnet and `redis-cli` piping send them).
//!
//! This parser is ours rather than a general RESP decoder because a request is a
//! much narrower thing than a reply (an array of bulk strings, nothing else), and
//! because what matters here is behaving exactly like Redis on bad input: the
//! same limits, the same `Protocol error: ...` wording, no allocation sized by a
//! length the client merely claimed. It is resumable: a request that arrives in
//! pieces is never re-scanned from its start, so a slow client sending a large
//! value costs linear work.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::limits::Limits;

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request as the backend should receive it: the client's own bytes for
    /// multibulk requests, a multibulk re-encoding for inline ones.
    pub raw: Bytes,
    /// Where each argument lies in `raw`, command name first. Kept as offsets
    /// (inline for up to four arguments) so that parsing a request costs no
    /// allocation and no reference counting.
    spans: SmallVec<[(usize, usize); 4]>,
}

impl Request {
    /// Builds a request from arguments (used for commands Rampart itself sends).
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        let mut raw = BytesMut::new();
        super::encode::multibulk(&mut raw, args);
        let raw = raw.freeze();
        let mut pos = 0;
        let mut spans = SmallVec::with_capacity(args.len());
        // Walk the encoding we just wrote: "*n\r\n" then "$len\r\n<arg>\r\n" each.
        pos += memchr(b'\n', &raw).map_or(0, |i| i + 1);
        for arg in args {
            pos += memchr(b'\n', &raw[pos..]).map_or(0, |i| i + 1);
            let len = arg.as_ref().len();
            spans.push((pos, pos + len));
            pos += len + 2;
        }
        Request { raw, spans }
    }

    /// Number of arguments, command name included.
    pub fn argc(&self) -> usize {
        self.spans.len()
    }

    /// Argument `i` (0 is the command name).
    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        self.spans.get(i).map(|&(s, e)| &self.raw[s..e])
    }

    /// Every argument as its own `Bytes`. Allocates: for the commands
    /// Rampart answers itself, not for the forwarding path.
    pub fn args(&self) -> Vec<Bytes> {
        self.spans
            .iter()
            .map(|&(s, e)| self.raw.slice(s..e))
            .collect()
    }

    /// The command name, upper-cased ASCII (commands are case-insensitive).
    pub fn name(&self) -> CommandName {
        CommandName::new(self.arg(0).unwrap_or(b""))
    }

    /// Argument `i` upper-cased, for subcommands and options (`CLIENT SETNAME`, `BLOCK`).
    pub fn arg_upper(&self, i: usize) -> Option<CommandName> {
        self.arg(i).map(CommandName::new)
    }
}

/// A command or option name, upper-cased into a small inline buffer so that
/// classifying a command allocates nothing. Names longer than the buffer (no
/// real command is) compare unequal to every known name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CommandName {
    buf: [u8; 24],
    len: u8,
}

impl CommandName {
    pub fn new(name: &[u8]) -> CommandName {
        let mut buf = [0u8; 24];
        if name.len() > buf.len() {
            return CommandName { buf, len: u8::MAX };
        }
        for (dst, src) in buf.iter_mut().zip(name) {
            *dst = src.to_ascii_uppercase();
        }
        CommandName {
            buf,
            len: name.len() as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        if self.len == u8::MAX {
            b"?"
        } else {
            &self.buf[..self.len as usize]
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("?")
    }
}

impl std::fmt::Debug for CommandName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request the client sent that Redis would refuse at the protocol level.
/// The text is Redis's own; the connection must be closed after replying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(what: impl Into<String>) -> ProtocolError {
        ProtocolError(what.into())
    }
}

/// Where the parser is inside the request at the front of the buffer.
#[derive(Debug, Default)]
enum State {
    /// Nothing consumed yet.
    #[default]
    Start,
    /// Inside a multibulk request: `remaining` bulks still to read, `pos` is the
    /// first unread byte, `args` the (start, end) offsets of bulks read so far.
    Multibulk {
        remaining: usize,
        pos: usize,
        args: SmallVec<[(usize, usize); 4]>,
        /// Length of the bulk whose header was read but whose payload has not
        /// fully arrived (payload starts at `pos`).
        bulk: Option<usize>,
    },
}

/// Resumable request parser; one per client connection.
pub struct RequestParser {
    limits: Limits,
    state: State,
    /// For inline requests: how far we already looked for the newline.
    inline_scanned: usize,
}

impl RequestParser {
    pub fn new(limits: Limits) -> RequestParser {
        RequestParser {
            limits,
            state: State::Start,
            inline_scanned: 0,
        }
    }

    /// Parses the next request at the front of `buf`, removing its bytes.
    /// `Ok(None)` means more bytes are needed. Empty requests (a blank inline
    /// line, `*0`) are skipped like Redis skips them.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            let found = if matches!(self.state, State::Start) && buf[0] != b'*' {
                self.parse_inline(buf)?
            } else {
                self.parse_multibulk(buf)?
            };
            match found {
                Parsed::Incomplete => return Ok(None),
                Parsed::Empty => continue,
                Parsed::Request(req) => return Ok(Some(req)),
            }
        }
    }

    /// How many bytes the request in progress still needs at least; lets the
    /// reader reserve buffer space for a large value in one step.
    pub fn wanted(&self) -> usize {
        match &self.state {
            State::Multibulk {
                pos,
                bulk: Some(len),
                ..
            } => pos + len + 2,
            _ => 0,
        }
    }

    fn parse_inline(&mut self, buf: &mut BytesMut) -> Result<Parsed, ProtocolError> {
        let from = self.inline_scanned;
        let Some(nl) = memchr(b'\n', &buf[from..]).map(|i| i + from) else {
            if buf.len() > self.limits.max_inline_len {
                return Err(ProtocolError::new("too big inline request"));
            }
            self.inline_scanned = buf.len();
            return Ok(Parsed::Incomplete);
        };
        self.inline_scanned = 0;
        if nl > self.limits.max_inline_len {
            return Err(ProtocolError::new("too big inline request"));
        }
        let line = buf.split_to(nl + 1);
        let mut end = nl;
        if end > 0 && line[end - 1] == b'\r' {
            end -= 1;
        }
        let args = split_inline_args(&line[..end])
            .ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))?;
        if args.is_empty() {
            return Ok(Parsed::Empty);
        }
        Ok(Parsed::Request(Request::from_args(&args)))
    }

    fn parse_multibulk(&mut self, buf: &mut BytesMut) -> Result<Parsed, ProtocolError> {
        if let State::Start = self.state {
            let Some((count, next)) = read_line_int(buf, 1, self.limits.max_inline_len)
                .map_err(|_| ProtocolError::new("too big mbulk count string"))?
            else {
                return Ok(Parsed::Incomplete);
            };
            let count = count.ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
            if count > self.limits.max_multibulk_len as i64 {
                return Err(ProtocolError::new("invalid multibulk length"));
            }
            if count <= 0 {
                buf.advance_to(next);
                return Ok(Parsed::Empty);
            }
            self.state = State::Multibulk {
                remaining: count as usize,
                pos: next,
                // Never trust the claimed count for an allocation.
                args: SmallVec::with_capacity((count as usize).min(64)),
                bulk: None,
            };
        }
        let State::Multibulk {
            remaining,
            pos,
            args,
            bulk,
        } = &mut self.state
        else {
            return Ok(Parsed::Incomplete);
        };
        while *remaining > 0 {
            let len = match *bulk {
                Some(len) => len,
                None => {
                    if *pos >= buf.len() {
                        return Ok(Parsed::Incomplete);
                    }
                    if buf[*pos] != b'$' {
                        return Err(ProtocolError(format!(
                            "expected '$', got '{}'",
                            buf[*pos] as char
                        )));
                    }
                    let Some((len, next)) =
                        read_line_int(buf, *pos + 1, self.limits.max_inline_len)
                            .map_err(|_| ProtocolError::new("too big bulk count string"))?
                    else {
                        return Ok(Parsed::Incomplete);
                    };
                    let len = match len {
                        Some(len) if len >= 0 && len as u64 <= self.limits.max_bulk_len as u64 => {
                            len as usize
                        }
                        _ => return Err(ProtocolError::new("invalid bulk length")),
                    };
                    *pos = next;
                    *bulk = Some(len);
                    len
                }
            };
            if buf.len() < *pos + len + 2 {
                return Ok(Parsed::Incomplete);
            }
            if &buf[*pos + len..*pos + len + 2] != b"\r\n" {
                // Redis silently trusts the length and drops the two bytes; a
                // proxy forwarding the raw bytes cannot, so it refuses.
                return Err(ProtocolError::new("bulk string not terminated by CRLF"));
            }
            args.push((*pos, *pos + len));
            *pos += len + 2;
            *bulk = None;
            *remaining -= 1;
        }
        let end = *pos;
        let spans = std::mem::take(args);
        self.state = State::Start;
        let raw = buf.split_to(end).freeze();
        Ok(Parsed::Request(Request { raw, spans }))
    }
}

/// Parses input delivered in `chunks`, as successive reads would deliver
/// it, up to the first protocol error. For tests and the fuzz target.
pub fn parse_chunks(limits: Limits, chunks: &[&[u8]]) -> (Vec<Request>, Option<ProtocolError>) {
    let mut parser = RequestParser::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(req)) => out.push(req),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

enum Parsed {
    Incomplete,
    Empty,
    Request(Request),
}

trait AdvanceTo {
    fn advance_to(&mut self, n: usize);
}

impl AdvanceTo for BytesMut {
    fn advance_to(&mut self, n: usize) {
        let _ = self.split_to(n);
    }
}

/// Reads `<integer>\r\n` starting at `from`. `Ok(None)`: the line is not complete.
/// `Err(())`: the line is longer than `max_line` without ending. The inner
/// `Option` is `None` when the line is not a valid 64-bit integer.
#[allow(clippy::type_complexity)]
fn read_line_int(
    buf: &[u8],
    from: usize,
    max_line: usize,
) -> Result<Option<(Option<i64>, usize)>, ()> {
    let Some(cr) = memchr(b'\r', &buf[from.min(buf.len())..]).map(|i| i + from) else {
        if buf.len() - from.min(buf.len()) > max_line {
            return Err(());
        }
        return Ok(None);
    };
    if cr + 1 >= buf.len() {
        return Ok(None);
    }
    let value = parse_i64(&buf[from..cr]);
    // Redis requires "\r\n"; "\r" followed by anything else is a bad number.
    let value = if buf[cr + 1] == b'\n' { value } else { None };
    Ok(Some((value, cr + 2)))
}

/// Strict decimal parse like Redis's `string2ll`: optional '-', digits, no
/// leading '+', spaces, or overflow.
pub fn parse_i64(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.first() {
        Some(b'-') => (true, &digits[1..]),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if neg { -value } else { value })
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Splits an inline request line into arguments the way Redis's `sdssplitargs`
/// does: spaces separate, double quotes allow `\n`, `\xHH` and friends, single
/// quotes allow `\'`, and a closing quote must be followed by a space or the end.
/// `None` means unbalanced quotes.
fn split_inline_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        // A NUL separates like a space (and is consumed: treating it as a
        // separator without consuming it looped forever; found by fuzzing).
        while i < n && (line[i].is_ascii_whitespace() || line[i] == 0) {
            i += 1;
        }
        if i >= n {
            return Some(args);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i >= n {
                    return None;
                }
                if line[i] == b'\\'
                    && i + 3 < n
                    && line[i + 1] == b'x'
                    && line[i + 2].is_ascii_hexdigit()
                    && line[i + 3].is_ascii_hexdigit()
                {
                    cur.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                    i += 3;
                } else if line[i] == b'\\' && i + 1 < n {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        c => c,
                    });
                } else if line[i] == b'"' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(line[i]);
                }
            } else if in_sq {
                if i >= n {
                    return None;
                }
                if line[i] == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    i += 1;
                    cur.push(b'\'');
                } else if line[i] == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(line[i]);
                }
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => cur.push(c),
                }
            }
            i += 1;
        }
        args.push(cur);
    }
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

#[cfg(test)]
mod tests;
