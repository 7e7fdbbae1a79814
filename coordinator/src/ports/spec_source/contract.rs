//! The contract every [`SpecSource`] adapter passes. An adapter's test file instantiates it
//! with [`spec_source_contract_tests!`](crate::spec_source_contract_tests), giving a function
//! from initial specs to a fresh [`Harness`]; each check gets its own backing.
//!
//! Specs live under `specs/`, so a git-backed harness can use that as its specs directory.

use hyperloop_shared::model::{SpecPath, SpecRef};

use super::{BlobId, CommitId, SpecChange, SpecChanges, SpecSource, SpecSourceError};

/// A base branch (a repository, an in-memory history) whose specs a test edits behind the
/// source's back. Every edit is one commit on the base branch.
pub trait Harness {
    type Source: SpecSource;

    /// The source under test, reading this backing.
    fn source(&self) -> &Self::Source;

    /// Commits `text` at `path` (added, modified, or saved unchanged) and returns the commit.
    fn set(&self, path: &str, text: &str) -> CommitId;

    /// Commits the removal of the spec at `path` and returns the commit.
    fn remove(&self, path: &str) -> CommitId;

    /// The tip of the base branch.
    fn head(&self) -> CommitId;
}

/// Instantiates every contract check as a `#[test]`.
/// `$new_harness` is an expression of type `impl Fn(&[(&str, &str)]) -> impl Harness`, whose
/// argument is the specs (path, text) of the base branch's first commit.
#[macro_export]
macro_rules! spec_source_contract_tests {
    ($new_harness:expr) => {
        $crate::spec_source_contract_tests!(@each $new_harness;
            a_first_listing_lists_every_spec_as_added,
            without_specs_the_first_listing_is_empty,
            when_nothing_changed_there_are_no_changes_and_the_version_stays,
            saving_a_spec_unchanged_moves_the_commit_but_changes_nothing,
            added_modified_and_deleted_specs_show_up_as_exactly_those_changes,
            changes_since_an_older_version_sum_up_every_commit_after_it,
            a_spec_pinned_at_an_old_commit_reads_its_old_text,
            reading_a_spec_that_does_not_exist_is_an_error,
            the_diff_between_two_versions_shows_the_changed_lines,
            a_version_the_source_never_gave_asks_for_a_fresh_scan,
            a_path_that_cannot_be_a_spec_is_skipped_once_and_never_fails_the_scan,
        );
    };
    (@each $new_harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::ports::spec_source::contract::$check(&$new_harness);
            }
        )*
    };
}

/// Changes as `A path`, `M path`, `D path`, in the order given.
pub fn listing(scan: &SpecChanges) -> Vec<String> {
    scan.changes
        .iter()
        .map(|c| {
            let kind = match c {
                SpecChange::Added { .. } => "A",
                SpecChange::Modified { .. } => "M",
                SpecChange::Deleted { .. } => "D",
            };
            format!("{kind} {}", c.path())
        })
        .collect()
}

/// The blob a scan gives `path` (added, or the new side of a modification).
fn blob(scan: &SpecChanges, path: &str) -> BlobId {
    scan.changes
        .iter()
        .find_map(|c| match c {
            SpecChange::Added { path: p, blob }
            | SpecChange::Modified {
                path: p, new: blob, ..
            } if p.as_str() == path => Some(blob.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{path} is not added or modified in {scan:?}"))
}

fn scan<S: SpecSource>(source: &S, since: Option<&SpecChanges>) -> SpecChanges {
    source
        .changes(since.map(|s| &s.version))
        .unwrap_or_else(|e| panic!("changes: {e}"))
}

fn at(path: &str, commit: &CommitId) -> SpecRef {
    SpecRef {
        path: SpecPath::parse(path).expect("valid spec path in test"),
        commit: commit.0.clone(),
    }
}

pub fn a_first_listing_lists_every_spec_as_added<H: Harness>(
    new_harness: &impl Fn(&[(&str, &str)]) -> H,
) {
    let h = new_harness(&[
        ("specs/b.md", "b\n"),
        ("specs/a.md", "a\n"),
        ("specs/api/v2/x.md", "x\n"),
        ("specs/twin.md", "a\n"),
    ]);
    let first = scan(h.source(), None);
    assert_eq!(
        listing(&first),
        [
            "A specs/a.md",
            "A specs/api/v2/x.md",
            "A specs/b.md",
            "A specs/twin.md"
        ],
        "every spec, sorted by path"
    );
    assert!(first.skipped.is_empty(), "{:?}", first.skipped);
    assert_eq!(first.version.commit, h.head(), "new tasks pin the tip");
    assert!(first.version.tree.is_some());
    // Blob ids follow the text, not the path: an unchanged spec is recognised by its id.
    assert_eq!(blob(&first, "specs/a.md"), blob(&first, "specs/twin.md"));
    assert_ne!(blob(&first, "specs/a.md"), blob(&first, "specs/b.md"));
}

pub fn without_specs_the_first_listing_is_empty<H: Harness>(
    new_harness: &impl Fn(&[(&str, &str)]) -> H,
) {
    let h = new_harness(&[]);
    let first = scan(h.source(), None);
    assert!(first.is_unchanged(), "{first:?}");
    assert_eq!(first.version.commit, h.head());
    assert_eq!(first.version.tree, None, "no specs, no tree");

    h.set("specs/a.md", "a\n");
    assert_eq!(listing(&scan(h.source(), Some(&first))), ["A specs/a.md"]);
}

pub fn when_nothing_changed_there_are_no_changes_and_the_version_stays<H: Harness>(
    new_harness: &impl Fn(&[(&str, &str)]) -> H,
) {
    let h = new_harness(&[("specs/a.md", "a\n"), ("specs/b.md", "b\n")]);
    let first = scan(h.source(), None);
    for _ in 0..2 {
        let again = scan(h.source(), Some(&first));
        assert!(again.is_unchanged(), "{again:?}");
        assert_eq!(again.version, first.version);
    }
}

pub fn saving_a_spec_unchanged_moves_the_commit_but_changes_nothing<H: Harness>(
    new_harness: &impl Fn(&[(&str, &str)]) -> H,
) {
    let h = new_harness(&[("specs/a.md", "a\n")]);
    let first = scan(h.source(), None);
    let commit = h.set("specs/a.md", "a\n");
    assert_ne!(commit, first.version.commit, "every edit is a commit");
    assert_eq!(h.head(), commit);

    let again = scan(h.source(), Some(&first));
    assert!(again.is_unchanged(), "{again:?}");
    assert_eq!(
        again.version.commit, commit,
        "new tasks pin the newest commit"
    );
    assert_eq!(again.version.tree, first.version.tree);
}

pub fn added_modified_and_deleted_specs_show_up_as_exactly_those_changes<H: Harness>(
    new_harness: &impl Fn(&[(&str, &str)]) -> H,
) {
    let h = new_harness(&[
        ("specs/keep.md", "same\n"),
        ("specs/edit.md", "v1\n"),
        ("specs/gone.md", "bye\n"),
    ]);
    let first = scan(h.source(), None);

    h.set("specs/new.md", "new\n");
    h.set("specs/edit.md", "v2\n");
    let tip = h.remove("specs/gone.md");
    let next = scan(h.source(), Some(&first));
    assert_eq!(
        listing(&next),
        ["M specs/edit.md", "D specs/gone.md", "A specs/new.md"]
    );
    assert!(next.skipped.is_empty(), "{:?}", next.skipped);
    assert_eq!(next.version.commit, tip);
    let edit_v1 = blob(&first, "specs/edit.md");
    assert_eq!(
        next.changes[0],
        SpecChange::Modified {
            path: SpecPath::parse("specs/edit.md").unwrap(),
            old: edit_v1.clone(),
            new: blob(&next, "specs/edit.md"),
        }
    );
    assert_ne!(blob(&next, "specs/edit.md"), edit_v1);
    assert_eq!(
        next.changes[1],
        SpecChange::Deleted {
            path: SpecPath::parse("specs/gone.md").unwrap(),
            old: blob(&first, "specs/gone.md"),
        }
    );

    let settled = scan(h.source(), Some(&next));
    assert!(settled.is_unchanged(), "{settled:?}");
    assert_eq!(settled.version, next.version);
}

pub fn changes_since_an_older_version_sum_up_every_commit_after_it<H: Harness>(
    new_harness: &impl Fn(&[(&str, &str)]) -> H,
) {
    let h = new_harness(&[("specs/edit.md", "v1\n"), ("specs/back.md", "x\n")]);
    let first = scan(h.source(), None);
    h.set("specs/edit.md", "v2\n");
    h.set("specs/edit.md", "v3\n");
    h.set("specs/brief.md", "here and gone\n");
    h.remove("specs/brief.md");
    h.set("specs/back.md", "y\n");
    h.set("specs/back.md", "x\n");

    let next = scan(h.source(), Some(&first));
    assert_eq!(listing(&next), ["M specs/edit.md"], "only the net change");
    match &next.changes[0] {
        SpecChange::Modified { old, .. } => assert_eq!(old, &blob(&first, "specs/edit.md")),
        other => panic!("{other:?}"),
    }
    let v3 = h.source().read(&at("specs/edit.md", &h.head())).unwrap();
    assert_eq!(v3, "v3\n");
}

pub fn a_spec_pinned_at_an_old_commit_reads_its_old_text<H: Harness>(
    new_harness: &impl Fn(&[(&str, &str)]) -> H,
) {
    let h = new_harness(&[("specs/a.md", "version one\n")]);
    let one = h.head();
    let two = h.set("specs/a.md", "version two\n");
    let gone = h.remove("specs/a.md");
    let source = h.source();

    assert_eq!(
        source.read(&at("specs/a.md", &one)).unwrap(),
        "version one\n"
    );
    assert_eq!(
        source.read(&at("specs/a.md", &two)).unwrap(),
        "version two\n"
    );
    let abbreviated = CommitId(two.0[..12].to_owned());
    assert_eq!(
        source.read(&at("specs/a.md", &abbreviated)).unwrap(),
        "version two\n",
        "an abbreviated commit id reads like the full one"
    );
    let err = source.read(&at("specs/a.md", &gone)).unwrap_err();
    assert!(matches!(err, SpecSourceError::SpecMissing { .. }), "{err}");
}

pub fn reading_a_spec_that_does_not_exist_is_an_error<H: Harness>(
    new_harness: &impl Fn(&[(&str, &str)]) -> H,
) {
    let h = new_harness(&[("specs/a.md", "a\n")]);
    let head = h.head();
    let err = h.source().read(&at("specs/nope.md", &head)).unwrap_err();
    assert_eq!(
        err,
        SpecSourceError::SpecMissing {
            path: "specs/nope.md".into(),
            commit: head.0.clone(),
        }
    );

    let unknown = CommitId("deadbeefdeadbeefdeadbeefdeadbeefdeadbeef".into());
    let err = h.source().read(&at("specs/a.md", &unknown)).unwrap_err();
    assert!(
        matches!(err, SpecSourceError::CommitMissing { .. }),
        "{err}"
    );
}

pub fn the_diff_between_two_versions_shows_the_changed_lines<H: Harness>(
    new_harness: &impl Fn(&[(&str, &str)]) -> H,
) {
    let h = new_harness(&[("specs/edit.md", "keep\nv1\n")]);
    let first = scan(h.source(), None);
    h.set("specs/edit.md", "keep\nv2\n");
    let next = scan(h.source(), Some(&first));
    let (old, new) = (blob(&first, "specs/edit.md"), blob(&next, "specs/edit.md"));
    let path = SpecPath::parse("specs/edit.md").unwrap();
    let source = h.source();

    let diff = source.diff(&path, Some(&old), Some(&new)).unwrap();
    assert!(diff.contains(" keep\n-v1\n+v2\n"), "{diff}");
    assert!(diff.contains("specs/edit.md"), "names the spec: {diff}");
    let added = source.diff(&path, None, Some(&new)).unwrap();
    assert!(
        added.contains("+keep\n+v2\n"),
        "an added spec diffs against nothing: {added}"
    );
    let deleted = source.diff(&path, Some(&old), None).unwrap();
    assert!(deleted.contains("-keep\n-v1\n"), "{deleted}");

    let unknown = BlobId("1111111111111111111111111111111111111111".into());
    let err = source.diff(&path, Some(&unknown), Some(&new)).unwrap_err();
    assert!(matches!(err, SpecSourceError::BlobMissing { .. }), "{err}");
}

pub fn a_version_the_source_never_gave_asks_for_a_fresh_scan<H: Harness>(
    new_harness: &impl Fn(&[(&str, &str)]) -> H,
) {
    let h = new_harness(&[("specs/a.md", "a\n")]);
    let mut version = scan(h.source(), None).version;
    version.tree = Some("1111111111111111111111111111111111111111".into());
    let err = h.source().changes(Some(&version)).unwrap_err();
    assert!(
        matches!(err, SpecSourceError::UnknownVersion { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("scan again from scratch"), "{err}");
}

pub fn a_path_that_cannot_be_a_spec_is_skipped_once_and_never_fails_the_scan<H: Harness>(
    new_harness: &impl Fn(&[(&str, &str)]) -> H,
) {
    let h = new_harness(&[("specs/ok.md", "fine\n")]);
    let first = scan(h.source(), None);
    h.set("specs/v1@2.md", "an at sign\n");
    let next = scan(h.source(), Some(&first));
    assert!(next.changes.is_empty(), "{:?}", next.changes);
    assert_eq!(next.skipped.len(), 1, "{:?}", next.skipped);
    assert_eq!(next.skipped[0].path, "specs/v1@2.md");
    assert!(next.skipped[0].reason.contains('@'), "{}", next.skipped[0]);
    assert!(!next.is_unchanged(), "a skipped entry is news");

    h.set("specs/ok.md", "still fine\n");
    let later = scan(h.source(), Some(&next));
    assert_eq!(listing(&later), ["M specs/ok.md"]);
    assert!(later.skipped.is_empty(), "reported when it appears only");

    let full = scan(h.source(), None);
    assert_eq!(listing(&full), ["A specs/ok.md"]);
    assert_eq!(
        full.skipped.len(),
        1,
        "a full scan reports every skipped entry"
    );
}
