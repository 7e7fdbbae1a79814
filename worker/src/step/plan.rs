//! [`StepPlan`]: an `Assign` checked and turned into what the worker executes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime};

use hyperloop_proto::v1::{Assign, FailureCause, RuntimeKind};
use hyperloop_shared::model::TaskId;
use hyperloop_shared::result_file::{Expected, Subject};
use hyperloop_shared::step::GitIdentity;

use crate::runtime::AgentRuntime;
use crate::runtime::claude::{ClaudeLimits, ClaudeRuntime};
use crate::runtime::command::CommandRuntime;

/// `Assign.task_id` of a PM intake run (result subject [`Subject::Intake`]; the only step
/// whose result carries proposals).
pub const INTAKE_TASK_ID: &str = "intake";
/// `Assign.task_id` of a process-improver run ([`Subject::Improvement`]).
pub const IMPROVEMENT_TASK_ID: &str = "process-improvement";

/// Why an `Assign` cannot be run. The worker declines it with this text (or, through
/// `run_step`, fails the step with [`InvalidAssign::cause`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid assignment: field `{field}` {problem}")]
pub struct InvalidAssign {
    pub field: &'static str,
    pub problem: String,
}

impl InvalidAssign {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }

    /// The failure cause a step reports for this problem.
    pub fn cause(&self) -> FailureCause {
        if self.field.starts_with("runtime") {
            FailureCause::RuntimeUnavailable
        } else {
            FailureCause::Workspace
        }
    }
}

/// What runs the agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Runtime {
    Command(Vec<String>),
    Claude(ClaudeLimits),
}

impl Runtime {
    /// The runtime for these settings; `claude_bin` is this worker's Claude Code CLI.
    pub(crate) fn agent(&self, claude_bin: &Path) -> Box<dyn AgentRuntime> {
        match self {
            Self::Command(argv) => Box::new(CommandRuntime { argv: argv.clone() }),
            Self::Claude(limits) => Box::new(ClaudeRuntime {
                bin: claude_bin.to_owned(),
                limits: limits.clone(),
            }),
        }
    }
}

/// A validated assignment.
#[derive(Debug, Clone)]
pub(crate) struct StepPlan {
    pub attempt_id: u64,
    pub task_id: String,
    /// The composed prompt, given on stdin.
    pub prompt: String,
    pub expected: Expected,
    pub spec_ref: String,
    pub repo_url: String,
    pub base_branch: String,
    pub base_commit: String,
    pub branch: Option<String>,
    pub runtime: Runtime,
    pub timeout: Duration,
    pub env_passthrough: Vec<String>,
    pub extra_env: HashMap<String, String>,
    /// Who the agent commits as if git in its worktree has no identity.
    pub git_identity: GitIdentity,
    /// The checks the process names for this step (`None`: the default set).
    pub checks: Option<Vec<String>>,
    /// The coordinator's W3C trace context for this step (`traceparent`, `tracestate`).
    pub trace_context: BTreeMap<String, String>,
}

impl StepPlan {
    /// Validates `assign`. `default_timeout` applies when the settings carry none; the
    /// result is further capped by the assignment's deadline.
    pub(crate) fn from_assign(
        assign: &Assign,
        default_timeout: Duration,
        now: SystemTime,
    ) -> Result<Self, InvalidAssign> {
        if assign.attempt_id == 0 {
            return Err(InvalidAssign::new("attempt_id", "is missing (0)"));
        }
        let subject = match assign.task_id.as_str() {
            "" => return Err(InvalidAssign::new("task_id", "is empty")),
            INTAKE_TASK_ID => Subject::Intake,
            IMPROVEMENT_TASK_ID => Subject::Improvement,
            other => Subject::Task(other.parse::<TaskId>().map_err(|e| {
                InvalidAssign::new(
                    "task_id",
                    format!(
                        "{other:?} is not a task id ({e}), `{INTAKE_TASK_ID}` or \
                         `{IMPROVEMENT_TASK_ID}`"
                    ),
                )
            })?),
        };
        if assign.role.is_empty() {
            return Err(InvalidAssign::new("role", "is empty"));
        }
        if assign.repo_url.is_empty() || assign.repo_url.starts_with('-') {
            return Err(InvalidAssign::new(
                "repo_url",
                format!("{:?} is not a repository URL", assign.repo_url),
            ));
        }
        check_branch("base_branch", &assign.base_branch)?;
        if assign.base_branch.is_empty() {
            return Err(InvalidAssign::new("base_branch", "is empty"));
        }
        let branch = if assign.branch.is_empty() {
            None
        } else {
            check_branch("branch", &assign.branch)?;
            Some(assign.branch.clone())
        };
        let commit_ok = (4..=64).contains(&assign.base_commit.len())
            && assign.base_commit.bytes().all(|b| b.is_ascii_hexdigit());
        if !assign.base_commit.is_empty() && !commit_ok {
            return Err(InvalidAssign::new(
                "base_commit",
                format!("{:?} is not a hex commit id", assign.base_commit),
            ));
        }
        let settings = assign
            .runtime
            .as_ref()
            .ok_or_else(|| InvalidAssign::new("runtime", "is missing"))?;
        let runtime = match RuntimeKind::try_from(settings.kind) {
            Ok(RuntimeKind::Command) => {
                if settings.command.first().is_none_or(String::is_empty) {
                    return Err(InvalidAssign::new(
                        "runtime.command",
                        "is empty; set `agent.command` (an argv list) in .hyperloop.yaml",
                    ));
                }
                Runtime::Command(settings.command.clone())
            }
            Ok(RuntimeKind::Claude) => Runtime::Claude(ClaudeLimits {
                model: Some(settings.model.clone()).filter(|m| !m.is_empty()),
                max_turns: settings.max_turns,
                budget_usd: settings.budget_usd,
            }),
            Ok(RuntimeKind::Unspecified) => {
                return Err(InvalidAssign::new("runtime.kind", "is unset"));
            }
            Err(_) => {
                return Err(InvalidAssign::new(
                    "runtime.kind",
                    format!(
                        "{} is not a runtime this worker knows; upgrade the worker",
                        settings.kind
                    ),
                ));
            }
        };
        let mut timeout = settings
            .timeout
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(default_timeout);
        if let Some(deadline) = assign.deadline.and_then(|d| SystemTime::try_from(d).ok()) {
            timeout = timeout.min(deadline.duration_since(now).unwrap_or(Duration::ZERO));
        }
        let checks = assign.checks.as_ref().map(|list| list.names.clone());
        // A name is a file directly in the checks folder: it cannot point anywhere else.
        if let Some(bad) = checks
            .iter()
            .flatten()
            .find(|name| name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']))
        {
            return Err(InvalidAssign::new(
                "checks",
                format!("{bad:?} is not the name of a file in .hyperloop/checks/"),
            ));
        }
        let spec_ref = assign
            .spec_ref
            .as_ref()
            .map(|r| format!("{}@{}", r.path, r.commit))
            .unwrap_or_default();
        Ok(StepPlan {
            attempt_id: assign.attempt_id,
            task_id: assign.task_id.clone(),
            prompt: assign.prompt.clone(),
            expected: Expected::new(subject, assign.round, assign.role.clone()),
            spec_ref,
            repo_url: assign.repo_url.clone(),
            base_branch: assign.base_branch.clone(),
            base_commit: assign.base_commit.clone(),
            branch,
            runtime,
            timeout,
            env_passthrough: settings.env_passthrough.clone(),
            extra_env: settings.extra_env.clone(),
            git_identity: settings
                .git_identity
                .as_ref()
                .filter(|id| !id.name.trim().is_empty() && !id.email.trim().is_empty())
                .map(|id| GitIdentity {
                    name: id.name.clone(),
                    email: id.email.clone(),
                })
                .unwrap_or_default(),
            checks,
            trace_context: assign
                .trace_context
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// A conservative subset of `git check-ref-format --branch`: also refuses a leading `-`
/// (it would be read as an option by git) and anything that needs quoting.
fn check_branch(field: &'static str, name: &str) -> Result<(), InvalidAssign> {
    let bad = |why: &str| Err(InvalidAssign::new(field, format!("{name:?} {why}")));
    if name.is_empty() {
        return Ok(());
    }
    if name.starts_with(['-', '/', '.']) || name.ends_with(['/', '.']) || name.ends_with(".lock") {
        return bad("is not a valid branch name (bad first or last character)");
    }
    if name.contains("..") || name.contains("//") || name.contains("@{") || name.contains("/.") {
        return bad("is not a valid branch name");
    }
    if name
        .bytes()
        .any(|b| b.is_ascii_control() || b" ~^:?*[\\".contains(&b))
    {
        return bad("contains a character git does not allow in branch names");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperloop_proto::v1::RuntimeSettings;

    fn assign() -> Assign {
        Assign {
            attempt_id: 1,
            task_id: "task-007".into(),
            role: "implementer".into(),
            round: 2,
            repo_url: "/tmp/origin.git".into(),
            base_branch: "main".into(),
            branch: "hyperloop/task-007".into(),
            runtime: Some(RuntimeSettings {
                kind: RuntimeKind::Command.into(),
                command: vec!["./agent.sh".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(change: impl FnOnce(&mut Assign), field: &str) {
        let mut a = assign();
        change(&mut a);
        let err = StepPlan::from_assign(&a, Duration::from_secs(60), SystemTime::now())
            .expect_err("invalid");
        assert_eq!(err.field, field, "{err}");
    }

    #[test]
    fn subjects_come_from_the_task_id() {
        let plan =
            StepPlan::from_assign(&assign(), Duration::from_secs(60), SystemTime::now()).unwrap();
        assert_eq!(plan.expected.subject, Subject::Task(TaskId(7)));
        let mut a = assign();
        a.task_id = INTAKE_TASK_ID.into();
        a.branch.clear();
        let plan = StepPlan::from_assign(&a, Duration::from_secs(60), SystemTime::now()).unwrap();
        assert_eq!(plan.expected.subject, Subject::Intake);
        assert_eq!(plan.branch, None);
    }

    #[test]
    fn bad_assignments_name_the_field() {
        check(|a| a.attempt_id = 0, "attempt_id");
        check(|a| a.task_id = "../etc".into(), "task_id");
        check(|a| a.branch = "--upload-pack=evil".into(), "branch");
        check(|a| a.branch = "a..b".into(), "branch");
        check(|a| a.base_branch = "ma in".into(), "base_branch");
        check(|a| a.base_commit = "HEAD~1".into(), "base_commit");
        check(|a| a.repo_url = "--help".into(), "repo_url");
        check(
            |a| a.runtime.as_mut().unwrap().command.clear(),
            "runtime.command",
        );
        check(|a| a.runtime.as_mut().unwrap().kind = 99, "runtime.kind");
        check(|a| a.runtime = None, "runtime");
        for name in ["../../bin/sh", ".x", ""] {
            check(
                |a| {
                    a.checks = Some(hyperloop_proto::v1::CheckList {
                        names: vec![name.to_owned()],
                    });
                },
                "checks",
            );
        }
    }

    #[test]
    fn the_deadline_caps_the_timeout() {
        let now = SystemTime::now();
        let mut a = assign();
        a.runtime.as_mut().unwrap().timeout = Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        });
        a.deadline = Some((now + Duration::from_secs(30)).into());
        let plan = StepPlan::from_assign(&a, Duration::from_secs(60), now).unwrap();
        assert_eq!(plan.timeout, Duration::from_secs(30));
        a.deadline = None;
        let plan = StepPlan::from_assign(&a, Duration::from_secs(60), now).unwrap();
        assert_eq!(plan.timeout, Duration::from_secs(600));
    }
}
