//! Several coordinators over a real etcd, with `hyperloop-worker` processes joining over gRPC
//! on loopback: real binaries, real git (a bare `origin` every coordinator clones), the
//! scripted `command` agent. Each coordinator works in its own checkout; workers fetch from
//! and push to `origin`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hyperloop_coordinator::adapters::etcd_store::EtcdStore;
use hyperloop_coordinator::ports::state_store::StateStore;
use hyperloop_shared::event::{Event, EventKind};
use hyperloop_tests::etcd::EtcdCluster;
use hyperloop_tests::free_port;
use hyperloop_tests::repo::{TestRepo, coordinator_bin, git, logged_command, scripted_agent};

const SPEC_A: &str = "# A\n\nThe repository records work for A.\n";
const SPEC_B: &str = "# B\n\nThe repository records work for B.\n";
const TOKEN: &str = "distributed-join-token-4R";
const PREFIX: &str = "/hyperloop-test";
/// Bounds a whole run: a hung run fails the test instead of CI.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The repository, an etcd cluster, and the processes of one scenario.
struct Site {
    repo: TestRepo,
    etcd: EtcdCluster,
    ports: Vec<u16>,
    coordinators: Vec<Option<Child>>,
    workers: BTreeMap<String, Child>,
}

impl Site {
    fn new(members: usize, coordinators: usize) -> Site {
        let config = format!(
            "max_workers: 3\npoll_interval: 1s\nmax_task_rounds: 4\n\
             dashboard:\n  enabled: false\n  events_limit: 100000\n\
             agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 60s\n\
             \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_MODE, SCRIPTED_DELAY]\n",
            scripted_agent().display()
        );
        let repo = TestRepo::new(&[
            ("specs/a.md", SPEC_A),
            ("specs/b.md", SPEC_B),
            (".hyperloop.yaml", &config),
        ]);
        // Every further coordinator works in its own clone of origin.
        for i in 1..coordinators {
            git(
                repo.dir.path(),
                &["clone", "-q", "origin.git", &format!("checkout-{i}")],
            );
        }
        Site {
            repo,
            etcd: EtcdCluster::start(members),
            ports: (0..coordinators).map(|_| free_port()).collect(),
            coordinators: Vec::new(),
            workers: BTreeMap::new(),
        }
    }

    fn checkout(&self, i: usize) -> PathBuf {
        if i == 0 {
            self.repo.checkout.clone()
        } else {
            self.repo.dir.path().join(format!("checkout-{i}"))
        }
    }

    fn log_file(&self, name: &str) -> PathBuf {
        self.repo.dir.path().join(format!("{name}.log"))
    }

    /// Where agents run by worker `name` record their steps.
    fn steps_file(&self, worker: &str) -> PathBuf {
        self.repo.dir.path().join(format!("steps-{worker}.log"))
    }

    fn command(&self, program: PathBuf, log: &str) -> Command {
        logged_command(&program, self.repo.dir.path(), &self.log_file(log))
    }

    fn start_coordinator(&mut self, i: usize) {
        let mut cmd = self.command(coordinator_bin(), &format!("coordinator-{i}"));
        cmd.args(["run", "--path"])
            .arg(self.checkout(i))
            .args(["--local-workers", "0", "--listen"])
            .arg(format!("127.0.0.1:{}", self.ports[i]))
            .args(["--etcd", &self.etcd.endpoints().join(",")])
            .args(["--etcd-prefix", PREFIX, "--join-token", TOKEN]);
        let child = cmd.spawn().expect("coordinator starts");
        if self.coordinators.len() <= i {
            self.coordinators.resize_with(i + 1, || None);
        }
        self.coordinators[i] = Some(child);
    }

    fn join_urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_worker(&mut self, name: &str, delay: &str) {
        let mut cmd = self.command(
            coordinator_bin().with_file_name("hyperloop-worker"),
            &format!("worker-{name}"),
        );
        cmd.args(["--join", &self.join_urls()])
            .args(["--token", TOKEN, "--capacity", "1", "--name", name])
            .args(["--connect-timeout", "0"])
            .arg("--work-dir")
            .arg(self.repo.dir.path().join(format!("work-{name}")))
            .envs(hyperloop_tests::scripted_log(self.steps_file(name)))
            .env("SCRIPTED_MODE", "normal")
            .env("SCRIPTED_DELAY", delay);
        self.workers
            .insert(name.to_owned(), cmd.spawn().expect("worker starts"));
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_file(name)).unwrap_or_default()
    }

    /// Every process's output, for failure messages.
    fn logs(&self) -> String {
        let mut all = String::new();
        for i in 0..self.coordinators.len() {
            all.push_str(&format!(
                "\n===== coordinator-{i}\n{}",
                self.log(&format!("coordinator-{i}"))
            ));
        }
        for name in self.workers.keys() {
            all.push_str(&format!(
                "\n===== worker-{name}\n{}",
                self.log(&format!("worker-{name}"))
            ));
        }
        all
    }

    /// Waits until `what` holds, failing with every log after `limit`.
    fn wait_for(&self, what: &str, limit: Duration, mut done: impl FnMut(&Site) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for every coordinator still running to exit, and returns their codes.
    fn await_coordinators(&mut self) -> Vec<Option<i32>> {
        let started = Instant::now();
        let mut codes = Vec::new();
        for i in 0..self.coordinators.len() {
            let Some(child) = self.coordinators[i].as_mut() else {
                codes.push(None);
                continue;
            };
            loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    codes.push(status.code());
                    break;
                }
                if started.elapsed() > RUN_TIMEOUT {
                    let logs = self.logs();
                    panic!("coordinator-{i} did not finish within {RUN_TIMEOUT:?}{logs}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        codes
    }

    /// The coordinator that leads now (by its log), if any.
    fn leader(&self) -> Option<usize> {
        (0..self.coordinators.len()).find(|i| {
            self.coordinators[*i].is_some()
                && self.log(&format!("coordinator-{i}")).contains("leading")
        })
    }

    fn steps(&self) -> String {
        self.workers
            .keys()
            .map(|w| std::fs::read_to_string(self.steps_file(w)).unwrap_or_default())
            .collect()
    }

    /// The journal in etcd, oldest first. Retried: the client may try a killed member first.
    fn events(&self) -> Vec<Event> {
        let store = EtcdStore::new(&self.etcd.endpoints(), PREFIX, 100_000);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut attempts = 0;
        loop {
            match runtime.block_on(store.events(0, 100_000)) {
                Ok(events) => return events,
                Err(e) if e.is_transient() && attempts < 20 => attempts += 1,
                Err(e) => panic!("reading events from etcd: {e}"),
            }
        }
    }

    /// What every scenario must end with: origin's main has each task's work exactly once,
    /// and no step's result was taken twice.
    fn assert_converged_once(&self) {
        let origin = &self.repo.origin;
        let files = git(origin, &["ls-tree", "-r", "--name-only", "main"]);
        let history = git(origin, &["log", "--format=%B", "main"]);
        for task in ["task-001", "task-002", "task-003"] {
            assert!(
                files.contains(&format!("work/{task}.txt")),
                "{task}'s work is missing from origin's main:\n{files}{}",
                self.logs()
            );
            assert_eq!(
                history.matches(&format!("Task-Ref: {task}\n")).count(),
                1,
                "{task} must land exactly once:\n{history}"
            );
        }
        let mut reaped = BTreeMap::new();
        for event in self.events() {
            if let EventKind::ResultReaped {
                step, role, round, ..
            } = &event.kind
            {
                let key = (event.task, step.clone(), role.clone(), *round);
                *reaped.entry(key).or_insert(0) += 1;
            }
        }
        let twice: Vec<_> = reaped.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "steps completed more than once: {twice:?}"
        );
        assert!(!reaped.is_empty(), "no step was reaped at all");
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for child in self.coordinators.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for child in self.workers.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn kill_9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Issue test 1: a 3-member etcd cluster, 2 coordinators and 3 workers converge, and both
/// coordinators stop with exit 0 (the standby takes over, finds nothing left, and halts).
#[test]
fn two_coordinators_and_three_workers_converge_over_a_three_member_etcd() {
    let mut site = Site::new(3, 2);
    site.start_coordinator(0);
    site.start_coordinator(1);
    for w in ["w1", "w2", "w3"] {
        site.start_worker(w, "0");
    }
    let codes = site.await_coordinators();
    assert_eq!(codes, vec![Some(0), Some(0)], "{}", site.logs());
    site.assert_converged_once();
    let steps = site.steps();
    assert!(steps.contains("pm "), "{steps}");
    // The work was spread: more than one worker ran steps.
    let busy = site
        .workers
        .keys()
        .filter(|w| site.steps_file(w).exists())
        .count();
    assert!(busy > 1, "only {busy} worker(s) ran steps:\n{steps}");
}

/// Issue test 2: `kill -9` the leader mid-run; the standby takes over and everything
/// converges with each step completed once and no duplicate merge.
#[test]
fn killing_the_leader_mid_run_hands_over_without_duplicate_work() {
    let mut site = Site::new(1, 2);
    site.start_coordinator(0);
    site.wait_for("a leader", RUN_TIMEOUT, |s| s.leader().is_some());
    site.start_coordinator(1);
    for w in ["w1", "w2"] {
        site.start_worker(w, "1");
    }
    site.wait_for("an implementer step", RUN_TIMEOUT, |s| {
        s.steps().contains("implementer")
    });
    let leader = site.leader().expect("a leader");
    kill_9(site.coordinators[leader].as_mut().expect("running"));
    site.coordinators[leader] = None;
    let codes = site.await_coordinators();
    assert!(
        codes.iter().flatten().all(|c| *c == 0),
        "{codes:?}{}",
        site.logs()
    );
    let standby = 1 - leader;
    assert!(
        site.log(&format!("coordinator-{standby}"))
            .contains("leading"),
        "the standby never led{}",
        site.logs()
    );
    site.assert_converged_once();
    // In-flight work was resumed, not redone: every task step ran exactly once.
    let steps = site.steps();
    let mut runs = BTreeMap::new();
    for line in steps.lines().filter(|l| !l.starts_with("pm ")) {
        *runs.entry(line).or_insert(0) += 1;
    }
    let repeated: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "steps ran again after the takeover: {repeated:?}\n{steps}"
    );
}

/// Issue test 3: `kill -9` a worker mid-step; its step is reassigned and completes.
#[test]
fn killing_a_worker_mid_step_reassigns_its_step() {
    let mut site = Site::new(1, 1);
    site.start_coordinator(0);
    site.start_worker("w1", "3");
    site.start_worker("w2", "3");
    site.wait_for("an implementer step", RUN_TIMEOUT, |s| {
        s.steps().contains("implementer")
    });
    let victim = ["w1", "w2"]
        .into_iter()
        .find(|w| {
            std::fs::read_to_string(site.steps_file(w))
                .unwrap_or_default()
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("implementer"))
        })
        .expect("a worker running an implementer")
        .to_owned();
    let mut child = site.workers.remove(&victim).expect("victim");
    kill_9(&mut child);
    let codes = site.await_coordinators();
    assert_eq!(codes, vec![Some(0)], "{}", site.logs());
    site.assert_converged_once();
    let coordinator = site.log("coordinator-0");
    assert!(
        coordinator.contains("dispatched again"),
        "the lost step was not reassigned:\n{coordinator}"
    );
}

/// Issue test 4: a worker stopped (SIGSTOP) past the heartbeat timeout loses its step to
/// another worker; after SIGCONT its late result is rejected.
#[test]
fn a_frozen_worker_loses_its_step_and_its_late_result_is_rejected() {
    let mut site = Site::new(1, 1);
    site.start_coordinator(0);
    site.start_worker("w1", "2");
    site.wait_for("w1's first implementer step", RUN_TIMEOUT, |s| {
        std::fs::read_to_string(s.steps_file("w1"))
            .unwrap_or_default()
            .contains("implementer")
    });
    let pid = site.workers["w1"].id().to_string();
    signal("STOP", &pid);
    // Slow enough that the run is still going when the frozen worker wakes up.
    site.start_worker("w2", "2");
    site.wait_for("the step to be given away", RUN_TIMEOUT, |s| {
        s.log("coordinator-0").contains("stopped heartbeating")
    });
    // Long enough for the frozen worker's agent (its own process group) to finish.
    std::thread::sleep(Duration::from_secs(3));
    signal("CONT", &pid);
    let codes = site.await_coordinators();
    assert_eq!(codes, vec![Some(0)], "{}", site.logs());
    site.assert_converged_once();
    let rejected = site.events().into_iter().any(|e| {
        matches!(&e.kind, EventKind::OrphanFound { kind, action, .. }
            if kind == "result" && action.starts_with("rejected"))
    });
    assert!(
        rejected || site.log("coordinator-0").contains("rejected a late result"),
        "the frozen worker's late result was not rejected{}",
        site.logs()
    );
}

/// Issue test 5: losing one of three etcd members (the raft leader) does not stop the run.
#[test]
fn losing_an_etcd_member_mid_run_does_not_stop_the_run() {
    let mut site = Site::new(3, 1);
    site.start_coordinator(0);
    site.start_worker("w1", "1");
    site.start_worker("w2", "1");
    site.wait_for("an implementer step", RUN_TIMEOUT, |s| {
        s.steps().contains("implementer")
    });
    let member = site.etcd.leader().unwrap_or(0);
    site.etcd.kill_member(member);
    let codes = site.await_coordinators();
    assert_eq!(codes, vec![Some(0)], "{}", site.logs());
    site.assert_converged_once();
}

fn signal(name: &str, pid: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}
