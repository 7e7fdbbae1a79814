//! Finding the spec files of a repository on disk, and telling the user which of them a run
//! will not see: the coordinator works on the specs committed on the base branch, never on
//! the working tree.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use hyperloop_shared::specs::{SkippedSpec, SpecChange};

use crate::adapters::git::GitSpecSource;
use crate::ports::spec_source::SpecSource as _;

#[derive(Debug, thiserror::Error)]
#[error("{}: cannot list specs: {source}; check `target.specs_dir` in .hyperloop.yaml", dir.display())]
pub struct ListError {
    dir: PathBuf,
    source: io::Error,
}

/// Every `*.md` file under `<root>/<specs_dir>`, recursively, as repository-relative paths
/// spelled with `/`, sorted. Hidden entries and symlinks are skipped: a spec is a file the
/// repository owns. A missing directory has no specs.
///
/// # Errors
/// A directory that exists but cannot be read.
pub fn list(root: &Path, specs_dir: &str) -> Result<Vec<String>, ListError> {
    let dir = root.join(specs_dir);
    let prefix = specs_dir.trim_end_matches('/');
    let mut found = Vec::new();
    match walk(&dir, prefix, &mut found) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ListError { dir, source });
        }
        Ok(()) => {}
    }
    found.sort();
    Ok(found)
}

/// The specs a run works on (committed on the base branch) next to the working tree's.
#[derive(Debug, Default)]
pub struct Survey {
    pub base_branch: String,
    /// Spec paths at the tip of the base branch, sorted.
    pub committed: Vec<String>,
    /// Entries under the specs directory that are not used as specs.
    pub skipped: Vec<SkippedSpec>,
    /// Working-tree spec files the base branch does not hold as they are: (path, is new).
    pub uncommitted: Vec<(String, bool)>,
}

impl Survey {
    /// Reads the base branch's specs and compares the working tree's with them.
    ///
    /// # Errors
    /// The repository or its base branch cannot be read, or the specs directory cannot be
    /// listed; the message names what to fix.
    pub fn take(root: &Path, base_branch: &str, specs_dir: &str) -> Result<Self, String> {
        let source =
            GitSpecSource::open(root, base_branch, specs_dir).map_err(|e| e.to_string())?;
        let scan = source.changes(None).map_err(|e| e.to_string())?;
        let committed: BTreeMap<String, String> = scan
            .changes
            .into_iter()
            .filter_map(|change| match change {
                SpecChange::Added { path, blob } => Some((path.to_string(), blob.0)),
                SpecChange::Modified { .. } | SpecChange::Deleted { .. } => None,
            })
            .collect();
        let mut uncommitted = Vec::new();
        for path in list(root, specs_dir).map_err(|e| e.to_string())? {
            let on_disk = git2::Oid::hash_file(git2::ObjectType::Blob, root.join(&path))
                .map(|id| id.to_string())
                .ok();
            match committed.get(&path) {
                None => uncommitted.push((path, true)),
                Some(blob) if on_disk.as_ref() != Some(blob) => uncommitted.push((path, false)),
                Some(_) => {}
            }
        }
        Ok(Self {
            base_branch: base_branch.to_owned(),
            committed: committed.into_keys().collect(),
            skipped: scan.skipped,
            uncommitted,
        })
    }

    /// What to tell the user about specs a run will not see, with the command that fixes it.
    pub fn uncommitted_note(&self) -> Option<String> {
        if self.uncommitted.is_empty() {
            return None;
        }
        let named: Vec<String> = self
            .uncommitted
            .iter()
            .map(|(path, new)| format!("{path} ({})", if *new { "new" } else { "changed" }))
            .collect();
        let paths: Vec<String> = self
            .uncommitted
            .iter()
            .map(|(p, _)| shell_word(p))
            .collect();
        Some(format!(
            "{} spec file(s) in the working tree are not committed on `{}`, and hyperloop works \
             only on committed specs: {}; commit them on `{}` to have them worked on: git add \
             {} && git commit -m 'Update specs'",
            named.len(),
            self.base_branch,
            named.join(", "),
            self.base_branch,
            paths.join(" "),
        ))
    }
}

/// `path` as one word for a POSIX shell, quoted only when it needs to be.
fn shell_word(path: &str) -> String {
    if path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._/-+@%,:".contains(c))
    {
        path.to_owned()
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}

fn walk(dir: &Path, rel: &str, found: &mut Vec<String>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type()?;
        let path = format!("{rel}/{name}");
        if kind.is_dir() {
            walk(&entry.path(), &path, found)?;
        } else if kind.is_file() && name.ends_with(".md") {
            found.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_found_recursively_sorted_and_hidden_files_skipped() {
        let root = tempfile::tempdir().unwrap();
        let specs = root.path().join("docs/specs");
        std::fs::create_dir_all(specs.join("api/v2")).unwrap();
        std::fs::create_dir_all(specs.join(".drafts")).unwrap();
        for f in ["b.md", "a.md", "api/v2/x.md", "notes.txt", ".drafts/y.md"] {
            std::fs::write(specs.join(f), "# spec\n").unwrap();
        }
        assert_eq!(
            list(root.path(), "docs/specs").unwrap(),
            [
                "docs/specs/a.md",
                "docs/specs/api/v2/x.md",
                "docs/specs/b.md"
            ]
        );
    }

    #[test]
    fn a_missing_specs_directory_has_no_specs() {
        let root = tempfile::tempdir().unwrap();
        assert!(list(root.path(), "specs").unwrap().is_empty());
    }
}
