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
//!
//! Calls are blocking (local object-database reads); call them from a blocking context.

use std::fmt;

use hyperloop_shared::model::{SpecPath, SpecRef};
use serde::{Deserialize, Serialize};

/// A git object id in hex: the version of one spec's text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BlobId(pub String);

/// A git commit id in hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommitId(pub String);

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a scan stopped: the cursor handed back to the next [`SpecSource::changes`] call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecVersion {
    /// The base-branch commit that was scanned (what new tasks pin in their `spec_ref`).
    pub commit: CommitId,
    /// The id of the specs directory's tree at that commit; `None` when it does not exist.
    /// Equal ids mean equal contents, which is what makes the unchanged check O(1).
    pub tree: Option<String>,
}

/// One spec that appeared, changed or disappeared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecChange {
    Added {
        path: SpecPath,
        blob: BlobId,
    },
    Modified {
        path: SpecPath,
        old: BlobId,
        new: BlobId,
    },
    Deleted {
        path: SpecPath,
        old: BlobId,
    },
}

impl SpecChange {
    pub fn path(&self) -> &SpecPath {
        match self {
            SpecChange::Added { path, .. }
            | SpecChange::Modified { path, .. }
            | SpecChange::Deleted { path, .. } => path,
        }
    }
}

/// A tree entry that looks like a spec but cannot be one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSpec {
    /// The path as stored, lossily decoded for display.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for SkippedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not used as a spec: {}", self.path, self.reason)
    }
}

/// The result of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecChanges {
    /// Pass this as `since` next time.
    pub version: SpecVersion,
    /// Sorted by path. With `since = None`, every spec as [`SpecChange::Added`].
    pub changes: Vec<SpecChange>,
    /// Entries introduced by this change set that were skipped (reported once, when they
    /// appear; a full scan reports all of them).
    pub skipped: Vec<SkippedSpec>,
}

impl SpecChanges {
    /// Nothing about the specs changed (the commit may still have moved).
    pub fn is_unchanged(&self) -> bool {
        self.changes.is_empty() && self.skipped.is_empty()
    }
}

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
