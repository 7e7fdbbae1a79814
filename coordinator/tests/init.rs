//! `init` against real directories: fresh repositories, re-runs, and user files.

use std::path::Path;
use std::process::Command;

use hyperloop_coordinator::init::{EntryStatus, InitError, init};
use hyperloop_coordinator::settings;
use hyperloop_shared::compose::BASE_URL;
use hyperloop_shared::config::Overrides;

fn git_init(dir: &Path) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["init", "-q", "-b", "main"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

fn statuses(report: &hyperloop_coordinator::init::InitReport) -> Vec<(String, EntryStatus)> {
    report
        .entries
        .iter()
        .map(|e| (e.path.clone(), e.status))
        .collect()
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap()
}

#[test]
fn a_fresh_repository_gets_the_whole_scaffold_and_it_validates() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git_init(root);
    let report = init(root, None, None).unwrap();
    use EntryStatus::Created;
    assert_eq!(
        statuses(&report),
        [
            (".hyperloop.yaml".to_owned(), Created),
            (".hyperloop/agents/kustomization.yaml".to_owned(), Created),
            (
                ".hyperloop/agents/process/kustomization.yaml".to_owned(),
                Created
            ),
            ("specs/".to_owned(), Created),
        ]
    );
    let kustomization = read(root, ".hyperloop/agents/kustomization.yaml");
    assert!(
        kustomization.contains(&format!("resources:\n- {BASE_URL}\n")),
        "{kustomization}"
    );
    assert!(
        kustomization.contains("components:\n- process\n"),
        "{kustomization}"
    );
    assert!(read(root, ".hyperloop/agents/process/kustomization.yaml").contains("kind: Component"));
    assert!(root.join("specs/.gitkeep").is_file());
    assert!(
        report.agents.iter().any(|a| a == "implementer"),
        "{:?}",
        report.agents
    );

    // The configuration loads as is, with the defaults.
    let loaded = settings::load(root, None, &Overrides::default()).unwrap();
    assert_eq!(loaded.config.overlay, ".hyperloop/agents/");
    assert_eq!(loaded.config.target.specs_dir, "specs");
    let text = report.to_string();
    assert!(text.contains("Created .hyperloop.yaml"), "{text}");
}

#[test]
fn running_init_twice_changes_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git_init(root);
    init(root, None, None).unwrap();
    let before: Vec<String> = [
        ".hyperloop.yaml",
        ".hyperloop/agents/kustomization.yaml",
        ".hyperloop/agents/process/kustomization.yaml",
    ]
    .iter()
    .map(|f| read(root, f))
    .collect();
    let again = init(root, Some("github.com/other/base//x?ref=v9"), None).unwrap();
    assert!(
        again
            .entries
            .iter()
            .all(|e| e.status == EntryStatus::Exists),
        "{again:?}"
    );
    let after: Vec<String> = [
        ".hyperloop.yaml",
        ".hyperloop/agents/kustomization.yaml",
        ".hyperloop/agents/process/kustomization.yaml",
    ]
    .iter()
    .map(|f| read(root, f))
    .collect();
    assert_eq!(before, after);
    assert!(again.to_string().contains("Exists  .hyperloop.yaml"));
}

#[test]
fn outside_a_git_repository_init_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let err = init(dir.path(), None, None).unwrap_err();
    assert!(matches!(err, InitError::NotARepository { .. }), "{err}");
    assert!(err.to_string().contains("git init"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let missing = dir.path().join("nope");
    assert!(matches!(
        init(&missing, None, None).unwrap_err(),
        InitError::NotARepository { .. }
    ));
}

#[test]
fn a_subfolder_of_a_repository_points_to_the_root() {
    let dir = tempfile::tempdir().unwrap();
    git_init(dir.path());
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let err = init(&sub, None, None).unwrap_err();
    assert!(matches!(err, InitError::NotRepositoryRoot { .. }), "{err}");
    assert!(err.to_string().contains("--path"), "{err}");
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
}

#[test]
fn existing_user_files_are_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git_init(root);
    let config = "# mine\ntarget:\n  base_branch: main\nmax_task_rounds: 5\n";
    std::fs::write(root.join(".hyperloop.yaml"), config).unwrap();
    std::fs::create_dir_all(root.join("specs")).unwrap();
    std::fs::write(root.join("specs/auth.md"), "# auth\n").unwrap();

    let report = init(root, None, None).unwrap();
    use EntryStatus::{Created, Exists};
    assert_eq!(
        statuses(&report),
        [
            (".hyperloop.yaml".to_owned(), Exists),
            (".hyperloop/agents/kustomization.yaml".to_owned(), Created),
            (
                ".hyperloop/agents/process/kustomization.yaml".to_owned(),
                Created
            ),
            ("specs/".to_owned(), Exists),
        ]
    );
    assert_eq!(read(root, ".hyperloop.yaml"), config);
    assert_eq!(read(root, "specs/auth.md"), "# auth\n");
    assert!(!root.join("specs/.gitkeep").exists());
}

#[test]
fn an_overlay_replaces_the_base_in_the_kustomization() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git_init(root);
    // A local overlay (itself including hyperloop's base) keeps the test offline.
    std::fs::create_dir_all(root.join("team-agents")).unwrap();
    std::fs::write(
        root.join("team-agents/kustomization.yaml"),
        format!("resources:\n- {BASE_URL}\n"),
    )
    .unwrap();
    init(
        root,
        Some("github.com/ignored/base"),
        Some("../../team-agents"),
    )
    .unwrap();
    let kustomization = read(root, ".hyperloop/agents/kustomization.yaml");
    assert!(
        kustomization.contains("resources:\n- ../../team-agents\n"),
        "{kustomization}"
    );
}

#[test]
fn an_overlay_that_does_not_compose_is_reported_with_the_file_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git_init(root);
    let err = init(root, None, Some("../../no-such-overlay")).unwrap_err();
    assert!(matches!(err, InitError::Invalid { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(".hyperloop/agents/kustomization.yaml"),
        "{err}"
    );
}
