//! P8 and P9 for the real `hyperloop-worker` binary joined to an in-process fake coordinator
//! (a real tonic server on loopback, the one in `tests/common/coordinator.rs`).
//!
//! P8, idle footprint (target ≤ 20 MB RSS, ~0 % CPU): once registered (heartbeat every 1 s,
//! as the coordinator sets it), VmRSS and utime+stime of the worker over `IDLE` of idleness.
//! Same-run reference: `sleep`, the smallest process there is, sampled the same way.
//!
//! P9, cancel latency at the worker (target ≤ 1 s): Cancel sent by the coordinator → the
//! agent's SIGINT trap runs (`date +%s%N` into a file), over `RUNS` steps. Same-run
//! reference, interleaved: `killpg(SIGINT)` of the same script started directly, to the same
//! trap — what the signal path alone costs here.
//!
//! `cargo bench -p hyperloop-worker --bench remote_worker`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::coordinator::{Answer, FakeCoordinator, TOKEN};
use common::{Fixture, wait_for_file};
use hyperloop_proto::v1::{self, coordinator_message::Body as Tell, worker_message::Body};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

const IDLE: Duration = Duration::from_secs(10);
const RUNS: usize = 20;
const WAIT: Duration = Duration::from_secs(15);

/// (VmRSS in KiB, utime+stime in clock ticks) of a process.
fn sample(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based).
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, ticks)
}

fn clock_ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// Peak RSS (MB) and CPU (% of one core) of `pid` over `IDLE`.
fn idle_footprint(pid: u32, hz: f64) -> (f64, f64) {
    let (rss0, ticks0) = sample(pid);
    let mut peak = rss0;
    let started = Instant::now();
    while started.elapsed() < IDLE {
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(sample(pid).0);
    }
    let (_, ticks1) = sample(pid);
    let cpu = (ticks1 - ticks0) as f64 / hz / started.elapsed().as_secs_f64() * 100.0;
    (peak as f64 / 1024.0, cpu)
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Waits for the trap's timestamp and returns the time from `sent` to it.
async fn trapped_after(mark: &Path, sent: u128) -> Duration {
    assert!(wait_for_file(mark, WAIT).await, "SIGINT trap ran");
    loop {
        let text = std::fs::read_to_string(mark).unwrap();
        if text.ends_with('\n') {
            let at: u128 = text.trim().parse().unwrap();
            return Duration::from_nanos(u64::try_from(at.saturating_sub(sent)).unwrap());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn trap_script(fx: &Fixture, name: &str, mark: &Path, started: &Path) -> std::path::PathBuf {
    fx.script(
        name,
        &format!(
            "trap 'date +%s%N > \"{}\"; exit 130' INT\ntouch '{}'\nwhile :; do sleep 0.05; done\n",
            mark.display(),
            started.display()
        ),
    )
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let k = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[k - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let fx = Fixture::new();
    let hz = clock_ticks_per_second();
    let mut coordinator =
        FakeCoordinator::start(Answer::AdmitEvery(Duration::from_secs(1)), None).await;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_hyperloop-worker"))
        .args([
            "--join",
            &coordinator.url,
            "--token",
            TOKEN,
            "--name",
            "bench",
        ])
        .arg("--work-dir")
        .arg(fx.path("work"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut session = coordinator.session().await;
    let mut reference = std::process::Command::new("sleep")
        .arg((IDLE.as_secs() + 5).to_string())
        .spawn()
        .unwrap();

    // P8: both idle over the same 10 s.
    let worker_pid = worker.id().unwrap();
    let reference_pid = reference.id();
    let (worker_fp, sleep_fp) = tokio::task::spawn_blocking(move || {
        let reference = std::thread::spawn(move || idle_footprint(reference_pid, hz));
        (idle_footprint(worker_pid, hz), reference.join().unwrap())
    })
    .await
    .unwrap();
    let _ = reference.kill();
    let _ = reference.wait();

    // P9: Cancel → trap, interleaved with killpg → trap.
    let (mut cancel, mut direct) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let attempt = run as u64 + 1;
        let (mark, started) = (
            fx.path(&format!("mark-{run}")),
            fx.path(&format!("up-{run}")),
        );
        let script = trap_script(&fx, &format!("agent-{run}.sh"), &mark, &started);
        session
            .tell(Tell::Assign(fx.assign(attempt, &script)))
            .await;
        assert!(matches!(session.next().await, Some(Body::Accepted(_))));
        assert!(wait_for_file(&started, WAIT).await, "agent started");
        let sent = now_nanos();
        session
            .tell(Tell::Cancel(v1::Cancel {
                attempt_id: attempt,
                reason: "bench".into(),
            }))
            .await;
        cancel.push(trapped_after(&mark, sent).await);
        let Some(Body::StepResult(_)) = session.next().await else {
            panic!("expected the cancelled result")
        };
        session
            .tell(Tell::ResultAck(v1::ResultAck {
                attempt_id: attempt,
            }))
            .await;

        let (mark, started) = (
            fx.path(&format!("ref-mark-{run}")),
            fx.path(&format!("ref-up-{run}")),
        );
        let script = trap_script(&fx, &format!("ref-{run}.sh"), &mark, &started);
        let mut child = std::process::Command::new(&script)
            .process_group(0)
            .spawn()
            .unwrap();
        assert!(wait_for_file(&started, WAIT).await, "reference started");
        let sent = now_nanos();
        killpg(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
        direct.push(trapped_after(&mark, sent).await);
        let _ = child.wait();
    }
    session
        .tell(Tell::Drain(v1::Drain {
            reason: "bench over".into(),
        }))
        .await;
    let exited = tokio::time::timeout(WAIT, worker.wait()).await;

    println!();
    println!("P8 idle footprint over {IDLE:?} after registration (heartbeat 1 s)");
    println!(
        "| {:<40} | {:>12} | {:>9} |",
        "process", "peak RSS MB", "CPU %"
    );
    println!("|{:-<42}|{:-<14}|{:-<11}|", "", "", "");
    for (name, (rss, cpu)) in [
        ("hyperloop-worker (joined, idle)", worker_fp),
        ("reference: sleep", sleep_fp),
    ] {
        println!("| {name:<40} | {rss:>12.1} | {cpu:>9.2} |");
    }
    println!();
    println!("P9 cancel latency, {RUNS} runs (p99 is nearest-rank: the maximum)");
    println!("| {:<40} | {:>9} | {:>9} |", "path", "p50", "p99");
    println!("|{:-<42}|{:-<11}|{:-<11}|", "", "", "");
    for (name, samples) in [
        ("Cancel message → agent SIGINT trap", &mut cancel),
        ("reference: killpg(SIGINT) → same trap", &mut direct),
    ] {
        let p50 = percentile(samples, 0.5);
        let p99 = percentile(samples, 0.99);
        println!("| {name:<40} | {p50:>9.1?} | {p99:>9.1?} |");
    }
    println!();
    println!(
        "worker after Drain: {}",
        match exited {
            Ok(Ok(status)) => format!("exited {status}"),
            _ => "did not exit".to_owned(),
        }
    );
}
