//! `Lander`: puts a verified task branch onto the base branch (local mode's `merge-pr`).
//!
//! Guarantees every adapter gives:
//! - Idempotent: landing work that is already in the base branch (say, after a crash between
//!   the merge and the state write) returns [`LandOutcome::AlreadyLanded`], never a second merge.
//! - A conflict changes nothing and names the conflicting files.
//! - The user's uncommitted changes are never overwritten.
//! - The landing commit carries `Spec-Ref:` and `Task-Ref:` trailers, so
//!   `git log --grep "Spec-Ref: specs/x.md"` finds all work for a spec.
//!
//! Calls block (git work, possibly a push over the network); call them from a blocking context.

use crate::ports::spec_source::CommitId;
pub use hyperloop_shared::landing::{LandRequest, WorkRef};

/// Why the work counts as already landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandedEvidence {
    /// A base-branch commit since the branch point carries this task's `Task-Ref:` trailer.
    Trailer,
    /// The task's head commit is already part of the base branch.
    Contained,
    /// Merging would not change the base branch's tree.
    SameTree,
}

/// What happened to the user's checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutSync {
    /// Not touched: the base branch is not checked out (or the repository is bare), or there
    /// was nothing to move.
    Untouched,
    /// The index and working tree were moved to the landed commit; uncommitted changes to
    /// files the landing did not touch were kept, as `git merge --ff-only` keeps them.
    Updated,
}

/// Whether the base branch reached `origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushStatus {
    /// The repository has no `origin` remote.
    NoOrigin,
    Pushed,
    /// Landed locally, but the push failed; landing again retries it.
    Failed {
        reason: String,
    },
    /// Landed locally, but origin's base branch shares no history with it any more: someone
    /// replaced it. Nothing is pushed over it; an operator decides.
    OriginRewritten {
        branch: String,
        origin_tip: String,
        local_tip: String,
    },
}

/// A landing, fresh or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landing {
    /// The commit that brought the work into the base branch.
    pub commit: CommitId,
    pub checkout: CheckoutSync,
    pub push: PushStatus,
    /// The branch was deleted (locally, and on `origin` when the push succeeded).
    pub branch_deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LandOutcome {
    Landed(Landing),
    AlreadyLanded {
        landing: Landing,
        evidence: LandedEvidence,
    },
    /// The branch does not merge cleanly; nothing was changed.
    Conflict {
        files: Vec<String>,
    },
    /// Landing now would touch files with uncommitted changes in the user's checkout of the
    /// base branch; nothing was changed. Try again later (an action `retry`).
    Deferred {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LandError {
    #[error(
        "branch {branch} does not exist in {repo}; set target.base_branch in .hyperloop.yaml to \
         the branch work lands on, or create it"
    )]
    BaseBranchMissing { branch: String, repo: String },
    #[error(
        "task branch {branch} of {task} was found neither locally nor on origin, and no landing \
         of {task} is in the base branch; reset the task so its work is redone"
    )]
    TaskBranchMissing { task: WorkRef, branch: String },
    #[error("commit {commit} of {task} is not in the repository; reset the task")]
    HeadMissing { task: WorkRef, commit: String },
    #[error(
        "the base branch {branch} kept moving while landing {task} ({attempts} attempts); \
         landing again will retry"
    )]
    Contended {
        task: WorkRef,
        branch: String,
        attempts: u32,
    },
    #[error("{repo} is not a usable git repository: {reason}; run hyperloop inside a git checkout")]
    OpenRepository { repo: String, reason: String },
    #[error(
        "origin's {branch} was rewritten outside hyperloop: it moved from {from} to {to}, which \
         does not descend from it; nothing was landed on it. If that was not intended, push the \
         old tip back with `git push --force origin {from}:refs/heads/{branch}` and run again"
    )]
    Rewritten {
        task: WorkRef,
        branch: String,
        from: String,
        to: String,
    },
    #[error("git {operation} failed while landing {task}: {reason}")]
    Git {
        task: WorkRef,
        operation: &'static str,
        reason: String,
    },
}

impl LandError {
    /// Worth retrying as is.
    pub fn is_transient(&self) -> bool {
        matches!(self, LandError::Contended { .. })
    }
}

/// Lands task branches on the base branch.
pub trait Lander: Send + Sync + 'static {
    /// Lands `request`, or finds it already landed; then updates the user's checkout, pushes
    /// the base branch and deletes the task branch as requested. Every step is idempotent, so
    /// calling again after any failure or crash completes what is missing.
    ///
    /// # Errors
    /// Missing branches or commits, a repository that cannot be read or written, or a base
    /// branch that kept moving. A conflict is an outcome, not an error.
    fn land(&self, request: &LandRequest) -> Result<LandOutcome, LandError>;

    /// Brings the local view of the base branch up to date with where landings go (a no-op
    /// when they go here). Called when a term starts and then every `poll_interval`, so spec
    /// changes pushed elsewhere are seen.
    ///
    /// # Errors
    /// The shared repository cannot be reached; the caller retries later.
    fn sync(&self) -> Result<(), LandError> {
        Ok(())
    }
}
