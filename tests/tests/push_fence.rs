//! The push fence against the attack it exists for, with real processes: a `hyperloop-worker`
//! frozen (SIGSTOP) mid-step loses its attempt; another worker finishes the task, which is
//! merged and its branch deleted; the frozen worker is thawed (SIGCONT) with its agent's
//! commit in hand. Before the fence it pushed that stale commit, recreating the deleted
//! branch. Now it must ask first, and it is not allowed to.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hyperloop_tests::free_port;
use hyperloop_tests::repo::{
    TestRepo, coordinator_bin, git_output, logged_command, scripted_agent,
};

const SPEC_B: &str = "# B\n\nThe repository records work for B.\n";
const TOKEN: &str = "push-fence-join-token-3K";
/// How long the frozen worker's agent takes before it commits: past the coordinator's
/// heartbeat timeout (4 s), so the attempt is revoked while it runs.
const FROZEN_AGENT_DELAY: &str = "7";
/// Bounds each wait; the whole scenario takes about 15 s.
const WAIT: Duration = Duration::from_secs(30);

/// The coordinator and workers; killed when the test ends, however it ends.
struct Site {
    repo: TestRepo,
    port: u16,
    children: Vec<(String, Child)>,
}

impl Site {
    fn log_file(&self, name: &str) -> PathBuf {
        self.repo.dir.path().join(format!("{name}.log"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_file(name)).unwrap_or_default()
    }

    fn steps_file(&self, worker: &str) -> PathBuf {
        self.repo.dir.path().join(format!("steps-{worker}.log"))
    }

    fn steps(&self, worker: &str) -> String {
        std::fs::read_to_string(self.steps_file(worker)).unwrap_or_default()
    }

    fn command(&self, program: &Path, name: &str) -> Command {
        logged_command(program, self.repo.dir.path(), &self.log_file(name))
    }

    fn start_coordinator(&mut self) {
        let mut cmd = self.command(&coordinator_bin(), "coordinator");
        // `watch` keeps the coordinator up after the task is done, for the frozen worker.
        cmd.args(["watch", "--path"])
            .arg(&self.repo.checkout)
            .args(["--local-workers", "0", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--join-token", TOKEN]);
        let child = cmd.spawn().expect("coordinator starts");
        self.children.push(("coordinator".to_owned(), child));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < WAIT, "the coordinator never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_worker(&mut self, name: &str, delay: &str, tag: &str) -> u32 {
        let program = coordinator_bin().with_file_name("hyperloop-worker");
        let mut cmd = self.command(&program, &format!("worker-{name}"));
        cmd.args(["--join", &format!("http://127.0.0.1:{}", self.port)])
            .args(["--token", TOKEN, "--capacity", "1", "--name", name])
            .args(["--connect-timeout", "0"])
            .arg("--work-dir")
            .arg(self.repo.dir.path().join(format!("work-{name}")))
            .envs(hyperloop_tests::scripted_log(self.steps_file(name)))
            .env("SCRIPTED_MODE", "normal")
            .env("SCRIPTED_DELAY", delay)
            .env("SCRIPTED_TAG", tag);
        let child = cmd.spawn().expect("worker starts");
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        pid
    }

    fn wait_for(&self, what: &str, done: impl Fn(&Site) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < WAIT,
                "timed out waiting for {what}{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(name, _)| {
                let log = if name == "coordinator" {
                    self.log(name)
                } else {
                    self.log(&format!("worker-{name}"))
                };
                format!("\n--- {name} ---\n{log}")
            })
            .collect()
    }

    /// The commit `branch` points at in the checkout workers push to, if the branch exists.
    fn branch(&self, branch: &str) -> Option<String> {
        let out = git_output(
            &self.repo.checkout,
            &[
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}"),
            ],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            // A frozen process cannot die of SIGKILL until it is scheduled; thaw it first.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(name: &str, pid: u32) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Whether `commit` exists at all in the repository at `dir`.
fn has_object(dir: &Path, commit: &str) -> bool {
    git_output(dir, &["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .status
        .success()
}

#[test]
fn a_worker_thawed_after_its_attempt_was_revoked_does_not_push_its_stale_commit() {
    let config = format!(
        "max_workers: 2\npoll_interval: 1s\n\
         dashboard:\n  enabled: false\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 60s\n\
         \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_MODE, SCRIPTED_DELAY, SCRIPTED_TAG]\n",
        scripted_agent().display()
    );
    let repo = TestRepo::new(&[("specs/b.md", SPEC_B), (".hyperloop.yaml", &config)]);
    let mut site = Site {
        repo,
        port: free_port(),
        children: Vec::new(),
    };
    site.start_coordinator();
    let frozen = site.start_worker("w1", FROZEN_AGENT_DELAY, "stale-w1");
    site.wait_for("w1's implementer step", |s| {
        s.steps("w1").contains("implementer task-001")
    });

    // Frozen mid-step: its agent (its own process group) runs on and commits.
    signal("STOP", frozen);
    site.start_worker("w2", "0", "");
    site.wait_for("w1 to be declared lost", |s| {
        s.log("coordinator").contains("stopped heartbeating")
    });
    site.wait_for("task-001 merged by w2 and its branch deleted", |s| {
        s.repo.log("main").contains("Task-Ref: task-001")
            && s.branch("hyperloop/task-001").is_none()
    });
    site.wait_for("the frozen worker's agent to commit", |s| {
        s.steps("w1").contains("committed task-001")
    });
    let steps = site.steps("w1");
    let stale = steps
        .lines()
        .find_map(|l| l.strip_prefix("committed task-001 "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the stale commit is logged")
        .to_owned();
    let merged = site.repo.log("main");

    // Thawed with its commit in hand, the worker would push it now; it must ask first.
    signal("CONT", frozen);
    // Its second step (after the PM's) ends: pushed or not, the harm would be done by then.
    site.wait_for("the frozen worker's step to finish", |s| {
        s.log("worker-w1").matches("step finished").count() >= 2
    });

    let worker_log = site.log("worker-w1");
    assert!(
        !has_object(&site.repo.checkout, &stale) && !has_object(&site.repo.origin, &stale),
        "the stale commit {stale} reached the remote{}",
        site.logs()
    );
    assert_eq!(
        site.branch("hyperloop/task-001"),
        None,
        "the merged task's deleted branch was recreated{}",
        site.logs()
    );
    assert_eq!(site.repo.log("main"), merged, "main was not touched");
    assert_eq!(
        merged.matches("Task-Ref: task-001\n").count(),
        1,
        "task-001 landed once:\n{merged}"
    );
    // The worker says it did not push, and why. Thawed, it reconnects; the coordinator
    // cancels the attempt it no longer owns and refuses its push, and the worker stops
    // waiting at whichever it hears first.
    assert!(worker_log.contains("commits not pushed"), "{worker_log}");
    let refused = worker_log.contains("The coordinator refused the push of attempt 2");
    let cancelled = worker_log.contains("Attempt 2 was cancelled");
    assert!(refused || cancelled, "{worker_log}");
    let coordinator = site.log("coordinator");
    let refused_there = coordinator.contains("push refused")
        && coordinator.contains("attempt-2 was revoked: w1 stopped heartbeating");
    assert!(
        refused_there || cancelled,
        "a refusal the worker heard is in the coordinator's log:\n{coordinator}"
    );
    eprintln!(
        "the frozen worker's push was {}",
        match (refused, refused_there) {
            (true, _) => "refused by the coordinator",
            (false, true) => "refused by the coordinator, and cancelled before the worker heard",
            (false, false) => "abandoned: the attempt was cancelled before the worker asked",
        }
    );
}
