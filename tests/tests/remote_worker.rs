//! A coordinator with no in-process workers and a `hyperloop-worker` process that joins it
//! over gRPC on loopback: the real binaries, real git and the scripted `command` agent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hyperloop_tests::repo::{TestRepo, coordinator_bin, scripted_agent, test_home};
use hyperloop_tests::{alive, free_port, logged_pids};

const SPEC_A: &str = "# A\n\nThe repository records work for A.\n";
const SPEC_B: &str = "# B\n\nThe repository records work for B.\n";
/// Bounds a whole run: a hung run fails the test instead of CI.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// A refused worker exits right after its Hello; generous for a loaded CI machine.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the coordinator may take to bind its worker endpoint.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
const TOKEN: &str = "s3cret-join-token-7Q";

fn repo() -> TestRepo {
    let config = format!(
        "max_workers: 2\npoll_interval: 1s\nmax_task_rounds: 4\n\
         dashboard:\n  enabled: false\n  events_limit: 100000\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 20s\n\
         \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_MODE]\n",
        scripted_agent().display()
    );
    TestRepo::new(&[
        ("specs/a.md", SPEC_A),
        ("specs/b.md", SPEC_B),
        (".hyperloop.yaml", &config),
    ])
}

/// `hyperloop-worker`, built next to the coordinator.
fn worker_bin() -> PathBuf {
    coordinator_bin().with_file_name("hyperloop-worker")
}

/// Environment both processes share: a HOME with a git identity and the agent's variables.
fn env(cmd: &mut Command, repo: &TestRepo, log: &Path) {
    cmd.envs(hyperloop_tests::scripted_log(log))
        .env("SCRIPTED_MODE", "normal")
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env("HOME", test_home(repo.dir.path()))
        .env_remove("HYPERLOOP_PATH")
        .env_remove("HYPERLOOP_TOKEN")
        .env_remove("HYPERLOOP_JOIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

fn coordinator(repo: &TestRepo, log: &Path, port: u16) -> Child {
    coordinator_cmd(repo, log, port)
        .spawn()
        .expect("coordinator starts")
}

fn coordinator_cmd(repo: &TestRepo, log: &Path, port: u16) -> Command {
    let mut cmd = Command::new(coordinator_bin());
    cmd.args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--local-workers", "0", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--join-token", TOKEN]);
    env(&mut cmd, repo, log);
    cmd
}

fn worker(repo: &TestRepo, log: &Path, port: u16, token: &str) -> Child {
    worker_cmd(repo, log, port, token)
        .spawn()
        .expect("worker starts")
}

fn worker_cmd(repo: &TestRepo, log: &Path, port: u16, token: &str) -> Command {
    let mut cmd = Command::new(worker_bin());
    cmd.args(["--join", &format!("http://127.0.0.1:{port}")])
        .args(["--token", token, "--capacity", "2", "--name", "remote-1"])
        .arg("--work-dir")
        .arg(repo.dir.path().join("worker"));
    env(&mut cmd, repo, log);
    cmd
}

/// Waits until something accepts connections on `port` (the coordinator is up).
fn await_listening(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < LISTEN_TIMEOUT,
            "the coordinator did not listen on {port} within {LISTEN_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit within `limit`, killing it (and failing) otherwise.
fn finish(mut child: Child, what: &str, limit: Duration) -> Output {
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} did not finish within {limit:?}; stderr:\n{}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Kills and reaps a child whose outcome no longer matters.
fn stop(mut child: Child) -> Output {
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

#[test]
fn a_joined_worker_runs_every_step_and_the_run_converges() {
    let repo = repo();
    let log = repo.dir.path().join("steps.log");
    let port = free_port();
    let coordinator = coordinator(&repo, &log, port);
    await_listening(port);
    let worker = worker(&repo, &log, port, TOKEN);

    let out = finish(coordinator, "coordinator", RUN_TIMEOUT);
    // The coordinator drains the worker when it halts, so the worker leaves by itself.
    let worker_out = finish(worker, "worker", REFUSAL_TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "coordinator stderr:\n{}\nworker stderr:\n{}",
        text(&out.stderr),
        text(&worker_out.stderr)
    );
    assert_eq!(
        worker_out.status.code(),
        Some(0),
        "worker stderr:\n{}",
        text(&worker_out.stderr)
    );

    let files = repo.files("main");
    for task in ["task-001", "task-002", "task-003"] {
        let file = format!("work/{task}.txt");
        assert!(files.contains(&file), "{file} missing from main: {files:?}");
        let landed = repo
            .log("main")
            .matches(&format!("Task-Ref: {task}\n"))
            .count();
        assert_eq!(landed, 1, "{task} should land exactly once");
    }
    // Every step ran on the joined worker (there is no other).
    let steps = std::fs::read_to_string(&log).unwrap();
    assert!(steps.contains("pm "), "{steps}");
    assert!(steps.contains("implementer task-003 0\n"), "{steps}");
    for output in [
        &out.stdout,
        &out.stderr,
        &worker_out.stdout,
        &worker_out.stderr,
    ] {
        assert!(!text(output).contains(TOKEN), "the join token leaked");
    }
}

#[test]
fn a_worker_with_a_wrong_token_is_refused_and_no_token_is_printed() {
    let repo = repo();
    let log = repo.dir.path().join("steps.log");
    let port = free_port();
    let coordinator = coordinator(&repo, &log, port);
    await_listening(port);
    let wrong = "wrong-token-K9";
    let refused = finish(
        worker(&repo, &log, port, wrong),
        "refused worker",
        REFUSAL_TIMEOUT,
    );
    let coordinator_out = stop(coordinator);

    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("join token"), "{stderr}");
    for output in [
        &refused.stdout,
        &refused.stderr,
        &coordinator_out.stdout,
        &coordinator_out.stderr,
    ] {
        let output = text(output);
        assert!(!output.contains(TOKEN), "the join token leaked:\n{output}");
        assert!(
            !output.contains(wrong),
            "the presented token leaked:\n{output}"
        );
    }
    // No agent ran: nothing joined.
    assert_eq!(
        std::fs::read_to_string(&log).unwrap_or_default(),
        "",
        "a refused worker must not run steps"
    );
}

#[test]
fn a_remote_agent_and_its_setsid_daemon_die_when_their_worker_is_killed_with_sigkill() {
    let repo = repo();
    let log = repo.dir.path().join("steps.log");
    let port = free_port();
    let coordinator = coordinator(&repo, &log, port);
    await_listening(port);
    let mut worker = worker_cmd(&repo, &log, port, TOKEN)
        .env("SCRIPTED_MODE", "daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while logged_pids(&log).len() < 2 && started.elapsed() < RUN_TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids = logged_pids(&log);
    assert!(
        pids.len() >= 2,
        "the agent and its daemon started: {pids:?}"
    );
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    for pid in &left {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    stop(coordinator);
    assert!(
        left.is_empty(),
        "still running after the worker died: {left:?}"
    );
}

#[test]
fn a_confined_remote_agent_can_neither_push_over_origins_main_nor_read_credentials_and_its_work_lands()
 {
    let repo = repo();
    std::fs::write(
        test_home(repo.dir.path()).join(".git-credentials"),
        "https://x-access-token:ghp_secret_for_tests@github.com\n",
    )
    .unwrap();
    let log = repo.dir.path().join("steps.log");
    let port = free_port();
    let coordinator = coordinator(&repo, &log, port);
    await_listening(port);
    let worker = worker_cmd(&repo, &log, port, TOKEN)
        .env("SCRIPTED_MODE", "attack")
        .spawn()
        .unwrap();
    let out = finish(coordinator, "coordinator", RUN_TIMEOUT);
    let worker_out = finish(worker, "worker", REFUSAL_TIMEOUT);
    let steps = std::fs::read_to_string(&log).unwrap();
    let attacks: Vec<&str> = steps.lines().filter(|l| l.starts_with("attack-")).collect();
    assert!(!attacks.is_empty(), "{steps}");
    assert!(
        attacks.iter().all(|l| l.starts_with("attack-refused")),
        "{attacks:#?}\nworker stderr:\n{}",
        text(&worker_out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let main = repo.log("main");
    assert!(main.contains("Task-Ref: task-003"), "{main}");
    assert!(!main.contains("history replaced by an agent"), "{main}");
}
