//! What a client of a fan-out shard sees differently: writes go to every
//! node through the shard's writer (rewritten or refused, see
//! `replicate::fanout::rewrite`), transactions are queued here and sent
//! whole, and what cannot be the same on every node is refused.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::connection::{Connection, Flow};
use super::inflight::{OpenBatch, Target, MAX_BATCH};
use super::writer::Pending;
use crate::observe::counters::BatchClass;
use crate::replicate::fanout::{Fanout, Verdict};
use crate::resp::command::{Class, Tx};
use crate::resp::{Request, Value};

impl Connection {
    /// The shard's fan-out writer, in fan-out mode.
    pub(super) fn fanout(&self) -> Option<Arc<Fanout>> {
        self.shard.fanout.clone()
    }

    /// What fan-out mode does differently: writes go to every node through
    /// the shard's writer (rewritten or refused, see `replicate::fanout::
    /// rewrite`), reads wait for the client's own writes, and what cannot be
    /// the same on every node is refused. `None`: handled as usual.
    pub(super) async fn fanout_only(
        &mut self,
        fanout: &Arc<Fanout>,
        class: Class,
        req: Request,
    ) -> Option<Flow> {
        let refuse =
            |what: &str| Value::err(format!("ERR rampart: {what} not supported in fan-out mode"));
        if self.session.fanout_tx.is_some() || class == Class::Transaction(Tx::Multi) {
            return self.fanout_transaction(fanout, class, req).await;
        }
        Some(match class {
            Class::Write => match fanout.rewriter.judge(req) {
                Verdict::Refused(error) => self.reply(Value::err(error)).await,
                Verdict::Primary(req) => self.forward(Class::Write, req).await,
                Verdict::Fanout(req) => self.fanout_write(fanout, req).await,
            },
            Class::Read | Class::CursorRead => {
                // A read must see the client's own writes: they are on their
                // way to every node, so wait until they have been answered.
                let pending = self
                    .out
                    .open
                    .as_ref()
                    .is_some_and(|open| matches!(open.target, Target::Fanout(_)))
                    || self.out.replies.completed() < self.out.durable_upto;
                if pending && (self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop) {
                    return Some(Flow::Stop);
                }
                return None;
            }
            Class::Blocking if req.name().as_bytes() != b"XREAD" => {
                self.reply(refuse("blocking pops and moves are (the node that unblocks first would apply it alone);"))
                    .await
            }
            Class::Transaction(_) => {
                self.reply(refuse("WATCH is (a transaction cannot abort alike on every node);"))
                    .await
            }
            Class::Wait => {
                self.reply(refuse("WAIT is (the shard's quorum decides when writes are answered);"))
                    .await
            }
            _ => return None,
        })
    }

    /// A transaction in fan-out mode: Rampart answers `MULTI` and queues
    /// the commands itself (refusing what cannot be fanned out), and at
    /// `EXEC` sends `MULTI ... EXEC` to every node as one entry of the
    /// shard's log, so it runs whole, in the same place of the order, on
    /// each. `None`: not part of the transaction (QUIT, RESET ...).
    pub(super) async fn fanout_transaction(
        &mut self,
        fanout: &Arc<Fanout>,
        class: Class,
        req: Request,
    ) -> Option<Flow> {
        use crate::resp::command::Answer;
        let queued = |this: &mut Self, raw: Bytes| {
            if let Some(tx) = this.session.fanout_tx.as_mut() {
                tx.queued.push(raw);
            }
            Value::Simple("QUEUED".into())
        };
        let refused = |this: &mut Self, error: String| {
            if let Some(tx) = this.session.fanout_tx.as_mut() {
                tx.failed = true;
            }
            Value::err(error)
        };
        let reply = match class {
            Class::Transaction(Tx::Multi) if self.session.fanout_tx.is_some() => {
                Value::err("ERR MULTI calls can not be nested")
            }
            Class::Transaction(Tx::Multi) => {
                self.session.fanout_tx = Some(Default::default());
                Value::ok()
            }
            Class::Transaction(Tx::Discard) => {
                self.session.fanout_tx = None;
                Value::ok()
            }
            Class::Transaction(Tx::Exec) => {
                let tx = self.session.fanout_tx.take().unwrap_or_default();
                if tx.failed {
                    Value::err("EXECABORT Transaction discarded because of previous errors.")
                } else {
                    return Some(self.fanout_exec(fanout, tx.queued).await);
                }
            }
            Class::Transaction(Tx::Watch) => Value::err("ERR WATCH inside MULTI is not allowed"),
            Class::Transaction(Tx::Unwatch) => queued(self, req.raw),
            Class::Answer(Answer::Quit | Answer::Reset) => return None,
            Class::Answer(Answer::Ping | Answer::Echo) => queued(self, req.raw),
            Class::Answer(_) => Value::err("ERR Command not allowed inside a transaction"),
            // Inside MULTI a blocking command does not block.
            Class::Read | Class::CursorRead | Class::Blocking => queued(self, req.raw),
            Class::Write => match fanout.rewriter.judge(req) {
                Verdict::Fanout(req) => queued(self, req.raw),
                Verdict::Refused(error) => refused(self, error),
                Verdict::Primary(_) => refused(
                    self,
                    "ERR rampart: admin commands cannot be part of a transaction in fan-out mode"
                        .into(),
                ),
            },
            Class::Refused(text) => refused(self, text.into()),
            _ => refused(
                self,
                "ERR rampart: this command cannot be part of a transaction in fan-out mode".into(),
            ),
        };
        Some(self.reply(reply).await)
    }

    /// Sends a queued transaction to every node; the client gets `EXEC`'s
    /// reply.
    pub(super) async fn fanout_exec(&mut self, fanout: &Arc<Fanout>, queued: Vec<Bytes>) -> Flow {
        if fanout.shard.primary().is_none() && !self.await_primary().await {
            return self.reply(self.no_primary()).await;
        }
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        let skip = queued.len() + 1;
        let mut requests = Vec::with_capacity(queued.len() + 2);
        requests.push(Request::from_args(&["MULTI"]).raw);
        requests.extend(queued);
        requests.push(Request::from_args(&["EXEC"]).raw);
        let (tx, rx) = oneshot::channel();
        fanout.write(self.session.proto, requests, skip, tx).await;
        self.out.durable_upto = self.out.replies.push(Pending::Remote {
            reply: rx,
            replies: 1,
            sent: std::time::Instant::now(),
            class: BatchClass::Write,
        });
        self.saw(None);
        Flow::Continue
    }

    /// Adds a write to the open fan-out batch.
    pub(super) async fn fanout_write(&mut self, fanout: &Arc<Fanout>, req: Request) -> Flow {
        let shard = fanout.shard.clone();
        if shard.primary().is_none() && !self.await_primary().await {
            return self.reply(self.no_primary()).await;
        }
        if let Some(open) = &mut self.out.open {
            if matches!(open.target, Target::Fanout(_)) && open.requests.len() < MAX_BATCH {
                open.requests.push(req.raw);
                self.saw(None);
                return Flow::Continue;
            }
        }
        if self.flush().await == Flow::Stop {
            return Flow::Stop;
        }
        let mut requests = Vec::with_capacity(8);
        requests.push(req.raw);
        self.out.open = Some(OpenBatch {
            target: Target::Fanout(fanout.clone()),
            requests,
            durable: true,
            class: BatchClass::Write,
            shard: self.shard.clone(),
        });
        self.saw(None);
        Flow::Continue
    }
}
