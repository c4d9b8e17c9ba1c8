//! The `RAMPART` commands on the client port (`proxy.admin_commands`):
//! what Rampart is doing, and, after `RAMPART AUTH` with the admin token,
//! changing it (switchover, policies).

use crate::client::session::Session;
use crate::context::Context;
use crate::resp::{Request, Value};

/// The refusal of a `RAMPART` command that would change Rampart, from a
/// client that may not (commands off, or not `RAMPART AUTH`ed).
pub(super) fn change_refused(ctx: &Context, session: &Session, req: &Request) -> Option<Value> {
    if !changes_rampart(req) {
        return None;
    }
    if !ctx.config.proxy.admin_commands {
        return Some(Value::err("ERR rampart: commands that change Rampart are off on the client port (proxy.admin_commands); use the admin API or the rampart CLI"));
    }
    if ctx.secrets.current().admin_required() && !session.admin {
        return Some(Value::err(
            "NOAUTH rampart: send RAMPART AUTH <admin token> first",
        ));
    }
    None
}

/// `RAMPART AUTH <admin.token>`: lets this connection change Rampart
/// (with `proxy.admin_commands` on).
pub(super) fn admin_auth(ctx: &Context, session: &mut Session, req: &Request) -> Value {
    if req.argc() != 3 {
        return Value::wrong_args("rampart|auth");
    }
    let secrets = ctx.secrets.current();
    if !secrets.admin_required() {
        return Value::err("ERR rampart: no admin.token is configured");
    }
    if secrets.admin_token_ok(req.arg(2).unwrap_or_default()) {
        session.admin = true;
        Value::ok()
    } else {
        Value::err("WRONGPASS invalid admin token")
    }
}

/// `RAMPART SWITCHOVER <shard> [host:port]`: answered once the new
/// primary takes writes, or with why it could not.
pub(super) async fn switchover(ctx: &Context, req: &Request) -> Value {
    let args = req.args();
    if !(3..=4).contains(&args.len()) {
        return Value::err("ERR wrong number of arguments for 'rampart|switchover' command");
    }
    let shard = String::from_utf8_lossy(&args[2]).into_owned();
    let target = args.get(3).map(|t| String::from_utf8_lossy(t).into_owned());
    match ctx.switchover(&shard, target).await {
        Ok(done) => Value::Simple(done),
        Err(e) => Value::err(e.resp()),
    }
}

/// `RAMPART POLICY LOAD|SHADOW <kind> <file in plugins.dir|builtin:name> [config]`,
/// `RAMPART POLICY ACTIVATE|ROLLBACK <kind>`, `RAMPART POLICY LIST`.
/// Applies to the first shard.
pub(super) async fn policy(ctx: &Context, req: &Request) -> Value {
    use crate::policy::swap::{Kind, Mode, Source};
    const USAGE: &str = "ERR usage: RAMPART POLICY LOAD router|quorum|detector <file in plugins.dir|builtin:name> [config] | SHADOW router <file in plugins.dir|builtin:name> [config] | ACTIVATE|ROLLBACK router | LIST";
    let args = req.args();
    let text = |i: usize| args.get(i).map(|a| String::from_utf8_lossy(a).into_owned());
    let action = text(2).unwrap_or_default().to_uppercase();
    if action == "LIST" {
        return match serde_json::to_string_pretty(&ctx.policies()) {
            Ok(json) => Value::bulk(json),
            Err(e) => Value::err(format!("ERR {e}")),
        };
    }
    let Some(kind) = text(3).as_deref().and_then(Kind::parse) else {
        return Value::err(USAGE);
    };
    let shard = ctx.topology.first().name.clone();
    let result = match (action.as_str(), text(4)) {
            ("LOAD" | "SHADOW", Some(source)) if args.len() <= 6 => {
                let mode = if action == "LOAD" {
                    Mode::Activate
                } else {
                    Mode::Shadow
                };
                let config = text(5).unwrap_or_default();
                let source = match Source::named(&source, ctx.config.plugins.dir.as_deref()) {
                    Ok(source) => source,
                    Err(e) => return Value::err(format!("ERR rampart: {e}")),
                };
                ctx.load_policy(kind, &shard, source, config, mode)
                    .await
                    .map(|view| match view["generation"].as_u64() {
                        Some(generation) => format!("OK generation {generation}"),
                        None => format!("OK {}", view["name"].as_str().unwrap_or_default()),
                    })
            }
            ("ACTIVATE" | "ROLLBACK", None) if kind != Kind::Router => {
                return Value::err("ERR rampart: only routers have a shadow and a previous generation; load the policy you want instead")
            }
            ("ACTIVATE", None) => ctx
                .activate_shadow(&shard)
                .await
                .map(|n| format!("OK generation {n}")),
            ("ROLLBACK", None) => ctx
                .rollback_router(&shard)
                .await
                .map(|n| format!("OK generation {n}")),
            _ => return Value::err(USAGE),
        };
    match result {
        Ok(done) => Value::Simple(done),
        Err(e) => Value::err(e.resp()),
    }
}

/// The `RAMPART` commands that only look: TOPOLOGY, POLICIES, HELP.
pub(super) fn show(ctx: &Context, req: &Request) -> Value {
    let sub = req.arg_upper(1);
    match sub.as_ref().map(|s| s.as_bytes()) {
            Some(b"TOPOLOGY") => {
                match serde_json::to_string_pretty(&ctx.topology.snapshot()) {
                    Ok(json) => Value::bulk(json),
                    Err(e) => Value::err(format!("ERR {e}")),
                }
            }
            Some(b"POLICIES") => {
                match serde_json::to_string_pretty(&ctx.policies()) {
                    Ok(json) => Value::bulk(json),
                    Err(e) => Value::err(format!("ERR {e}")),
                }
            }
            Some(b"HELP") => Value::Array(
                [
                    "RAMPART <subcommand>. Subcommands are:",
                    "TOPOLOGY",
                    "    Shards, nodes, roles and health as JSON.",
                    "POLICIES",
                    "    Each shard's read policy, with calls, traps and fallbacks, as JSON.",
                    "POLICY LOAD router|quorum|detector <file in plugins.dir|builtin:name> [config]",
                    "    Load a policy and make it active.",
                    "POLICY SHADOW router <file in plugins.dir|builtin:name> [config]",
                    "    Run a router beside the active one, only counting where they agree.",
                    "POLICY ACTIVATE|ROLLBACK router",
                    "    Make the shadow router active, or go back to the previous generation.",
                    "POLICY LIST",
                    "    Routers (active, previous, shadow), quorums and the detector, as JSON.",
                    "SWITCHOVER <shard> [<host:port>]",
                    "    Move the primary role to the given replica (or the best one) without losing a write.",
                    "AUTH <admin token>",
                    "    Allow this connection to change Rampart (SWITCHOVER, POLICY LOAD ...); needs proxy.admin_commands.",
                    "HELP",
                    "    Print this help.",
                ]
                .iter()
                .map(|line| Value::Simple((*line).into()))
                .collect(),
            ),
            _ => Value::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try RAMPART HELP.",
                sub.map(|s| s.as_str().to_string()).unwrap_or_default()
            )),
        }
}

/// `RAMPART SWITCHOVER` and `RAMPART POLICY` other than `LIST`: they
/// change how Rampart routes, replicates or fails over.
fn changes_rampart(req: &Request) -> bool {
    match req.arg_upper(1).as_ref().map(|s| s.as_bytes()) {
        Some(b"SWITCHOVER") => true,
        Some(b"POLICY") => req.arg_upper(2).is_none_or(|a| a.as_bytes() != b"LIST"),
        _ => false,
    }
}
