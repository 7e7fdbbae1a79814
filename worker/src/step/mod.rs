//! One step, start to finish: [`run_step`] checks out a worktree from the mirror, runs the
//! agent in it, reads the result file, pushes the branch (if the coordinator still grants the
//! attempt: [`PushFence`]) and removes the worktree.
//!
//! Every path ends in a [`StepReport`]; failures of the worker itself (fetch, worktree,
//! push) are reported as failed steps with [`FailureCause::Workspace`], never as panics,
//! and nothing is ever a silent pass.

mod checks;
mod plan;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyperloop_proto::convert::duration_to_wire;
use hyperloop_proto::v1::{self, Assign, AttemptPhase, FailureCause, LogSource};
use hyperloop_shared::duration::human;
use hyperloop_shared::model::{Proposal, Verdict};
use hyperloop_shared::result_file::{
    MAX_RESULT_BYTES, Outcome, RESULT_FILE_PATH, Violation, evaluate_bytes,
};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::env::{agent_env, git_identity_env};
use crate::fence::{Permit, PushFence};
use crate::process::{self, Ended, Finished, Launch};
use crate::progress::{ProgressSink, Usage, progress_channel};
use crate::runtime::claude;
use crate::shim::{Confinement, step_writable};
use crate::workspace::{self, Checkout, CheckoutRequest, Workspace};

pub use checks::{CHECKED_ROLES, CHECKS_DIR};
pub(crate) use plan::StepPlan;
pub use plan::{IMPROVEMENT_TASK_ID, INTAKE_TASK_ID, InvalidAssign};

/// Step timeout when neither the runtime settings nor the deadline give one. An hour: long
/// agent sessions take tens of minutes; anything longer is almost certainly stuck.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// How many uncommitted paths a finding lists before summarising.
const LISTED_UNCOMMITTED_PATHS: usize = 20;

/// Everything a step needs besides its assignment.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub workspace: Arc<Workspace>,
    /// Cancels the step: the agent's process group is signalled at once.
    pub cancel: CancellationToken,
    /// Where output lines and usage go; `None` discards them.
    pub progress: Option<ProgressSink>,
    /// Receives the step's phase as it changes (for heartbeats).
    pub phase: Option<watch::Sender<AttemptPhase>>,
    /// Program for the `claude` runtime.
    pub claude_bin: PathBuf,
    /// Used when the assignment carries no timeout.
    pub default_timeout: Duration,
    /// The worker host's environment, filtered into the agent's. `None` reads the process
    /// environment; tests pass their own.
    pub host_env: Option<Vec<(OsString, OsString)>>,
    /// Variables the worker's operator hands to every agent (`--pass-env`).
    pub pass_env: Vec<String>,
    /// How agents are started: through the shim, confined or not.
    pub confinement: Confinement,
    /// Asked before pushing: the attempt may have been revoked while the agent ran.
    pub fence: PushFence,
}

impl StepContext {
    /// A context with defaults: no progress, [`claude::bin_from_env`], [`DEFAULT_STEP_TIMEOUT`].
    /// The fence is the caller's choice: [`PushFence::unfenced`] only without a coordinator.
    pub fn new(workspace: Arc<Workspace>, fence: PushFence) -> Self {
        Self {
            workspace,
            cancel: CancellationToken::new(),
            progress: None,
            phase: None,
            claude_bin: claude::bin_from_env(),
            default_timeout: DEFAULT_STEP_TIMEOUT,
            host_env: None,
            pass_env: Vec::new(),
            confinement: Confinement::default(),
            fence,
        }
    }

    fn set_phase(&self, phase: AttemptPhase) {
        if let Some(tx) = &self.phase {
            tx.send_replace(phase);
        }
    }
}

/// The outcome of one step, as reported to the coordinator ([`StepReport::to_wire`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub attempt_id: u64,
    pub task_id: String,
    pub step_path: String,
    pub verdict: Verdict,
    pub detail: String,
    /// `Unspecified` when the verdict is the agent's own.
    pub failure_cause: FailureCause,
    /// Tip of the task branch on the remote after the step; `None` when the step produced no
    /// branch (no commits on a new branch, or a step without branch).
    pub head_commit: Option<String>,
    /// The agent's commits were pushed: the branch moved.
    pub new_commits: bool,
    pub branch: String,
    pub duration: Duration,
    /// Turns, cost and tokens, as the runtime reported them.
    pub usage: Usage,
    /// PM proposals (intake steps that passed).
    pub proposals: Vec<Proposal>,
}

impl StepReport {
    fn new(assign: &Assign) -> Self {
        Self {
            attempt_id: assign.attempt_id,
            task_id: assign.task_id.clone(),
            step_path: assign.step_path.clone(),
            verdict: Verdict::Fail,
            detail: String::new(),
            failure_cause: FailureCause::Unspecified,
            head_commit: None,
            new_commits: false,
            branch: assign.branch.clone(),
            duration: Duration::ZERO,
            usage: Usage::default(),
            proposals: Vec::new(),
        }
    }

    fn fail(&mut self, cause: FailureCause, detail: impl Into<String>) {
        self.verdict = Verdict::Fail;
        self.failure_cause = cause;
        self.detail = detail.into();
        self.proposals.clear();
    }

    /// The wire message.
    pub fn to_wire(&self) -> v1::StepResult {
        v1::StepResult {
            attempt_id: self.attempt_id,
            task_id: self.task_id.clone(),
            step_path: self.step_path.clone(),
            result: Some(v1::WorkerResult {
                verdict: v1::Verdict::from(self.verdict).into(),
                detail: self.detail.clone(),
            }),
            head_commit: self.head_commit.clone().unwrap_or_default(),
            new_commits: self.new_commits,
            branch: self.branch.clone(),
            duration: Some(duration_to_wire(self.duration)),
            cost_usd: self.usage.cost_usd,
            turns: self.usage.turns,
            tokens: Some(self.usage.tokens.into()),
            failure_cause: self.failure_cause.into(),
            proposals: self.proposals.iter().cloned().map(Into::into).collect(),
        }
    }
}

/// Runs one step. Never panics on bad input or git/process failures: every problem is a
/// failed [`StepReport`] naming its cause. The worktree is removed before this returns,
/// whatever happened.
///
/// Runs in a `step` span that continues the coordinator's trace from `assign.trace_context`.
pub async fn run_step(assign: &Assign, ctx: &StepContext) -> StepReport {
    let span = tracing::info_span!(
        "step",
        task_id = %assign.task_id,
        role = %assign.role,
        round = assign.round,
        step = %assign.step_path,
        attempt = assign.attempt_id,
    );
    crate::otel::continue_from(&span, &assign.trace_context);
    tracing::Instrument::instrument(run_step_in_span(assign, ctx), span).await
}

async fn run_step_in_span(assign: &Assign, ctx: &StepContext) -> StepReport {
    let started = Instant::now();
    let mut report = StepReport::new(assign);
    let plan = match StepPlan::from_assign(assign, ctx.default_timeout, SystemTime::now()) {
        Ok(plan) => plan,
        Err(e) => {
            report.fail(e.cause(), e.to_string());
            return report;
        }
    };
    ctx.set_phase(AttemptPhase::Preparing);
    let path = ctx.workspace.worktree_path(plan.attempt_id);
    let request = CheckoutRequest {
        repo_url: &plan.repo_url,
        branch: plan.branch.as_deref(),
        base_branch: &plan.base_branch,
        base_commit: &plan.base_commit,
    };
    // Not raced against the cancel token: killing git mid-fetch can leave ref locks that
    // break every later fetch. Git's own time limits bound this.
    match ctx.workspace.checkout(&request, &path).await {
        Ok(checkout) if ctx.cancel.is_cancelled() => {
            let _ = checkout;
            report.fail(
                FailureCause::Cancelled,
                "The step was cancelled before the agent started.",
            );
        }
        Ok(checkout) => run_in_worktree(&plan, &checkout, ctx, &mut report).await,
        Err(e) => report.fail(
            FailureCause::Workspace,
            format!("The worker could not prepare the step's git worktree: {e}"),
        ),
    }
    ctx.workspace.remove(&path, plan.branch.as_deref()).await;
    report.duration = started.elapsed();
    report
}

/// Whether git, run as the agent would run it (same environment, in the worktree), has `key`:
/// repository, global (the agent's HOME) and system config all count. A git that cannot run
/// counts as not set, so the agent still gets an identity.
async fn git_config_set(worktree: &Path, env: &BTreeMap<OsString, OsString>, key: &str) -> bool {
    tokio::process::Command::new("git")
        .args(["config", "--get", key])
        .current_dir(worktree)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

async fn run_in_worktree(
    plan: &StepPlan,
    checkout: &Checkout,
    ctx: &StepContext,
    report: &mut StepReport,
) {
    let worktree = &checkout.path;
    let result_path = worktree.join(RESULT_FILE_PATH);
    if let Err(e) = clear_result_file(&result_path).await {
        report.fail(
            FailureCause::Workspace,
            format!(
                "The worker could not remove a stale result file {}: {e}",
                result_path.display()
            ),
        );
        return;
    }

    let context = [
        ("HYPERLOOP_TASK_ID", plan.task_id.clone()),
        ("HYPERLOOP_ROLE", plan.expected.role.clone()),
        ("HYPERLOOP_ROUND", plan.expected.round.to_string()),
        ("HYPERLOOP_SPEC_REF", plan.spec_ref.clone()),
        ("HYPERLOOP_BRANCH", plan.branch.clone().unwrap_or_default()),
        ("HYPERLOOP_BASE_BRANCH", plan.base_branch.clone()),
        (
            "HYPERLOOP_RESULT_FILE",
            result_path.to_string_lossy().into_owned(),
        ),
    ];
    let host = ctx
        .host_env
        .clone()
        .unwrap_or_else(|| std::env::vars_os().collect());
    let runtime = plan.runtime.agent(&ctx.claude_bin);
    let host_vars = host.clone();
    let mut env = agent_env(
        host,
        &runtime.env(),
        &plan.env_passthrough,
        &ctx.pass_env,
        &plan.extra_env,
        &context,
    );
    // The agent joins the trace under this step's span, or under the coordinator's when this
    // worker exports nothing itself.
    let mut trace = crate::otel::context_of(&tracing::Span::current());
    if trace.is_empty() {
        trace = plan.trace_context.clone();
    }
    env.extend(
        crate::otel::agent_env(&trace)
            .into_iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value))),
    );
    let tmp = ctx.workspace.tmp_path(plan.attempt_id);
    if let Err(e) = tokio::fs::create_dir_all(&tmp).await {
        return report.fail(
            FailureCause::Workspace,
            format!(
                "The worker could not create the agent's temp dir {}: {e}",
                tmp.display()
            ),
        );
    }
    for name in ["TMPDIR", "TMP", "TEMP"] {
        env.insert(OsString::from(name), tmp.clone().into_os_string());
    }
    let git_has_name = git_config_set(worktree, &env, "user.name").await;
    let git_has_email = git_config_set(worktree, &env, "user.email").await;
    env.extend(git_identity_env(
        &env,
        git_has_name,
        git_has_email,
        &plan.git_identity,
    ));
    if ctx.confinement.landlock {
        // A fresh mirror has no reflog dir yet; a path that does not exist cannot be granted.
        let _ = tokio::fs::create_dir_all(ctx.workspace.mirror_dir().join("logs")).await;
    }
    let confine = ctx.confinement.landlock.then(|| {
        // From the host's environment only: the repository's config sets per-role variables
        // too, and must not be able to name a writable path.
        let host: BTreeMap<OsString, OsString> = host_vars.into_iter().collect();
        let home = host.get(&OsString::from("HOME")).map(PathBuf::from);
        let mut extra = runtime.state_paths(home.as_deref(), &host);
        extra.extend(ctx.confinement.writable.iter().cloned());
        step_writable(
            worktree,
            &checkout.admin_dir,
            ctx.workspace.mirror_dir(),
            &tmp,
            &extra,
        )
    });
    // Checks run later with what the agent ran with.
    let check_launch = checks::CheckLaunch {
        env: env.clone(),
        cwd: worktree.clone(),
        shim: ctx.confinement.shim.clone(),
        confine: confine.clone(),
    };
    let agent_started = Instant::now();
    let launch = Launch {
        program: runtime.program().to_owned(),
        args: runtime.args(),
        env,
        cwd: worktree.clone(),
        stdin: plan.prompt.clone(),
        shim: ctx.confinement.shim.clone(),
        confine,
    };
    let sink = ctx.progress.clone().unwrap_or_else(|| progress_channel().0);
    sink.line(
        LogSource::Worker,
        &format!(
            "starting {} in {} (timeout {})",
            runtime.program().to_string_lossy(),
            worktree.display(),
            human(plan.timeout)
        ),
    );

    ctx.set_phase(AttemptPhase::Running);
    let parser = runtime.parser();
    let Finished {
        ended,
        parser,
        stderr_tail,
        stdout_tail,
    } = match process::run(launch, parser, sink.clone(), plan.timeout, &ctx.cancel).await {
        Ok(finished) => finished,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            return report.fail(FailureCause::RuntimeUnavailable, runtime.spawn_failure(&e));
        }
    };
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    if let Err(e) = ctx.workspace.reseal(checkout).await {
        return report.fail(
            FailureCause::Workspace,
            format!(
                "The worker could not restore the worktree's git pointers after the agent: \
                 {e}; nothing of this step is pushed"
            ),
        );
    }
    // A stdout reader lost to a pipe held open past the drain timeout: judge as if the agent
    // printed nothing.
    let mut parser = parser.unwrap_or_else(|| runtime.parser());
    for line in &stderr_tail {
        parser.stderr_line(line);
    }
    report.usage = parser.usage();

    let agent_failure = match ended {
        Ended::TimedOut(limit) => Some((
            FailureCause::Timeout,
            format!(
                "The agent timed out after {} and was stopped.",
                human(limit)
            ),
        )),
        Ended::Cancelled => Some((
            FailureCause::Cancelled,
            "The step was cancelled; the agent was stopped.".to_owned(),
        )),
        Ended::Signalled(sig) => Some((
            FailureCause::AgentCrashed,
            format!("The agent process died from signal {}.", signal_name(sig)),
        )),
        Ended::Exited(code) => parser.exit_failure(code),
    };

    let read = read_result_file(&result_path).await;
    match (&agent_failure, read) {
        (Some((cause, text)), read) => {
            let mut detail = text.clone();
            // What the agent printed last is usually why it failed; both streams, since
            // many tools report errors on stdout.
            if matches!(
                cause,
                FailureCause::NonzeroExit
                    | FailureCause::AgentCrashed
                    | FailureCause::RuntimeUnavailable
            ) {
                for (stream, tail) in [("stdout", &stdout_tail), ("stderr", &stderr_tail)] {
                    if !tail.is_empty() {
                        let _ = write!(
                            detail,
                            "\n\nLast lines of the agent's {stream}:\n\n```\n{}\n```",
                            tail.join("\n")
                        );
                    }
                }
            }
            if let Ok(Some(bytes)) = read {
                let outcome = evaluate_bytes(Some(&bytes), &plan.expected);
                let _ = write!(
                    detail,
                    "\n\nThe agent's result file (not used, because the agent failed) said:\n\n{}",
                    outcome.result.detail
                );
            }
            report.fail(*cause, detail);
        }
        (None, Err(e)) => report.fail(
            FailureCause::ResultMalformed,
            format!(
                "The result file {} could not be read: {e}",
                result_path.display()
            ),
        ),
        (None, Ok(bytes)) => {
            let outcome = evaluate_bytes(bytes.as_deref(), &plan.expected);
            apply_outcome(report, outcome);
            if report.verdict == Verdict::Pass
                && (plan.checks.is_some() || CHECKED_ROLES.contains(&plan.expected.role.as_str()))
            {
                let checked = Checked {
                    launch: &check_launch,
                    checkout,
                    tmp: &tmp,
                    sink: &sink,
                    started: agent_started,
                };
                run_checks(plan, &checked, ctx, report).await;
            }
        }
    }

    finish_branch(plan, checkout, ended, ctx, report).await;
}

/// What the checks run with and where.
#[derive(Clone, Copy)]
struct Checked<'a> {
    launch: &'a checks::CheckLaunch,
    checkout: &'a Checkout,
    tmp: &'a Path,
    sink: &'a ProgressSink,
    started: Instant,
}

/// Runs the repository's checks after a pass, within what is left of the step's time, and
/// turns the pass into a failed round when one fails.
async fn run_checks(
    plan: &StepPlan,
    checked: &Checked<'_>,
    ctx: &StepContext,
    report: &mut StepReport,
) {
    let Checked {
        launch,
        checkout,
        tmp,
        sink,
        started,
    } = *checked;
    let found = match &plan.checks {
        None => checks::discover(&launch.cwd),
        Some(names) => match checks::named(&launch.cwd, names, &plan.expected.role) {
            Ok(found) => found,
            Err(finding) => {
                let summary = std::mem::take(&mut report.detail);
                return report.fail(
                    FailureCause::Unspecified,
                    format!("{finding}\n\nThe agent's own report said:\n\n{summary}"),
                );
            }
        },
    };
    if found.is_empty() {
        return;
    }
    if let Err(e) = tokio::fs::create_dir_all(tmp).await {
        return report.fail(
            FailureCause::Workspace,
            format!(
                "The worker could not create the checks' temp dir {}: {e}",
                tmp.display()
            ),
        );
    }
    // At least a minute, so an agent that used its whole budget still gets its work checked.
    let limit = plan
        .timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(60));
    let failed = checks::run(&found, launch, sink, limit, &ctx.cancel).await;
    let _ = tokio::fs::remove_dir_all(tmp).await;
    if let Err(e) = ctx.workspace.reseal(checkout).await {
        return report.fail(
            FailureCause::Workspace,
            format!(
                "The worker could not restore the worktree's git pointers after the checks: \
                 {e}; nothing of this step is pushed"
            ),
        );
    }
    if let Some((cause, finding)) = failed {
        let summary = std::mem::take(&mut report.detail);
        report.fail(
            cause,
            format!("{finding}\n\nThe agent's own report said:\n\n{summary}"),
        );
    }
}

/// Turns an accepted or rejected result file into the report.
fn apply_outcome(report: &mut StepReport, outcome: Outcome) {
    if outcome.is_accepted() {
        report.verdict = outcome.result.verdict;
        report.failure_cause = FailureCause::Unspecified;
        report.detail = outcome.result.detail;
        report.proposals = outcome.proposals;
        return;
    }
    let cause = if outcome.violations.contains(&Violation::Missing) {
        FailureCause::ResultMissing
    } else if outcome.violations.iter().any(|v| {
        matches!(
            v,
            Violation::TaskIdMismatch { .. }
                | Violation::RoundMismatch { .. }
                | Violation::RoleMismatch { .. }
        )
    }) {
        FailureCause::ResultMismatch
    } else {
        FailureCause::ResultMalformed
    };
    report.fail(cause, outcome.result.detail);
}

/// Notes uncommitted work, pushes new commits (if the fence allows) and records the branch
/// head.
async fn finish_branch(
    plan: &StepPlan,
    checkout: &Checkout,
    ended: Ended,
    ctx: &StepContext,
    report: &mut StepReport,
) {
    let worktree = &checkout.path;
    let state = match workspace::state(worktree).await {
        Ok(state) => state,
        Err(e) => {
            push_problem(
                report,
                format!("The worker could not inspect the worktree: {e}"),
            );
            return;
        }
    };
    let paths = &state.uncommitted;
    if !paths.is_empty() {
        {
            let mut note = format!(
                "\n\nNote: the agent left {} uncommitted path(s) in its worktree; they were \
                 discarded (only commits are kept):\n",
                paths.len()
            );
            for p in paths.iter().take(LISTED_UNCOMMITTED_PATHS) {
                let _ = writeln!(note, "    {p}");
            }
            if paths.len() > LISTED_UNCOMMITTED_PATHS {
                let _ = writeln!(
                    note,
                    "    … and {} more",
                    paths.len() - LISTED_UNCOMMITTED_PATHS
                );
            }
            report.detail.push_str(note.trim_end());
        }
    }

    let Some(branch) = plan.branch.as_deref() else {
        return;
    };
    let head = state.head;
    let remote_tip = checkout.remote_tip.as_deref();
    let has_new_commits = head != checkout.start_commit || remote_tip.is_some_and(|t| t != head);
    if !has_new_commits {
        report.head_commit = remote_tip.map(str::to_owned);
        return;
    }
    if ended == Ended::Cancelled {
        // A cancelled task's work is abandoned; don't delay the stop with a push.
        return;
    }
    // Until a push succeeds the branch is where it was.
    report.head_commit = remote_tip.map(str::to_owned);
    let attempt = plan.attempt_id;
    let permit = if ctx.cancel.is_cancelled() {
        Permit::Cancelled
    } else {
        ctx.fence.ask(attempt, &head, &ctx.cancel).await
    };
    // Checked as late as possible: the grant must still hold when `git push` starts.
    let refusal = match permit {
        Permit::Unfenced => None,
        Permit::Granted { until, .. } if tokio::time::Instant::now() < until => None,
        Permit::Granted { valid_for, .. } => Some(format!(
            "The coordinator's grant to push attempt {attempt} (valid for {}) expired before \
             the push could start",
            human(valid_for)
        )),
        Permit::Refused(reason) => Some(format!(
            "The coordinator refused the push of attempt {attempt} ({reason})"
        )),
        Permit::Unanswered(why) => Some(format!(
            "The worker could not get the coordinator's permission to push attempt \
             {attempt} ({why})"
        )),
        Permit::Cancelled => Some(format!("Attempt {attempt} was cancelled")),
    };
    if let Some(refusal) = refusal {
        tracing::warn!(attempt, %branch, %head, %refusal, "commits not pushed");
        push_problem(report, format!("{refusal}; its commits were not pushed."));
        return;
    }
    match workspace::push(worktree, &plan.repo_url, branch, remote_tip).await {
        Ok(()) => {
            report.head_commit = Some(head);
            report.new_commits = true;
        }
        Err(e) => {
            push_problem(
                report,
                format!("The worker could not push the agent's commits: {e}"),
            );
        }
    }
}

/// A worker-side failure after the agent ran: the step fails with `Workspace` unless it
/// already failed for another reason, in which case the problem is appended.
fn push_problem(report: &mut StepReport, problem: String) {
    if report.verdict == Verdict::Fail && report.failure_cause != FailureCause::Unspecified {
        let _ = write!(report.detail, "\n\n{problem}");
    } else {
        let previous = std::mem::take(&mut report.detail);
        report.fail(
            FailureCause::Workspace,
            format!("{problem}\n\nThe agent's own findings were:\n\n{previous}"),
        );
    }
}

async fn clear_result_file(path: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    Ok(())
}

/// Reads at most `MAX_RESULT_BYTES + 1` bytes (enough to detect an oversized file).
async fn read_result_file(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_RESULT_BYTES + 1).unwrap_or(u64::MAX);
    file.take(limit).read_to_end(&mut bytes).await?;
    Ok(Some(bytes))
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map_or_else(|_| sig.to_string(), |s| format!("{s} ({sig})"))
}
