//! `GateEvaluator`: where one leaf gate stands for a task, decided by whatever can decide it:
//! GitHub for labels, approvals and CI, the coordinator's host for `command` gates, a test
//! double in tests. [`evaluate_gate`] expands an `all` gate into its leaves and combines their
//! answers ([`hyperloop_shared::gates`]), so every evaluator agrees on what `all` means.
//!
//! Guarantees every adapter gives (checked by `contract`):
//! - A `manual` gate is never cleared: only `hyperloopctl approve` clears it. A gate kind the
//!   evaluator cannot decide waits, naming `hyperloopctl approve TASK`.
//! - Work that cannot be found (no branch or commit, an unknown commit, no pull request where
//!   one is needed) is a typed [`GateError`], never [`GateStatus::Cleared`].
//! - Evaluating again gives the same answer and leaves nothing behind (no checkout, no
//!   process).
//! - An `all` gate is not a leaf: [`GateError::NotALeaf`].

use std::collections::BTreeMap;
use std::future::Future;

use hyperloop_shared::gates::{self, GateStatus, UndefinedGate};
use hyperloop_shared::model::TaskId;
use hyperloop_shared::pipeline::{GateDef, GateKind};

use crate::ports::forge::{ForgeError, PrNumber};

#[cfg(any(test, feature = "testing"))]
pub mod contract;

/// The task a gate is evaluated for, and what is known of its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateTarget {
    pub task: TaskId,
    /// The task branch, e.g. `hyperloop/task-007`.
    pub branch: Option<String>,
    /// The branch's head commit (what the gate should judge), when known.
    pub commit: Option<String>,
    /// The task's pull request, in GitHub mode.
    pub pr: Option<PrNumber>,
}

/// One leaf gate to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateQuery {
    /// The gate's name under `gates:`.
    pub gate: String,
    /// Its definition; never [`GateKind::All`].
    pub kind: GateKind,
    pub target: GateTarget,
}

impl GateQuery {
    /// The answer for a gate that waits for a human; `why` completes "gate `NAME` ...".
    pub fn awaiting_approval(&self, why: &str) -> GateStatus {
        GateStatus::Waiting {
            reasons: vec![format!(
                "gate `{}` {why}: run `hyperloopctl approve {}` to let it pass",
                self.gate, self.target.task
            )],
        }
    }

    /// The error for a query about an `all` gate, which only [`evaluate_gate`] evaluates.
    pub fn not_a_leaf(&self) -> GateError {
        GateError::NotALeaf {
            gate: self.gate.clone(),
        }
    }
}

/// Why a gate could not be evaluated. Messages name the task or gate, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Undefined(#[from] UndefinedGate),
    #[error(
        "gate `{gate}` is an `all` gate, not a leaf; evaluate it with evaluate_gate, which \
         evaluates its leaves"
    )]
    NotALeaf { gate: String },
    #[error(
        "{task} has no branch or commit yet, so gate `{gate}` has nothing to judge; it can be \
         evaluated once the task's work is committed"
    )]
    NoWork { task: TaskId, gate: String },
    #[error(
        "{task} has no pull request, so gate `{gate}` (type {kind}) cannot be read from GitHub; \
         it gets one when its first work is pushed"
    )]
    NoPullRequest {
        task: TaskId,
        gate: String,
        kind: &'static str,
    },
    #[error(
        "{task}'s `{rev}` is not a commit in {repo} ({reason}), so gate `{gate}` cannot run on \
         it; fetch the task's branch into the coordinator's checkout, or reset the task"
    )]
    UnknownRevision {
        task: TaskId,
        gate: String,
        rev: String,
        repo: String,
        reason: String,
    },
    #[error(
        "gate `{gate}` would run `{command}` on this host, and this coordinator runs no command \
         gates; start it with --allow-command-gates, or remove the gate"
    )]
    CommandGatesRefused { gate: String, command: String },
    #[error(
        "gate `{gate}`: could not start `{command}`: {reason}; install the program on the \
         coordinator's host or fix the gate's `run`"
    )]
    Spawn {
        gate: String,
        command: String,
        reason: String,
    },
    #[error("gate `{gate}`: could not {what}: {reason}")]
    Io {
        gate: String,
        what: String,
        reason: String,
    },
    #[error(transparent)]
    Forge(#[from] ForgeError),
}

impl GateError {
    /// Trying the same evaluation later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            GateError::Io { .. } => true,
            GateError::Forge(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// The forge driver replies with `ForgeError`s (the reconcile loop reads them); a gate's own
/// errors travel as [`ForgeError::Gate`], keeping their message and transience.
impl From<GateError> for ForgeError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Forge(e) => e,
            other => ForgeError::Gate {
                transient: other.is_transient(),
                message: other.to_string(),
            },
        }
    }
}

/// Decides leaf gates.
pub trait GateEvaluator: Send + Sync + 'static {
    /// Where the leaf gate `query.gate` stands for `query.target`.
    fn evaluate(
        &self,
        query: GateQuery,
    ) -> impl Future<Output = Result<GateStatus, GateError>> + Send;
}

/// Where `gate` (any kind, `all` included) stands for `target`: its leaves evaluated one
/// after another by `evaluator`, then combined.
///
/// # Errors
/// An undefined gate, or the first leaf that could not be evaluated.
pub async fn evaluate_gate<G: GateEvaluator>(
    evaluator: &G,
    defs: &BTreeMap<String, GateDef>,
    gate: &str,
    target: &GateTarget,
) -> Result<GateStatus, GateError> {
    let mut statuses = Vec::new();
    for (gate, kind) in gates::leaves(gate, defs)? {
        let query = GateQuery {
            gate,
            kind,
            target: target.clone(),
        };
        statuses.push(evaluator.evaluate(query).await?);
    }
    Ok(gates::combine(statuses))
}
