//! The `SpecSource` contract and git-specific behaviour of the git spec source, against real
//! repositories built with the git CLI.

mod support;

use std::path::Path;

use hyperloop_coordinator::adapters::git::GitSpecSource;
use hyperloop_coordinator::ports::spec_source::contract::{Harness, listing};
use hyperloop_coordinator::ports::spec_source::{CommitId, SpecChange, SpecSource};
use hyperloop_shared::model::{SpecPath, SpecRef};
use support::{git, init_repo as repo};
use tempfile::TempDir;

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn commit(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A checkout on `main` whose first commit holds a README and the given specs.
struct Repo {
    dir: TempDir,
    source: GitSpecSource,
}

fn contract_repo(specs: &[(&str, &str)]) -> Repo {
    let dir = repo();
    write(dir.path(), "README.md", "not a spec\n");
    for (path, text) in specs {
        write(dir.path(), path, text);
    }
    commit(dir.path(), "first");
    let source = GitSpecSource::open(dir.path(), "main", "specs").unwrap();
    Repo { dir, source }
}

impl Harness for Repo {
    type Source = GitSpecSource;

    fn source(&self) -> &GitSpecSource {
        &self.source
    }

    fn set(&self, path: &str, text: &str) -> CommitId {
        write(self.dir.path(), path, text);
        CommitId(commit(self.dir.path(), &format!("set {path}")))
    }

    fn remove(&self, path: &str) -> CommitId {
        git(self.dir.path(), &["rm", "-q", path]);
        CommitId(commit(self.dir.path(), &format!("remove {path}")))
    }

    fn head(&self) -> CommitId {
        CommitId(git(self.dir.path(), &["rev-parse", "main"]))
    }
}

hyperloop_coordinator::spec_source_contract_tests!(contract_repo);

fn spec(path: &str) -> SpecPath {
    SpecPath::parse(path).unwrap()
}

#[test]
fn a_first_scan_lists_every_markdown_spec_recursively_and_nothing_else() {
    let dir = repo();
    let root = dir.path();
    write(root, "specs/b.md", "b\n");
    write(root, "specs/a.md", "a\n");
    write(root, "specs/api/v2/x.md", "x\n");
    write(root, "specs/notes.txt", "not a spec\n");
    write(root, "specs/.drafts/y.md", "hidden\n");
    write(root, "README.md", "outside specs\n");
    let head = commit(root, "specs");

    let source = GitSpecSource::open(root, "main", "specs").unwrap();
    let scan = source.changes(None).unwrap();
    assert_eq!(
        listing(&scan),
        ["A specs/a.md", "A specs/api/v2/x.md", "A specs/b.md"]
    );
    assert_eq!(scan.version.commit.0, head);
    assert!(scan.skipped.is_empty(), "{:?}", scan.skipped);
}

#[test]
fn nothing_changed_is_reported_as_unchanged_even_when_other_files_moved_the_commit() {
    let dir = repo();
    let root = dir.path();
    write(root, "specs/a.md", "a\n");
    commit(root, "specs");
    let source = GitSpecSource::open(root, "main", "specs").unwrap();
    let first = source.changes(None).unwrap();

    write(root, "src/lib.rs", "// code\n");
    let head = commit(root, "code only");
    let again = source.changes(Some(&first.version)).unwrap();
    assert!(again.is_unchanged(), "{again:?}");
    assert_eq!(
        again.version.commit.0, head,
        "new tasks pin the newest commit"
    );
    assert_eq!(again.version.tree, first.version.tree);
}

#[test]
fn a_change_reports_only_the_added_modified_and_deleted_specs() {
    let dir = repo();
    let root = dir.path();
    for i in 0..20 {
        write(root, &format!("specs/area{}/s{i}.md", i % 4), "same\n");
    }
    write(root, "specs/gone.md", "bye\n");
    write(root, "specs/edit.md", "v1\n");
    commit(root, "specs");
    let source = GitSpecSource::open(root, "main", "specs").unwrap();
    let first = source.changes(None).unwrap();
    let old_blob = match first
        .changes
        .iter()
        .find(|c| c.path().as_str() == "specs/edit.md")
    {
        Some(SpecChange::Added { blob, .. }) => blob.clone(),
        other => panic!("{other:?}"),
    };

    write(root, "specs/edit.md", "v2\n");
    write(root, "specs/area1/new.md", "new\n");
    std::fs::remove_file(root.join("specs/gone.md")).unwrap();
    commit(root, "change specs");
    let next = source.changes(Some(&first.version)).unwrap();
    assert_eq!(
        listing(&next),
        ["A specs/area1/new.md", "M specs/edit.md", "D specs/gone.md"]
    );
    match &next.changes[1] {
        SpecChange::Modified { old, new, .. } => {
            assert_eq!(old, &old_blob);
            let diff = source
                .diff(&spec("specs/edit.md"), Some(old), Some(new))
                .unwrap();
            assert!(diff.contains("-v1\n+v2\n"), "{diff}");
            assert!(diff.contains("specs/edit.md"), "{diff}");
        }
        other => panic!("{other:?}"),
    }
    // An added spec diffs against nothing.
    if let SpecChange::Added { blob, .. } = &next.changes[0] {
        let diff = source
            .diff(&spec("specs/area1/new.md"), None, Some(blob))
            .unwrap();
        assert!(diff.contains("+new\n"), "{diff}");
    }
}

#[test]
fn specs_come_from_the_base_branch_not_the_working_tree_or_other_branches() {
    let dir = repo();
    let root = dir.path();
    write(root, "specs/a.md", "committed\n");
    let head = commit(root, "specs");
    let source = GitSpecSource::open(root, "main", "specs").unwrap();
    let first = source.changes(None).unwrap();

    // Uncommitted edits and a commit on another branch are invisible.
    write(root, "specs/a.md", "edited in the working tree\n");
    write(root, "specs/wip.md", "untracked\n");
    git(root, &["checkout", "-q", "-b", "feature"]);
    write(root, "specs/feature.md", "on a branch\n");
    commit(root, "feature spec");
    let again = source.changes(Some(&first.version)).unwrap();
    assert!(again.is_unchanged(), "{again:?}");
    assert_eq!(again.version.commit.0, head);

    let pinned = SpecRef {
        path: spec("specs/a.md"),
        commit: head.clone(),
    };
    assert_eq!(source.read(&pinned).unwrap(), "committed\n");
}

#[test]
fn a_missing_base_branch_names_the_setting_to_fix() {
    let dir = repo();
    let root = dir.path();
    write(root, "specs/a.md", "a\n");
    commit(root, "specs");
    let source = GitSpecSource::open(root, "trunk", "specs").unwrap();
    let err = source.changes(None).unwrap_err().to_string();
    assert!(err.contains("branch trunk does not exist"), "{err}");
    assert!(err.contains("set target.base_branch"), "{err}");
}

#[test]
fn outside_a_repository_opening_fails_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let err = GitSpecSource::open(dir.path(), "main", "specs")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a usable git repository"), "{err}");
}

#[test]
fn a_missing_specs_directory_has_no_specs_until_it_appears() {
    let dir = repo();
    let root = dir.path();
    write(root, "README.md", "hi\n");
    commit(root, "no specs yet");
    let source = GitSpecSource::open(root, "main", "specs").unwrap();
    let first = source.changes(None).unwrap();
    assert!(first.is_unchanged());
    assert_eq!(first.version.tree, None);

    write(root, "specs/a.md", "a\n");
    commit(root, "first spec");
    let next = source.changes(Some(&first.version)).unwrap();
    assert_eq!(listing(&next), ["A specs/a.md"]);

    std::fs::remove_dir_all(root.join("specs")).unwrap();
    commit(root, "drop specs");
    let last = source.changes(Some(&next.version)).unwrap();
    assert_eq!(listing(&last), ["D specs/a.md"]);
}

#[cfg(unix)]
#[test]
fn hostile_entries_are_skipped_with_a_reason_and_never_crash_the_scan() {
    use std::os::unix::ffi::OsStrExt;
    let dir = repo();
    let root = dir.path();
    write(root, "specs/ok.md", "fine\n");
    write(root, "secret.txt", "do not leak\n");
    std::os::unix::fs::symlink("../secret.txt", root.join("specs/link.md")).unwrap();
    let bad_name = std::ffi::OsStr::from_bytes(b"specs/caf\xe9.md");
    std::fs::write(root.join(bad_name), "latin-1 name\n").unwrap();
    write(root, "specs/v1@2.md", "at sign\n");
    commit(root, "hostile");

    let source = GitSpecSource::open(root, "main", "specs").unwrap();
    let scan = source.changes(None).unwrap();
    assert_eq!(listing(&scan), ["A specs/ok.md"]);
    let mut reasons: Vec<String> = scan.skipped.iter().map(ToString::to_string).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("not UTF-8")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("symbolic link")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains('@')), "{reasons:?}");

    // A spec replaced by a symlink disappears as a spec.
    std::fs::remove_file(root.join("specs/ok.md")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", root.join("specs/ok.md")).unwrap();
    commit(root, "ok becomes a link");
    let next = source.changes(Some(&scan.version)).unwrap();
    assert_eq!(listing(&next), ["D specs/ok.md"]);
    assert_eq!(next.skipped.len(), 1, "{:?}", next.skipped);
}
