//! Talking to one node: a fresh connection per question or command (the
//! controller's traffic is rare and must not queue behind clients'), and
//! what went wrong, typed by what it means for the command: never sent, or
//! sent and perhaps run.

use std::time::Instant;

use redis_protocol::resp3::types::OwnedFrame;

use super::Controller;
use crate::backend::control::Control;
use crate::failover::probe::{self, Report};
use crate::topology::{Node, Role};

/// Why a question or command to a node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No connection could be made: nothing was sent.
    #[error("{0}")]
    Unreachable(String),
    /// Sent, but no usable answer came (timeout, connection lost, a reply
    /// that makes no sense): a command may have run.
    #[error("{0}")]
    NoAnswer(String),
    /// The node answered with an error: it did not run the command.
    #[error("{0}")]
    Refused(String),
}

impl NodeError {
    /// Whether the command may have run on the node.
    pub fn may_have_run(&self) -> bool {
        matches!(self, NodeError::NoAnswer(_))
    }
}

/// Why a step of a failover, switchover or promotion did not happen; the
/// step is tried again (a failover) or reported (an operator's request).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StepError {
    /// A node did not do what it was told.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The shard's record (its epoch and primary) could not be written.
    #[error("the shard's record could not be written: {0}")]
    Record(#[from] crate::coord::SaveError),
    /// A node is no longer as the step needs it: a target that has not
    /// caught up, or resynchronised since its election.
    #[error("{0}")]
    Changed(String),
}

impl Controller {
    /// Probes a node now and records the result, so that decisions right
    /// after a change do not rest on a report from before it. Returns the
    /// role it reported.
    pub(super) async fn observe(&self, node: &Node) -> Option<Role> {
        let report = self.report(node).await.ok()?;
        self.shard.observe(node, &report, Instant::now(), None);
        Some(report.role)
    }

    /// The node's replication state, asked now.
    pub(super) async fn report(&self, node: &Node) -> Result<Report, NodeError> {
        let mut control = self.connect(node).await?;
        probe::replication(&mut control, self.timings.timeout())
            .await
            .map_err(|e| NodeError::NoAnswer(format!("{}: {e}", node.addr)))
    }

    /// Sends one command on a fresh connection; an error reply is an error.
    pub(super) async fn command(
        &self,
        node: &Node,
        args: &[&str],
    ) -> Result<OwnedFrame, NodeError> {
        let mut control = self.connect(node).await?;
        match control.call(args, self.timings.timeout()).await {
            Ok(OwnedFrame::SimpleError { data, .. }) => Err(NodeError::Refused(data)),
            Ok(OwnedFrame::BlobError { data, .. }) => {
                Err(NodeError::Refused(String::from_utf8_lossy(&data).into()))
            }
            Ok(frame) => Ok(frame),
            Err(e) => Err(NodeError::NoAnswer(format!("{}: {e}", node.addr))),
        }
    }

    async fn connect(&self, node: &Node) -> Result<Control, NodeError> {
        match tokio::time::timeout(
            self.timings.timeout(),
            Control::connect(&node.addr, &self.opts),
        )
        .await
        {
            Ok(Ok(control)) => Ok(control),
            Ok(Err(e)) => Err(NodeError::Unreachable(format!("{}: {e}", node.addr))),
            Err(_) => Err(NodeError::Unreachable(format!(
                "{}: connect timed out",
                node.addr
            ))),
        }
    }
}
