//! Single host, end to end: the real `hyperloop-coordinator` binary with in-process workers,
//! real git repositories and a scripted `command` agent (fixtures/agents/scripted-agent.sh).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hyperloop_tests::repo::{TestRepo, coordinator_bin, scripted_agent, test_home};

const SPEC_A: &str = "# A\n\nThe repository records work for A.\n";
const SPEC_B: &str = "# B\n\nThe repository records work for B.\n";
/// Bounds a whole coordinator run: a hung run fails the test instead of CI.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn config(max_task_rounds: u32) -> String {
    format!(
        "max_workers: 2\npoll_interval: 1s\nmax_task_rounds: {max_task_rounds}\n\
         dashboard:\n  enabled: false\n  events_limit: 100000\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 20s\n\
         \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_MODE]\n",
        scripted_agent().display()
    )
}

fn repo(max_task_rounds: u32) -> TestRepo {
    TestRepo::new(&[
        ("specs/a.md", SPEC_A),
        ("specs/b.md", SPEC_B),
        (".hyperloop.yaml", &config(max_task_rounds)),
    ])
}

fn coordinator(repo: &TestRepo, log: &Path, mode: &str) -> Command {
    let mut cmd = Command::new(coordinator_bin());
    cmd.args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", "127.0.0.1:0"])
        .envs(hyperloop_tests::scripted_log(log))
        .env("SCRIPTED_MODE", mode)
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env("HOME", test_home(repo.dir.path()))
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null());
    cmd
}

/// Runs the coordinator to its end, killing it if it exceeds [`RUN_TIMEOUT`].
fn run_to_end(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator starts");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "coordinator did not finish within {RUN_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the coordinator with agents in `mode` to its end and asserts its exit code.
fn run_expecting(repo: &TestRepo, log: &Path, mode: &str, code: i32) -> Output {
    let out = run_to_end(coordinator(repo, log, mode));
    assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_converged(repo: &TestRepo) {
    let files = repo.files("main");
    for f in [
        "work/task-001.txt",
        "work/task-002.txt",
        "work/task-003.txt",
    ] {
        assert!(
            files.contains(&f.to_owned()),
            "{f} missing from main: {files:?}"
        );
    }
    let log = repo.log("main");
    for task in ["task-001", "task-002", "task-003"] {
        let landed = log.matches(&format!("Task-Ref: {task}\n")).count();
        assert_eq!(landed, 1, "{task} should land exactly once:\n{log}");
    }
    // Local landings are pushed to origin.
    let local = hyperloop_tests::repo::git(&repo.checkout, &["rev-parse", "main"]);
    let pushed = hyperloop_tests::repo::git(&repo.origin, &["rev-parse", "main"]);
    assert_eq!(local, pushed, "main is pushed to origin");
    let spec_a = hyperloop_tests::repo::git(
        &repo.checkout,
        &[
            "log",
            "--format=%H",
            "--grep",
            "Spec-Ref: specs/a.md",
            "main",
        ],
    );
    assert_eq!(spec_a.lines().count(), 2, "two tasks served specs/a.md");
}

#[test]
fn two_specs_converge_through_intake_a_failed_round_and_local_merges() {
    let repo = repo(4);
    let log = repo.dir.path().join("steps.log");
    let out = run_to_end(coordinator(&repo, &log, "normal"));
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    assert_converged(&repo);

    let steps = std::fs::read_to_string(&log).unwrap();
    // The verifier failed task-001 in round 0; round 1 ran with its finding in the prompt
    // (the scripted implementer fails otherwise, and the task would not have landed).
    assert!(steps.contains("verifier task-001 0\n"), "{steps}");
    assert!(steps.contains("implementer task-001 1\n"), "{steps}");
    // The dependent task ran only after its dependency landed.
    let done_1 = steps.find("verifier task-001 1").unwrap();
    let start_2 = steps.find("implementer task-002 0").unwrap();
    assert!(
        start_2 > done_1,
        "task-002 must wait for task-001:\n{steps}"
    );

    let events = repo.events();
    let reaped = events
        .iter()
        .filter(|e| e["event"] == "result_reaped")
        .count();
    assert!(reaped >= 7, "1 intake + 7 task steps: {reaped}");
    assert!(events.iter().any(|e| e["event"] == "task_looped_back"));
    assert_eq!(
        events.iter().filter(|e| e["event"] == "merged").count(),
        3,
        "three merges"
    );
}

#[test]
fn editing_one_spec_yields_work_for_that_spec_only() {
    let repo = repo(4);
    let log = repo.dir.path().join("steps.log");
    run_expecting(&repo, &log, "normal", 0);
    hyperloop_tests::repo::git(
        &repo.checkout,
        &["pull", "-q", "--ff-only", "origin", "main"],
    );

    repo.commit(
        &[("specs/b.md", "# B\n\nRecord work for B, twice.\n")],
        "Change B",
    );
    std::fs::write(&log, "").unwrap();
    run_expecting(&repo, &log, "normal", 0);
    let steps = std::fs::read_to_string(&log).unwrap();
    assert!(steps.starts_with("pm intake 1\n"), "{steps}");
    assert!(steps.contains("implementer task-004 0"), "{steps}");
    assert!(
        !steps.contains("task-001"),
        "nothing for specs/a.md: {steps}"
    );
    let log = repo.log("main");
    assert!(log.contains("Spec-Ref: specs/b.md@"), "{log}");
    assert_eq!(log.matches("Task-Ref: task-004\n").count(), 1);
}

#[test]
fn a_second_coordinator_on_the_same_repository_refuses_naming_the_holder() {
    let repo = repo(4);
    let log = repo.dir.path().join("steps.log");
    let mut first = coordinator(&repo, &log, "hang")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let second = run_to_end(coordinator(&repo, &log, "normal"));
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(second.status.code(), Some(1), "{}", text(&second.stderr));
    let stderr = text(&second.stderr);
    assert!(stderr.contains("another hyperloop coordinator"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.id())), "{stderr}");
}

#[test]
fn kill_9_at_many_moments_converges_to_the_same_main_without_duplicate_work() {
    // A step interrupted by a kill is re-run; a generous round budget keeps the scenario
    // about crash safety rather than about how many rounds the interruptions cost.
    let repo = repo(12);
    let log = repo.dir.path().join("steps.log");
    // Kill ever later after each start (25 ms, 50 ms, ...) until a run finishes on its own:
    // the kills land at many different moments of the work, whatever the machine's speed.
    let mut kills = 0;
    for delay in (1..=80u64).map(|i| i * 25) {
        let mut child = coordinator(&repo, &log, "normal")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(
        kills >= 4,
        "the run must be interrupted many times, got {kills}"
    );
    run_expecting(&repo, &log, "normal", 0);
    assert_converged(&repo);

    // No step completed twice, nor was sent out again once completed.
    let events = repo.events();
    hyperloop_tests::repo::assert_no_completed_step_repeated(&events);
    let merges = events.iter().filter(|e| e["event"] == "merged").count();
    assert_eq!(merges, 3, "no duplicate merge");
}

#[test]
fn bad_agents_become_findings_and_nothing_is_lost() {
    for (mode, finding) in [
        ("garbage", "front matter"),
        ("exit1", "exit"),
        ("hang", "timed out"),
    ] {
        let repo = repo(1);
        let log = repo.dir.path().join("steps.log");
        let mut cmd = coordinator(&repo, &log, mode);
        cmd.env("HYPERLOOP_AGENT_TIMEOUT", "2s");
        let out = run_to_end(cmd);
        // Failed tasks never halt the coordinator with an error: the run converges (the PM
        // is asked again with the failure history) within max_cycles or stops at it.
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)),
            "{mode}: {}",
            text(&out.stderr)
        );
        let events = repo.events();
        assert!(
            events.iter().any(|e| e["event"] == "task_failed"),
            "{mode}: a task failed"
        );
        let reviews = repo.state_texts("reviews/").join("\n");
        assert!(
            reviews.contains(finding),
            "{mode}: the finding names the cause ({finding:?}):\n{reviews}"
        );
    }
}

#[test]
fn a_pm_proposing_a_dependency_cycle_is_rejected_and_run_stops_saying_why() {
    let repo = repo(4);
    let log = repo.dir.path().join("steps.log");
    let out = run_expecting(&repo, &log, "cycle", 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("intake failed 3 times in a row"),
        "{stderr}"
    );
    assert!(stderr.contains("cycle"), "{stderr}");
    // Nothing was created from the rejected proposals, and the state says why.
    assert!(repo.state_texts("tasks/").is_empty());
    let meta = repo.state_texts("meta.json").join("");
    assert!(meta.contains("cycle"), "{meta}");
}

#[test]
fn malformed_configuration_stops_run_with_exit_2_naming_file_and_key() {
    let repo = TestRepo::new(&[
        ("specs/a.md", SPEC_A),
        (".hyperloop.yaml", "max_wrkers: 2\n"),
    ]);
    let out = run_to_end(coordinator(&repo, &repo.dir.path().join("log"), "normal"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(".hyperloop.yaml: unknown key `max_wrkers`"),
        "{stderr}"
    );
    assert!(stderr.contains("max_workers"), "{stderr}");
}

/// Polls `cond` every 50 ms for up to `limit`; the test fails if it never holds.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the child's exit, killing it (and failing) after `limit`.
fn exit_within(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the coordinator did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn landed(repo: &TestRepo, task: &str) -> bool {
    repo.log("main").contains(&format!("Task-Ref: {task}\n"))
}

fn process_gone(pid: &str) -> bool {
    // Zombies count as gone: nothing reaps orphans on some machines, but they run no code.
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(true)
}

#[test]
fn watch_picks_up_a_new_spec_and_sigterm_stops_cleanly() {
    let repo = repo(4);
    let log = repo.dir.path().join("steps.log");
    let mut cmd = coordinator(&repo, &log, "normal");
    cmd.arg("--watch")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    wait_for("the first three tasks to land", RUN_TIMEOUT, || {
        landed(&repo, "task-003")
    });
    assert!(child.try_wait().unwrap().is_none(), "watch never halts");
    repo.commit_local(
        &[("specs/nested/c.md", "# C\n\nRecord work for C.\n")],
        "Add C",
    );
    wait_for("the new spec's task to land", RUN_TIMEOUT, || {
        landed(&repo, "task-004")
    });
    sigterm(&child);
    assert_eq!(exit_within(&mut child, Duration::from_secs(15)), Some(0));
    let events = repo.events();
    let halted = events.last().unwrap();
    assert_eq!(halted["event"], "coordinator_halted", "{halted}");
    assert_eq!(halted["reason"], "shutdown requested");
}

#[test]
fn deleting_a_spec_cancels_its_unfinished_tasks_and_sigterm_stops_the_agents() {
    let repo = repo(4);
    let log = repo.dir.path().join("steps.log");
    let pids = repo.dir.path().join("steps.log.pids");
    let mut cmd = coordinator(&repo, &log, "hang");
    cmd.arg("--watch")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    wait_for("two agents to be running", RUN_TIMEOUT, || {
        std::fs::read_to_string(&pids).is_ok_and(|p| p.lines().count() >= 2)
    });
    hyperloop_tests::repo::git(&repo.checkout, &["rm", "-q", "specs/a.md"]);
    hyperloop_tests::repo::git(&repo.checkout, &["commit", "-q", "-m", "Drop A"]);
    wait_for(
        "the tasks of specs/a.md to be cancelled",
        RUN_TIMEOUT,
        || {
            let events = repo.events();
            let cancelled: Vec<_> = events
                .iter()
                .filter(|e| e["event"] == "task_cancelled")
                .map(|e| e["task"].as_str().unwrap_or_default().to_owned())
                .collect();
            cancelled.contains(&"task-001".to_owned()) && cancelled.contains(&"task-002".to_owned())
        },
    );
    sigterm(&child);
    assert_eq!(exit_within(&mut child, Duration::from_secs(15)), Some(0));
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        assert!(process_gone(pid), "agent {pid} still runs after shutdown");
    }
    // State was persisted: B's task is still there, unfinished, to resume on restart.
    let tasks = repo.state_texts("tasks/").join("\n");
    assert!(tasks.contains("\"Build B\""), "{tasks}");
}

#[test]
fn process_improvements_land_on_main_and_later_agents_see_them() {
    let repo = repo(4);
    let init = Command::new(coordinator_bin())
        .args(["init", "--path"])
        .arg(&repo.checkout)
        .output()
        .unwrap();
    assert_eq!(init.status.code(), Some(0), "{}", text(&init.stderr));
    hyperloop_tests::repo::git(&repo.checkout, &["add", "-A"]);
    hyperloop_tests::repo::git(&repo.checkout, &["commit", "-q", "-m", "hyperloop init"]);
    // init leaves the existing .hyperloop.yaml alone, so the scripted agent stays configured.
    let log = repo.dir.path().join("steps.log");
    run_expecting(&repo, &log, "improve", 0);
    assert!(
        repo.files("main")
            .contains(&".hyperloop/agents/process/implementer-rule.yaml".to_owned()),
        "the improvement landed on main"
    );
    assert!(repo.log("main").contains("Task-Ref: process-improvement"));
    let steps = std::fs::read_to_string(&log).unwrap();
    // task-002 starts only after task-001 (whose round-0 failure triggered the improver)
    // completed, so its implementer runs with the new guideline.
    assert!(steps.contains("guideline-seen task-002"), "{steps}");
}

#[test]
fn a_landing_conflict_goes_to_the_rebase_resolver_and_then_lands() {
    let repo = repo(4);
    let log = repo.dir.path().join("steps.log");
    run_expecting(&repo, &log, "conflict", 0);
    assert_converged(&repo);
    let events = repo.events();
    assert!(
        events.iter().any(|e| e["event"] == "rebase_conflict"),
        "tasks editing the same file conflict"
    );
    let steps = std::fs::read_to_string(&log).unwrap();
    assert!(steps.contains("rebase-resolver "), "{steps}");
}
