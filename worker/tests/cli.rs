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

#[test]
fn valid_flags_exit_2_saying_remote_join_is_not_in_this_build() {
    let out = worker()
        .args([
            "--join",
            "http://127.0.0.1:7070,http://10.0.0.2:7070",
            "--capacity",
            "4",
            "--labels",
            "os=linux,gpu=a100",
            "--name",
            "builder-1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("not available in this build"), "{err}");
    assert!(err.contains("--local-workers"), "{err}");
}

#[test]
fn join_comes_from_the_environment_too() {
    let out = worker()
        .env("HYPERLOOP_JOIN", "https://coord:7070")
        .env("HYPERLOOP_NAME", "w")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("https://coord:7070"),
        "{}",
        stderr(&out)
    );
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
    ] {
        let out = worker().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}
