//! What other clients see of this one (`CLIENT LIST`, `CLIENT INFO`):
//! published to the registry once per read, and only what changed.

use super::connection::Connection;
use super::registry::{LastCommand, Published};

impl Connection {
    /// What other clients may see of this one (`CLIENT LIST`), once per
    /// read: only the time unless something changed.
    pub(super) fn publish(&mut self) {
        let cmd = self.last.as_ref().map(LastCommand::of);
        let entry = &self.registration.entry;
        entry.touch();
        let now = self.published_state(cmd);
        if self.published != Some(now) {
            self.publish_with(cmd);
            self.published = Some(now);
        }
    }

    /// Publishes now, with `CLIENT <sub>` as the last command (for `CLIENT
    /// LIST` and `CLIENT INFO` showing the client itself).
    pub(super) fn publish_now(&mut self, sub: &str) {
        self.registration.entry.touch();
        self.publish_with(Some(LastCommand::client(sub)));
        self.published = None;
    }

    pub(super) fn blocked_now(&self) -> bool {
        self.blocked
            .last()
            .is_some_and(|b| b.position > self.replies.completed())
    }

    /// Everything `publish_with` shows, to tell whether it changed.
    fn published_state(&self, cmd: Option<LastCommand>) -> Published {
        let s = &self.session;
        Published {
            cmd,
            db: s.db,
            resp: s.proto.number(),
            name: s.name.as_ref().map_or(0, |n| n.as_ptr() as usize),
            flags: u8::from(self.blocked_now())
                | (u8::from(s.in_multi) << 1)
                | (u8::from(s.pipe.is_some()) << 2),
        }
    }

    fn publish_with(&self, cmd: Option<LastCommand>) {
        let s = &self.session;
        let blocked = self.blocked_now();
        self.registration.entry.publish(|snap| {
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
}
