//! Output a person can follow: the summary `run` ends with, and log lines free of Rust
//! `Debug` dumps and colour codes when stderr is a pipe.

use std::process::{Command, Stdio};

use hyperloop_tests::repo::{TestRepo, coordinator_bin, test_home};

const LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

fn repo() -> TestRepo {
    repo_with("")
}

/// A one-spec repository whose scripted agent gets `agent_extra` (indented agent keys).
fn repo_with(agent_extra: &str) -> TestRepo {
    let config = format!(
        "max_workers: 1\npoll_interval: 1s\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n{agent_extra}",
        hyperloop_tests::repo::scripted_agent().display()
    );
    TestRepo::new(&[
        (".hyperloop.yaml", &config),
        ("specs/a.md", "# A\n\nThe repository records work for A.\n"),
    ])
}

/// `run` on `repo` with stderr piped (not a terminal), to its end.
fn run(repo: &TestRepo, env: &[(&str, &str)]) -> (Option<i32>, String) {
    run_with(repo, env, &[])
}

fn run_with(repo: &TestRepo, env: &[(&str, &str)], flags: &[&str]) -> (Option<i32>, String) {
    let child = Command::new(coordinator_bin())
        .args(["run"])
        .args(flags)
        .arg("--path")
        .arg(&repo.checkout)
        .args(["--listen", "127.0.0.1:0"])
        .env("HOME", test_home(repo.dir.path()))
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env_remove("HYPERLOOP_PATH")
        .env_remove("HYPERLOOP_OBSERVABILITY_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator starts");
    hyperloop_tests::wait_with_limit(child, LIMIT)
}

#[test]
fn a_run_with_stderr_piped_ends_with_the_summary_of_tasks_rounds_and_time() {
    let repo = repo();
    let (code, stderr) = run(&repo, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let tasks = lines
        .iter()
        .position(|l| l.starts_with("       Tasks "))
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    // The scripted pm proposes two tasks for the spec; both land.
    assert!(
        lines[tasks].ends_with("2 total: 0 queued, 0 in progress, 2 complete, 0 failed"),
        "{stderr}"
    );
    assert!(lines[tasks + 1].starts_with("      Rounds "), "{stderr}");
    assert!(lines[tasks + 2].starts_with("        Time "), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("converged: 2 task(s) complete, 0 failed"),
        "{stderr}"
    );
}

#[test]
fn a_piped_console_log_has_flat_key_value_lines_without_debug_dumps_or_ansi_escapes() {
    let repo = repo();
    let (code, stderr) = run(&repo, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a pipe:\n{stderr}"
    );
    // A Rust Debug dump looks like `Name { field: ... }`.
    for line in stderr.lines() {
        assert!(
            !line.contains(" { ") && !line.contains("details="),
            "a Debug dump: {line}"
        );
    }
    let reaped = stderr
        .lines()
        .find(|l| l.contains("] result_reaped "))
        .unwrap_or_else(|| panic!("no result_reaped line:\n{stderr}"));
    assert!(
        reaped.contains(" [info     ] ")
            && reaped.contains(" task_id=task-001")
            && reaped.contains(" verdict=pass")
            && reaped.contains(" duration_s="),
        "{reaped}"
    );
}

#[test]
fn json_logs_chosen_with_log_format_are_flat_objects_with_event_task_id_role_verdict_and_duration_s()
 {
    let repo = repo();
    let (code, stderr) = run_with(&repo, &[], &["--log-format", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let objects: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!objects.is_empty(), "{stderr}");
    for o in &objects {
        let o = o.as_object().expect("an object");
        assert!(o.contains_key("timestamp") && o.contains_key("level") && o.contains_key("event"));
        assert!(o.values().all(|v| !v.is_object()), "nested: {o:?}");
    }
    let reaped = objects
        .iter()
        .find(|o| o["event"] == "result_reaped" && o["role"] == "implementer")
        .unwrap_or_else(|| panic!("no result_reaped:\n{stderr}"));
    assert_eq!(reaped["task_id"], "task-001");
    assert_eq!(reaped["verdict"], "pass");
    assert!(reaped["duration_s"].is_f64(), "{reaped}");
    // No progress text is mixed into a machine's log stream.
    assert!(!stderr.contains("      Rounds "), "{stderr}");
}

/// A coordinator of `repo` on a free port with `env`; returns it and its URL.
fn serve(repo: &TestRepo, env: &[(&str, &str)]) -> (std::process::Child, String) {
    let port = hyperloop_tests::free_port();
    let child = Command::new(coordinator_bin())
        .args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("HOME", test_home(repo.dir.path()))
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env_remove("HYPERLOOP_PATH")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coordinator starts");
    (child, format!("http://127.0.0.1:{port}"))
}

/// `hyperloopctl logs task-001 -f`, started once the coordinator answers; waited for up to
/// `limit`. Returns its exit code, stdout and stderr.
fn follow_task_001(
    repo: &TestRepo,
    server: &str,
    limit: std::time::Duration,
) -> (Option<i32>, String, String) {
    let started = std::time::Instant::now();
    loop {
        let child = Command::new(coordinator_bin().with_file_name("hyperloopctl"))
            .args(["--server", server, "logs", "task-001", "-f"])
            .current_dir(&repo.checkout)
            .env_remove("HYPERLOOP_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hyperloopctl runs");
        let out = wait_output(child, limit);
        // Not listening or not leading yet: try again.
        let retry_for = std::time::Duration::from_secs(20);
        let not_yet = out.2.contains("cannot reach") || out.2.contains("no coordinator leads");
        if out.0 == Some(1) && not_yet && started.elapsed() < retry_for {
            std::thread::sleep(std::time::Duration::from_millis(200));
            continue;
        }
        return out;
    }
}

fn wait_output(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> (Option<i32>, String, String) {
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() && started.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hyperloopctl_logs_f_exits_0_when_the_followed_step_ends() {
    let repo = repo();
    let (mut coordinator, server) = serve(&repo, &[("SCRIPTED_DELAY", "2")]);
    let (code, stdout, stderr) = follow_task_001(&repo, &server, LIMIT);
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.trim_end().ends_with("finished"), "{stdout}");
    assert!(stderr.contains("the step ended"), "{stderr}");
}

#[test]
fn hyperloopctl_logs_f_exits_1_saying_so_when_the_coordinator_goes_away() {
    // The implementer works long enough for the coordinator to be killed under the follower.
    let repo = repo_with("  env_passthrough: [SCRIPTED_DELAY]\n");
    let (mut coordinator, server) = serve(&repo, &[("SCRIPTED_DELAY", "25")]);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(6));
        let _ = coordinator.kill();
        let _ = coordinator.wait();
    });
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = follow_task_001(&repo, &server, LIMIT);
    killer.join().expect("killer");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{stderr}"
    );
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains(&server), "{stderr}");
    assert!(
        stderr.contains("lost the coordinator") || stderr.contains("stopped before the step"),
        "{stderr}"
    );
}
