//! The reconciler's view of the specs at the base branch tip, kept up to date from the
//! spec source's incremental changes, so a cycle with nothing changed costs O(1).

use std::collections::{BTreeMap, BTreeSet};

use hyperloop_shared::model::SpecPath;

use crate::ports::spec_source::{BlobId, SpecChange, SpecChanges, SpecVersion};
use crate::ports::state_store::SpecRecord;

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
        for skipped in &changes.skipped {
            tracing::warn!(%skipped, "spec skipped");
        }
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
