//! Feeds arbitrary bytes, split at arbitrary points, to the request parser.
//! It must never panic, never allocate by a claimed length, and parse the
//! same requests whether the bytes arrive at once or in pieces.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rampart::resp::{Limits, RequestParser};

fn parse_all(chunks: &[&[u8]]) -> (Vec<Vec<Vec<u8>>>, bool) {
    let mut parser = RequestParser::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(req)) => out.push(req.args().iter().map(|a| a.to_vec()).collect()),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| b as usize) % (data.len().max(1));
    let whole = parse_all(&[data]);
    let pieces = parse_all(&[&data[..split], &data[split..]]);
    assert_eq!(whole, pieces);
});
