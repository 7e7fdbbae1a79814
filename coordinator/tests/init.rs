//! `init` against real directories: fresh repositories, re-runs, and user files.

mod support;

use std::path::Path;

use hyperloop_coordinator::init::{EntryStatus, InitError, init};
use hyperloop_coordinator::settings;
use hyperloop_shared::compose::BASE_URL;
use hyperloop_shared::config::Overrides;

fn statuses(report: &hyperloop_coordinator::init::InitReport) -> Vec<(String, EntryStatus)> {
    report
        .entries
        .iter()
        .map(|e| (e.path.clone(), e.status))
        .collect()
}

/// The entries `init` reports, in order: the four files it writes, then the specs and checks
/// folders.
const SCAFFOLD: [&str; 6] = [
    ".hyperloop.yaml",
    ".hyperloop/agents/kustomization.yaml",
    ".hyperloop/agents/process/kustomization.yaml",
    ".hyperloop/agents/process/process.yaml",
    "specs/",
    ".hyperloop/checks/",
];

/// The scaffold's entries paired with the given statuses.
fn scaffold(statuses: [EntryStatus; 6]) -> Vec<(String, EntryStatus)> {
    SCAFFOLD
        .into_iter()
        .map(str::to_owned)
        .zip(statuses)
        .collect()
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap()
}

/// The contents of the files `init` writes.
fn read_scaffold_files(root: &Path) -> Vec<String> {
    SCAFFOLD[..4].iter().map(|f| read(root, f)).collect()
}

#[test]
fn a_fresh_repository_gets_the_whole_scaffold_and_it_validates() {
    let dir = support::init_repo();
    let root = dir.path();
    let report = init(root, None, None).unwrap();
    use EntryStatus::Created;
    assert_eq!(
        statuses(&report),
        scaffold([Created, Created, Created, Created, Created, Created])
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
    let dir = support::init_repo();
    let root = dir.path();
    init(root, None, None).unwrap();
    let before = read_scaffold_files(root);
    let again = init(root, Some("github.com/other/base//x?ref=v9"), None).unwrap();
    assert!(
        again
            .entries
            .iter()
            .all(|e| e.status == EntryStatus::Exists),
        "{again:?}"
    );
    let after = read_scaffold_files(root);
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
    let dir = support::init_repo();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let err = init(&sub, None, None).unwrap_err();
    assert!(matches!(err, InitError::NotRepositoryRoot { .. }), "{err}");
    assert!(err.to_string().contains("--path"), "{err}");
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
}

#[test]
fn existing_user_files_are_left_untouched() {
    let dir = support::init_repo();
    let root = dir.path();
    let config = "# mine\ntarget:\n  base_branch: main\nmax_task_rounds: 5\n";
    std::fs::write(root.join(".hyperloop.yaml"), config).unwrap();
    std::fs::create_dir_all(root.join("specs")).unwrap();
    std::fs::write(root.join("specs/auth.md"), "# auth\n").unwrap();

    let report = init(root, None, None).unwrap();
    use EntryStatus::{Created, Exists};
    assert_eq!(
        statuses(&report),
        scaffold([Exists, Created, Created, Created, Exists, Created])
    );
    assert_eq!(read(root, ".hyperloop.yaml"), config);
    assert_eq!(read(root, "specs/auth.md"), "# auth\n");
    assert!(!root.join("specs/.gitkeep").exists());
}

#[test]
fn an_overlay_replaces_the_base_in_the_kustomization() {
    let dir = support::init_repo();
    let root = dir.path();
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
    let dir = support::init_repo();
    let root = dir.path();
    let err = init(root, None, Some("../../no-such-overlay")).unwrap_err();
    assert!(matches!(err, InitError::Invalid { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(".hyperloop/agents/kustomization.yaml"),
        "{err}"
    );
}

#[test]
fn the_scaffolded_process_yaml_is_the_default_pipeline_and_editing_it_changes_the_pipeline() {
    use hyperloop_coordinator::compose::{CacheDir, compose_project};
    use hyperloop_shared::project::Project;
    let dir = support::init_repo();
    let root = dir.path();
    init(root, None, None).unwrap();
    assert!(root.join(".hyperloop/checks").is_dir());
    let cache = CacheDir::new(root.join("cache"));
    let compose = || {
        let (c, _) = compose_project(root, ".hyperloop/agents/", None, &cache).unwrap();
        Project::from_composition(&c).unwrap().process
    };
    let scaffolded = compose();
    assert!(
        scaffolded.source.ends_with("<embedded>/base/process.yaml"),
        "{}",
        scaffolded.source
    );
    // Seed 000's own example, verbatim except its GitHub-only gate.
    std::fs::write(
        root.join(".hyperloop/agents/process/process.yaml"),
        "pipeline:\n  - loop:\n      - agent: implementer\n      - agent: verifier\n  - gate: \
         pr-require-label\n  - action: merge-pr\n\ngates:\n  pr-require-label:\n    type: label\n",
    )
    .unwrap();
    let edited = compose();
    assert_ne!(edited.pipeline, scaffolded.pipeline);
    assert!(edited.gates.contains_key("pr-require-label"), "{edited:?}");
}
