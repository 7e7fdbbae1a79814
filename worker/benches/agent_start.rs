//! P2, agent start: assignment received → agent process running in a fresh worktree, warm
//! mirror, 10,000-file repository (target p50 ≤ 1.5 s).
//!
//! The boundary is the call of `run_step` (what `serve` does right after it accepts an
//! Assign; everything before is a map insert and a channel send) up to the agent's first
//! action: the agent is a shell script whose first command writes `date +%s%N` to a file, so
//! the figure includes the shell's own start (~2 ms). The mirror is warmed by one step first.
//!
//! Same-run references, interleaved with the subject round by round so they see the same
//! noise: `git worktree add --detach` of the same commit from a bare clone (a full checkout
//! of the 10k files) and its `--no-checkout` variant, both with the git CLI.
//!
//! `cargo bench -p hyperloop-worker --bench agent_start`: up to 20 rounds (`AGENT_START_RUNS`),
//! stopping early once the rounds have taken `ROUNDS_BUDGET` (at least `MIN_RUNS` rounds), so
//! a machine whose file system is slow today still finishes in a couple of minutes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyperloop_proto::v1::{Assign, FailureCause, RuntimeKind, RuntimeSettings};
use hyperloop_worker::shim::Confinement;
use hyperloop_worker::{PushFence, StepContext, Workspace, run_step};

const DEFAULT_RUNS: usize = 20;
const MIN_RUNS: usize = 5;
const ROUNDS_BUDGET: Duration = Duration::from_secs(90);
const DIRS: usize = 100;
const FILES_PER_DIR: usize = 100;

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

/// A bare `origin.git` holding one commit of `DIRS × FILES_PER_DIR` files of ~300 bytes.
fn build_origin(root: &Path) {
    git(root, &["init", "-q", "--bare", "-b", "main", "origin.git"]);
    git(root, &["init", "-q", "-b", "main", "seed"]);
    let seed = root.join("seed");
    for d in 0..DIRS {
        let dir = seed.join(format!("mod{d:03}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..FILES_PER_DIR {
            let body = format!("// module {d} file {f}\n").repeat(12);
            std::fs::write(dir.join(format!("file{f:03}.rs")), body).unwrap();
        }
    }
    git(&seed, &["add", "."]);
    git(&seed, &["commit", "-q", "-m", "10k files"]);
    git(&seed, &["push", "-q", "../origin.git", "main"]);
    std::fs::remove_dir_all(&seed).unwrap();
}

struct Stats {
    min: Duration,
    p50: Duration,
    p99: Duration,
}

/// Nearest-rank percentiles (with 20 samples p99 is the maximum).
fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let rank = |p: f64| {
        let n = samples.len();
        let k = ((p * n as f64).ceil() as usize).clamp(1, n);
        samples[k - 1]
    };
    Stats {
        min: samples[0],
        p50: rank(0.50),
        p99: rank(0.99),
    }
}

fn timed_worktree_add(mirror: &Path, wt: &Path, no_checkout: bool) -> Duration {
    let mut args = vec!["worktree", "add", "-q", "--detach"];
    if no_checkout {
        args.push("--no-checkout");
    }
    args.extend([wt.to_str().unwrap(), "main"]);
    let t = Instant::now();
    git(mirror, &args);
    let took = t.elapsed();
    git(
        mirror,
        &[
            "worktree",
            "remove",
            "--force",
            "--force",
            wt.to_str().unwrap(),
        ],
    );
    took
}

fn main() {
    let runs = std::env::var("AGENT_START_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_RUNS);
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let t = Instant::now();
    build_origin(root);
    println!(
        "fixture: {} files in one commit, built in {:.2?}",
        DIRS * FILES_PER_DIR,
        t.elapsed()
    );

    git(
        root,
        &["clone", "-q", "--bare", "origin.git", "plain-mirror"],
    );
    let plain = root.join("plain-mirror");

    let agent = root.join("agent.sh");
    std::fs::write(
        &agent,
        "#!/bin/sh\ndate +%s%N > \"$1\"\nprintf -- '---\\ntask_id: %s\\nround: 1\\nrole: implementer\\nverdict: pass\\n---\\nok\\n' \"$HYPERLOOP_TASK_ID\" > \"$HYPERLOOP_RESULT_FILE\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    // In a directory of its own: the confined agent may write there and nowhere else outside
    // its step.
    let stamps = root.join("stamps");
    std::fs::create_dir(&stamps).unwrap();
    let stamp = stamps.join("started.ns");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let workspace = Arc::new(Workspace::new(root.join("work")));
    let origin_url = root.join("origin.git").to_string_lossy().into_owned();
    let step = |attempt: u64, confined: bool| -> (Duration, Duration) {
        let assign = Assign {
            attempt_id: attempt,
            task_id: "task-001".into(),
            role: "implementer".into(),
            round: 1,
            repo_url: origin_url.clone(),
            base_branch: "main".into(),
            branch: "hyperloop/task-001".into(),
            runtime: Some(RuntimeSettings {
                kind: RuntimeKind::Command.into(),
                command: vec![
                    agent.to_string_lossy().into_owned(),
                    stamp.to_string_lossy().into_owned(),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut ctx = StepContext::new(workspace.clone(), PushFence::unfenced());
        if confined {
            ctx.confinement = Confinement {
                shim: Some(PathBuf::from(env!("CARGO_BIN_EXE_hyperloop-worker"))),
                landlock: true,
                writable: vec![stamps.clone()],
            };
        }
        let _ = std::fs::remove_file(&stamp);
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let t = Instant::now();
        let report = rt.block_on(run_step(&assign, &ctx));
        let whole = t.elapsed();
        assert_eq!(
            report.failure_cause,
            FailureCause::Unspecified,
            "{}",
            report.detail
        );
        let ns: u64 = std::fs::read_to_string(&stamp)
            .expect("the agent wrote its start time")
            .trim()
            .parse()
            .unwrap();
        let started = Duration::from_nanos(ns)
            .checked_sub(since_epoch)
            .unwrap_or_default();
        (started, whole)
    };

    // Warm the mirror (first clone) and the page cache.
    let (first, _) = step(1, false);
    println!("cold start (mirror clone + checkout): {first:.2?}");
    timed_worktree_add(&plain, &root.join("ref-warm"), false);

    let (mut full, mut bare, mut start, mut whole) = (vec![], vec![], vec![], vec![]);
    let (mut start_shim, mut whole_shim) = (vec![], vec![]);
    let rounds = Instant::now();
    for i in 0..runs {
        if i >= MIN_RUNS && rounds.elapsed() > ROUNDS_BUDGET {
            break;
        }
        full.push(timed_worktree_add(
            &plain,
            &root.join(format!("ref-full-{i}")),
            false,
        ));
        bare.push(timed_worktree_add(
            &plain,
            &root.join(format!("ref-bare-{i}")),
            true,
        ));
        let (s, w) = step(2 * i as u64 + 2, false);
        start.push(s);
        whole.push(w);
        let (s, w) = step(2 * i as u64 + 3, true);
        start_shim.push(s);
        whole_shim.push(w);
    }

    let done = start.len();
    let full = stats(full);
    let rows = [
        ("reference: git worktree add (full checkout)", &full),
        ("reference: git worktree add --no-checkout", &stats(bare)),
        ("run_step → agent running (P2 subject)", &stats(start)),
        ("run_step whole (incl. agent, cleanup)", &stats(whole)),
        (
            "the same, agent confined under the shim",
            &stats(start_shim),
        ),
        (
            "run_step whole, confined under the shim",
            &stats(whole_shim),
        ),
    ];
    println!();
    println!(
        "{done} rounds, {} files, warm mirror; p99 is nearest-rank",
        DIRS * FILES_PER_DIR
    );
    println!(
        "| {:<46} | {:>9} | {:>9} | {:>9} | {:>17} |",
        "what", "min", "p50", "p99", "p50 ÷ full add"
    );
    println!(
        "|{:-<48}|{:-<11}|{:-<11}|{:-<11}|{:-<19}|",
        "", "", "", "", ""
    );
    for (name, s) in rows {
        println!(
            "| {:<46} | {:>9.1?} | {:>9.1?} | {:>9.1?} | {:>16.2}x |",
            name,
            s.min,
            s.p50,
            s.p99,
            s.p50.as_secs_f64() / full.p50.as_secs_f64()
        );
    }
    println!();
    println!("bench wall time: {:.1?}", total.elapsed());
}
