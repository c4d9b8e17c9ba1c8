//! Feeds arbitrary bytes to the backend reply scanner, whole and in pieces:
//! no panic, the same frame boundaries either way, and the same boundary
//! as a plain recursive walk wherever both find a complete reply (the
//! scanner keeps runs of equal levels as one entry; this checks that the
//! runs split and unwind exactly as a plain stack would).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_resp::ReplyScanner;

fuzz_target!(|data: &[u8]| {
    let whole = ReplyScanner::new(64).scan(data);
    let mut scanner = ReplyScanner::new(64);
    let mut pieces = Ok(None);
    for end in 1..=data.len() {
        pieces = scanner.scan(&data[..end]);
        if !matches!(pieces, Ok(None)) {
            break;
        }
    }
    if let (Ok(Some(a)), Ok(Some(b))) = (&whole, &pieces) {
        assert_eq!(a, b);
    }
    if let Ok(Some(len)) = whole {
        assert!(len <= data.len());
    }
    if let (Ok(Some(len)), Some(reference)) = (&whole, walk(data, 0, 0)) {
        assert_eq!(*len, reference, "the scanner and a plain walk disagree");
    }
});

/// The end of the value starting at `at`, by plain recursion (a finished
/// attribute map is followed by the value it decorates). `None` when the
/// bytes are incomplete, invalid, or nested deeper than 64.
fn walk(buf: &[u8], at: usize, depth: usize) -> Option<usize> {
    if depth > 64 {
        return None;
    }
    let kind = *buf.get(at)?;
    let line_end = at + 1 + buf[at + 1..].windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[at + 1..line_end]).ok()?;
    let after = line_end + 2;
    match kind {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Some(after),
        b'$' | b'!' | b'=' => {
            let n: i64 = line.parse().ok()?;
            if n == -1 && kind == b'$' {
                return Some(after);
            }
            let end = after.checked_add(usize::try_from(n).ok()?)?;
            (buf.get(end..end + 2)? == b"\r\n").then_some(end + 2)
        }
        b'*' | b'%' | b'~' | b'>' | b'|' => {
            let n: i64 = line.parse().ok()?;
            if n == -1 && kind == b'*' {
                return Some(after);
            }
            let items = usize::try_from(n).ok()? * if matches!(kind, b'%' | b'|') { 2 } else { 1 };
            let mut pos = after;
            for _ in 0..items {
                pos = walk(buf, pos, depth + 1)?;
            }
            if kind == b'|' {
                return walk(buf, pos, depth);
            }
            Some(pos)
        }
        _ => None,
    }
}
