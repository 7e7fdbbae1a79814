//! [`MemorySpecSource`]: a [`SpecSource`] over specs held in memory, for tests that drive the
//! reconcile loop without a repository. Clones share one history, so a test keeps a clone to
//! edit the specs the loop reads.
//!
//! Every mutation is a commit, and old commits stay readable: a task pinned at an older commit
//! still reads the text it was created from. Blob ids are the ids git gives the same text;
//! tree and commit ids are deterministic hashes, so runs are reproducible.
//!
//! Every path is taken as a spec: there is no specs directory or `.md` filter. A path that
//! [`SpecPath`] rejects is kept, and reported in [`SpecChanges::skipped`] the way the git
//! source reports hostile names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use git2::{ObjectType, Oid};
use hyperloop_shared::model::{SpecPath, SpecRef};

use crate::adapters::git::spec_source::unified_diff;
use crate::ports::spec_source::{
    BlobId, CommitId, SkippedSpec, SpecChange, SpecChanges, SpecSource, SpecSourceError,
    SpecVersion,
};

#[derive(Debug, Clone)]
pub struct MemorySpecSource {
    // std Mutex: nothing awaits while holding it.
    history: Arc<Mutex<History>>,
}

#[derive(Debug)]
struct History {
    /// Oldest first; the last one is the tip of the base branch. Never empty.
    commits: Vec<Commit>,
    /// Every text ever set: `diff` takes blob ids from any commit.
    blobs: HashMap<BlobId, String>,
}

#[derive(Debug)]
struct Commit {
    id: CommitId,
    /// `None` without entries, as git has no tree for a missing specs directory.
    tree: Option<String>,
    /// Path as given (possibly not a valid spec path) to the blob of its text.
    entries: BTreeMap<String, BlobId>,
}

impl MemorySpecSource {
    /// A base branch whose first commit holds `specs` (path, text).
    pub fn new(specs: &[(&str, &str)]) -> Self {
        let mut history = History {
            commits: Vec::new(),
            blobs: HashMap::new(),
        };
        let mut entries = BTreeMap::new();
        for (path, text) in specs {
            entries.insert((*path).to_owned(), history.store(text));
        }
        history.commit(entries);
        Self {
            history: Arc::new(Mutex::new(history)),
        }
    }

    /// Commits `text` at `path`, adding or modifying it, and returns the new commit. Setting
    /// the same text again still makes a commit, one that changes no spec.
    pub fn set(&self, path: &str, text: &str) -> CommitId {
        let mut history = self.lock();
        let blob = history.store(text);
        let mut entries = history.tip().entries.clone();
        entries.insert(path.to_owned(), blob);
        history.commit(entries)
    }

    /// Commits the removal of `path` and returns the new commit.
    ///
    /// # Panics
    /// `path` is not at the tip: a typo in a test should fail it, not pass silently.
    pub fn remove(&self, path: &str) -> CommitId {
        let mut history = self.lock();
        let mut entries = history.tip().entries.clone();
        assert!(
            entries.remove(path).is_some(),
            "{path} is not in the memory spec source"
        );
        history.commit(entries)
    }

    /// The tip of the base branch: what new tasks pin.
    pub fn head(&self) -> CommitId {
        self.lock().tip().id.clone()
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        // Every mutation validates before it changes anything, so the history behind a
        // poisoned lock (a panicking test thread) is consistent.
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl History {
    fn tip(&self) -> &Commit {
        self.commits.last().expect("a history starts with a commit")
    }

    fn store(&mut self, text: &str) -> BlobId {
        let id = BlobId(hash(ObjectType::Blob, text.as_bytes()));
        self.blobs
            .entry(id.clone())
            .or_insert_with(|| text.to_owned());
        id
    }

    fn commit(&mut self, entries: BTreeMap<String, BlobId>) -> CommitId {
        let tree = (!entries.is_empty()).then(|| {
            let listing: String = entries
                .iter()
                .map(|(path, blob)| format!("{blob} {path}\n"))
                .collect();
            hash(ObjectType::Tree, listing.as_bytes())
        });
        // The sequence number makes every commit distinct, even one that changes nothing.
        let header = format!(
            "tree {}\nseq {}\n",
            tree.as_deref().unwrap_or("-"),
            self.commits.len()
        );
        let id = CommitId(hash(ObjectType::Commit, header.as_bytes()));
        self.commits.push(Commit {
            id: id.clone(),
            tree,
            entries,
        });
        id
    }

    /// The commit `prefix` names, as git resolves an abbreviated id.
    fn find(&self, prefix: &str) -> Result<&Commit, SpecSourceError> {
        let wanted = prefix.to_ascii_lowercase();
        let mut found = self.commits.iter().filter(|c| c.id.0.starts_with(&wanted));
        let missing = |reason: &str| SpecSourceError::CommitMissing {
            commit: prefix.to_owned(),
            reason: reason.to_owned(),
        };
        match (found.next(), found.next()) {
            (Some(commit), None) => Ok(commit),
            (None, _) => Err(missing("no commit of the memory spec source has this id")),
            (Some(_), Some(_)) => Err(missing("the abbreviated id is ambiguous")),
        }
    }
}

/// The id git would give an object of `kind` with these contents.
fn hash(kind: ObjectType, bytes: &[u8]) -> String {
    Oid::hash_object(kind, bytes)
        .expect("hashing a loose object type cannot fail")
        .to_string()
}

impl SpecSource for MemorySpecSource {
    fn changes(&self, since: Option<&SpecVersion>) -> Result<SpecChanges, SpecSourceError> {
        let history = self.lock();
        let tip = history.tip();
        let version = SpecVersion {
            commit: tip.id.clone(),
            tree: tip.tree.clone(),
        };
        // Compared by tree, like the git source: a commit that changed no spec is no change.
        if since.is_some_and(|prev| prev.tree == version.tree) {
            return Ok(SpecChanges {
                version,
                changes: Vec::new(),
                skipped: Vec::new(),
            });
        }
        let no_entries = BTreeMap::new();
        let old = match since.and_then(|prev| prev.tree.as_ref()) {
            Some(id) => history
                .commits
                .iter()
                .find(|c| c.tree.as_ref() == Some(id))
                .map(|c| &c.entries)
                .ok_or_else(|| SpecSourceError::UnknownVersion { tree: id.clone() })?,
            None => &no_entries,
        };
        let (changes, skipped) = compare(old, &tip.entries);
        Ok(SpecChanges {
            version,
            changes,
            skipped,
        })
    }

    fn read(&self, spec: &SpecRef) -> Result<String, SpecSourceError> {
        let history = self.lock();
        let commit = history.find(&spec.commit)?;
        let blob =
            commit
                .entries
                .get(spec.path.as_str())
                .ok_or_else(|| SpecSourceError::SpecMissing {
                    path: spec.path.to_string(),
                    commit: spec.commit.clone(),
                })?;
        Ok(history.blobs[blob].clone())
    }

    fn diff(
        &self,
        path: &SpecPath,
        old: Option<&BlobId>,
        new: Option<&BlobId>,
    ) -> Result<String, SpecSourceError> {
        let history = self.lock();
        let text = |id: Option<&BlobId>| -> Result<&[u8], SpecSourceError> {
            let Some(id) = id else { return Ok(&[]) };
            history
                .blobs
                .get(id)
                .map(|text| text.as_bytes())
                .ok_or_else(|| SpecSourceError::BlobMissing {
                    blob: id.0.clone(),
                    reason: "no text of the memory spec source has this id".to_owned(),
                })
        };
        unified_diff(path, text(old)?, text(new)?)
    }
}

/// The spec changes from `old` to `new`, sorted by path, and the entries that cannot be specs
/// among those added or modified (the only ones the git source reports).
fn compare(
    old: &BTreeMap<String, BlobId>,
    new: &BTreeMap<String, BlobId>,
) -> (Vec<SpecChange>, Vec<SkippedSpec>) {
    let mut changes = Vec::new();
    let mut skipped = Vec::new();
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for raw in paths {
        let (before, after) = (old.get(raw).cloned(), new.get(raw).cloned());
        if before == after {
            continue;
        }
        let path = match SpecPath::parse(raw) {
            Ok(path) => path,
            Err(e) => {
                if after.is_some() {
                    skipped.push(SkippedSpec {
                        path: raw.clone(),
                        reason: e.to_string(),
                    });
                }
                continue;
            }
        };
        changes.push(match (before, after) {
            (None, Some(blob)) => SpecChange::Added { path, blob },
            (Some(old), Some(new)) => SpecChange::Modified { path, old, new },
            (Some(old), None) => SpecChange::Deleted { path, old },
            (None, None) => continue,
        });
    }
    (changes, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_are_the_ids_git_gives_the_same_text() {
        let source = MemorySpecSource::new(&[("specs/a.md", "a\n")]);
        let scan = source.changes(None).unwrap();
        // `printf 'a\n' | git hash-object --stdin`
        let blob = BlobId("78981922613b2afb6025042ff6bd878ac1994e85".into());
        assert_eq!(
            scan.changes,
            [SpecChange::Added {
                path: SpecPath::parse("specs/a.md").unwrap(),
                blob
            }]
        );
    }

    #[test]
    #[should_panic(expected = "specs/typo.md is not in the memory spec source")]
    fn removing_a_spec_that_is_not_there_fails_the_test() {
        MemorySpecSource::new(&[("specs/a.md", "a\n")]).remove("specs/typo.md");
    }

    #[test]
    fn clones_share_one_history() {
        let source = MemorySpecSource::new(&[]);
        let clone = source.clone();
        let commit = clone.set("specs/a.md", "a\n");
        assert_eq!(source.head(), commit);
    }
}
