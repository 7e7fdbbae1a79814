//! What landing work onto the base branch means to the reconcile core: the request, and the
//! outcome the core acts on. The git work itself is the coordinator's `Lander` port.

use std::fmt;

use crate::config::MergeStrategy;
use crate::model::{SpecRef, TaskId};
use crate::specs::CommitId;

/// The work a landing carries: a task's, or the process-improver's overlay changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkRef {
    Task(TaskId),
    ProcessImprovement,
}

impl fmt::Display for WorkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkRef::Task(id) => id.fmt(f),
            WorkRef::ProcessImprovement => f.write_str("process-improvement"),
        }
    }
}

/// What to land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandRequest {
    /// What the work is for; its `Task-Ref:` trailer value.
    pub task: WorkRef,
    /// The landing commit's subject (first line only is used).
    pub title: String,
    /// The spec the work serves (its `Spec-Ref:` trailer); `None` for process improvements.
    pub spec_ref: Option<SpecRef>,
    /// The task branch, e.g. `hyperloop/task-007`.
    pub branch: String,
    /// The commit the pipeline verified. When set, exactly this commit is landed even if the
    /// branch moved since; when `None`, the branch tip.
    pub head: Option<CommitId>,
    pub strategy: MergeStrategy,
    /// Delete the task branch (locally and on `origin`) once landed.
    pub delete_branch: bool,
}

/// A landing's outcome as the core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landed {
    /// The work is in the base branch (now, or it already was).
    Done { commit: CommitId },
    /// The branch does not merge cleanly; nothing changed.
    Conflict { files: Vec<String> },
    /// Not now (the base branch moved, or the user's checkout is busy); try again later.
    RetryLater { reason: String },
    /// It cannot land as is; the reason names the fix.
    Failed { reason: String },
}
