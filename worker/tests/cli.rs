//! The `hyperloop-worker` binary: flag validation and exit codes.

use assert_cmd::Command;

fn worker() -> Command {
    let mut cmd = Command::cargo_bin("hyperloop-worker").unwrap();
    cmd.env_remove("HYPERLOOP_JOIN")
        .env_remove("HYPERLOOP_TOKEN");
    cmd
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A loopback URL nothing listens on (the port was free a moment ago).
fn unreachable_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

#[test]
fn an_unreachable_coordinator_exits_1_naming_every_url() {
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (unreachable_url(), unreachable_url());
    let out = worker()
        .args(["--join", &format!("{a},{b}")])
        .args(["--capacity", "4", "--labels", "os=linux,gpu=a100"])
        .args([
            "--name",
            "builder-1",
            "--connect-timeout",
            "1s",
            "--work-dir",
        ])
        .arg(work.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot reach a coordinator"), "{err}");
    assert!(err.contains(&a) && err.contains(&b), "{err}");
}

#[test]
fn join_comes_from_the_environment_too() {
    let work = tempfile::tempdir().unwrap();
    let url = unreachable_url();
    let out = worker()
        .env("HYPERLOOP_JOIN", &url)
        .env("HYPERLOOP_NAME", "w")
        .env("HYPERLOOP_WORK_DIR", work.path())
        .env("HYPERLOOP_CONNECT_TIMEOUT", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    for (args, needle) in [
        (vec!["--join", "coord:7070", "--name", "w"], "--join"),
        (
            vec!["--join", "http://c:1", "--capacity", "0", "--name", "w"],
            "--capacity",
        ),
        (
            vec!["--join", "http://c:1", "--labels", "gpu", "--name", "w"],
            "--labels",
        ),
        (vec!["--capacity", "2"], "--join"),
        (vec!["--join", "https://c:1", "--name", "w"], "--tls-ca"),
        (
            vec![
                "--join",
                "https://c:1",
                "--name",
                "w",
                "--tls-cert",
                "/dev/null",
            ],
            "--tls-key",
        ),
        (
            vec![
                "--join",
                "http://c:1",
                "--name",
                "w",
                "--connect-timeout",
                "soon",
            ],
            "--connect-timeout",
        ),
    ] {
        let out = worker().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn the_worker_logs_console_lines_and_with_log_format_json_flat_objects_like_the_coordinator() {
    let work = tempfile::tempdir().unwrap();
    let run = |format: &str| {
        let out = worker()
            .args(["--join", &unreachable_url(), "--connect-timeout", "1s"])
            .args(["--log-format", format, "--work-dir"])
            .arg(work.path())
            .env_remove("HYPERLOOP_LOG_FORMAT")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        stderr(&out)
    };
    let console = run("console");
    let retry = console
        .lines()
        .find(|l| l.contains("cannot connect; retrying with backoff"))
        .unwrap_or_else(|| panic!("{console}"));
    // `2026-04-15T14:23:01Z [warning  ] event key=value`, no colour in a pipe.
    assert!(retry.contains("Z [warning  ] "), "{retry}");
    assert!(retry.contains(" coordinator=http://127.0.0.1:"), "{retry}");
    assert!(!console.contains('\x1b'), "{console}");
    let json = run("json");
    let object: serde_json::Value = json
        .lines()
        .find(|l| l.starts_with('{') && l.contains("retrying"))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(object["level"], "warning");
    assert_eq!(object["event"], "cannot connect; retrying with backoff");
    assert!(object["coordinator"].is_string(), "{object}");
    let bad = worker()
        .args(["--join", &unreachable_url(), "--log-format", "yaml"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("--log-format"), "{}", stderr(&bad));
}
