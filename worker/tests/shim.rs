//! Steps whose agents run under the shim (`hyperloop-worker __hyperloop-agent-shim`), as the
//! worker and the coordinator's in-process workers run them: Landlock confinement, exit
//! statuses passed through, cancel and descendants.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Fixture, alive, wait_for_file, write_result};
use hyperloop_proto::v1::FailureCause;
use hyperloop_shared::model::Verdict;
use hyperloop_worker::StepContext;
use hyperloop_worker::run_step;
use hyperloop_worker::shim::Confinement;

/// A context whose agents start under this crate's worker binary, confined, with `writable`
/// added by the operator.
fn shimmed(fx: &Fixture, writable: Vec<PathBuf>) -> StepContext {
    let mut ctx = fx.ctx();
    ctx.confinement = Confinement {
        shim: Some(PathBuf::from(env!("CARGO_BIN_EXE_hyperloop-worker"))),
        landlock: true,
        writable,
    };
    ctx
}

#[tokio::test]
async fn a_confined_agent_commits_and_is_pushed_but_writes_nothing_outside_its_step() {
    let fx = Fixture::new();
    let outside = fx.path("outside.txt");
    let allowed = fx.path("cache");
    std::fs::create_dir(&allowed).unwrap();
    let script = fx.script(
        "agent.sh",
        &format!(
            "set -e\ncat >/dev/null\n\
             echo work > work.txt && git add work.txt\n\
             git -c user.name=A -c user.email=a@example.invalid commit -q -m work\n\
             echo tmp > \"$TMPDIR/scratch\"\n\
             echo cached > '{allowed}/hit'\n\
             (echo escaped > '{outside}') 2>/dev/null || true\n{}",
            write_result("pass", "done"),
            allowed = allowed.display(),
            outside = outside.display(),
        ),
    );
    let report = run_step(&fx.assign(1, &script), &shimmed(&fx, vec![allowed.clone()])).await;
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.detail);
    let pushed = fx.origin_branch("hyperloop/task-007").expect("pushed");
    assert_eq!(report.head_commit.as_deref(), Some(pushed.as_str()));
    assert!(
        allowed.join("hit").exists(),
        "an --agent-writable path is writable"
    );
    assert!(!outside.exists(), "the agent wrote outside its step");
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
}

#[tokio::test]
async fn through_the_shim_a_crash_stays_a_crash_and_a_missing_program_stays_unavailable() {
    let fx = Fixture::new();
    let script = fx.script(
        "agent.sh",
        &format!("{}kill -SEGV $$\n", write_result("pass", "x")),
    );
    let report = run_step(&fx.assign(1, &script), &shimmed(&fx, Vec::new())).await;
    assert_eq!(
        report.failure_cause,
        FailureCause::AgentCrashed,
        "{}",
        report.detail
    );
    assert!(report.detail.contains("SIGSEGV"), "{}", report.detail);

    let missing = fx.path("does-not-exist.sh");
    let report = run_step(&fx.assign(2, &missing), &shimmed(&fx, Vec::new())).await;
    assert_eq!(report.failure_cause, FailureCause::RuntimeUnavailable);
}

#[tokio::test]
async fn through_the_shim_cancel_interrupts_the_agent_once_and_takes_its_daemon_too() {
    let fx = Fixture::new();
    let out = fx.path("out");
    std::fs::create_dir(&out).unwrap();
    let pids = out.join("pids");
    let marks = out.join("interrupts");
    let script = fx.script(
        "agent.sh",
        &format!(
            "trap 'echo int >> \"{marks}\"' INT\n\
             setsid sh -c 'trap \"\" INT TERM; while :; do sleep 1; done' </dev/null >/dev/null 2>&1 &\n\
             daemon=$!\n\
             sleep 30 &\n\
             echo \"$$ $daemon $!\" > '{pids}'\n\
             wait $!\n\
             sleep 0.3\n\
             exit 130\n",
            marks = marks.display(),
            pids = pids.display()
        ),
    );
    let assign = fx.assign(1, &script);
    let ctx = shimmed(&fx, vec![out.clone()]);
    let cancel = ctx.cancel.clone();
    let step = tokio::spawn(async move { run_step(&assign, &ctx).await });
    assert!(
        wait_for_file(&pids, Duration::from_secs(10)).await,
        "agent never started"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancel.cancel();
    let report = step.await.unwrap();
    assert_eq!(
        report.failure_cause,
        FailureCause::Cancelled,
        "{}",
        report.detail
    );
    let interrupts = std::fs::read_to_string(&marks).unwrap_or_default();
    assert_eq!(interrupts.lines().count(), 1, "one SIGINT, not two");
    for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        assert!(!alive(pid), "process {pid} survived the cancel");
    }
}
