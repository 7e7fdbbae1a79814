//! Agent runs that are not task steps: the PM's intake and the process-improver.

use hyperloop_proto::v1;
use hyperloop_shared::model::{AttemptId, SpecPath, SpecRef, Task, TaskId, TaskStatus};
use hyperloop_shared::prompt::{
    self, FailedResult, FailedTask, ImprovementContext, IntakeContext, SpecChange, SpecChangeKind,
};
use hyperloop_shared::result_file::Subject;

use super::{PrepareError, Reconciler};
use crate::compose::ProjectLoadError;
use crate::ports::lander::Lander;
use crate::ports::spec_source::{BlobId, SpecSource};
use crate::ports::state_store::StateStore;
use hyperloop_shared::project::Project;
use std::collections::BTreeSet;

/// The role sent to resolve a landing conflict; it runs outside the pipeline, with the task
/// parked at its merge action.
pub const REBASE_RESOLVER: &str = "rebase-resolver";
pub const PM: &str = "pm";
pub const PROCESS_IMPROVER: &str = "process-improver";

/// A non-task run in flight, with what its result needs to be applied.
#[derive(Debug, Clone)]
pub enum Job {
    Intake {
        /// The base-branch commit the PM was shown.
        commit: String,
        /// The specs it was asked about, at the blob it saw (recorded as processed if it
        /// succeeds).
        changed: Vec<(SpecPath, BlobId)>,
        /// Every spec at `commit`: proposals may only name these.
        known: BTreeSet<SpecPath>,
        /// The failed tasks it was shown; they leave the queue once their gap closes.
        failures: Vec<TaskId>,
    },
    Improvement {
        findings: Vec<FailedResult>,
    },
}

impl<S, P, L, C> Reconciler<S, P, L, C>
where
    S: StateStore,
    P: SpecSource,
    L: Lander,
    C: Fn() -> Result<Project, ProjectLoadError>,
{
    pub(super) fn intake_assign(
        &mut self,
        changed: &[SpecPath],
        attempt: AttemptId,
    ) -> Result<v1::Assign, PrepareError> {
        let template = self
            .project
            .agents
            .get(PM)
            .ok_or_else(|| PrepareError::NoAgent {
                role: PM.to_owned(),
            })?;
        let mut specs = Vec::new();
        let commit = self.view.commit().to_owned();
        for path in changed {
            let spec_ref = SpecRef {
                path: path.clone(),
                commit: commit.clone(),
            };
            let text =
                self.specs
                    .read(&spec_ref)
                    .map_err(|source| PrepareError::SpecUnreadable {
                        spec: spec_ref.to_string(),
                        source,
                    })?;
            let kind = match self.state.specs.get(path) {
                None => SpecChangeKind::New,
                Some(old) => SpecChangeKind::Changed {
                    diff: self
                        .specs
                        .diff(
                            path,
                            Some(&BlobId(old.blob.clone())),
                            self.view.specs.get(path),
                        )
                        .ok(),
                },
            };
            specs.push(SpecChange {
                spec_ref,
                text,
                kind,
            });
        }
        let failures: Vec<FailedTask> = self
            .state
            .meta
            .failed_since_intake
            .iter()
            .filter_map(|id| self.state.tasks.get(id))
            .filter(|t| t.status == TaskStatus::Failed)
            .map(|t| FailedTask {
                task: t.clone(),
                reviews: self.state.reviews.get(&t.id).cloned().unwrap_or_default(),
            })
            .collect();
        let tasks: Vec<Task> = self.state.tasks.values().cloned().collect();
        let run = self.state.meta.intake_round;
        let composed = prompt::intake_prompt(
            template,
            &IntakeContext {
                run,
                base_branch: &self.ctx.config.target.base_branch,
                specs: &specs,
                deleted: &[],
                failures: &failures,
                tasks: &tasks,
                rejections: &self.state.meta.intake_rejections,
            },
        );
        let branch = format!("{}intake-{run}", self.ctx.config.branch_prefix);
        Ok(self.assign(
            attempt,
            Subject::Intake.to_string(),
            "",
            PM,
            run,
            composed.text,
            None,
            &branch,
        ))
    }

    pub(super) fn improvement_assign(
        &mut self,
        findings: &[FailedResult],
        attempt: AttemptId,
    ) -> Result<v1::Assign, PrepareError> {
        let template =
            self.project
                .agents
                .get(PROCESS_IMPROVER)
                .ok_or_else(|| PrepareError::NoAgent {
                    role: PROCESS_IMPROVER.to_owned(),
                })?;
        let run = self.state.meta.improvement_round;
        let branch = format!("{}process-improvement-{run}", self.ctx.config.branch_prefix);
        let agents: Vec<_> = self.project.agents.values().cloned().collect();
        let composed = prompt::improvement_prompt(
            template,
            &ImprovementContext {
                run,
                branch: &branch,
                base_branch: &self.ctx.config.target.base_branch,
                failures: findings,
                agents: &agents,
            },
        );
        Ok(self.assign(
            attempt,
            Subject::Improvement.to_string(),
            "",
            PROCESS_IMPROVER,
            run,
            composed.text,
            None,
            &branch,
        ))
    }
}
