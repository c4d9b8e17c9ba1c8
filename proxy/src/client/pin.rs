//! Dedicated connections: a client whose state lives on a connection (a
//! transaction, WATCH, a database, an ACL user, a CLIENT option) is pinned
//! to one of its own on the primary.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::connection::{Connection, Flow};
use crate::backend::{Batch, Credentials, Link};
use crate::resp::reply::error_text;
use crate::resp::{Request, Value};
use crate::topology::Node;

impl Connection {
    /// Sends on the client's dedicated connection, opening one if needed.
    pub(super) async fn pinned(&mut self, req: Request) -> Flow {
        if let Err(error) = self.pin().await {
            // Inside MULTI the refusal dooms the transaction.
            if self.session.in_multi {
                self.session.tx_refused = true;
            }
            return self.reply(error).await;
        }
        let Some((node, link)) = self.session.pinned.clone() else {
            return Flow::Continue;
        };
        if let Some(multi) = self.session.multi_deferred.clone() {
            // The transaction's first command: its MULTI goes first. The
            // client heard OK for MULTI long ago and goes on queueing, so
            // a MULTI the node did not take must doom the transaction:
            // the command is refused, MULTI stays deferred (nothing
            // further runs outside a transaction) and EXEC answers
            // EXECABORT.
            let taken = match self.call(&node, &link, vec![multi], "MULTI").await {
                Ok(reply) => error_text(&reply).map_or(Ok(()), |e| Err(Value::err(e))),
                Err(error) => Err(error),
            };
            if let Err(error) = taken {
                self.session.tx_refused = true;
                return self.reply(error).await;
            }
            self.session.multi_deferred = None;
        }
        self.add(node, link, req.raw).await
    }

    /// Sends requests on a link and waits for all their replies, after
    /// everything the client sent before them (an open batch for the same
    /// link would otherwise be overtaken). The replies as the node wrote
    /// them, or the error to answer with if any did not come.
    pub(super) async fn call(
        &mut self,
        node: &Node,
        link: &Link,
        requests: Vec<Bytes>,
        what: &str,
    ) -> Result<Bytes, Value> {
        let failed = || Value::err(format!("ERR rampart: {what} failed"));
        if self.flush().await == Flow::Stop {
            return Err(failed());
        }
        let (tx, rx) = oneshot::channel();
        let replies = requests.len();
        node.count_requests(replies as u64);
        link.send(Batch::plain(requests, tx)).await;
        match rx.await {
            Ok(reply) if reply.got == replies && reply.error.is_none() => Ok(reply.data),
            Ok(reply) => Err(reply
                .error
                .map_or_else(failed, |error| Value::err(error.to_string()))),
            Err(_) => Err(failed()),
        }
    }

    /// Whether the client's dedicated connection is on another shard than
    /// the request's.
    fn pinned_elsewhere(&self) -> bool {
        self.session
            .pinned
            .as_ref()
            .is_some_and(|(node, _)| !self.shard.topology.has(node))
    }

    /// Ensures the client holds a live dedicated connection to the primary.
    pub(super) async fn pin(&mut self) -> Result<(), Value> {
        if self.pinned_elsewhere() {
            let s = &self.session;
            if (s.in_multi && s.multi_deferred.is_none()) || s.watching || s.tx_lost {
                return Err(Value::err(crate::shard::locate::CROSSSLOT));
            }
            // Another shard's command: the client moves to a connection
            // there (its CLIENT options are set there again, below).
            self.unpin().await;
            self.session.pinned = None;
        }
        if let Some((node, link)) = &self.session.pinned {
            // A failover or switchover made the node a replica: its
            // connection is as good as lost (what lived there cannot
            // move), and the client goes on on the new primary.
            let still_primary = self
                .shard
                .topology
                .primary_node()
                .is_some_and(|primary| Arc::ptr_eq(primary, node));
            if link.is_up() && still_primary {
                return Ok(());
            }
            self.session.lose_pinned();
            if self.session.tx_lost && self.session.in_multi {
                return Err(Value::err(
                    "ERR rampart: the connection holding this transaction or WATCH was lost",
                ));
            }
        }
        if self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop {
            return Err(Value::err("ERR rampart: connection closing"));
        }
        let (node, link) = self.dedicated().await?;
        // The options set on a connection that is gone, in force again
        // before anything else runs here (their replies are the node's
        // OKs the client heard when it set them).
        if !self.session.client_options.is_empty() {
            let options = self.session.client_options.iter();
            let options = options.map(|(_, raw)| raw.clone()).collect();
            if let Err(error) = self.call(&node, &link, options, "CLIENT").await {
                tracing::debug!(node = %node.addr, ?error, "CLIENT options not set again");
            }
            self.session.sticky = true;
        }
        self.session.pinned = Some((node, link));
        Ok(())
    }

    /// A dedicated connection to the primary in this client's state.
    pub(super) async fn dedicated(&mut self) -> Result<(Arc<Node>, Link), Value> {
        let hold = std::time::Duration::from_millis(self.ctx.config.failover.hold_writes_ms);
        let deadline = self.arrived + hold;
        loop {
            let primary = self.primary().await?;
            let mut changed = self.shard.topology.watch();
            let error = match primary.pool.dedicated(self.session.link_session()).await {
                Ok(link) => return Ok((primary, link)),
                Err(e) => e,
            };
            // A primary that cannot be reached may be failing before the
            // probes say so: nothing has run, so the request waits for
            // the failover as a held write does. A node refusing the
            // handshake (an ACL user's password) is answered at once.
            if error.kind() == std::io::ErrorKind::PermissionDenied
                || tokio::time::Instant::now() >= deadline
            {
                return Err(Value::err(format!(
                    "ERR rampart: {} unavailable ({error})",
                    primary.addr
                )));
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Returns a clean dedicated connection to the pool once every reply it
    /// owes has arrived.
    pub(super) async fn unpin(&mut self) {
        if self.flush().await == Flow::Stop || self.barrier().await == Flow::Stop {
            return;
        }
        if let Some((node, link)) = self.session.pinned.take() {
            if self.session.is_clean() {
                node.pool.give_back(link, &self.session.link_session());
            }
        }
    }

    /// The connection to the primary a command Rampart inspects runs on:
    /// the client's dedicated one when it has state there (an ACL user, a
    /// database), a shared link otherwise.
    pub(super) async fn primary_link(&mut self) -> Result<(Arc<Node>, Link), Value> {
        if !self.session.is_clean() || self.session.pinned.is_some() {
            self.pin().await?;
            return self.session.pinned.clone().ok_or_else(|| self.no_primary());
        }
        let primary = self.primary().await?;
        let link = primary
            .pool
            .shared(self.session.proto, self.session.id)
            .clone();
        Ok((primary, link))
    }

    /// Runs `req` on the primary as [`Connection::primary_link`] chooses
    /// the connection: the node, and its reply as it wrote it.
    pub(super) async fn ask_primary(
        &mut self,
        req: &Request,
        what: &str,
    ) -> Result<(Arc<Node>, Bytes), Value> {
        let (node, link) = self.primary_link().await?;
        let reply = self.call(&node, &link, vec![req.raw.clone()], what).await?;
        Ok((node, reply))
    }

    /// Runs `req` on every shard's primary, as
    /// [`Connection::ask_primary`] would on the client's shard: each
    /// primary and its reply, in shard order, or the first error.
    pub(super) async fn ask_each_primary(
        &mut self,
        req: &Request,
        what: &str,
    ) -> Result<Vec<(Arc<Node>, Bytes)>, Value> {
        let home = self.shard.clone();
        let mut replies = Vec::new();
        for shard in self.ctx.shards.all_serving().iter() {
            self.shard = shard.clone();
            let reply = self.ask_primary(req, what).await;
            self.shard = home.clone();
            replies.push(reply?);
        }
        Ok(replies)
    }

    /// The shard's primary, waiting for a failover to choose one within
    /// the hold (see [`super::hold`]).
    pub(super) async fn primary(&mut self) -> Result<Arc<Node>, Value> {
        if !self.await_primary().await {
            return Err(self.no_primary());
        }
        self.shard
            .topology
            .primary()
            .cloned()
            .ok_or_else(|| self.no_primary())
    }

    /// Lets go of the client's dedicated connection, whose session no
    /// longer matches the client's (another user, another protocol): a
    /// clean one goes back to the pool, one holding state is closed.
    pub(super) async fn let_go_pinned(&mut self) {
        if self.session.pinned.is_some() {
            let clean = self.session.is_clean();
            self.unpin().await;
            if !clean {
                self.session.lose_pinned();
            }
        }
    }

    /// Runs the client's commands as `user` from now on: connections held
    /// for the previous user are let go.
    pub(super) async fn switch_user(&mut self, user: Option<Arc<Credentials>>) {
        if self.session.user == user {
            return;
        }
        self.let_go_pinned().await;
        let name = user.as_ref().map_or_else(
            || {
                self.ctx
                    .config
                    .backend
                    .username
                    .clone()
                    .unwrap_or_else(|| "default".into())
            },
            |u| u.username.clone(),
        );
        self.registration.entry.publish(|snap| snap.user = name);
        self.session.user = user;
    }
}
