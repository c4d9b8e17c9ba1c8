//! Tests of `request.rs`.

use super::*;

fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
    let mut parser = RequestParser::new(Limits::default());
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(req) = parser.parse(&mut buf)? {
        out.push(req.args().iter().map(|a| a.to_vec()).collect());
    }
    Ok(out)
}

#[test]
fn multibulk_and_inline() {
    let reqs =
        parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nSET a \"b c\\x41\"\r\n\r\n*0\r\n").unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0], vec![b"GET".to_vec(), b"k".to_vec()]);
    assert_eq!(
        reqs[1],
        vec![b"SET".to_vec(), b"a".to_vec(), b"b cA".to_vec()]
    );
}

#[test]
fn byte_at_a_time_is_the_same() {
    let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\nPING\r\n";
    let mut parser = RequestParser::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &b in input.iter() {
        buf.extend_from_slice(&[b]);
        while let Some(req) = parser.parse(&mut buf).unwrap() {
            got.push(req);
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].raw[..], &input[..33]);
    assert_eq!(got[0].arg(2), Some(&b"value"[..]));
    assert_eq!(&got[1].raw[..], b"*1\r\n$4\r\nPING\r\n");
}

#[test]
fn redis_wording_for_bad_input() {
    let err = |input: &[u8]| parse_all(input).unwrap_err().to_string();
    assert_eq!(err(b"*abc\r\n"), "Protocol error: invalid multibulk length");
    assert_eq!(
        err(b"*99999999999\r\n"),
        "Protocol error: invalid multibulk length"
    );
    assert_eq!(
        err(b"*1\r\n+x\r\n"),
        "Protocol error: expected '$', got '+'"
    );
    assert_eq!(err(b"*1\r\n$-5\r\n"), "Protocol error: invalid bulk length");
    assert_eq!(
        err(b"*1\r\n$999999999999\r\n"),
        "Protocol error: invalid bulk length"
    );
    assert_eq!(
        err(b"SET \"a\r\n"),
        "Protocol error: unbalanced quotes in request"
    );
    assert_eq!(
        err(&vec![b'a'; 70_000]),
        "Protocol error: too big inline request"
    );
    let mut long = b"*".to_vec();
    long.extend(vec![b'1'; 70_000]);
    assert_eq!(err(&long), "Protocol error: too big mbulk count string");
}

#[test]
fn nul_bytes_in_inline_requests_terminate() {
    let reqs = parse_all(b"\n\0\0\nGET\0a\n").unwrap();
    assert_eq!(reqs, vec![vec![b"GET".to_vec(), b"a".to_vec()]]);
}

#[test]
fn huge_claimed_count_does_not_allocate() {
    let mut parser = RequestParser::new(Limits::default());
    let mut buf = BytesMut::from(&b"*1048576\r\n$1\r\na\r\n"[..]);
    assert!(parser.parse(&mut buf).unwrap().is_none());
    if let State::Multibulk { args, .. } = &parser.state {
        assert!(args.capacity() <= 64);
    }
}

/// Cheap, deterministic stand-in for the fuzz target (which needs
/// cargo-fuzz): random RESP-ish input must never panic, and must parse
/// the same whether it arrives at once or split in two.
#[test]
fn random_input_parses_the_same_in_pieces() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"*$\r\n-+:0123456789 \"'\\xaGET";
    for _ in 0..20_000 {
        let len = (next() % 48) as usize;
        let input: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let split = if len == 0 {
            0
        } else {
            (next() % len as u64) as usize
        };
        let args = |(reqs, err): (Vec<Request>, Option<ProtocolError>)| {
            let reqs: Vec<Vec<Bytes>> = reqs.iter().map(Request::args).collect();
            (reqs, err)
        };
        let whole = args(parse_chunks(Limits::default(), &[&input]));
        let pieces = args(parse_chunks(
            Limits::default(),
            &[&input[..split], &input[split..]],
        ));
        assert_eq!(whole, pieces, "{:?}", String::from_utf8_lossy(&input));
    }
}
