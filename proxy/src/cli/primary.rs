//! `rampart switchover`, `promote` and `resync`: an operator's changes to
//! a shard's primary and nodes through the admin API (`operate/primary.rs`
//! does them), with the admin token when one is set.

use super::admin::{encode, Admin};
use super::progress::Step;
use super::Failure;

pub fn switchover(admin: &Admin, shard: &str, to: Option<&str>) -> Result<(), Failure> {
    let mut path = format!("/v1/shards/{}/switchover", encode(shard));
    if let Some(target) = to {
        path.push_str(&format!("?target={}", encode(target)));
    }
    let step = Step::start(&format!(
        "switching over shard {shard}: holding writes until {} has every one",
        to.unwrap_or("the new primary")
    ));
    let answer = step.finish(admin.request("POST", &path, &[]), "done")?;
    println!("{}", answer.trim_end());
    Ok(())
}

/// `rampart promote SHARD NODE --force`.
pub fn promote(admin: &Admin, shard: &str, node: &str, force: bool) -> Result<(), Failure> {
    if !force {
        return Err(Failure::Usage(format!(
            "promoting {node} skips the check that it holds every acknowledged write: \
             writes it lacks are lost. Look at `rampart status` and `rampart events` first, \
             then run again with --force"
        )));
    }
    let path = format!("/v1/shards/{}/promote?node={}", encode(shard), encode(node));
    let answer = admin.request("POST", &path, &[])?;
    println!("{}", answer.trim_end());
    Ok(())
}

pub fn resync(admin: &Admin, shard: &str, node: &str) -> Result<(), Failure> {
    let path = format!("/v1/shards/{}/resync?node={}", encode(shard), encode(node));
    let answer = admin.request("POST", &path, &[])?;
    println!("{}", answer.trim_end());
    Ok(())
}
