//! [`WorkerError`]: why [`serve`](crate::serve) stopped or options were refused.

use hyperloop_shared::duration::human;

use crate::workspace::WorkspaceError;

/// A worker-level failure. Step failures are not errors: they are failed step results.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Options that cannot work; the message names the flag.
    #[error("invalid worker option `{option}`: {problem}")]
    InvalidOption {
        option: &'static str,
        problem: String,
    },
    /// The coordinator's side of the link closed while the worker still had work.
    #[error(
        "the coordinator closed the connection{}",
        if *.running > 0 { format!(" with {} step(s) still running", .running) } else { String::new() }
    )]
    LinkClosed { running: usize },
    /// No `Registered` within the registration timeout.
    #[error(
        "the coordinator did not answer Hello within {}; check that it is running and \
         reachable",
        human(*.waited)
    )]
    RegistrationTimeout { waited: std::time::Duration },
    /// The peer is a follower; the caller reconnects to `leader_address`.
    #[error("the coordinator is not the leader (leader: {})", if .leader_address.is_empty() { "election in progress" } else { .leader_address.as_str() })]
    NotLeader { leader_address: String },
    /// The coordinator sent something other than `Registered` in answer to Hello.
    #[error(
        "the coordinator answered Hello with an unexpected message ({got}); is this a hyperloop coordinator?"
    )]
    UnexpectedMessage { got: &'static str },
    /// Coordinator and worker speak different protocol versions.
    #[error(transparent)]
    Protocol(#[from] hyperloop_proto::ConversionError),
    /// The work dir could not be prepared (leftover worktrees could not be removed).
    #[error("could not prepare the work dir: {0}")]
    Workspace(#[source] Box<WorkspaceError>),
}

impl From<WorkspaceError> for WorkerError {
    fn from(e: WorkspaceError) -> Self {
        Self::Workspace(Box::new(e))
    }
}

impl WorkerError {
    /// Whether reconnecting (with backoff) may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::LinkClosed { .. } | Self::RegistrationTimeout { .. } | Self::NotLeader { .. }
        )
    }
}
