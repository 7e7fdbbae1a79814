//! Finding the spec files of a repository on disk.

use std::io;
use std::path::{Path, PathBuf};

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
