//! Transactions and WATCH: the client is pinned to a dedicated primary
//! connection from WATCH or MULTI to EXEC or DISCARD, and a transaction
//! whose connection was lost fails whole, never runs half or unwatched.

use super::connection::{Connection, Flow};
use super::writer::Pending;
use crate::resp::command::{Class, Tx};
use crate::resp::{Request, Value};

impl Connection {
    pub(super) async fn transaction(&mut self, tx: Tx, req: Request) -> Flow {
        let s = &mut self.session;
        match tx {
            Tx::Multi => {
                if s.tx_lost {
                    // The WATCH this transaction relies on is gone: let the
                    // client queue, then fail EXEC.
                    s.in_multi = true;
                    return self.reply(Value::ok()).await;
                }
                if s.multi_deferred.is_some() {
                    return self
                        .reply(Value::err("ERR MULTI calls can not be nested"))
                        .await;
                }
                if self.ctx.shards.len() > 1 && !s.watching && !s.in_multi {
                    // Which shard the transaction runs on is known at its
                    // first command (see `pinned`).
                    s.in_multi = true;
                    s.multi_deferred = Some(req.raw.clone());
                    return self.reply(Value::ok()).await;
                }
                if !s.watching && !s.in_multi && self.pin().await.is_err() {
                    // No connection to the primary (past the hold). An
                    // error here would let a pipelined transaction's
                    // commands run outside it; instead MULTI is deferred
                    // as with several shards: its first command tries
                    // again and, failing, dooms it (EXEC: EXECABORT).
                    let s = &mut self.session;
                    s.in_multi = true;
                    s.multi_deferred = Some(req.raw.clone());
                    return self.reply(Value::ok()).await;
                }
                let flow = self.pinned(req).await;
                self.session.in_multi = self.session.pinned.is_some();
                flow
            }
            Tx::Exec | Tx::Discard => {
                let was_lost = s.tx_lost;
                let in_multi = s.in_multi;
                let refused = std::mem::take(&mut s.tx_refused);
                let queued_slots = std::mem::take(&mut s.tx_slots);
                let deferred = std::mem::take(&mut s.multi_deferred).is_some();
                let settings = std::mem::take(&mut s.tx_settings);
                s.in_multi = false;
                s.watching = false;
                s.tx_lost = false;
                if was_lost {
                    return self.reply(lost_reply(tx, in_multi)).await;
                }
                if deferred {
                    // Nothing was queued: no node knows of this MULTI.
                    let reply = if tx == Tx::Discard {
                        Value::ok()
                    } else if refused {
                        Value::err("EXECABORT Transaction discarded because of previous errors.")
                    } else {
                        Value::Array(Vec::new())
                    };
                    return self.reply(reply).await;
                }
                if refused && tx == Tx::Exec && in_multi {
                    return self.abort_exec().await;
                }
                if tx == Tx::Exec && in_multi && !self.slots_stayed(&queued_slots) {
                    return self.abort_moved_exec().await;
                }
                if self.session.pinned.is_none() {
                    let name = if tx == Tx::Exec { "EXEC" } else { "DISCARD" };
                    return self
                        .reply(Value::err(format!("ERR {name} without MULTI")))
                        .await;
                }
                if tx == Tx::Exec && in_multi && !settings.is_empty() {
                    return self.exec_with_settings(req, &settings).await;
                }
                self.pinned(req).await
            }
            Tx::Watch => {
                if s.in_multi {
                    return self.pinned(req).await;
                }
                let flow = self.pinned(req).await;
                self.session.watching = self.session.pinned.is_some();
                flow
            }
            Tx::Unwatch => {
                if !s.in_multi {
                    s.watching = false;
                    s.tx_lost = false;
                }
                if self.session.pinned.is_none() {
                    return self.reply(Value::ok()).await;
                }
                self.pinned(req).await
            }
        }
    }

    /// EXEC of a transaction holding ACL changes or `CONFIG SET`s: once it
    /// ran, what the primary now has for the users and parameters they
    /// name is copied to the other nodes, as outside a transaction.
    async fn exec_with_settings(&mut self, req: Request, settings: &[Vec<bytes::Bytes>]) -> Flow {
        let Some((node, link)) = self.session.pinned.clone() else {
            return self.reply(Value::err("ERR EXEC without MULTI")).await;
        };
        let reply = match self.call(&node, &link, vec![req.raw], "EXEC").await {
            Ok(reply) => reply,
            Err(error) => return self.reply(error).await,
        };
        // An array: the transaction ran (nil: a WATCHed key changed; an
        // error: it was discarded).
        if reply.starts_with(b"*") && !reply.starts_with(b"*-1") {
            let copier = &self.ctx.node_settings;
            copier.transaction_ran(&node, &self.ctx.topology, settings);
        }
        self.push(Pending::Local(reply))
    }

    /// EXEC of a transaction in which Rampart refused a command: the node
    /// discards what it queued, and the client gets Redis's EXECABORT.
    pub(super) async fn abort_exec(&mut self) -> Flow {
        if let Some((node, link)) = self.session.pinned.clone() {
            let discard = Request::from_args(&["DISCARD"]);
            if let Err(error) = self.call(&node, &link, vec![discard.raw], "DISCARD").await {
                tracing::debug!(?error, "DISCARD of a refused transaction failed");
            }
        }
        self.reply(Value::err(
            "EXECABORT Transaction discarded because of previous errors.",
        ))
        .await
    }

    /// A transaction whose connection was lost: nothing reaches a backend
    /// until it ends, and it ends in failure.
    pub(super) async fn in_lost_transaction(&mut self, class: Class, req: Request) -> Flow {
        match class {
            Class::Transaction(tx @ (Tx::Exec | Tx::Discard)) => self.transaction(tx, req).await,
            Class::Answer(
                local @ (crate::resp::command::Answer::Reset | crate::resp::command::Answer::Quit),
            ) => self.answer(local, req).await,
            _ => {
                self.reply(Value::err(
                    "ERR rampart: the connection holding this transaction was lost; EXEC will fail",
                ))
                .await
            }
        }
    }
}

/// EXEC or DISCARD of a transaction whose connection was lost.
fn lost_reply(tx: Tx, in_multi: bool) -> Value {
    match (tx, in_multi) {
        (Tx::Exec, true) => {
            Value::err("EXECABORT Transaction discarded because of previous errors.")
        }
        (Tx::Exec, false) => Value::err("ERR EXEC without MULTI"),
        (Tx::Discard, true) => Value::ok(),
        _ => Value::err("ERR DISCARD without MULTI"),
    }
}
