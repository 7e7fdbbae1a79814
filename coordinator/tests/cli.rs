//! The `hyperloop-coordinator` binary as users run it: exit codes and messages.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

fn coordinator() -> Command {
    let mut cmd = Command::cargo_bin("hyperloop-coordinator").unwrap();
    // Keep remote-base fetches (none expected) out of the user's cache.
    cmd.env(
        "XDG_CACHE_HOME",
        std::env::temp_dir().join("hyperloop-cli-test-cache"),
    );
    cmd.env_remove("HYPERLOOP_PATH")
        .env_remove("HYPERLOOP_CONFIG");
    cmd
}

fn quickstart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")
}

/// `run --dry-run --path <path>`.
fn dry_run(path: impl AsRef<std::ffi::OsStr>) -> Output {
    coordinator()
        .args(["run", "--dry-run", "--path"])
        .arg(path)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
}

/// A git repository on `main` with one empty commit.
fn empty_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(
        dir.path(),
        &["commit", "-q", "--allow-empty", "-m", "Empty"],
    );
    dir
}

/// A fresh repository on `branch` holding a copy of the quickstart example, committed, as
/// the quickstart's demo makes one.
fn quickstart_repo(branch: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-R")
        .arg(quickstart().join("."))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    git(dir.path(), &["init", "-q", "-b", branch]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "Quickstart"]);
    dir
}

#[test]
fn dry_run_on_the_quickstart_example_validates_and_changes_nothing() {
    let repo = quickstart_repo("main");
    let out = dry_run(repo.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for expected in [
        "composition:   overlay .hyperloop/agents/",
        "landing:       local merges into main",
        "max_workers: 2",
        "- loop\n  - agent implementer\n  - agent verifier\n- action merge-pr (pr-merge)",
        "### verifier",
        "This project is plain POSIX shell.",
        "## Specs (2 under specs/ on main)\n\n- specs/cli/farewell.md\n- specs/greeting.md",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("Not worked on"), "{stdout}");
}

#[test]
fn dry_run_lists_only_committed_specs_and_names_uncommitted_ones_with_the_command_to_commit_them() {
    let repo = quickstart_repo("main");
    std::fs::write(repo.path().join("specs/new spec.md"), "# New\n").unwrap();
    std::fs::write(repo.path().join("specs/greeting.md"), "# Changed\n").unwrap();
    let out = dry_run(repo.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("- specs/cli/farewell.md\n- specs/greeting.md\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("- specs/new spec.md"), "{stdout}");
    assert!(
        stdout.contains(
            "2 spec file(s) in the working tree are not committed on `main`, and hyperloop \
             works only on committed specs: specs/greeting.md (changed), specs/new spec.md \
             (new); commit them on `main` to have them worked on: git add specs/greeting.md \
             'specs/new spec.md' && git commit -m 'Update specs'"
        ),
        "{stdout}"
    );
}

#[test]
fn a_repository_on_master_without_main_is_read_from_master_and_says_so() {
    let repo = quickstart_repo("master");
    let config = repo.path().join(".hyperloop.yaml");
    let text_of = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text_of.replace("  base_branch: main\n", "")).unwrap();
    git(repo.path(), &["commit", "-q", "-am", "No base branch"]);
    let out = dry_run(repo.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("landing:       local merges into master"),
        "{stdout}"
    );
    assert!(stdout.contains("  base_branch: master\n"), "{stdout}");
    assert!(stdout.contains("(2 under specs/ on master)"), "{stdout}");
    assert!(
        text(&out.stderr).contains(
            "note: target.base_branch is `master`, the branch this checkout is on, because the \
             repository has no `main`"
        ),
        "{}",
        text(&out.stderr)
    );
    // A base branch that is written down is used as written, and a missing one is an error.
    let out = coordinator()
        .args(["run", "--dry-run", "--base-branch", "main", "--path"])
        .arg(repo.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("branch main does not exist"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn dry_run_outside_a_git_repository_fails_as_a_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let out = dry_run(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is not a usable git repository") && stderr.contains("git checkout"),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("A run would stop here"));
}

#[test]
fn compose_prints_the_overlay_with_the_project_guidelines_applied() {
    let out = coordinator()
        .args(["compose", "--path"])
        .arg(quickstart())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text(&out.stdout))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<_> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Agent/implementer",
            "Agent/pm",
            "Agent/process-improver",
            "Agent/rebase-resolver",
            "Agent/verifier",
            "Process/default"
        ]
    );
    assert!(
        docs[0]["guidelines"]
            .as_str()
            .unwrap()
            .contains("POSIX shell")
    );
}

#[test]
fn a_repository_without_an_overlay_composes_the_embedded_base() {
    let repo = tempfile::tempdir().unwrap();
    let out = coordinator()
        .args(["compose", "--path"])
        .arg(repo.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("composing the base"));
    assert!(text(&out.stdout).contains("kind: Process"));
}

#[test]
fn malformed_configuration_exits_2_naming_file_and_key() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join(".hyperloop.yaml"),
        "merge:\n  stratgy: squash\nmax_workers: 0\n",
    )
    .unwrap();
    let out = dry_run(repo.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            ".hyperloop.yaml: unknown key `merge.stratgy`; did you mean `merge.strategy`?"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("max_workers"), "{stderr}");
    assert!(stderr.contains("between 1 and 1024"), "{stderr}");
}

#[test]
fn turning_on_a_feature_that_does_not_exist_yet_exits_2_naming_key_and_fix() {
    let repo = empty_repo();
    let config = repo.path().join(".hyperloop.yaml");
    std::fs::write(
        &config,
        "dashboard:\n  enabled: true\nobservability:\n  otel:\n    protocol: http\n",
    )
    .unwrap();
    let out = dry_run(repo.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let expected = ".hyperloop.yaml: `dashboard.enabled`: this version of hyperloop does not \
                    implement the web dashboard yet; set it to false or remove it";
    assert!(
        stderr.contains(expected),
        "missing {expected:?} in:\n{stderr}"
    );
    // OTLP over HTTP is implemented: its key is accepted.
    assert!(!stderr.contains("otel"), "{stderr}");

    // Spelled out as off, the dashboard is fine, and `--dry-run` shows it off.
    std::fs::write(&config, "dashboard:\n  enabled: false\n").unwrap();
    let out = dry_run(repo.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("dashboard:\n  enabled: false\n"),
        "{stdout}"
    );
}

#[test]
fn a_pipeline_with_an_undefined_gate_exits_2_naming_file_step_and_fix() {
    let repo = tempfile::tempdir().unwrap();
    let agents = repo.path().join(".hyperloop/agents");
    std::fs::create_dir_all(&agents).unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../base");
    std::fs::write(
        agents.join("kustomization.yaml"),
        format!(
            "resources:\n- {}\npatches:\n- path: process.yaml\n",
            base.canonicalize().unwrap().display()
        ),
    )
    .unwrap();
    std::fs::write(
        agents.join("process.yaml"),
        "apiVersion: hyperloop.io/v1\nkind: Process\nmetadata:\n  name: default\n\
         pipeline:\n- loop:\n  - agent: implementer\n  - agent: verifier\n- gate: human-ok\n\
         - action: merge-pr\n",
    )
    .unwrap();
    let out = dry_run(repo.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("pipeline[1]"), "{stderr}");
    assert!(stderr.contains("human-ok"), "{stderr}");
    assert!(stderr.contains("gates:"), "{stderr}");
}

#[test]
fn run_and_init_outside_a_git_repository_exit_2_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["run", "init"] {
        let out = coordinator()
            .args([command, "--path"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("is not a git repository"),
            "{command}"
        );
    }
}

#[test]
fn etcd_and_github_modes_say_what_they_are_missing() {
    let repo = tempfile::tempdir().unwrap();
    assert!(
        std::process::Command::new("git")
            .args(["init", "-q"])
            .current_dir(repo.path())
            .status()
            .unwrap()
            .success()
    );
    let refusal = |flag: &str, value: &str, says: &str| {
        let out = coordinator()
            .args(["run", "--path"])
            .arg(repo.path())
            .args([flag, value])
            .env_remove("GITHUB_TOKEN")
            .env_remove("GH_TOKEN")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(
            text(&out.stderr).contains(says),
            "{flag}: {}",
            text(&out.stderr)
        );
    };
    // Coordinators sharing etcd share the repository through `origin`.
    refusal("--etcd", "http://127.0.0.1:2379", "no `origin` remote");
    refusal("--repo", "owner/repo", "checkout's `origin`");
    let added = std::process::Command::new("git")
        .args([
            "remote",
            "add",
            "origin",
            "https://github.invalid/owner/repo.git",
        ])
        .current_dir(repo.path())
        .status()
        .unwrap();
    assert!(added.success());
    refusal("--repo", "owner/repo", "set GITHUB_TOKEN or GH_TOKEN");
}
