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
