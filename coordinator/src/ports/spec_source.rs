//! `SpecSource`: the desired state — spec files at the tip of the base branch, identified by
//! git blob id so an unchanged spec costs nothing to re-check.
//!
//! Guarantees every adapter gives (checked by `contract`):
//! - Specs are read from the committed base branch, never from a working tree, and
//!   [`SpecSource::read`] returns the text at the pinned commit (what agents are shown).
//! - [`SpecSource::changes`] with the previous [`SpecVersion`] costs O(1) when the specs did
//!   not change, and otherwise grows with the number of changed specs, not the total.
//! - A path that cannot be a spec (symlink, non-UTF-8 name, `..`, `@`, ...) is reported in
//!   [`SpecChanges::skipped`] with a reason, never an error for the whole scan.
//! - A base branch whose tip no longer descends from the previous version's commit (a
//!   force-push, a reset) is [`SpecSourceError::Rewritten`], never read as a set of changes.
//!
//! Calls are blocking (local object-database reads); call them from a blocking context.

use hyperloop_shared::model::{SpecPath, SpecRef};
pub use hyperloop_shared::specs::{
    BlobId, CommitId, SkippedSpec, SpecChange, SpecChanges, SpecVersion,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecSourceError {
    #[error(
        "branch {branch} does not exist in {repo}; set target.base_branch in .hyperloop.yaml to \
         the branch specs are read from, or create it"
    )]
    BaseBranchMissing { branch: String, repo: String },
    #[error("{repo} is not a usable git repository: {reason}; run hyperloop inside a git checkout")]
    OpenRepository { repo: String, reason: String },
    #[error(
        "invalid specs directory {dir:?}: {reason}; set target.specs_dir to a folder relative \
         to the repository root, such as `specs`"
    )]
    SpecsDir { dir: String, reason: String },
    #[error(
        "commit {commit} is not in the repository: {reason}; it may have been rewritten or not \
         fetched yet (fetch the base branch, or reset the task so it pins a current commit)"
    )]
    CommitMissing { commit: String, reason: String },
    #[error(
        "the previous spec version {tree} is not in the repository (history rewritten?); scan \
         again from scratch (since = None)"
    )]
    UnknownVersion { tree: String },
    #[error(
        "branch {branch} of {repo} was rewritten outside hyperloop: its tip moved from {from} \
         to {to}, which does not descend from it. hyperloop stopped before building on it or \
         landing onto it; nothing was cancelled or lost. If the rewrite was not intended, \
         restore the branch with `git update-ref refs/heads/{branch} {from}` and run again; if \
         it was, run again to continue from the new tip"
    )]
    Rewritten {
        branch: String,
        repo: String,
        from: String,
        to: String,
    },
    #[error("{path} does not exist at commit {commit}")]
    SpecMissing { path: String, commit: String },
    #[error("{path} at commit {commit} is not UTF-8 text; save the spec as UTF-8")]
    NotText { path: String, commit: String },
    #[error("blob {blob} is not in the repository: {reason}")]
    BlobMissing { blob: String, reason: String },
    #[error("git {operation} failed: {reason}")]
    Git {
        operation: &'static str,
        reason: String,
    },
}

#[cfg(any(test, feature = "testing"))]
pub mod contract;

/// The specs of the base branch.
pub trait SpecSource: Send + Sync {
    /// Specs added, modified or deleted since `since` (`None`: all specs, as added), at the
    /// current tip of the base branch.
    ///
    /// # Errors
    /// A missing base branch, an unreadable repository or a `since` no longer in it.
    fn changes(&self, since: Option<&SpecVersion>) -> Result<SpecChanges, SpecSourceError>;

    /// The spec's text at its pinned commit.
    ///
    /// # Errors
    /// The commit or the file at it does not exist, or is not UTF-8.
    fn read(&self, spec: &SpecRef) -> Result<String, SpecSourceError>;

    /// A unified diff between two versions of a spec (`None` = absent), for the PM's prompt.
    ///
    /// # Errors
    /// A blob id not in the repository.
    fn diff(
        &self,
        path: &SpecPath,
        old: Option<&BlobId>,
        new: Option<&BlobId>,
    ) -> Result<String, SpecSourceError>;
}
