//! Every gap stays open until it is closed, and a failing spec is bounded: the real
//! `hyperloop-coordinator` binary with in-process workers, real git repositories and the
//! scripted `command` agent (fixtures/agents/scripted-agent.sh), at the scale of real projects.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyperloop_tests::repo::{
    TestRepo, assert_no_completed_step_repeated, coordinator_bin, git, scripted_agent, test_home,
};
use serde_json::Value;

/// Bounds a whole coordinator run: a hung run fails the test instead of CI.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Only what the scripted agent needs, and a journal long enough to check every event; every
/// limit (max_cycles, max_spec_failures, max_specs_per_intake, max_task_rounds) keeps its
/// default.
fn config(workers: u32, extra: &str) -> String {
    format!(
        "{extra}max_workers: {workers}\npoll_interval: 1s\ndashboard:\n  events_limit: 100000\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 60s\n\
         \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_MODE, SCRIPTED_DELAY, SCRIPTED_PM_CAP, \
         SCRIPTED_FAIL_SPEC, SCRIPTED_RETRY_ALL]\n",
        scripted_agent().display()
    )
}

fn spec_name(i: usize) -> String {
    format!("specs/s{i:03}.md")
}

fn many_specs(n: usize, workers: u32, extra: &str) -> TestRepo {
    let texts: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                spec_name(i),
                format!("# S{i:03}\n\nRecord work for S{i:03}.\n"),
            )
        })
        .collect();
    let mut files: Vec<(&str, &str)> = texts
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let config = config(workers, extra);
    files.push((".hyperloop.yaml", &config));
    TestRepo::new(&files)
}

/// How a run ended: its exit code and what it printed on stderr.
struct Ended {
    code: Option<i32>,
    stderr: String,
}

fn run(repo: &TestRepo, log: &Path, env: &[(&str, &str)]) -> Ended {
    // Logs go to a file: a run this long would fill a pipe nobody reads until the end.
    let stderr_file = repo.dir.path().join("coordinator.stderr");
    let mut cmd = Command::new(coordinator_bin());
    cmd.args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", "127.0.0.1:0"])
        .envs(hyperloop_tests::scripted_log(log))
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env("HOME", test_home(repo.dir.path()))
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_file).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("coordinator starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "coordinator did not finish within {RUN_TIMEOUT:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ended {
        code: status.code(),
        stderr: std::fs::read_to_string(&stderr_file).unwrap_or_default(),
    }
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// Every spec has exactly one landed commit naming it, and main is pushed.
fn assert_every_spec_landed_once(repo: &TestRepo, n: usize) {
    let log = repo.log("main");
    for i in 0..n {
        let spec = spec_name(i);
        let landed = log.matches(&format!("Spec-Ref: {spec}@")).count();
        assert_eq!(landed, 1, "{spec} should land exactly once");
    }
    let local = git(&repo.checkout, &["rev-parse", "main"]);
    let pushed = git(&repo.origin, &["rev-parse", "main"]);
    assert_eq!(local, pushed, "main is pushed to origin");
}

#[test]
fn a_pm_capped_at_100_proposals_per_session_still_gets_all_120_specs_implemented() {
    let repo = many_specs(120, 4, "");
    let log = repo.dir.path().join("steps.log");
    let out = run(&repo, &log, &[("SCRIPTED_PM_CAP", "100")]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_every_spec_landed_once(&repo, 120);

    let events = repo.events();
    let intakes = named(&events, "intake_run");
    // Split across sessions of at most max_specs_per_intake (25) specs each.
    assert!(intakes.len() >= 5, "{} intake sessions", intakes.len());
    for intake in &intakes {
        let asked = intake["changed_specs"].as_array().unwrap().len();
        assert!(asked <= 25, "one session was asked about {asked} specs");
    }
    let asked: BTreeSet<&str> = intakes
        .iter()
        .flat_map(|i| i["changed_specs"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(asked.len(), 120, "every spec went through intake");
    assert_eq!(named(&events, "task_completed").len(), 120);
}

#[test]
fn a_spec_that_never_passes_is_given_up_after_three_failed_tasks_and_run_exits_4_naming_it() {
    // Two rounds per task keep the test short; the bound is on tasks, whatever their rounds.
    let repo = many_specs(2, 2, "max_task_rounds: 2\n");
    let log = repo.dir.path().join("steps.log");
    let bad = spec_name(1);
    let env = [
        ("SCRIPTED_MODE", "redo"),
        ("SCRIPTED_FAIL_SPEC", bad.as_str()),
    ];
    let out = run(&repo, &log, &env);
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("{bad}: {bad} failed 3 time(s)")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("hyperloopctl retry spec {bad}")),
        "{stderr}"
    );

    // The good spec landed; the bad one cost exactly max_spec_failures (3) tasks.
    let main = repo.log("main");
    assert_eq!(
        main.matches(&format!("Spec-Ref: {}@", spec_name(0)))
            .count(),
        1
    );
    assert_eq!(main.matches(&format!("Spec-Ref: {bad}@")).count(), 0);
    let events = repo.events();
    let bad_tasks: Vec<&Value> = named(&events, "task_created")
        .into_iter()
        .filter(|e| {
            e["spec_ref"]
                .as_str()
                .is_some_and(|r| r.starts_with(&format!("{bad}@")))
        })
        .collect();
    assert_eq!(bad_tasks.len(), 3, "{bad_tasks:?}");
    let given_up = named(&events, "spec_failed");
    assert_eq!(given_up.len(), 1, "{given_up:?}");
    assert_eq!(given_up[0]["path"], bad.as_str());
    let halted = named(&events, "coordinator_halted");
    assert_eq!(halted.last().unwrap()["exit_code"], 4);

    // It costs nothing more: a second run starts no agent and stops the same way.
    std::fs::write(&log, "").unwrap();
    let again = run(&repo, &log, &env);
    assert_eq!(again.code, Some(4), "{}", again.stderr);
    let steps = std::fs::read_to_string(&log).unwrap();
    assert_eq!(steps, "", "a given-up spec starts no agent session");

    // Changing the spec reconciles it again; this time its work passes.
    git(
        &repo.checkout,
        &["pull", "-q", "--ff-only", "origin", "main"],
    );
    repo.commit(
        &[(bad.as_str(), "# S001\n\nRecord work, simpler.\n")],
        "Simplify S001",
    );
    let fixed = run(&repo, &log, &[("SCRIPTED_MODE", "redo")]);
    assert_eq!(fixed.code, Some(0), "{}", fixed.stderr);
    assert_eq!(
        repo.log("main")
            .matches(&format!("Spec-Ref: {bad}@"))
            .count(),
        1
    );
}

#[test]
fn two_hundred_specs_with_one_retry_per_task_converge_in_one_run_with_default_limits() {
    let repo = many_specs(200, 4, "");
    let log = repo.dir.path().join("steps.log");
    let started = Instant::now();
    let out = run(&repo, &log, &[("SCRIPTED_RETRY_ALL", "1")]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    eprintln!("200 specs converged in {:?}", started.elapsed());
    assert_every_spec_landed_once(&repo, 200);
    let events = repo.events();
    let loops = named(&events, "task_looped_back");
    if loops.len() != 200 {
        // Which tasks looped more than once, and everything journaled about them: the
        // reason for an extra round is in their results.
        let mut per_task: std::collections::BTreeMap<&str, u32> = Default::default();
        for e in &loops {
            *per_task
                .entry(e["task"].as_str().unwrap_or("?"))
                .or_default() += 1;
        }
        let twice: Vec<&str> = per_task
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(t, _)| *t)
            .collect();
        let history: Vec<String> = events
            .iter()
            .filter(|e| twice.contains(&e["task"].as_str().unwrap_or("")))
            .map(Value::to_string)
            .collect();
        panic!(
            "{} loop-backs, one retry each expected; looped more than once: {twice:?}\n{}",
            loops.len(),
            history.join("\n")
        );
    }
    assert_eq!(named(&events, "task_completed").len(), 200);
}

/// Kills the coordinator with SIGKILL `kills` times at varied moments, every other time while
/// a landing is being pushed (origin's pre-receive hook holds the push open and leaves a
/// marker while it does), then lets it finish. Returns how many kills hit a landing.
fn kill_campaign(repo: &TestRepo, log: &Path, kills: u32) -> u32 {
    let marker = repo.dir.path().join("landing-in-progress");
    let hook = repo.origin.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ntouch '{m}'\nsleep 0.4\nrm -f '{m}'\ncat >/dev/null\n",
            m = marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut during_landing = 0;
    // A fixed sequence of varied delays (a linear congruential generator): the same moments
    // on every run of the test, spread over the first ~1.5 s of a start.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..kills {
        let mut cmd = Command::new(coordinator_bin());
        cmd.args(["run", "--path"])
            .arg(&repo.checkout)
            .args(["--listen", "127.0.0.1:0"])
            .envs(hyperloop_tests::scripted_log(log))
            .env("SCRIPTED_DELAY", "0.5")
            .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
            .env("HOME", test_home(repo.dir.path()))
            .env_remove("HYPERLOOP_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        if i % 2 == 1 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !marker.exists() && Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            std::thread::sleep(Duration::from_millis(50 + (seed >> 33) % 1500));
        }
        if child.try_wait().unwrap().is_some() {
            panic!("the run finished after {i} kills; the campaign needs more work to interrupt");
        }
        if marker.exists() {
            during_landing += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // A push the kill interrupted finishes on its own: wait so the next start sees it.
        while marker.exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    during_landing
}

#[test]
fn twenty_four_kill_9s_at_random_moments_and_during_landings_lose_nothing_and_repeat_nothing() {
    // Enough work that 24 interruptions cannot finish it.
    let repo = many_specs(40, 2, "");
    let log = repo.dir.path().join("steps.log");
    let during_landing = kill_campaign(&repo, &log, 24);
    assert!(
        during_landing >= 5,
        "only {during_landing} kills hit a landing"
    );
    let out = run(&repo, &log, &[("SCRIPTED_DELAY", "0.3")]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_every_spec_landed_once(&repo, 40);

    let events = repo.events();
    assert_no_completed_step_repeated(&events);
    let merged: Vec<String> = named(&events, "merged")
        .iter()
        .map(|e| e["task"].to_string())
        .collect();
    let unique: BTreeSet<&String> = merged.iter().collect();
    assert_eq!(
        unique.len(),
        merged.len(),
        "a task merged twice: {merged:?}"
    );
    assert_eq!(merged.len(), 40, "one merge per task");
}
