//! Tests of `stream.rs`.

use super::*;

#[test]
fn reads_dumps() {
    let keys = vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")];
    let data =
        Bytes::from_static(b"$3\r\n\x00\r\n\r\n:-1\r\n$-1\r\n:-2\r\n$1\r\nx\r\n:1700000000000\r\n");
    let dumped = parse_dumps(&keys, &data).unwrap();
    assert_eq!(dumped[0].payload.as_deref(), Some(&b"\x00\r\n"[..]));
    assert_eq!(dumped[0].expire_at, -1);
    assert!(dumped[1].payload.is_none());
    assert_eq!(dumped[2].expire_at, 1_700_000_000_000);
    let refused = Bytes::from_static(b"-ERR unknown command 'PEXPIRETIME'\r\n");
    assert!(parse_dumps(&keys[..1], &refused)
        .unwrap_err()
        .contains("unknown command"));
    assert_eq!(
        first_error(b"+OK\r\n:1\r\n-ERR Bad data format\r\n").as_deref(),
        Some("ERR Bad data format")
    );
    assert_eq!(first_error(b"+OK\r\n:0\r\n"), None);
}
