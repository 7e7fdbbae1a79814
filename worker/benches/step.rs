//! Worker overhead per step: what hyperloop adds around an agent that does nothing.
//!
//! Reports, from one run: spawning `true` (the floor for any process), `git worktree add
//! --no-checkout` on a bare mirror (the P2 anchor), and a full `run_step` with a no-op agent
//! that only writes its result file (fetch, worktree, agent, result, cleanup).
//! `cargo bench -p hyperloop-worker --bench step`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperloop_proto::v1::{Assign, RuntimeKind, RuntimeSettings};
use hyperloop_worker::{PushFence, StepContext, Workspace, run_step};

const RUNS: usize = 40;

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.name=b", "-c", "user.email=b@example.invalid"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git")
        .success();
    assert!(ok, "git {args:?}");
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q", "--bare", "-b", "main", "origin.git"]);
    git(root, &["init", "-q", "-b", "main", "seed"]);
    let seed = root.join("seed");
    for i in 0..200 {
        std::fs::write(seed.join(format!("f{i}.txt")), format!("{i}\n")).unwrap();
    }
    git(&seed, &["add", "."]);
    git(&seed, &["commit", "-q", "-m", "seed"]);
    git(&seed, &["push", "-q", "../origin.git", "main"]);

    let spawn: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            Command::new("true").status().unwrap();
            t.elapsed()
        })
        .collect();

    git(
        root,
        &["clone", "-q", "--bare", "origin.git", "plain-mirror"],
    );
    let mirror = root.join("plain-mirror");
    let add: Vec<Duration> = (0..RUNS)
        .map(|i| {
            let wt = root.join(format!("wt-{i}"));
            let t = Instant::now();
            git(
                &mirror,
                &[
                    "worktree",
                    "add",
                    "-q",
                    "--no-checkout",
                    "--detach",
                    wt.to_str().unwrap(),
                    "main",
                ],
            );
            let took = t.elapsed();
            std::fs::remove_dir_all(&wt).unwrap();
            took
        })
        .collect();

    let agent = root.join("agent.sh");
    std::fs::write(
        &agent,
        "#!/bin/sh\nprintf -- '---\\ntask_id: %s\\nround: 1\\nrole: implementer\\nverdict: pass\\n---\\nok\\n' \"$HYPERLOOP_TASK_ID\" > \"$HYPERLOOP_RESULT_FILE\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let workspace = Arc::new(Workspace::new(root.join("work")));
    let steps: Vec<Duration> = (1..=RUNS as u64)
        .map(|attempt| {
            let assign = Assign {
                attempt_id: attempt,
                task_id: "task-001".into(),
                role: "implementer".into(),
                round: 1,
                repo_url: root.join("origin.git").to_string_lossy().into_owned(),
                base_branch: "main".into(),
                branch: "hyperloop/task-001".into(),
                runtime: Some(RuntimeSettings {
                    kind: RuntimeKind::Command.into(),
                    command: vec![agent.to_string_lossy().into_owned()],
                    ..Default::default()
                }),
                ..Default::default()
            };
            let ctx = StepContext::new(workspace.clone(), PushFence::unfenced());
            let t = Instant::now();
            let report = rt.block_on(run_step(&assign, &ctx));
            assert_eq!(
                report.failure_cause,
                0.try_into().unwrap(),
                "{}",
                report.detail
            );
            t.elapsed()
        })
        .collect();

    let (spawn, add, steps) = (median(spawn), median(add), median(steps));
    println!("reference: spawn `true`                      p50 {spawn:>10.2?}");
    println!("reference: git worktree add --no-checkout    p50 {add:>10.2?}");
    println!(
        "run_step with a no-op agent (200-file repo)  p50 {steps:>10.2?}  = {:.1}x worktree add, {:.0}x spawn",
        steps.as_secs_f64() / add.as_secs_f64(),
        steps.as_secs_f64() / spawn.as_secs_f64()
    );
}
