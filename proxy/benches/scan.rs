//! What finding the end of a backend reply costs, on one thread: Rampart's
//! reply scanner (which only walks the bytes) beside a full RESP decode
//! with `redis-protocol` (building the frames, what a proxy that parses
//! replies would pay), on the replies the data-path benchmark sees.
//! Prints nanoseconds per reply and the ratio.
//!
//!     cargo bench -p rampart --bench scan
//!

use std::hint::black_box;
use std::time::{Duration, Instant};

use rampart::resp::ReplyScanner;

/// `*n` of `$3 xxx`, as LRANGE_100 in redis-benchmark answers.
fn array_of_bulks(n: usize) -> Vec<u8> {
    let mut out = format!("*{n}\r\n").into_bytes();
    for _ in 0..n {
        out.extend_from_slice(b"$3\r\nxxx\r\n");
    }
    out
}

/// A RESP3 map of `n` fields to doubles (HGETALL-like, nested types).
fn map_of_doubles(n: usize) -> Vec<u8> {
    let mut out = format!("%{n}\r\n").into_bytes();
    for i in 0..n {
        out.extend_from_slice(format!("$5\r\nfield\r\n,{i}.5\r\n").as_bytes());
    }
    out
}

/// Best of a few rounds of `iters` calls, in nanoseconds per call.
fn time(iters: u32, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed()
        })
        .min()
        .unwrap_or(Duration::ZERO)
        .as_nanos() as f64
        / iters as f64
}

fn main() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("+OK", b"+OK\r\n".to_vec()),
        ("integer", b":12345\r\n".to_vec()),
        (
            "bulk 100 B",
            [b"$100\r\n".as_ref(), &[b'x'; 100], b"\r\n"].concat(),
        ),
        ("LRANGE 100", array_of_bulks(100)),
        ("map of 10", map_of_doubles(10)),
    ];
    println!(
        "{:<12}{:>14}{:>16}{:>8}",
        "reply", "scanner ns", "full decode ns", "ratio"
    );
    for (name, reply) in &cases {
        let iters = (2_000_000 / reply.len().max(10)) as u32 + 1000;
        let mut scanner = ReplyScanner::new(512);
        let scan = time(iters, || {
            let len = scanner.scan(black_box(reply)).ok().flatten();
            black_box(len);
        });
        let decode = time(iters, || {
            let frame = redis_protocol::resp3::decode::complete::decode(black_box(reply));
            black_box(frame.ok());
        });
        println!("{name:<12}{scan:>14.1}{decode:>16.1}{:>8.2}", scan / decode);
    }
}
