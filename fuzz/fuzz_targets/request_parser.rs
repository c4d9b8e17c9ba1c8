//! Feeds arbitrary bytes, split at an arbitrary point, to the request
//! parser. It must never panic, never allocate by a claimed length, and
//! parse the same requests whether the bytes arrive at once or in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_resp::request::parse_chunks;
use rampart_resp::Limits;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| b as usize) % (data.len().max(1));
    let args = |(reqs, err): (Vec<rampart_resp::Request>, Option<_>)| {
        let reqs: Vec<Vec<bytes::Bytes>> = reqs.iter().map(|r| r.args()).collect();
        (reqs, err)
    };
    let whole = args(parse_chunks(Limits::default(), &[data]));
    let pieces = args(parse_chunks(Limits::default(), &[&data[..split], &data[split..]]));
    assert_eq!(whole, pieces);
});
