//! Two repositories on one host, each with its own coordinator on the default address: both
//! run, `hyperloopctl` inside each reaches that repository's coordinator without `--server`,
//! and a coordinator refuses a `hyperloopctl` that stands in the other repository.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use hyperloop_tests::repo::{TestRepo, coordinator_bin, logged_command, scripted_agent};

const WAIT: Duration = Duration::from_secs(60);

fn repo(spec: &str) -> TestRepo {
    let config = format!(
        "max_workers: 1\npoll_interval: 1s\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n",
        scripted_agent().display()
    );
    TestRepo::new(&[
        (".hyperloop.yaml", &config),
        (spec, "# Spec\n\nThe repository records work for it.\n"),
    ])
}

/// `watch` on `repo` with no `--listen`: the default address, or any loopback port when
/// the other repository's coordinator holds it.
fn watch(repo: &TestRepo) -> Child {
    let log = repo.dir.path().join("coordinator.log");
    let mut cmd = logged_command(&coordinator_bin(), repo.dir.path(), &log);
    cmd.args(["watch", "--path"])
        .arg(&repo.checkout)
        .env_remove("HYPERLOOP_LISTEN");
    cmd.spawn().expect("coordinator starts")
}

fn endpoint_file(repo: &TestRepo) -> PathBuf {
    repo.checkout.join(".git/hyperloop/endpoint.json")
}

fn log(repo: &TestRepo) -> String {
    std::fs::read_to_string(repo.dir.path().join("coordinator.log")).unwrap_or_default()
}

fn ctl(dir: &Path, args: &[&str]) -> Output {
    let ctl = coordinator_bin().with_file_name("hyperloopctl");
    Command::new(ctl)
        .args(args)
        .current_dir(dir)
        .env_remove("HYPERLOOP_SERVER")
        .env_remove("HYPERLOOP_PATH")
        .env_remove("HYPERLOOP_ADMIN_TOKEN")
        .env_remove("HYPERLOOP_OUTPUT")
        .output()
        .expect("hyperloopctl runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn wait_until(what: &str, repo: &TestRepo, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < WAIT,
            "timed out waiting for {what}:\n{}",
            log(repo)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills the coordinators however the test ends.
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn two_repositories_on_one_host_each_reach_their_own_coordinator_without_server_and_not_the_other()
{
    let a = repo("specs/alpha.md");
    let b = repo("specs/beta.md");
    let mut running = Running(vec![watch(&a)]);
    wait_until("a's endpoint record", &a, || endpoint_file(&a).exists());
    running.0.push(watch(&b));
    wait_until("b's endpoint record", &b, || endpoint_file(&b).exists());
    let url = |repo: &TestRepo| -> String {
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(endpoint_file(repo)).unwrap()).unwrap();
        record["url"].as_str().unwrap().to_owned()
    };
    let (url_a, url_b) = (url(&a), url(&b));
    assert_ne!(url_a, url_b);
    // Whichever came second found the default address taken and said where it went instead.
    let moved = format!("{}{}", log(&a), log(&b));
    assert!(
        moved.contains("is in use (perhaps by the coordinator of another repository)"),
        "{moved}"
    );

    // `get workers` needs a live coordinator: inside each checkout it finds its own, and
    // each coordinator works on its own repository's spec.
    for (repo, spec) in [(&a, "specs/alpha.md"), (&b, "specs/beta.md")] {
        let workers = ctl(&repo.checkout, &["get", "workers"]);
        assert_eq!(workers.status.code(), Some(0), "{}", text(&workers));
        wait_until("the spec's tasks", repo, || {
            text(&ctl(&repo.checkout, &["get", "tasks", "-o", "json"])).contains(spec)
        });
        let specs = text(&ctl(&repo.checkout.join("specs"), &["get", "specs"]));
        assert!(specs.contains(spec), "{specs}");
    }

    // Standing in a, pointed at b's coordinator: refused, naming both repositories.
    let crossed = ctl(&a.checkout, &["--server", &url_b, "get", "tasks"]);
    assert_eq!(crossed.status.code(), Some(2), "{}", text(&crossed));
    let message = text(&crossed);
    assert!(
        message.contains("this coordinator serves the repository")
            && message.contains(&b.checkout.join(".git").display().to_string())
            && message.contains(&a.checkout.join(".git").display().to_string()),
        "{message}"
    );
    // Outside any repository, the address alone decides.
    let outside = tempfile::tempdir().unwrap();
    let direct = ctl(outside.path(), &["--server", &url_b, "get", "workers"]);
    assert_eq!(direct.status.code(), Some(0), "{}", text(&direct));

    // a stops cleanly: its record goes, and a live command says none is running.
    let pid_a = running.0[0].id();
    nix_kill(pid_a, "TERM");
    let _ = running.0[0].wait();
    assert!(!endpoint_file(&a).exists(), "{}", log(&a));
    let none = ctl(&a.checkout, &["get", "workers"]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
    assert!(text(&none).contains("none is running for this repository"));
    // b is killed outright: its record stays but names a dead process, so reads fall back to
    // the embedded state instead of failing on a dead address.
    let _ = running.0[1].kill();
    let _ = running.0[1].wait();
    assert!(endpoint_file(&b).exists());
    let tasks = ctl(&b.checkout, &["get", "tasks"]);
    assert_eq!(tasks.status.code(), Some(0), "{}", text(&tasks));
    assert!(text(&tasks).contains("task-001"), "{}", text(&tasks));
}

fn nix_kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
