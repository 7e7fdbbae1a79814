//! Real git repositories for end-to-end tests: a bare `origin` and a checkout the
//! coordinator works in, plus the coordinator binary and its state.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// Runs `git` in `dir` with a fixed identity and no user configuration, panicking with git's
/// message on failure (test setup must not fail silently).
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_output(dir, args);
    assert!(
        out.status.success(),
        "git {} failed in {}: {}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// Like [`git`] but returns the output whatever the exit status.
pub fn git_output(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .expect("git runs")
}

/// A repository under test: `checkout` (the coordinator's working copy, on `main`) cloned
/// from the bare `origin`.
pub struct TestRepo {
    pub dir: TempDir,
    pub origin: PathBuf,
    pub checkout: PathBuf,
}

impl TestRepo {
    /// A repository whose first commit holds `files` (path, contents).
    pub fn new(files: &[(&str, &str)]) -> TestRepo {
        let dir = tempfile::tempdir().expect("temp dir");
        let origin = dir.path().join("origin.git");
        let checkout = dir.path().join("checkout");
        git(
            dir.path(),
            &["init", "-q", "--bare", "-b", "main", "origin.git"],
        );
        git(dir.path(), &["clone", "-q", "origin.git", "checkout"]);
        git(&checkout, &["checkout", "-q", "-b", "main"]);
        let repo = TestRepo {
            dir,
            origin,
            checkout,
        };
        repo.commit(files, "Initial specs");
        repo
    }

    /// Writes `files`, commits them on the checkout's current branch and pushes to origin.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) {
        self.commit_local(files, message);
        git(&self.checkout, &["push", "-q", "origin", "HEAD:main"]);
    }

    /// Like [`TestRepo::commit`] without the push (the coordinator pushes `main` itself, so a
    /// test pushing while it runs would race it).
    pub fn commit_local(&self, files: &[(&str, &str)], message: &str) {
        for (path, contents) in files {
            let full = self.checkout.join(path);
            std::fs::create_dir_all(full.parent().expect("a parent")).expect("mkdir");
            std::fs::write(full, contents).expect("write");
        }
        git(&self.checkout, &["add", "-A"]);
        git(&self.checkout, &["commit", "-q", "-m", message]);
    }

    /// `git log` subjects and bodies of `main` in the checkout, newest first.
    pub fn log(&self, branch: &str) -> String {
        git(&self.checkout, &["log", "--format=%s%n%b%n--", branch])
    }

    /// Files of `branch` in the checkout's repository.
    pub fn files(&self, branch: &str) -> Vec<String> {
        git(&self.checkout, &["ls-tree", "-r", "--name-only", branch])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The contents of every record under `prefix` in the embedded state ref.
    pub fn state_texts(&self, prefix: &str) -> Vec<String> {
        let listing = git_output(
            &self.checkout,
            &["ls-tree", "-r", "--name-only", "refs/hyperloop/state"],
        );
        String::from_utf8_lossy(&listing.stdout)
            .lines()
            .filter(|p| p.starts_with(prefix))
            .map(|p| {
                git(
                    &self.checkout,
                    &["show", &format!("refs/hyperloop/state:{p}")],
                )
            })
            .collect()
    }

    /// The journaled events in the embedded state ref, oldest first, as JSON values.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let mut events: Vec<serde_json::Value> = self
            .state_texts("events/")
            .iter()
            .filter_map(|text| serde_json::from_str(text).ok())
            .collect();
        events.sort_by_key(|e| e["seq"].as_u64().unwrap_or(0));
        events
    }
}

/// A home directory for processes under test, with a git identity, so agents' commits work
/// on a machine whose user has none configured (and the user's own config stays out).
pub fn test_home(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("home dir");
    std::fs::write(
        home.join(".gitconfig"),
        "[user]\n\tname = hyperloop test\n\temail = test@example.invalid\n",
    )
    .expect("gitconfig");
    home
}

/// The `hyperloop-coordinator` binary built for this test run.
pub fn coordinator_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/hyperloop-coordinator
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("hyperloop-coordinator");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (`cargo nextest run --workspace` builds it)",
        bin.display()
    );
    bin
}

/// The scripted agent used by end-to-end tests.
pub fn scripted_agent() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/agents/scripted-agent.sh")
}

/// `program` set up to run under test in the scratch directory `dir`: its own HOME (with a
/// git identity) and cache, no hyperloop variables leaking in from the caller, info logs, and
/// stdout and stderr both written to `log`.
pub fn logged_command(program: &Path, dir: &Path, log: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    let out = std::fs::File::create(log).expect("log file");
    cmd.env("XDG_CACHE_HOME", dir.join("cache"))
        .env("HOME", test_home(dir))
        .env("RUST_LOG", "info")
        .env_remove("HYPERLOOP_PATH")
        .env_remove("HYPERLOOP_TOKEN")
        .env_remove("HYPERLOOP_JOIN_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out);
    cmd
}

/// A project overlay on hyperloop's base whose default Process takes `process` (YAML for
/// `pipeline:`, `gates:`, `actions:` ...) in place of the base's.
pub fn process_overlay(process: &str) -> String {
    format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n\
         - github.com/hyperloop-dev/hyperloop//base?ref=v0.1.0\npatches:\n- patch: |-\n\
         \x20   apiVersion: hyperloop.io/v1\n    kind: Process\n    metadata:\n      name: default\n{}",
        process
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

/// Asserts over a journal (oldest first) that no agent step completed twice and none was
/// dispatched again after it completed: each (task, step, round) is reaped at most once and
/// never sent out after that.
pub fn assert_no_completed_step_repeated(events: &[serde_json::Value]) {
    let mut completed = std::collections::BTreeSet::new();
    for e in events.iter().filter(|e| !e["task"].is_null()) {
        let key = (
            e["task"].to_string(),
            e["step"].to_string(),
            e["round"].to_string(),
        );
        match e["event"].as_str() {
            Some("result_reaped") => {
                assert!(
                    completed.insert(key.clone()),
                    "step completed twice: {key:?}"
                )
            }
            Some("step_dispatched") => assert!(
                !completed.contains(&key),
                "a completed step was dispatched again: {key:?}"
            ),
            _ => {}
        }
    }
}
