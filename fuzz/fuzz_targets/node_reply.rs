//! What Rampart does with a node's reply outside the data path (probes,
//! the connection handshake, control commands, blocking-command replies it
//! decodes): find its end with the scanner, then measure its nesting
//! without recursion before anything recursive sees it. Arbitrary bytes:
//! no panic, and the measure agrees with a plain recursive one on every
//! complete reply (without attribute maps, which decorate rather than
//! nest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_resp::reply::nesting_exceeds;
use rampart_resp::ReplyScanner;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(len)) = ReplyScanner::new(128).scan(data) else {
        // Incomplete or invalid: the measure must still not panic on it.
        let _ = nesting_exceeds(data, 8);
        return;
    };
    let reply = &data[..len];
    for max in [0, 1, 2, 3, 8] {
        let exceeds = nesting_exceeds(reply, max);
        if !reply.contains(&b'|') {
            if let Some(depth) = depth(reply, 0, 0).map(|(_, d)| d) {
                assert_eq!(exceeds, depth > max, "depth {depth}, max {max}");
            }
        }
    }
});

/// The end and nesting depth of the value at `at`, by plain recursion.
fn depth(buf: &[u8], at: usize, level: usize) -> Option<(usize, usize)> {
    if level > 200 {
        return None;
    }
    let kind = *buf.get(at)?;
    let line_end = at + 1 + buf.get(at + 1..)?.windows(2).position(|w| w == b"\r\n")?;
    let n: i64 = std::str::from_utf8(&buf[at + 1..line_end]).ok()?.parse().unwrap_or(0);
    let after = line_end + 2;
    match kind {
        b'$' | b'!' | b'=' if n >= 0 => Some((after.checked_add(n as usize)?.checked_add(2)?, 0)),
        b'*' | b'%' | b'~' | b'>' if n > 0 => {
            let items = n as usize * if kind == b'%' { 2 } else { 1 };
            let (mut pos, mut deepest) = (after, 0);
            for _ in 0..items {
                let (end, d) = depth(buf, pos, level + 1)?;
                pos = end;
                deepest = deepest.max(d);
            }
            Some((pos, deepest + 1))
        }
        _ => Some((after, 0)),
    }
}
