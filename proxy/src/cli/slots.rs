//! `rampart slots`: which shard owns which hash slots, and `rampart slots
//! move`, which moves some to another shard while clients use them.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use super::admin::{encode, Admin};
use super::status::{cells, str, table};
use super::Failure;

pub fn slots(admin: &Admin, toml: bool, json: bool) -> Result<(), Failure> {
    if json {
        print!("{}", admin.get("/v1/slots")?);
        return Ok(());
    }
    let view = admin.get_json("/v1/slots")?;
    let shards = view["shards"].as_array().cloned().unwrap_or_default();
    if toml {
        for shard in &shards {
            println!(
                "[shards.{}]\nslots = \"{}\"",
                str(&shard["shard"]),
                str(&shard["slots"])
            );
        }
        return Ok(());
    }
    let mut rows = vec![cells(&["SHARD", "SLOTS", "RANGES"])];
    for shard in &shards {
        rows.push(vec![
            str(&shard["shard"]),
            shard["count"].to_string(),
            match str(&shard["slots"]) {
                ranges if ranges.is_empty() => "none".into(),
                ranges => ranges,
            },
        ]);
    }
    print!("{}", table(&rows));
    if let Some(line) = moving_line(&view["moving"]) {
        println!("{line}");
    }
    Ok(())
}

/// Asks for the move; with `wait`, shows its progress until it is done.
pub fn move_slots(
    admin: &Admin,
    slots: &str,
    to: &str,
    rate: u64,
    wait: bool,
) -> Result<(), Failure> {
    let path = format!(
        "/v1/slots/move?slots={}&to={}&rate={rate}",
        encode(slots),
        encode(to)
    );
    let said = admin.request("POST", &path, b"")?;
    println!("{}", said.trim_end());
    if !wait {
        println!("follow it with `rampart slots`");
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let view = admin.get_json("/v1/slots")?;
        let moving = &view["moving"];
        if moving.is_null() || str(&moving["to"]) != to {
            eprintln!();
            println!("done: slots {slots} are on shard '{to}'");
            return Ok(());
        }
        eprint!("\r{}", progress_line(&moving["progress"]));
        let _ = std::io::stderr().flush();
    }
}

/// `1234 keys moved (567 by commands), 890 keys/s, pass 1`, and the last
/// error, if any.
fn progress_line(progress: &Value) -> String {
    let walked = progress["moved"].as_u64().unwrap_or(0);
    let by_clients = progress["moved_by_clients"].as_u64().unwrap_or(0);
    let seconds = progress["seconds"].as_f64().unwrap_or(0.0).max(0.001);
    let mut line = format!(
        "{} keys moved ({by_clients} by commands), {:.0} keys/s, pass {}   ",
        walked + by_clients,
        walked as f64 / seconds,
        progress["passes"].as_u64().unwrap_or(0) + 1
    );
    if let Some(error) = progress["last_error"].as_str() {
        line.push_str(&format!("(retrying: {error})"));
    }
    line
}

/// The moving slots, for `rampart slots`.
fn moving_line(moving: &Value) -> Option<String> {
    if moving.is_null() {
        return None;
    }
    Some(format!(
        "moving {} ({} slots) from '{}' to '{}': {}",
        str(&moving["slots"]),
        moving["count"],
        str(&moving["from"]),
        str(&moving["to"]),
        match moving["paused"].as_bool() {
            Some(true) => "starting".to_string(),
            _ => progress_line(&moving["progress"]),
        }
    ))
}
