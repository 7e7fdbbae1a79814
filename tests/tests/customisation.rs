//! Every documented way to customise hyperloop either takes effect or is refused with the
//! key and the fix (issue 11): gitops overlays with `//subdir` and `?ref=`, seed 001's
//! in-repo patches without a kustomization, seed 000's `process/process.yaml`, mistyped
//! `overlay`/`base_ref`, and pipeline errors that name the patch they came from. Seen through
//! the real binary's `compose` and `run --dry-run`, as a user would.

use std::path::Path;
use std::process::{Command, Output};

use hyperloop_shared::compose::BASE_URL;
use hyperloop_tests::repo::{coordinator_bin, git, test_home};

/// Seed 001's implementer patch, verbatim.
const SEED_IMPLEMENTER_PATCH: &str = "\
kind: Agent
name: implementer
annotations:
  ambient.io/persona: |
    You work on a Go API service.
    Build: make build. Test: make test. Lint: make lint.
    Follow Clean Architecture. Use dependency injection.
";

/// Seed 001's process patch, verbatim (its `security-reviewer` and `human-pr-approval` are
/// not defined anywhere in the seed, so it cannot run as written).
const SEED_PROCESS_PATCH: &str = "\
kind: Process
name: default

pipeline:
  - loop:
      - loop:
          - role: implementer
          - role: verifier
      - role: security-reviewer
  - gate: human-pr-approval
  - action: merge-pr
";

/// Seed 000's `process.yaml`, verbatim.
const SEED_000_PROCESS: &str = "\
pipeline:
  - loop:
      - agent: implementer
      - agent: verifier
  - gate: pr-require-label
  - action: merge-pr

gates:
  pr-require-label:
    type: label                         # label (configurable, default: lgtm)
  # pr-require-approval:               # alternative gate type
  #   type: pr-approval                 # checks GitHub PR review approvals

actions:
  merge-pr:
    type: pr-merge

hooks:
  after_reap:
    - type: process-improver
";

/// A git repository at `dir` holding `files`, committed.
fn repo_with(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    git(dir, &["init", "-q", "-b", "main"]);
    write(dir, files);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "files"]);
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
}

/// `hyperloop-coordinator ARGS --path project` with its own HOME and cache.
fn coordinator(project: &Path, args: &[&str]) -> Output {
    let scratch = project.parent().expect("scratch dir");
    Command::new(coordinator_bin())
        .args(args)
        .arg("--path")
        .arg(project)
        .env("HOME", test_home(scratch))
        .env("XDG_CACHE_HOME", scratch.join("cache"))
        .env_remove("HYPERLOOP_PATH")
        .env_remove("HYPERLOOP_BASE_REF")
        .env_remove("HYPERLOOP_OVERLAY")
        .output()
        .expect("coordinator runs")
}

fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An overlay kustomization on hyperloop's base that sets the implementer's guidelines.
fn gitops_overlay(guidelines: &str) -> String {
    format!(
        "resources:\n- {BASE_URL}\npatches:\n- path: implementer-patch.yaml\n  target:\n    \
         kind: Agent\n    name: implementer\n# {guidelines}\n"
    )
}

/// A gitops repository (bare, at `<tmp>/gitops.git`) whose `overlays/api` sets the
/// implementer's guidelines to `api v1` at tag `v1` and `api main` on `main`; its root holds
/// a decoy kustomization that must never be used. Returns its `file://` URL.
fn gitops_repo(tmp: &Path) -> String {
    let src = tmp.join("gitops-src");
    let patch = |g: &str| {
        format!(
            "apiVersion: hyperloop.io/v1\nkind: Agent\nmetadata:\n  name: implementer\nguidelines: {g}\n"
        )
    };
    repo_with(
        &src,
        &[
            ("kustomization.yaml", &gitops_overlay("decoy")),
            ("implementer-patch.yaml", &patch("decoy at the root")),
            ("overlays/api/kustomization.yaml", &gitops_overlay("api")),
            ("overlays/api/implementer-patch.yaml", &patch("api v1")),
        ],
    );
    git(&src, &["tag", "v1"]);
    write(
        &src,
        &[("overlays/api/implementer-patch.yaml", &patch("api main"))],
    );
    git(&src, &["commit", "-qam", "main moves on"]);
    git(tmp, &["clone", "-q", "--bare", "gitops-src", "gitops.git"]);
    format!("file://{}", tmp.join("gitops.git").display())
}

fn project(tmp: &Path, config: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let p = tmp.join("project");
    let mut all = vec![(".hyperloop.yaml", config)];
    all.extend_from_slice(files);
    repo_with(&p, &all);
    p
}

#[test]
fn a_gitops_overlay_url_composes_its_subdirectory_at_the_ref() {
    let tmp = tempfile::tempdir().expect("tmp");
    let url = gitops_repo(tmp.path());
    let p = project(
        tmp.path(),
        &format!("overlay: {url}//overlays/api?ref=v1\n"),
        &[],
    );
    let (code, out, err) = text(&coordinator(&p, &["compose"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("guidelines: api v1"), "{out}");
    assert!(
        !out.contains("decoy"),
        "the repository root was used:\n{out}"
    );

    // A branch as the ref, and no ref (the default branch), in fresh caches.
    for (overlay, want) in [
        (format!("{url}//overlays/api?ref=main"), "api main"),
        (format!("{url}//overlays/api"), "api main"),
    ] {
        std::fs::remove_dir_all(tmp.path().join("cache")).ok();
        std::fs::write(p.join(".hyperloop.yaml"), format!("overlay: {overlay}\n")).expect("write");
        let (code, out, err) = text(&coordinator(&p, &["compose"]));
        assert_eq!(code, 0, "{overlay}: {err}");
        assert!(
            out.contains(&format!("guidelines: {want}")),
            "{overlay}:\n{out}"
        );
    }
}

#[test]
fn a_gitops_overlay_subdirectory_without_a_kustomization_is_an_error_naming_overlay() {
    let tmp = tempfile::tempdir().expect("tmp");
    let url = gitops_repo(tmp.path());
    let p = project(
        tmp.path(),
        &format!("overlay: {url}//overlays/apii?ref=v1\n"),
        &[],
    );
    for args in [&["compose"][..], &["run", "--dry-run"]] {
        let (code, out, err) = text(&coordinator(&p, args));
        assert_eq!(
            code, 2,
            "{args:?} must refuse, not fall back to the base:\n{out}{err}"
        );
        assert!(
            err.contains("`overlay: ") && err.contains("overlays/apii") && err.contains("//subdir"),
            "{err}"
        );
    }
}

#[test]
fn seed_001_in_repo_patches_without_a_kustomization_take_effect() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = project(
        tmp.path(),
        "overlay: .hyperloop/agents/\n",
        &[(
            ".hyperloop/agents/implementer-patch.yaml",
            SEED_IMPLEMENTER_PATCH,
        )],
    );
    let (code, out, err) = text(&coordinator(&p, &["compose"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ambient.io/persona: |\n      You work on a Go API service."),
        "{out}"
    );
    assert!(
        err.contains("no kustomization.yaml") && err.contains("- path: implementer-patch.yaml"),
        "the implied kustomization is shown: {err}"
    );
    let (code, out, err) = text(&coordinator(&p, &["run", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("implied kustomization"), "{out}");
}

#[test]
fn seed_001_process_patch_errors_name_the_patch_file_and_the_step() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = project(
        tmp.path(),
        "overlay: .hyperloop/agents/\n",
        &[
            (
                ".hyperloop/agents/implementer-patch.yaml",
                SEED_IMPLEMENTER_PATCH,
            ),
            (".hyperloop/agents/process-patch.yaml", SEED_PROCESS_PATCH),
        ],
    );
    let (code, _, err) = text(&coordinator(&p, &["run", "--dry-run"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            ".hyperloop/agents/process-patch.yaml (a patch of <embedded>/base/process.yaml)"
        ),
        "the patch is named as the source: {err}"
    );
    assert!(
        err.contains("pipeline[0].loop[1]: no agent template for role `security-reviewer`"),
        "{err}"
    );
    assert!(
        err.contains("pipeline[1]: gate `human-pr-approval`"),
        "{err}"
    );
}

#[test]
fn a_patch_file_no_kustomization_lists_is_refused_with_the_line_to_add() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = project(
        tmp.path(),
        "overlay: .hyperloop/agents/\n",
        &[
            (
                ".hyperloop/agents/kustomization.yaml",
                &format!("resources:\n- {BASE_URL}\n"),
            ),
            (
                ".hyperloop/agents/implementer-patch.yaml",
                SEED_IMPLEMENTER_PATCH,
            ),
        ],
    );
    let (code, out, err) = text(&coordinator(&p, &["compose"]));
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("implementer-patch.yaml")
            && err.contains("add `- path: implementer-patch.yaml` under `patches:`")
            && err.contains(".hyperloop/agents/kustomization.yaml"),
        "{err}"
    );
}

#[test]
fn seed_000_process_yaml_overrides_the_pipeline() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = project(
        tmp.path(),
        "overlay: .hyperloop/agents/\n",
        &[(".hyperloop/agents/process/process.yaml", SEED_000_PROCESS)],
    );
    let (code, out, err) = text(&coordinator(&p, &["compose"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gate: pr-require-label"), "{out}");
    assert!(out.contains("type: label"), "{out}");
}

#[test]
fn a_mistyped_overlay_path_is_an_error_naming_the_key_and_the_fix() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = project(
        tmp.path(),
        "overlay: .hyperloop/agent/\n",
        &[(
            ".hyperloop/agents/implementer-patch.yaml",
            SEED_IMPLEMENTER_PATCH,
        )],
    );
    for args in [&["compose"][..], &["run", "--dry-run"]] {
        let (code, _, err) = text(&coordinator(&p, args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("`overlay: .hyperloop/agent/`")
                && err.contains("does not exist")
                && err.contains("fix the path"),
            "{err}"
        );
    }
}

#[test]
fn a_base_ref_that_cannot_apply_is_an_error_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let url = gitops_repo(tmp.path());
    // Missing folder, and a remote folder without a kustomization.
    for base_ref in [
        "vendor/hyperloop-base".to_owned(),
        format!("{url}//nobase?ref=v1"),
    ] {
        let p = tmp.path().join("project");
        std::fs::remove_dir_all(&p).ok();
        let p = project(tmp.path(), &format!("base_ref: {base_ref}\n"), &[]);
        let (code, _, err) = text(&coordinator(&p, &["compose"]));
        assert_eq!(code, 2, "{base_ref}: {err}");
        assert!(
            err.contains(&format!("`base_ref: {base_ref}`")) && err.contains("cannot apply"),
            "{err}"
        );
    }
    // A base_ref the overlay's own kustomization does not use would be ignored.
    let p = tmp.path().join("project");
    std::fs::remove_dir_all(&p).ok();
    let p = project(
        tmp.path(),
        &format!("base_ref: {url}//overlays/api?ref=v1\n"),
        &[(
            ".hyperloop/agents/kustomization.yaml",
            &format!("resources:\n- {BASE_URL}\n"),
        )],
    );
    let (code, _, err) = text(&coordinator(&p, &["run", "--dry-run"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`base_ref: ")
            && err.contains("own kustomization")
            && err.contains("resources:"),
        "{err}"
    );
}

/// Bounds a whole coordinator run.
const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `run` to its end in `project` with the scripted agent logging to `log`.
fn run_to_end(project: &Path, log: &Path, extra_env: &[(&str, &str)]) -> Output {
    let scratch = project.parent().expect("scratch dir");
    let mut child = Command::new(coordinator_bin())
        .args(["run", "--path"])
        .arg(project)
        .args(["--listen", "127.0.0.1:0"])
        .envs(hyperloop_tests::scripted_log(log))
        .envs(extra_env.iter().copied())
        .env("XDG_CACHE_HOME", scratch.join("cache"))
        .env("HOME", test_home(scratch))
        .env_remove("HYPERLOOP_PATH")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("coordinator starts");
    // Read both pipes concurrently so a chatty coordinator never blocks on a full pipe.
    let started = std::time::Instant::now();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out_reader =
        std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err_reader =
        std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "coordinator did not finish within {RUN_TIMEOUT:?}; stderr:\n{}",
                err_reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default().into_bytes(),
        stderr: err_reader.join().unwrap_or_default().into_bytes(),
    }
}

/// A configuration running the scripted agent, plus `extra` keys.
fn scripted_config(extra: &str) -> String {
    format!(
        "max_workers: 1\npoll_interval: 1s\nmax_task_rounds: 5\n\
         dashboard:\n  enabled: false\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 20s\n\
         \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_MODE]\n{extra}",
        hyperloop_tests::repo::scripted_agent().display()
    )
}

/// A checkout (with a bare origin) holding `files` and one spec.
fn scripted_project(tmp: &Path, extra_config: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let config = scripted_config(extra_config);
    let mut all = vec![
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop.yaml", config.as_str()),
    ];
    all.extend_from_slice(files);
    let src = tmp.join("src");
    repo_with(&src, &all);
    git(tmp, &["clone", "-q", "--bare", "src", "origin.git"]);
    git(tmp, &["clone", "-q", "origin.git", "project"]);
    tmp.join("project")
}

#[test]
fn the_seed_001_persona_reaches_the_implementers_prompt() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = scripted_project(
        tmp.path(),
        "overlay: .hyperloop/agents/\n",
        &[(
            ".hyperloop/agents/implementer-patch.yaml",
            SEED_IMPLEMENTER_PATCH,
        )],
    );
    let log = tmp.path().join("steps.log");
    let out = run_to_end(&p, &log, &[]);
    let (code, _, err) = text(&out);
    assert_eq!(code, 0, "{err}");
    let steps = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(steps.contains("persona-seen task-001"), "{steps}");
}

#[test]
fn target_repo_is_inferred_from_a_github_origin_and_null_or_empty_lands_locally() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = project(tmp.path(), "max_workers: 1\n", &[]);
    let landing = |p: &Path, args: &[&str]| {
        let mut all = vec!["run", "--dry-run"];
        all.extend_from_slice(args);
        let (code, out, err) = text(&coordinator(p, &all));
        assert_eq!(code, 0, "{err}");
        out.lines()
            .find(|l| l.starts_with("landing:"))
            .unwrap_or_default()
            .to_owned()
    };
    // No origin, then a local origin: local merges.
    assert!(landing(&p, &[]).contains("local merges"));
    git(&p, &["remote", "add", "origin", "/srv/git/widgets.git"]);
    assert!(landing(&p, &[]).contains("local merges"));
    for url in [
        "git@github.com:acme/widgets.git",
        "https://github.com/acme/widgets",
    ] {
        git(&p, &["remote", "set-url", "origin", url]);
        let line = landing(&p, &[]);
        assert!(
            line.contains("pull requests on acme/widgets")
                && line.contains(&format!("inferred from origin {url}")),
            "{line}"
        );
        assert!(landing(&p, &["--repo", ""]).contains("local merges"));
    }
    std::fs::write(p.join(".hyperloop.yaml"), "target:\n  repo: null\n").expect("write");
    assert!(landing(&p, &[]).contains("local merges"));
}

/// A check that fails the implementer's first round with a marker, and passes otherwise.
const CHECK_RULE: &str = "#!/bin/sh
if [ \"$HYPERLOOP_ROLE\" = implementer ] && [ \"$HYPERLOOP_ROUND\" = 0 ]; then
  echo \"CHECK-FAIL-4X: work files need a round stamp\"
  echo \"stderr line of the check\" >&2
  exit 3
fi
echo \"checked $HYPERLOOP_ROLE $HYPERLOOP_ROUND\" >> \"$SCRIPTED_LOG\"
";

/// Sets the execute bit of `files` in the project's history (as `git add` of an executable
/// records it) and brings the project's checkout up to date.
fn make_executable(tmp: &Path, project: &Path, files: &[&str]) {
    let src = tmp.join("src");
    for file in files {
        git(&src, &["update-index", "--chmod=+x", file]);
    }
    git(&src, &["commit", "-qm", "checks are executable"]);
    let origin = tmp.join("origin.git");
    git(
        &src,
        &["push", "-q", origin.to_str().expect("utf-8"), "main"],
    );
    git(project, &["pull", "-q"]);
}

#[test]
fn a_failing_check_fails_the_round_with_its_output_and_a_passing_one_lets_the_task_land() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = scripted_project(
        tmp.path(),
        "",
        &[
            (".hyperloop/checks/rule", CHECK_RULE),
            (".hyperloop/checks/.gitkeep", ""),
        ],
    );
    make_executable(tmp.path(), &p, &[".hyperloop/checks/rule"]);
    let log = tmp.path().join("steps.log");
    let out = run_to_end(&p, &log, &[]);
    let (code, _, err) = text(&out);
    assert_eq!(code, 0, "{err}");
    let steps = std::fs::read_to_string(&log).unwrap_or_default();
    // Round 0's implementer pass was overruled by the check: no verifier ran in round 0.
    assert!(!steps.contains("verifier task-001 0"), "{steps}");
    assert!(
        steps.contains("checked verifier"),
        "checks run after verifiers too: {steps}"
    );
    let reviews =
        hyperloop_tests::repo::git(&p, &["log", "-p", "refs/hyperloop/state", "--format="]);
    assert!(
        reviews.contains("check `.hyperloop/checks/rule` exited with status 3")
            && reviews.contains("CHECK-FAIL-4X: work files need a round stamp")
            && reviews.contains("stderr line of the check"),
        "the finding carries the check's output: {reviews}"
    );
}

/// Seed 000's process file with `checks:` naming, per role, the checks to run.
const PROCESS_NAMING_CHECKS: &str = "apiVersion: hyperloop.io/v1
kind: Process
metadata:
  name: default
pipeline:
  - loop:
      - agent: implementer
      - agent: verifier
  - action: merge-pr
checks:
  implementer: [rule]
  verifier: []
";

#[test]
fn a_process_naming_checks_runs_exactly_those_for_each_role() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = scripted_project(
        tmp.path(),
        "overlay: .hyperloop/agents/\n",
        &[
            (
                ".hyperloop/agents/process/process.yaml",
                PROCESS_NAMING_CHECKS,
            ),
            (".hyperloop/checks/rule", CHECK_RULE),
            (
                ".hyperloop/checks/never",
                "#!/bin/sh\necho NEVER-RUN-7Q\nexit 1\n",
            ),
        ],
    );
    make_executable(
        tmp.path(),
        &p,
        &[".hyperloop/checks/rule", ".hyperloop/checks/never"],
    );
    let (code, plan, err) = text(&coordinator(&p, &["run", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        plan.contains("- agent implementer (checks: rule)")
            && plan.contains("- agent verifier (checks: none)"),
        "{plan}"
    );
    let log = tmp.path().join("steps.log");
    let out = run_to_end(&p, &log, &[]);
    let (code, _, err) = text(&out);
    assert_eq!(code, 0, "{err}");
    let steps = std::fs::read_to_string(&log).unwrap_or_default();
    // `rule` overruled round 0's implementer; the verifier, named with no checks, ran none.
    assert!(!steps.contains("verifier task-001 0"), "{steps}");
    // Later implementer passes were checked, and passed the check.
    assert!(steps.contains("checked implementer "), "{steps}");
    assert!(!steps.contains("checked verifier"), "{steps}");
    let reviews =
        hyperloop_tests::repo::git(&p, &["log", "-p", "refs/hyperloop/state", "--format="]);
    assert!(reviews.contains("CHECK-FAIL-4X"), "{reviews}");
    assert!(
        !reviews.contains("NEVER-RUN-7Q"),
        "`never` is not named: {reviews}"
    );
}
