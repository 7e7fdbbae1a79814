//! [`SpecSource`] over the object database of the coordinator's checkout (git2).
//!
//! The unchanged check resolves the base branch and walks `specs_dir`'s path components to its
//! tree id: a handful of object reads, independent of the number of specs. When the id moved,
//! libgit2 diffs the old and new trees, descending only into subtrees whose ids differ, so the
//! cost follows the changed paths.

use std::path::Path;
use std::sync::Mutex;

use git2::{Delta, DiffOptions, ErrorCode, FileMode, ObjectType, Oid, Patch, Repository, Tree};
use hyperloop_shared::model::{SpecPath, SpecRef};

use crate::ports::spec_source::{
    BlobId, CommitId, SkippedSpec, SpecChange, SpecChanges, SpecSource, SpecSourceError,
    SpecVersion,
};

/// Specs of `refs/heads/<base_branch>` under `specs_dir`.
pub struct GitSpecSource {
    // git2's Repository is Send but not Sync; nothing awaits under this std Mutex.
    repo: Mutex<Repository>,
    repo_label: String,
    base_ref: String,
    base_branch: String,
    /// Normalised: no leading `./`, no trailing `/`; empty means the repository root.
    specs_dir: String,
}

impl GitSpecSource {
    /// Opens the repository at `path` (a checkout or a bare repository).
    ///
    /// # Errors
    /// Not a git repository, or a `specs_dir` that leaves the repository.
    pub fn open(path: &Path, base_branch: &str, specs_dir: &str) -> Result<Self, SpecSourceError> {
        let repo = Repository::open(path).map_err(|e| SpecSourceError::OpenRepository {
            repo: path.display().to_string(),
            reason: e.message().to_owned(),
        })?;
        let specs_dir = normalize_dir(specs_dir)?;
        Ok(Self {
            repo: Mutex::new(repo),
            repo_label: path.display().to_string(),
            base_ref: format!("refs/heads/{base_branch}"),
            base_branch: base_branch.to_owned(),
            specs_dir,
        })
    }

    fn repo(&self) -> std::sync::MutexGuard<'_, Repository> {
        // A panic while holding the lock cannot leave the Repository half-updated (we only
        // read through it), so a poisoned lock is still usable.
        self.repo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn full_path(&self, rel: &str) -> String {
        if self.specs_dir.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.specs_dir)
        }
    }
}

fn normalize_dir(dir: &str) -> Result<String, SpecSourceError> {
    let trimmed = dir.trim_start_matches("./").trim_end_matches('/');
    let bad = |reason: &str| SpecSourceError::SpecsDir {
        dir: dir.to_owned(),
        reason: reason.to_owned(),
    };
    if trimmed.starts_with('/') {
        return Err(bad("it is absolute"));
    }
    if trimmed == "." || trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == ".." || s == ".git")
    {
        return Err(bad("it has an empty, `.`, `..` or `.git` segment"));
    }
    Ok(trimmed.to_owned())
}

fn git_err(operation: &'static str) -> impl Fn(git2::Error) -> SpecSourceError {
    move |e| SpecSourceError::Git {
        operation,
        reason: e.message().to_owned(),
    }
}

impl SpecSource for GitSpecSource {
    fn changes(&self, since: Option<&SpecVersion>) -> Result<SpecChanges, SpecSourceError> {
        let repo = self.repo();
        let commit = match repo.find_reference(&self.base_ref) {
            Ok(r) => r.peel_to_commit().map_err(git_err("peel base branch"))?,
            Err(e) if e.code() == ErrorCode::NotFound => {
                return Err(SpecSourceError::BaseBranchMissing {
                    branch: self.base_branch.clone(),
                    repo: self.repo_label.clone(),
                });
            }
            Err(e) => return Err(git_err("read base branch")(e)),
        };
        let version_commit = CommitId(commit.id().to_string());
        if let Some(prev) = since
            && prev.commit != version_commit
        {
            // Only forward moves are expected (landings, pushes on top). A tip that does not
            // descend from the last one seen is a rewrite nobody here asked for.
            let descends = Oid::from_str(&prev.commit.0)
                .and_then(|old| repo.graph_descendant_of(commit.id(), old))
                .unwrap_or(false);
            if !descends {
                return Err(SpecSourceError::Rewritten {
                    branch: self.base_branch.clone(),
                    repo: self.repo_label.clone(),
                    from: prev.commit.0.clone(),
                    to: version_commit.0,
                });
            }
        }
        let root = commit.tree().map_err(git_err("read commit tree"))?;
        let mut skipped = Vec::new();
        let new_tree = specs_tree(&repo, &root, &self.specs_dir, &mut skipped)?;
        let version = SpecVersion {
            commit: version_commit,
            tree: new_tree.as_ref().map(|t| t.id().to_string()),
        };

        let old_tree = match since {
            Some(prev) if prev.tree == version.tree => {
                // O(1): same tree id, same contents.
                return Ok(SpecChanges {
                    version,
                    changes: Vec::new(),
                    skipped: Vec::new(),
                });
            }
            Some(SpecVersion { tree: Some(id), .. }) => {
                let unknown = || SpecSourceError::UnknownVersion { tree: id.clone() };
                let oid = Oid::from_str(id).map_err(|_| unknown())?;
                Some(repo.find_tree(oid).map_err(|_| unknown())?)
            }
            _ => None,
        };

        let mut opts = DiffOptions::new();
        opts.skip_binary_check(true);
        let diff = repo
            .diff_tree_to_tree(old_tree.as_ref(), new_tree.as_ref(), Some(&mut opts))
            .map_err(git_err("diff spec trees"))?;
        let mut changes = Vec::new();
        for delta in diff.deltas() {
            let old = self.side(delta.old_file(), delta.status() != Delta::Added, None);
            let new = self.side(
                delta.new_file(),
                delta.status() != Delta::Deleted,
                Some(&mut skipped),
            );
            let change = match (old, new) {
                (Some((path, old)), Some((_, new))) if old != new => {
                    SpecChange::Modified { path, old, new }
                }
                (Some(_), Some(_)) | (None, None) => continue,
                (Some((path, old)), None) => SpecChange::Deleted { path, old },
                (None, Some((path, blob))) => SpecChange::Added { path, blob },
            };
            changes.push(change);
        }
        changes.sort_by(|a, b| a.path().cmp(b.path()));
        // A modified entry whose type changed shows up as a delete plus an add of one path.
        merge_typechanges(&mut changes);
        Ok(SpecChanges {
            version,
            changes,
            skipped,
        })
    }

    fn read(&self, spec: &SpecRef) -> Result<String, SpecSourceError> {
        let repo = self.repo();
        let missing = |reason: String| SpecSourceError::CommitMissing {
            commit: spec.commit.clone(),
            reason,
        };
        // The commit is validated hex (4..=64 digits), so a prefix lookup is safe.
        let commit = repo
            .find_object_by_prefix(&spec.commit, Some(ObjectType::Commit))
            .and_then(|o| o.peel_to_commit())
            .map_err(|e| missing(e.message().to_owned()))?;
        let tree = commit.tree().map_err(git_err("read commit tree"))?;
        let spec_missing = || SpecSourceError::SpecMissing {
            path: spec.path.to_string(),
            commit: spec.commit.clone(),
        };
        let entry = tree
            .get_path(Path::new(spec.path.as_str()))
            .map_err(|_| spec_missing())?;
        if !matches!(
            entry.filemode(),
            m if m == i32::from(FileMode::Blob) || m == i32::from(FileMode::BlobExecutable)
        ) {
            return Err(spec_missing());
        }
        let blob = repo
            .find_blob(entry.id())
            .map_err(git_err("read spec blob"))?;
        String::from_utf8(blob.content().to_vec()).map_err(|_| SpecSourceError::NotText {
            path: spec.path.to_string(),
            commit: spec.commit.clone(),
        })
    }

    fn diff(
        &self,
        path: &SpecPath,
        old: Option<&BlobId>,
        new: Option<&BlobId>,
    ) -> Result<String, SpecSourceError> {
        let repo = self.repo();
        let content = |id: Option<&BlobId>| -> Result<Vec<u8>, SpecSourceError> {
            let Some(id) = id else { return Ok(Vec::new()) };
            let missing = |reason: String| SpecSourceError::BlobMissing {
                blob: id.0.clone(),
                reason,
            };
            let oid = Oid::from_str(&id.0).map_err(|e| missing(e.message().to_owned()))?;
            let blob = repo
                .find_blob(oid)
                .map_err(|e| missing(e.message().to_owned()))?;
            Ok(blob.content().to_vec())
        };
        unified_diff(path, &content(old)?, &content(new)?)
    }
}

/// A unified diff of two versions of `path`'s text, as git renders it; shared with the
/// in-memory source so both adapters show the PM the same diff.
pub(crate) fn unified_diff(
    path: &SpecPath,
    old: &[u8],
    new: &[u8],
) -> Result<String, SpecSourceError> {
    let p = Path::new(path.as_str());
    let mut patch = Patch::from_buffers(old, Some(p), new, Some(p), None)
        .map_err(git_err("diff spec versions"))?;
    let buf = patch.to_buf().map_err(git_err("render spec diff"))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

impl GitSpecSource {
    /// One side of a delta as a spec, if it is one. Hostile entries that look like specs are
    /// recorded in `skipped` (only for the new side: each is reported when it appears).
    fn side(
        &self,
        file: git2::DiffFile<'_>,
        present: bool,
        skipped: Option<&mut Vec<SkippedSpec>>,
    ) -> Option<(SpecPath, BlobId)> {
        if !present {
            return None;
        }
        let bytes = file.path_bytes()?;
        let lossy = String::from_utf8_lossy(bytes);
        if !lossy.ends_with(".md") {
            return None;
        }
        // Hidden entries are drafts and tooling files, like `specs::list` treats them.
        if lossy.split('/').any(|s| s.starts_with('.')) {
            return None;
        }
        let reason = match (std::str::from_utf8(bytes), file.mode()) {
            (Err(_), _) => Some("the name is not UTF-8; rename it".to_owned()),
            (Ok(_), FileMode::Link) => {
                Some("it is a symbolic link; commit the spec itself instead".to_owned())
            }
            (Ok(_), FileMode::Commit) => Some("it is a submodule".to_owned()),
            (Ok(rel), FileMode::Blob | FileMode::BlobExecutable | FileMode::BlobGroupWritable) => {
                match SpecPath::parse(&self.full_path(rel)) {
                    Ok(path) => return Some((path, BlobId(file.id().to_string()))),
                    Err(e) => Some(e.to_string()),
                }
            }
            (Ok(_), _) => None,
        };
        if let (Some(reason), Some(skipped)) = (reason, skipped) {
            skipped.push(SkippedSpec {
                path: self.full_path(&lossy),
                reason,
            });
        }
        None
    }
}

/// The tree of `dir` inside `root`, or `None` when absent (or not a folder, which is reported).
fn specs_tree<'r>(
    repo: &'r Repository,
    root: &Tree<'r>,
    dir: &str,
    skipped: &mut Vec<SkippedSpec>,
) -> Result<Option<Tree<'r>>, SpecSourceError> {
    if dir.is_empty() {
        return Ok(Some(root.clone()));
    }
    let entry = match root.get_path(Path::new(dir)) {
        Ok(e) => e,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(git_err("find specs directory")(e)),
    };
    if entry.kind() != Some(ObjectType::Tree) {
        skipped.push(SkippedSpec {
            path: dir.to_owned(),
            reason: "the specs directory is not a folder on the base branch; check \
                     target.specs_dir"
                .to_owned(),
        });
        return Ok(None);
    }
    repo.find_tree(entry.id())
        .map(Some)
        .map_err(git_err("read specs directory"))
}

/// Folds a `Deleted` + `Added` pair of one path (a type change split by the diff) into one
/// `Modified`. `changes` is sorted by path, so the pair is adjacent.
fn merge_typechanges(changes: &mut Vec<SpecChange>) {
    let mut out: Vec<SpecChange> = Vec::with_capacity(changes.len());
    for change in changes.drain(..) {
        if let (
            Some(SpecChange::Deleted { path, old }),
            SpecChange::Added {
                path: added,
                blob: new,
            },
        ) = (out.last(), &change)
            && path == added
        {
            let merged = if old == new {
                None
            } else {
                Some(SpecChange::Modified {
                    path: path.clone(),
                    old: old.clone(),
                    new: new.clone(),
                })
            };
            out.pop();
            out.extend(merged);
            continue;
        }
        out.push(change);
    }
    *changes = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_dir_is_normalized_and_escapes_are_rejected() {
        assert_eq!(normalize_dir("./specs/").unwrap(), "specs");
        assert_eq!(normalize_dir("docs/specs").unwrap(), "docs/specs");
        assert_eq!(normalize_dir(".").unwrap(), "");
        assert!(normalize_dir("../specs").is_err());
        assert!(normalize_dir("/abs").is_err());
        assert!(normalize_dir("a//b").is_err());
    }
}
