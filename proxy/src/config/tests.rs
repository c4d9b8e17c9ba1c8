//! The configuration's own tests: defaults, the reference file and the
//! docs agree, and mistakes name their field.

use super::*;

const GOOD: &str = r#"
    [proxy]
    listen = "127.0.0.1:6380"
    [shards.main]
    nodes = ["127.0.0.1:7001", "127.0.0.1:7002"]
    read_from = "replicas"
"#;

#[test]
fn empty_secrets_unsafe_shard_names_and_one_node_twice_are_refused() {
    let shard = "[shards.main]\nnodes = [\"127.0.0.1:7001\"]\n";
    for (sections, expected) in [
        ("password = \"\"\n", "proxy.password"),
        ("[admin]\ntoken = \"\"\n", "admin.token"),
    ] {
        let text = format!("[proxy]\nlisten = \"127.0.0.1:6380\"\n{sections}{shard}");
        let e = Config::parse(&text).unwrap_err().0;
        assert!(e.contains(expected) && e.contains("empty"), "{e}");
    }
    let e = Config::parse("[proxy]\nlisten = \"127.0.0.1:6380\"\n[shards.\"../../escaped\"]\nnodes = [\"127.0.0.1:7001\"]\n")
        .unwrap_err()
        .0;
    assert!(e.contains("not a shard name"), "{e}");
    let two = "[proxy]\nlisten = \"127.0.0.1:6380\"\n[shards.a]\nnodes = [\"127.0.0.1:1\"]\nslots = \"0-8191\"\n\
               [shards.b]\nnodes = [\"localhost:1\"]\nslots = \"8192-16383\"\n";
    let e = Config::parse(two).unwrap_err().0;
    assert!(e.contains("also a node of shard"), "{e}");
}

#[test]
fn protected_mode_wants_a_password_off_loopback() {
    let open = GOOD.replace("127.0.0.1:6380", "0.0.0.0:6380");
    let e = Config::parse(&open).unwrap_err().0;
    assert!(
        e.contains("proxy.password") && e.contains("protected"),
        "{e}"
    );
    let with_password = open.replace("[proxy]", "[proxy]\npassword = \"x\"");
    assert!(Config::parse(&with_password).is_ok());
    let unprotected = open.replace("[proxy]", "[proxy]\nprotected_mode = false");
    assert!(Config::parse(&unprotected).is_ok());
    assert!(
        Config::parse_with(&open, |name| (name == "RAMPART_PASSWORD")
            .then(|| "x".into()))
        .is_ok()
    );
}

/// docs/configuration.md carries reference.toml whole, so the page is
/// complete on its own and cannot drift from the file.
#[test]
fn the_configuration_page_shows_the_reference_file() {
    let reference = include_str!("../../../examples/configs/reference.toml");
    let page = include_str!("../../../docs/configuration.md");
    assert!(
        page.contains(&format!("```toml\n{}\n```", reference.trim_end())),
        "docs/configuration.md must end with examples/configs/reference.toml verbatim"
    );
}

/// `examples/configs/reference.toml` documents every field with its
/// default: it must parse to exactly what the bare minimum parses to,
/// and name every field there is.
#[test]
fn the_reference_config_is_every_default() {
    let reference = include_str!("../../../examples/configs/reference.toml");
    let minimal = r#"
        [proxy]
        listen = "127.0.0.1:6380"
        [admin]
        listen = "127.0.0.1:6381"
        [shards.main]
        nodes = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    "#;
    let full = format!("{:?}", Config::parse(reference).unwrap());
    assert_eq!(full, format!("{:?}", Config::parse(minimal).unwrap()));
    // Field names as Debug prints them (`name: value`).
    let fields = full
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter_map(|word| word.strip_suffix(':'))
        .filter(|name| {
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !name.is_empty()
        });
    for field in fields {
        let documented = [
            format!("{field} ="),
            format!("[{field}]"),
            format!("[{field}."),
            format!(".{field}]"),
        ];
        assert!(
            documented.iter().any(|d| reference.contains(d.as_str())),
            "reference.toml does not document `{field}`"
        );
    }
}

#[test]
fn coordination_settings_are_checked() {
    let with = |section: &str| Config::parse(&format!("{GOOD}\n[coordination]\n{section}\n"));
    let base = "backend = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\n";
    let config = with(base).unwrap();
    let coordination = config.coordination.unwrap();
    assert_eq!(coordination.prefix, "/rampart/default");
    assert_eq!(
        coordination.instance_id("0.0.0.0:6380").rsplit(':').next(),
        Some("6380")
    );
    for (extra, field) in [
        ("", "coordination.endpoints"),
        ("prefix = \"rampart\"", "coordination.prefix"),
        ("instance = \"a/b\"", "coordination.instance"),
        (
            "lease_ttl_s = 1\nrequest_timeout_ms = 600",
            "coordination.lease_ttl_s",
        ),
        ("max_view_age_ms = 500", "coordination.max_view_age_ms"),
    ] {
        let section = if field == "coordination.endpoints" {
            "backend = \"etcd\"\nendpoints = []".to_string()
        } else {
            format!("{base}{extra}")
        };
        let error = with(&section).unwrap_err().to_string();
        assert!(error.contains(field), "{extra}: {error}");
    }
    let state_dir = format!("{GOOD}\n[failover]\nstate_dir = \"/tmp/x\"\n[coordination]\n{base}");
    let error = Config::parse(&state_dir).unwrap_err().to_string();
    assert!(error.contains("failover.state_dir"), "{error}");
}

#[test]
fn zones_are_numbered_and_must_name_known_nodes() {
    let text =
        format!("{GOOD}zones = {{ \"127.0.0.1:7002\" = \"b\", \"127.0.0.1:7001\" = \"a\" }}\n")
            .replace(
                "listen = \"127.0.0.1:6380\"",
                "listen = \"127.0.0.1:6380\"\nzone = \"b\"",
            );
    let config = Config::parse(&text).unwrap();
    let numbers = config.zone_numbers();
    assert_eq!((numbers["a"], numbers["b"]), (1, 2));
    let unknown = text.replace("\"127.0.0.1:7002\" = \"b\"", "\"127.0.0.1:9999\" = \"b\"");
    let error = Config::parse(&unknown).unwrap_err().to_string();
    assert!(error.contains("shards.main.zones"), "{error}");
}

#[test]
fn secrets_left_unset_come_from_the_environment() {
    let text = format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:6381\"\n");
    let env = |name: &str| match name {
        "RAMPART_ADMIN_TOKEN" => Some("from-env".to_string()),
        "RAMPART_BACKEND_PASSWORD" => Some("node-secret".to_string()),
        _ => None,
    };
    let config = Config::parse_with(&text, env).unwrap();
    assert_eq!(config.admin.token.as_deref(), Some("from-env"));
    assert_eq!(config.backend.password.as_deref(), Some("node-secret"));
    assert_eq!(config.proxy.password, None);
    // Without it, an admin listener open to the network is refused.
    let refused = Config::parse(&text).unwrap_err().to_string();
    assert!(refused.contains("admin.token"), "{refused}");
    // The file wins over the environment.
    let pinned = text.replace(
        "listen = \"0.0.0.0:6381\"",
        "listen = \"0.0.0.0:6381\"\ntoken = \"file\"",
    );
    assert_eq!(
        Config::parse_with(&pinned, env)
            .unwrap()
            .admin
            .token
            .as_deref(),
        Some("file")
    );
}

#[test]
fn shards_that_wait_for_replicas_get_two_links() {
    let with = |lines: &str| {
        let c = Config::parse(&format!("{GOOD}\n{lines}")).unwrap();
        c.backend.links_for(&c.shards["main"])
    };
    assert_eq!(with(""), 1);
    assert_eq!(with("[shards.main.replication]\nquorum = \"one\""), 2);
    assert_eq!(
        with("[backend]\nlinks_per_node = 3\n[shards.main.replication]\nquorum = \"one\""),
        3
    );
}

#[test]
fn good_config_has_defaults() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.backend.links_per_node, None);
    assert_eq!(c.shards["main"].read_from, ReadFrom::Replicas);
}

#[test]
fn errors_name_the_field() {
    let typo = GOOD.replace("read_from", "read_form");
    let e = Config::parse(&typo).unwrap_err().0;
    assert!(e.contains("shards.main") && e.contains("read_form"), "{e}");

    let bad_value = GOOD.replace("\"replicas\"", "\"everywhere\"");
    let e = Config::parse(&bad_value).unwrap_err().0;
    assert!(
        e.contains("shards.main.read_from") && e.contains("primary"),
        "{e}"
    );

    let bad_addr = GOOD.replace("127.0.0.1:7002", "localhost");
    let e = Config::parse(&bad_addr).unwrap_err().0;
    assert!(
        e.contains("shards.main.nodes[1]") && e.contains("host:port"),
        "{e}"
    );

    let bad_type = format!("{GOOD}\n[probe]\ninterval_ms = \"fast\"\n");
    let e = Config::parse(&bad_type).unwrap_err().0;
    assert!(e.contains("probe.interval_ms"), "{e}");
}

#[test]
fn fanout_settings_are_checked() {
    let fanout = format!("{GOOD}\n[shards.main.replication]\nmode = \"fanout\"\n");
    let c = Config::parse(&fanout).unwrap();
    assert_eq!(c.shards["main"].replication.mode, Mode::Fanout);
    assert_eq!(c.shards["main"].replication.backlog_mb, 64);

    let managed = format!("{fanout}manage_replication = true\n");
    let e = Config::parse(&managed).unwrap_err().0;
    assert!(
        e.contains("shards.main.replication.manage_replication"),
        "{e}"
    );

    let empty = format!("{fanout}backlog_mb = 0\n");
    let e = Config::parse(&empty).unwrap_err().0;
    assert!(e.contains("shards.main.replication.backlog_mb"), "{e}");

    let follower = format!("[failover]\nrole = \"follower\"\n{fanout}");
    let e = Config::parse(&follower).unwrap_err().0;
    assert!(
        e.contains("shards.main.replication.mode") && e.contains("leader"),
        "{e}"
    );

    let unknown = fanout.replace("\"fanout\"", "\"mirror\"");
    let e = Config::parse(&unknown).unwrap_err().0;
    assert!(
        e.contains("shards.main.replication.mode") && e.contains("fanout"),
        "{e}"
    );
}

/// Several shards each name their slots, but one shard without a `slots`
/// line beside shards that own none (added to receive slots) owns them
/// all: the file a reload grows from one shard stays valid.
#[test]
fn a_lone_shard_without_slots_owns_them_all_beside_empty_ones() {
    let one = "[proxy]\nlisten = \"127.0.0.1:6380\"\n[shards.a]\nnodes = [\"127.0.0.1:1\"]\n";
    let grown = format!("{one}[shards.b]\nnodes = [\"127.0.0.1:2\"]\nslots = \"\"\n");
    assert!(Config::parse(&grown).is_ok());
    let owned = format!("{one}[shards.b]\nnodes = [\"127.0.0.1:2\"]\nslots = \"0-10\"\n");
    let e = Config::parse(&owned).unwrap_err().0;
    assert!(
        e.contains("shards.a.slots") && e.contains("2 shards"),
        "{e}"
    );
    let neither = format!("{one}[shards.b]\nnodes = [\"127.0.0.1:2\"]\n");
    assert!(Config::parse(&neither).is_err());
}
