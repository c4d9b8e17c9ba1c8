//! Tests of `rewrite.rs`.

use super::*;

const NOW: u64 = 1_700_000_000_000;

fn judge(r: &Rewriter, args: &[&str]) -> Result<Vec<String>, String> {
    match r.judge_at(Request::from_args(args), NOW) {
        Verdict::Fanout(req) => Ok(req
            .args()
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()),
        Verdict::Primary(_) => Err("primary".into()),
        Verdict::Refused(e) => Err(e),
    }
}

#[test]
fn relative_expiry_becomes_absolute() {
    let r = Rewriter::default();
    let at = (NOW + 10_000).to_string();
    assert_eq!(
        judge(&r, &["set", "k", "v", "nx", "ex", "10"]).unwrap(),
        ["set", "k", "v", "nx", "PXAT", &at]
    );
    assert_eq!(
        judge(&r, &["SET", "k", "v", "PX", "10000"]).unwrap(),
        ["SET", "k", "v", "PXAT", &at]
    );
    assert_eq!(
        judge(&r, &["expire", "k", "10", "NX"]).unwrap(),
        ["PEXPIREAT", "k", &at, "NX"]
    );
    assert_eq!(
        judge(&r, &["SETEX", "k", "10", "v"]).unwrap(),
        ["SET", "k", "v", "PXAT", &at]
    );
    assert_eq!(
        judge(&r, &["psetex", "k", "10000", "v"]).unwrap(),
        ["SET", "k", "v", "PXAT", &at]
    );
    assert_eq!(
        judge(&r, &["GETEX", "k", "EX", "10"]).unwrap(),
        ["GETEX", "k", "PXAT", &at]
    );
    assert_eq!(
        judge(&r, &["RESTORE", "k", "10000", "payload", "REPLACE"]).unwrap(),
        ["RESTORE", "k", &at, "payload", "REPLACE", "ABSTTL"]
    );
    // Values the node refuses or deletes at once stay as they are: the
    // same answer everywhere.
    assert_eq!(
        judge(&r, &["SET", "k", "v", "EX", "-1"]).unwrap(),
        ["SET", "k", "v", "EX", "-1"]
    );
    assert_eq!(
        judge(&r, &["EXPIRE", "k", "abc"]).unwrap(),
        ["EXPIRE", "k", "abc"]
    );
    // A value that looks like an option is not one.
    assert_eq!(judge(&r, &["SET", "k", "EX"]).unwrap(), ["SET", "k", "EX"]);
}

#[test]
fn xadd_gets_rampart_millisecond() {
    let r = Rewriter::default();
    let id = format!("{NOW}-*");
    assert_eq!(
        judge(&r, &["XADD", "s", "*", "f", "v"]).unwrap(),
        ["XADD", "s", &id, "f", "v"]
    );
    assert_eq!(
        judge(
            &r,
            &[
                "xadd",
                "s",
                "nomkstream",
                "maxlen",
                "~",
                "10",
                "limit",
                "5",
                "*",
                "f",
                "v"
            ]
        )
        .unwrap(),
        [
            "xadd",
            "s",
            "nomkstream",
            "maxlen",
            "~",
            "10",
            "limit",
            "5",
            &id,
            "f",
            "v"
        ]
    );
    assert_eq!(
        judge(&r, &["XADD", "s", "1-1", "f", "v"]).unwrap(),
        ["XADD", "s", "1-1", "f", "v"]
    );
    // The clock going back does not make IDs go back.
    let earlier = r.judge_at(Request::from_args(&["XADD", "s", "*", "f", "v"]), NOW - 5);
    let Verdict::Fanout(req) = earlier else {
        panic!("refused")
    };
    assert_eq!(req.arg(2).unwrap(), id.as_bytes());
}

#[test]
fn random_and_unknown_are_refused() {
    let r = Rewriter::default();
    for args in [
        &["SPOP", "s"][..],
        &["XAUTOCLAIM", "s", "g", "c", "10", "0"],
        &["FCALL", "f", "0"],
        &["NOSUCHCOMMAND", "x"],
    ] {
        let e = judge(&r, args).unwrap_err();
        assert!(e.starts_with("ERR rampart:"), "{e}");
    }
    assert_eq!(judge(&r, &["INFO"]).unwrap_err(), "primary");
    assert!(judge(&r, &["SORT", "s", "BY", "nosort", "STORE", "d"])
        .unwrap_err()
        .contains("nosort"));
    assert!(judge(&r, &["SORT", "s", "ALPHA", "STORE", "d"]).is_ok());
    assert_eq!(judge(&r, &["INCR", "k"]).unwrap(), ["INCR", "k"]);
}

#[test]
fn scripts() {
    let r = Rewriter::default();
    let ok = "return redis.call('INCR', KEYS[1])";
    assert!(judge(&r, &["EVAL", ok, "1", "k"]).is_ok());
    assert!(judge(&r, &["EVAL", ok, "0"])
        .unwrap_err()
        .contains("no keys"));
    let random = "return redis.call('SPOP', KEYS[1])";
    assert!(judge(&r, &["EVAL", random, "1", "k"])
        .unwrap_err()
        .contains("'spop'"));
    let relative = "return redis.call('SET', KEYS[1], 'v', 'EX', 10)";
    assert!(judge(&r, &["EVAL", relative, "1", "k"]).is_err());
    // EVALSHA: only scripts Rampart has seen, with the same verdict.
    let sha = sha1_hex(ok.as_bytes());
    assert!(judge(&r, &["EVALSHA", &sha, "1", "k"]).is_ok());
    assert!(judge(&r, &["EVALSHA", &sha1_hex(random.as_bytes()), "1", "k"]).is_err());
    assert!(judge(&r, &["EVALSHA", &"0".repeat(40), "1", "k"])
        .unwrap_err()
        .contains("has not seen"));
    let other = "return redis.call('GET', KEYS[1])";
    assert!(judge(&r, &["SCRIPT", "LOAD", other]).is_ok());
    assert!(judge(
        &r,
        &[
            "evalsha",
            &sha1_hex(other.as_bytes()).to_uppercase(),
            "1",
            "k"
        ]
    )
    .is_ok());
    assert_eq!(
        judge(&r, &["SCRIPT", "EXISTS", &sha]).unwrap_err(),
        "primary"
    );
    // Redis's own SHA1 of "return 1".
    assert_eq!(
        sha1_hex(b"return 1"),
        "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
    );
}
