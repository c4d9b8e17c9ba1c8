//! What other clients see of this one (`CLIENT LIST`, `CLIENT INFO`):
//! published to the registry once per read, and only what changed.

use super::registry::{Entry, LastCommand, Published};
use super::session::Session;
use crate::resp::Request;

/// What was last published about a client.
#[derive(Default)]
pub(super) struct Publisher {
    published: Option<Published>,
    /// The requests handled and whether one was blocked, when last
    /// published: while both stay the same nothing else can have changed,
    /// and the loop (twice per request) skips looking.
    seen: Option<(u64, bool)>,
}

impl Publisher {
    /// Once per read: only the time unless something changed. `read`:
    /// when the client's last bytes were read; `handled`: how many requests
    /// the client sent so far, and the last; `blocked`: a blocking command
    /// waits for its reply.
    pub(super) fn publish(
        &mut self,
        entry: &Entry,
        read: std::time::Instant,
        session: &Session,
        handled: (u64, Option<&Request>),
        blocked: bool,
    ) {
        entry.touch_at(read);
        let (count, last) = handled;
        if self.seen == Some((count, blocked)) && self.published.is_some() {
            return;
        }
        self.seen = Some((count, blocked));
        let cmd = last.map(LastCommand::of);
        let now = state(session, cmd, blocked);
        if self.published != Some(now) {
            publish_with(entry, session, cmd, blocked);
            self.published = Some(now);
        }
    }

    /// Publishes now, with `CLIENT <sub>` as the last command (for `CLIENT
    /// LIST` and `CLIENT INFO` showing the client itself).
    pub(super) fn publish_now(
        &mut self,
        entry: &Entry,
        session: &Session,
        sub: &str,
        blocked: bool,
    ) {
        entry.touch();
        publish_with(entry, session, Some(LastCommand::client(sub)), blocked);
        self.published = None;
    }
}

/// Everything `publish_with` shows, to tell whether it changed.
fn state(s: &Session, cmd: Option<LastCommand>, blocked: bool) -> Published {
    Published {
        cmd,
        db: s.db,
        resp: s.proto.number(),
        name: s.name.as_ref().map_or(0, |n| n.as_ptr() as usize),
        flags: u8::from(blocked) | (u8::from(s.in_multi) << 1) | (u8::from(s.pipe.is_some()) << 2),
    }
}

fn publish_with(entry: &Entry, s: &Session, cmd: Option<LastCommand>, blocked: bool) {
    entry.publish(|snap| {
        snap.name = s.name.clone();
        snap.db = s.db;
        snap.resp = s.proto.number();
        snap.subscribed = s.pipe.is_some() && s.pubsub;
        snap.multi = if s.in_multi { 0 } else { -1 };
        snap.flags.clear();
        if blocked {
            snap.flags.push('b');
        }
        if s.in_multi {
            snap.flags.push('x');
        }
        if s.pipe.is_some() && s.pubsub {
            snap.flags.push('P');
        }
        if s.pipe.is_some() && s.monitor {
            snap.flags.push('O');
        }
        if snap.flags.is_empty() {
            snap.flags.push('N');
        }
        if cmd.is_some() {
            snap.cmd = cmd;
        }
    });
}
