//! The desired state as values: spec versions (git blob and commit ids), the changes a scan
//! of the base branch finds, and the reconciler's view of which specs intake still has to
//! answer. The scanning itself is the coordinator's `SpecSource` port.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::SpecPath;
use crate::state::SpecRecord;

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

/// Where a scan stopped: the cursor handed back to the next the spec source's `changes` call.
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

#[derive(Debug, Clone, Default)]
pub struct SpecView {
    /// Where the view is; `None` before the first listing.
    pub version: Option<SpecVersion>,
    /// Every spec at `version`.
    pub specs: BTreeMap<SpecPath, BlobId>,
    /// Specs whose current blob intake has not processed yet (new or modified).
    pub pending: BTreeSet<SpecPath>,
    /// Specs intake processed that no longer exist.
    pub deleted: BTreeSet<SpecPath>,
}

impl SpecView {
    /// The commit of the base branch tip the view reflects.
    pub fn commit(&self) -> &str {
        self.version.as_ref().map_or("", |v| v.commit.0.as_str())
    }

    /// Applies a batch of changes, comparing each touched spec with what intake recorded.
    pub fn apply(&mut self, changes: SpecChanges, records: &BTreeMap<SpecPath, SpecRecord>) {
        for change in changes.changes {
            let path = change.path().clone();
            match change {
                SpecChange::Added { blob, .. } | SpecChange::Modified { new: blob, .. } => {
                    self.specs.insert(path.clone(), blob);
                }
                SpecChange::Deleted { .. } => {
                    self.specs.remove(&path);
                }
            }
            self.refresh(&path, records);
        }
        self.version = Some(changes.version);
    }

    /// Recomputes whether `path` needs intake or a deletion, after either side changed.
    pub fn refresh(&mut self, path: &SpecPath, records: &BTreeMap<SpecPath, SpecRecord>) {
        let record = records.get(path);
        match (self.specs.get(path), record) {
            (Some(blob), Some(r)) if r.blob == blob.0 => {
                self.pending.remove(path);
                self.deleted.remove(path);
            }
            (Some(_), _) => {
                self.pending.insert(path.clone());
                self.deleted.remove(path);
            }
            (None, Some(_)) => {
                self.pending.remove(path);
                self.deleted.insert(path.clone());
            }
            (None, None) => {
                self.pending.remove(path);
                self.deleted.remove(path);
            }
        }
    }

    /// Recorded specs that the initial listing did not contain (deleted while stopped).
    pub fn reconcile_records(&mut self, records: &BTreeMap<SpecPath, SpecRecord>) {
        let gone: Vec<SpecPath> = records
            .keys()
            .filter(|p| !self.specs.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            self.refresh(&path, records);
        }
    }
}
