//! What a node's reports say about it: a candidate claiming more than its
//! primary ever had (not believed), a primary that restarted or went
//! backwards (stale), an elected replica that resynchronised between its
//! report and its promotion (not kept).

use super::MAX_AHEAD;
use crate::topology::{Node, Report};

/// Why a candidate's report cannot be believed: it claims more data than
/// its primary ever had (a misconfigured or hostile node; electing it
/// would throw away the real replicas' copies).
pub(super) fn implausible(claimed: u64, known: u64, primary: &str) -> Option<String> {
    (known > 0 && claimed > known.saturating_add(MAX_AHEAD)).then(|| {
        format!(
            "claims replication offset {claimed}, more than 1 GiB beyond the most its primary {primary} or another replica was seen with ({known}): not a candidate"
        )
    })
}

pub(super) fn staleness(node: &Node) -> String {
    let how = if node.offset() < node.max_offset() {
        "went backwards"
    } else {
        "restarted"
    };
    format!(
        "{how} (offset {}, the most it was seen with {})",
        node.offset(),
        node.max_offset()
    )
}

/// Whether a node that reported `before` and, once told to follow nobody,
/// `after` still holds what it held: the history it belonged to is its
/// current one (it was already detached) or the one it just left, and its
/// offset did not go back. A full resynchronisation in between changes the
/// history, whatever the offsets say. A server that reports no history
/// (before Redis 4) is judged by its offset alone.
pub(super) fn kept(before: &Report, after: &Report) -> bool {
    let history = match (before.replid.is_empty(), after.replid.is_empty()) {
        (true, true) => true,
        (false, false) => after.replid == before.replid || after.replid2 == before.replid,
        _ => false,
    };
    history && after.offset >= before.offset
}

#[cfg(test)]
mod tests {
    use super::{implausible, kept};
    use crate::topology::{Report, Role};

    fn report(replid: &str, replid2: &str, offset: u64) -> Report {
        Report {
            role: Role::Primary,
            offset,
            connected: false,
            master: None,
            priority: 100,
            replicas: 0,
            replid: replid.into(),
            replid2: replid2.into(),
            backlog: 0,
        }
    }

    #[test]
    fn a_promoted_replica_keeps_the_history_it_was_elected_with() {
        let elected = report("aaa", "000", 500);
        // Promoted: a new history, the old one second, the same offset.
        assert!(kept(&elected, &report("bbb", "aaa", 500)));
        // Already detached: REPLICAOF NO ONE changes nothing.
        assert!(kept(&elected, &report("aaa", "000", 500)));
        // Resynchronised from a restarted primary in between.
        assert!(!kept(&elected, &report("ccc", "ddd", 14)));
        assert!(!kept(&elected, &report("ccc", "ddd", 900)));
        // The same history but less of it.
        assert!(!kept(&elected, &report("bbb", "aaa", 499)));
        // A server without histories: offsets alone.
        assert!(kept(&report("", "", 500), &report("", "", 500)));
        assert!(!kept(&report("", "", 500), &report("", "", 20)));
    }

    #[test]
    fn a_replica_far_ahead_of_its_primary_is_not_believed() {
        assert!(implausible(1_000_000_000_000_000, 28_992, "p:1").is_some());
        assert!(implausible(28_992 + 4096, 28_992, "p:1").is_none());
        // Never probed (Rampart just started): nothing to compare with.
        assert!(implausible(1_000_000_000_000_000, 0, "p:1").is_none());
    }
}
