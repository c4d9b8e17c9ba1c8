//! Feeds arbitrary bytes to the backend reply scanner, whole and in pieces:
//! no panic, and the same frame boundaries either way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart::resp::ReplyScanner;

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
});
