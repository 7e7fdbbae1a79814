//! Test fixtures: a real bare "origin" repository, agent scripts, assignments.
#![allow(dead_code)] // each test binary uses a different subset

pub mod coordinator;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hyperloop_proto::v1::{Assign, RuntimeKind, RuntimeSettings, SpecRef};
use hyperloop_worker::{PushFence, StepContext, Workspace};

pub const BASE_BRANCH: &str = "main";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub origin: PathBuf,
    pub base_commit: String,
    pub workspace: Arc<Workspace>,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .expect("git is installed (apt-get install -y git)");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("origin.git");
        git(
            dir.path(),
            &[
                "init",
                "--bare",
                "-q",
                "-b",
                BASE_BRANCH,
                origin.to_str().unwrap(),
            ],
        );
        let seed = dir.path().join("seed");
        git(
            dir.path(),
            &["init", "-q", "-b", BASE_BRANCH, seed.to_str().unwrap()],
        );
        std::fs::create_dir_all(seed.join("specs")).unwrap();
        std::fs::write(seed.join("specs/hello.md"), "# Hello\nSay hello.\n").unwrap();
        std::fs::write(seed.join("README.md"), "seed\n").unwrap();
        git(&seed, &["add", "."]);
        git(&seed, &["commit", "-q", "-m", "seed"]);
        git(
            &seed,
            &["push", "-q", origin.to_str().unwrap(), BASE_BRANCH],
        );
        let base_commit = git(&seed, &["rev-parse", "HEAD"]);
        let workspace = Arc::new(Workspace::new(dir.path().join("work")));
        Self {
            dir,
            origin,
            base_commit,
            workspace,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes an executable `#!/bin/sh` script and returns its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A context for running steps directly, with no coordinator: nothing fences the push.
    pub fn ctx(&self) -> StepContext {
        let mut ctx = StepContext::new(self.workspace.clone(), PushFence::unfenced());
        ctx.default_timeout = Duration::from_secs(30);
        ctx
    }

    /// A command-runtime assignment for task-007, round 1, role implementer.
    pub fn assign(&self, attempt_id: u64, script: &Path) -> Assign {
        Assign {
            attempt_id,
            task_id: "task-007".into(),
            step_path: "0/agent:implementer@fp".into(),
            role: "implementer".into(),
            round: 1,
            prompt: "Implement specs/hello.md".into(),
            spec_ref: Some(SpecRef {
                path: "specs/hello.md".into(),
                commit: self.base_commit.clone(),
            }),
            repo_url: self.origin.to_string_lossy().into_owned(),
            base_branch: BASE_BRANCH.into(),
            base_commit: self.base_commit.clone(),
            branch: "hyperloop/task-007".into(),
            runtime: Some(RuntimeSettings {
                kind: RuntimeKind::Command.into(),
                command: vec![script.to_string_lossy().into_owned()],
                extra_env: HashMap::new(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The commit `branch` points at in origin, if it exists.
    pub fn origin_branch(&self, branch: &str) -> Option<String> {
        let out = Command::new("git")
            .args([
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}"),
            ])
            .current_dir(&self.origin)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Entries left in the worktrees dir and in the mirror's worktree admin dir.
    /// Step worktrees and worktree admin entries that outlived their step. Parked worktrees
    /// (bounded, cleaned, kept for reuse under `spare/`) are not leftovers.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.workspace.worktrees_dir()) {
            left.extend(entries.flatten().map(|e| e.path().display().to_string()));
        }
        let spare = self.workspace.mirror_dir().with_file_name("spare");
        if let Ok(entries) = std::fs::read_dir(self.workspace.mirror_dir().join("worktrees")) {
            for entry in entries.flatten() {
                let gitdir =
                    std::fs::read_to_string(entry.path().join("gitdir")).unwrap_or_default();
                if !std::path::Path::new(gitdir.trim()).starts_with(&spare) {
                    left.push(entry.path().display().to_string());
                }
            }
        }
        left
    }
}

/// A shell snippet that writes the result file with the given verdict and body.
pub fn write_result(verdict: &str, body: &str) -> String {
    format!(
        "cat > \"$HYPERLOOP_RESULT_FILE\" <<EOR\n---\ntask_id: $HYPERLOOP_TASK_ID\nround: \
         $HYPERLOOP_ROUND\nrole: $HYPERLOOP_ROLE\nverdict: {verdict}\n---\n{body}\nEOR\n"
    )
}

/// Whether a process is alive (exists and is not a zombie): `kill -0` plus the state in
/// `/proc`, because an orphan here stays a zombie until init reaps it.
pub fn alive(pid: i32) -> bool {
    let exists = Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Waits until `path` exists (bounded).
pub async fn wait_for_file(path: &Path, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}
