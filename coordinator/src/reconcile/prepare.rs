//! Turning a planned [`Order`] into the [`StepOrder`] a worker runs: the composed prompt
//! (which needs spec text, read from the spec source) and the runtime settings.

use std::collections::BTreeMap;
use std::time::Duration;

use hyperloop_shared::config::Config;
use hyperloop_shared::model::SpecPath;
use hyperloop_shared::model::{AttemptId, Review, SpecRef, Task, TaskId, TaskStatus};
use hyperloop_shared::prompt::{
    self, FailedResult, FailedTask, ImprovementContext, IntakeContext, SpecChange, SpecChangeKind,
    TaskContext,
};
use hyperloop_shared::reconcile::{Core, Order, PM, PROCESS_IMPROVER, Work};
use hyperloop_shared::result_file::Subject;
use hyperloop_shared::specs::BlobId;
use hyperloop_shared::step::{RuntimeSettings, StepOrder};

use super::PrepareError;
use crate::ports::spec_source::{SpecSource, SpecSourceError};

/// Failed earlier tasks of a spec whose findings a new task's prompt shows.
const EARLIER_TASKS_SHOWN: usize = 3;

/// What preparing needs besides the core.
pub(super) struct Preparer<'a, P> {
    pub specs: &'a P,
    pub config: &'a Config,
    pub repo_url: &'a str,
    pub now_ms: u64,
    /// Specs found unusable while preparing (path, why), for the core.
    pub unusable: Vec<(SpecPath, String)>,
}

impl<P: SpecSource> Preparer<'_, P> {
    pub(super) fn prepare(
        &mut self,
        core: &Core,
        order: &Order,
    ) -> Result<StepOrder, PrepareError> {
        match &order.work {
            Work::Step { task, role, .. } => self.task_step(core, order.attempt, *task, role),
            Work::Intake {
                run,
                commit,
                changed,
                failures,
            } => self.intake(core, order.attempt, *run, commit, changed, failures),
            Work::Improvement { run, findings } => {
                self.improvement(core, order.attempt, *run, findings)
            }
        }
    }

    /// The spec's text, if it can be put into a prompt; an unusable one is recorded.
    fn read(&mut self, spec_ref: &SpecRef) -> Result<String, PrepareError> {
        let text = match self.specs.read(spec_ref) {
            Ok(text) => text,
            Err(SpecSourceError::NotText { .. }) => {
                return Err(self.unusable(spec_ref, "it is not UTF-8 text; save it as UTF-8"));
            }
            Err(source) => {
                return Err(PrepareError::SpecUnreadable {
                    spec: spec_ref.to_string(),
                    source,
                });
            }
        };
        let max = self.config.max_spec_bytes as usize;
        if text.len() > max {
            let why = format!(
                "it is {} bytes, over max_spec_bytes ({max}); split it into smaller specs or \
                 raise max_spec_bytes in .hyperloop.yaml",
                text.len()
            );
            return Err(self.unusable(spec_ref, &why));
        }
        Ok(text)
    }

    fn unusable(&mut self, spec_ref: &SpecRef, why: &str) -> PrepareError {
        self.unusable.push((spec_ref.path.clone(), why.to_owned()));
        PrepareError::SpecUnusable {
            spec: spec_ref.to_string(),
            why: why.to_owned(),
        }
    }

    fn task_step(
        &mut self,
        core: &Core,
        attempt: AttemptId,
        id: TaskId,
        role: &str,
    ) -> Result<StepOrder, PrepareError> {
        let state = core.state();
        let task = state
            .tasks
            .get(&id)
            .ok_or(PrepareError::TaskGone { task: id })?;
        let template = template(core, role)?;
        let spec_text = self.read(&task.spec_ref)?;
        let branch = task
            .branch
            .clone()
            .unwrap_or_else(|| format!("{}{}", self.config.branch_prefix, task.id));
        let reviews = state.reviews.get(&task.id).cloned().unwrap_or_default();
        let earlier = earlier_findings(core, task);
        let composed = prompt::task_prompt(
            template,
            &TaskContext {
                task_id: task.id,
                title: &task.title,
                round: task.round,
                spec_ref: &task.spec_ref,
                spec_text: &spec_text,
                branch: &branch,
                base_branch: &self.config.target.base_branch,
                reviews: &reviews,
                earlier: &earlier,
            },
        );
        let step = task
            .position
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        Ok(self.order(
            core,
            attempt,
            task.id.to_string(),
            step,
            role,
            task.round,
            composed.text,
            Some(task.spec_ref.clone()),
            branch,
        ))
    }

    fn intake(
        &mut self,
        core: &Core,
        attempt: AttemptId,
        run: u32,
        commit: &str,
        changed: &[(SpecPath, BlobId)],
        failures: &[TaskId],
    ) -> Result<StepOrder, PrepareError> {
        let template = template(core, PM)?;
        let state = core.state();
        let mut specs = Vec::new();
        for (path, blob) in changed {
            let spec_ref = SpecRef {
                path: path.clone(),
                commit: commit.to_owned(),
            };
            let text = match self.read(&spec_ref) {
                Ok(text) => text,
                // Given up on its own; the other specs are asked about.
                Err(PrepareError::SpecUnusable { .. }) => continue,
                Err(e) => return Err(e),
            };
            let kind = match state.specs.get(path) {
                None => SpecChangeKind::New,
                Some(old) => SpecChangeKind::Changed {
                    diff: self
                        .specs
                        .diff(path, Some(&BlobId(old.blob.clone())), Some(blob))
                        .ok(),
                },
            };
            specs.push(SpecChange {
                spec_ref,
                text,
                kind,
            });
        }
        let failures: Vec<FailedTask> = failures
            .iter()
            .filter_map(|id| state.tasks.get(id))
            .filter(|t| t.status == TaskStatus::Failed)
            .map(|t| FailedTask {
                task: t.clone(),
                reviews: state.reviews.get(&t.id).cloned().unwrap_or_default(),
            })
            .collect();
        if specs.is_empty() && failures.is_empty() {
            return Err(PrepareError::NothingToAsk);
        }
        let tasks: Vec<Task> = state.tasks.values().cloned().collect();
        let composed = prompt::intake_prompt(
            template,
            &IntakeContext {
                run,
                base_branch: &self.config.target.base_branch,
                specs: &specs,
                deleted: &[],
                failures: &failures,
                tasks: &tasks,
                rejections: &state.meta.intake_rejections,
            },
        );
        let branch = format!("{}intake-{run}", self.config.branch_prefix);
        Ok(self.order(
            core,
            attempt,
            Subject::Intake.to_string(),
            String::new(),
            PM,
            run,
            composed.text,
            None,
            branch,
        ))
    }

    fn improvement(
        &self,
        core: &Core,
        attempt: AttemptId,
        run: u32,
        findings: &[FailedResult],
    ) -> Result<StepOrder, PrepareError> {
        let template = template(core, PROCESS_IMPROVER)?;
        let branch = format!("{}process-improvement-{run}", self.config.branch_prefix);
        let agents: Vec<_> = core.project().agents.values().cloned().collect();
        let composed = prompt::improvement_prompt(
            template,
            &ImprovementContext {
                run,
                branch: &branch,
                base_branch: &self.config.target.base_branch,
                failures: findings,
                agents: &agents,
            },
        );
        Ok(self.order(
            core,
            attempt,
            Subject::Improvement.to_string(),
            String::new(),
            PROCESS_IMPROVER,
            run,
            composed.text,
            None,
            branch,
        ))
    }

    #[allow(clippy::too_many_arguments)] // mirrors the order's fields
    fn order(
        &self,
        core: &Core,
        attempt: AttemptId,
        subject: String,
        step: String,
        role: &str,
        round: u32,
        prompt: String,
        spec_ref: Option<SpecRef>,
        branch: String,
    ) -> StepOrder {
        let agent = self.config.agent_for(role);
        let timeout: Duration = agent.timeout;
        let prompt = bounded(prompt);
        StepOrder {
            attempt,
            subject,
            step,
            role: role.to_owned(),
            round,
            prompt,
            spec_ref,
            repo_url: self.repo_url.to_owned(),
            base_branch: self.config.target.base_branch.clone(),
            base_commit: core.view().commit().to_owned(),
            branch,
            runtime: RuntimeSettings {
                program: agent.program.clone(),
                model: agent.model.clone(),
                max_turns: agent.max_turns,
                timeout,
                budget_usd: agent.budget_usd,
                env_passthrough: agent.env_passthrough.clone(),
                git_identity: self.config.agent.git_identity.clone(),
            },
            deadline_ms: self
                .now_ms
                .saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
            checks: core.project().process.checks.get(role).cloned(),
            // Filled in by the loop from the step's span as it dispatches it.
            trace_context: BTreeMap::new(),
        }
    }
}

/// The prompt, cut at [`hyperloop_proto::MAX_PROMPT_BYTES`] with a note saying so, so an
/// assignment never exceeds the worker protocol's message limit.
fn bounded(mut prompt: String) -> String {
    const NOTE: &str = "\n\n[hyperloop: this prompt was cut here because it exceeded the size \
                        a step may carry; what follows the cut is not shown]\n";
    let max = hyperloop_proto::MAX_PROMPT_BYTES - NOTE.len();
    if prompt.len() <= hyperloop_proto::MAX_PROMPT_BYTES {
        return prompt;
    }
    let mut cut = max;
    while !prompt.is_char_boundary(cut) {
        cut -= 1;
    }
    prompt.truncate(cut);
    prompt.push_str(NOTE);
    prompt
}

fn template<'a>(
    core: &'a Core,
    role: &str,
) -> Result<&'a hyperloop_shared::prompt::AgentTemplate, PrepareError> {
    core.project()
        .agents
        .get(role)
        .ok_or_else(|| PrepareError::NoAgent {
            role: role.to_owned(),
        })
}

/// Reviews of the newest failed tasks for the same spec that came before `task` (at most
/// [`EARLIER_TASKS_SHOWN`]), so a new attempt knows why earlier ones were rejected.
fn earlier_findings(core: &Core, task: &Task) -> Vec<Review> {
    let state = core.state();
    state
        .tasks
        .range(..task.id)
        .rev()
        .filter(|(_, t)| t.status == TaskStatus::Failed && t.spec_ref.path == task.spec_ref.path)
        .take(EARLIER_TASKS_SHOWN)
        .flat_map(|(id, _)| state.reviews.get(id).cloned().unwrap_or_default())
        .collect()
}
