//! The pure executor: (position, counters, outcome) → (what to do next, new counters, what
//! happened). Semantics are PRODUCT.md §4:
//!
//! - pass / gate cleared / action success → next step; past the last step → complete;
//! - agent fail → first leaf of the innermost enclosing loop, round + 1; no loop → failed;
//! - action error → counted; the `max_action_attempts`-th error behaves like an agent fail;
//! - gate waiting / action retry → stay, no counter;
//! - a loop-back whose new round reaches `max_task_rounds` → failed.

use std::fmt;

use crate::model::{Task, TaskStatus, Verdict};

use super::position::path_label;
use super::{Fingerprint, Pipeline, Position, Step, StepKind, StepRef};

/// Budgets from the configuration. Zero is treated as one: a task gets at least one round and
/// an action at least one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rounds are numbered from 0; a loop-back into round `max_task_rounds` fails the task.
    pub max_task_rounds: u32,
    /// Consecutive errors of one action before it counts as a failed round.
    pub max_action_attempts: u32,
}

impl Limits {
    fn rounds(self) -> u32 {
        self.max_task_rounds.max(1)
    }

    fn attempts(self) -> u32 {
        self.max_action_attempts.max(1)
    }
}

/// The executor's view of a running task, as persisted in [`Task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub position: Position,
    pub round: u32,
    /// Consecutive errors of the action at `position`; reset whenever the position changes.
    pub action_attempts: u32,
}

/// What happened at the current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Agent(Verdict),
    Gate(GateCheck),
    Action(ActionOutcome),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Agent(v) => write!(f, "agent verdict `{v}`"),
            Outcome::Gate(GateCheck::Waiting) => f.write_str("gate waiting"),
            Outcome::Gate(GateCheck::Cleared) => f.write_str("gate cleared"),
            Outcome::Action(ActionOutcome::Success) => f.write_str("action success"),
            Outcome::Action(ActionOutcome::Retry) => f.write_str("action retry"),
            Outcome::Action(ActionOutcome::Error) => f.write_str("action error"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateCheck {
    Waiting,
    Cleared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionOutcome {
    /// Done; move on.
    Success,
    /// Not possible yet (e.g. CI pending, PR not mergeable yet); try later, costs nothing.
    Retry,
    /// Attempted and failed; counts against `max_action_attempts`.
    Error,
}

/// What the coordinator should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Dispatch an agent session with this role (needs a worker slot).
    RunAgent {
        role: String,
        position: Position,
    },
    /// Check the gate (holds no worker slot).
    WaitAtGate {
        gate: String,
        position: Position,
    },
    /// Perform the action (on the coordinator; holds no worker slot).
    RunAction {
        action: String,
        position: Position,
    },
    Complete,
    Failed {
        reason: FailReason,
    },
}

impl Next {
    fn at(position: Position) -> Next {
        let name = position.step.name.clone();
        match position.step.kind {
            StepKind::Agent => Next::RunAgent {
                role: name,
                position,
            },
            StepKind::Gate => Next::WaitAtGate {
                gate: name,
                position,
            },
            StepKind::Action => Next::RunAction {
                action: name,
                position,
            },
        }
    }

    /// The position to persist; `None` once the task is terminal.
    pub fn position(&self) -> Option<&Position> {
        match self {
            Next::RunAgent { position, .. }
            | Next::WaitAtGate { position, .. }
            | Next::RunAction { position, .. } => Some(position),
            Next::Complete | Next::Failed { .. } => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Next::Complete | Next::Failed { .. })
    }
}

/// What caused a loop-back (or, without a loop or budget left, the failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopCause {
    AgentFailed { role: String },
    ActionExhausted { action: String, attempts: u32 },
}

impl fmt::Display for LoopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoopCause::AgentFailed { role } => write!(f, "agent `{role}` failed"),
            LoopCause::ActionExhausted { action, attempts } => {
                write!(f, "action `{action}` failed {attempts} times in a row")
            }
        }
    }
}

/// Why the executor failed a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailReason {
    #[error("{cause} at {at}, which no loop encloses, so there is nothing to retry")]
    NoEnclosingLoop { cause: LoopCause, at: String },
    #[error("{cause} and the retry would start round {round}, but max_task_rounds is {max}")]
    MaxRoundsReached {
        cause: LoopCause,
        round: u32,
        max: u32,
    },
}

/// A description of the transition, for events and findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The task entered its first step.
    Started,
    /// Moved on from `from` to the next step.
    Advanced {
        from: StepRef,
    },
    /// Gate still waiting or action asked to retry: same step, same counters.
    Stayed,
    /// An action error within budget: same step, `attempts` of `max` used.
    ActionErrorCounted {
        action: String,
        attempts: u32,
        max: u32,
    },
    /// Restarted the loop at `loop_at` (e.g. `pipeline[0].loop[0]`) in a new round.
    LoopedBack {
        cause: LoopCause,
        loop_at: String,
    },
    Completed,
    /// See the reason in [`Next::Failed`].
    Failed,
}

/// Result of [`Pipeline::start`] / [`Pipeline::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub next: Next,
    pub round: u32,
    pub action_attempts: u32,
    pub change: Change,
}

impl Transition {
    /// The state to persist for a non-terminal task.
    pub fn progress(&self) -> Option<Progress> {
        self.next.position().map(|p| Progress {
            position: p.clone(),
            round: self.round,
            action_attempts: self.action_attempts,
        })
    }

    /// The gate the task has just arrived at (not one it was already waiting at): the moment
    /// to notify humans, exactly once per arrival.
    pub fn entered_gate(&self) -> Option<&str> {
        match (&self.next, &self.change) {
            (_, Change::Stayed) => None,
            (Next::WaitAtGate { gate, .. }, _) => Some(gate),
            _ => None,
        }
    }

    /// Writes the outcome into the task: status, position, counters, failure reason.
    /// The coordinator owns status; this is the one place that maps executor output onto it.
    pub fn apply_to(&self, task: &mut Task) {
        task.round = self.round;
        task.action_attempts = self.action_attempts;
        task.position = self.next.position().cloned();
        match &self.next {
            Next::Complete => {
                task.status = TaskStatus::Complete;
                task.failure = None;
            }
            Next::Failed { reason } => {
                task.status = TaskStatus::Failed;
                task.failure = Some(reason.to_string());
            }
            _ => {
                task.status = TaskStatus::InProgress;
                task.failure = None;
            }
        }
    }
}

/// An executor call that cannot be applied. None of these change state; the caller decides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error(
        "position {position} belongs to pipeline {}, but the current pipeline is {current}; relocate the task first",
        .position.pipeline()
    )]
    PipelineChanged {
        position: Position,
        current: Fingerprint,
    },
    #[error(
        "position {position} does not point at `{}` in this pipeline (edited or corrupt state); relocate the task",
        .position.step()
    )]
    PositionMismatch { position: Position },
    #[error("{outcome} cannot be applied at `{step}`")]
    OutcomeMismatch { step: StepRef, outcome: Outcome },
    #[error("task {task} is {status} but has no pipeline position")]
    MissingPosition { task: String, status: TaskStatus },
}

/// Result of [`Pipeline::relocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocation {
    pub progress: Progress,
    pub kind: RelocationKind,
}

/// How a position was carried over to the current pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelocationKind {
    /// Same pipeline; nothing to do.
    Unchanged,
    /// The pipeline changed but the same step is still at the same path.
    Kept,
    /// The step moved; it occurs exactly once in the new pipeline, so the task follows it.
    Moved { from: String, to: String },
    /// The step is gone or ambiguous; the task restarts at the first step, round kept.
    Restarted { reason: RestartReason, from: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartReason {
    StepRemoved { step: StepRef },
    StepAmbiguous { step: StepRef, occurrences: usize },
}

impl Relocation {
    /// True when a step running for the old position must be cancelled: its result would be
    /// applied at a step with a different identity.
    pub fn invalidates_running_step(&self) -> bool {
        matches!(self.kind, RelocationKind::Restarted { .. })
    }

    /// A finding the coordinator records when the pipeline changed under the task in a way
    /// that moved it; `None` when it stayed put.
    pub fn finding(&self) -> Option<String> {
        let now = &self.progress.position;
        match &self.kind {
            RelocationKind::Unchanged | RelocationKind::Kept => None,
            RelocationKind::Moved { from, to } => Some(format!(
                "the pipeline changed: step `{}` moved from {from} to {to}; the task follows it",
                now.step
            )),
            RelocationKind::Restarted { reason, from } => {
                let why = match reason {
                    RestartReason::StepRemoved { step } => {
                        format!("step `{step}` at {from} no longer exists")
                    }
                    RestartReason::StepAmbiguous { step, occurrences } => format!(
                        "step `{step}` at {from} now occurs {occurrences} times and the old path points elsewhere"
                    ),
                };
                Some(format!(
                    "the pipeline changed: {why}; the task restarts at {} (`{}`) in round {}",
                    now.path_label(),
                    now.step,
                    self.progress.round
                ))
            }
        }
    }
}

impl Pipeline {
    /// A new task enters the pipeline at its first step (which may be a gate or an action).
    pub fn start(&self) -> Transition {
        Transition {
            next: Next::at(self.first_position()),
            round: 0,
            action_attempts: 0,
            change: Change::Started,
        }
    }

    /// What to do at a persisted position (e.g. after a restart).
    ///
    /// # Errors
    /// [`StepError::PipelineChanged`] or [`StepError::PositionMismatch`]: call
    /// [`Pipeline::relocate`] first.
    pub fn next_at(&self, position: &Position) -> Result<Next, StepError> {
        self.check(position)?;
        Ok(Next::at(position.clone()))
    }

    /// Applies an outcome at the task's current step.
    ///
    /// # Errors
    /// A stale or mismatched position, or an outcome of the wrong kind for the step (an agent
    /// verdict at a gate, …). The input is left as it was.
    pub fn apply(
        &self,
        progress: &Progress,
        outcome: Outcome,
        limits: Limits,
    ) -> Result<Transition, StepError> {
        let position = &progress.position;
        self.check(position)?;
        let stay = |attempts, change| Transition {
            next: Next::at(position.clone()),
            round: progress.round,
            action_attempts: attempts,
            change,
        };
        let step = &position.step;
        match (step.kind, outcome) {
            (StepKind::Agent, Outcome::Agent(Verdict::Pass))
            | (StepKind::Gate, Outcome::Gate(GateCheck::Cleared))
            | (StepKind::Action, Outcome::Action(ActionOutcome::Success)) => {
                Ok(self.advance(progress))
            }
            (StepKind::Gate, Outcome::Gate(GateCheck::Waiting))
            | (StepKind::Action, Outcome::Action(ActionOutcome::Retry)) => {
                Ok(stay(progress.action_attempts, Change::Stayed))
            }
            (StepKind::Agent, Outcome::Agent(Verdict::Fail)) => Ok(self.loop_back(
                progress,
                LoopCause::AgentFailed {
                    role: step.name.clone(),
                },
                limits,
            )),
            (StepKind::Action, Outcome::Action(ActionOutcome::Error)) => {
                let attempts = progress.action_attempts.saturating_add(1);
                if attempts < limits.attempts() {
                    Ok(stay(
                        attempts,
                        Change::ActionErrorCounted {
                            action: step.name.clone(),
                            attempts,
                            max: limits.attempts(),
                        },
                    ))
                } else {
                    let cause = LoopCause::ActionExhausted {
                        action: step.name.clone(),
                        attempts,
                    };
                    Ok(self.loop_back(progress, cause, limits))
                }
            }
            _ => Err(StepError::OutcomeMismatch {
                step: step.clone(),
                outcome,
            }),
        }
    }

    /// Carries a position computed against an older pipeline over to this one. Policy:
    /// 1. same fingerprint and the path still names the same step → unchanged;
    /// 2. the path still resolves to a step of the same kind and name → kept there;
    /// 3. that step identity occurs exactly once in this pipeline → moved there;
    /// 4. otherwise → restart at the first step, keeping the round (the task's history and
    ///    budget stay), resetting the action counter; [`Relocation::finding`] explains it.
    pub fn relocate(&self, progress: &Progress) -> Relocation {
        let old = &progress.position;
        let same_step_at_path = self
            .node(&old.path)
            .and_then(Step::leaf)
            .is_some_and(|(kind, name)| kind == old.step.kind && name == old.step.name);
        if same_step_at_path {
            let kind = if old.pipeline == self.fingerprint() {
                RelocationKind::Unchanged
            } else {
                RelocationKind::Kept
            };
            let mut progress = progress.clone();
            progress.position.pipeline = self.fingerprint();
            return Relocation { progress, kind };
        }
        let matches: Vec<Vec<u32>> = self
            .leaves()
            .into_iter()
            .filter(|(_, s)| *s == old.step)
            .map(|(path, _)| path)
            .collect();
        let (position, kind) = match matches.as_slice() {
            [only] => {
                let position = self.descend(only.clone());
                let kind = RelocationKind::Moved {
                    from: old.path_label(),
                    to: position.path_label(),
                };
                (position, kind)
            }
            several => {
                let reason = if several.is_empty() {
                    RestartReason::StepRemoved {
                        step: old.step.clone(),
                    }
                } else {
                    RestartReason::StepAmbiguous {
                        step: old.step.clone(),
                        occurrences: several.len(),
                    }
                };
                let from = old.path_label();
                (
                    self.first_position(),
                    RelocationKind::Restarted { reason, from },
                )
            }
        };
        Relocation {
            progress: Progress {
                position,
                round: progress.round,
                action_attempts: 0,
            },
            kind,
        }
    }

    fn check(&self, position: &Position) -> Result<(), StepError> {
        if position.pipeline != self.fingerprint() {
            return Err(StepError::PipelineChanged {
                position: position.clone(),
                current: self.fingerprint(),
            });
        }
        match self.node(&position.path).and_then(Step::leaf) {
            Some((kind, name)) if kind == position.step.kind && name == position.step.name => {
                Ok(())
            }
            _ => Err(StepError::PositionMismatch {
                position: position.clone(),
            }),
        }
    }

    /// The leaf after `path` in execution order: the next sibling (descending into loops),
    /// or, past the end of a loop, the step after the loop.
    fn next_leaf(&self, path: &[u32]) -> Option<Position> {
        let mut path = path.to_vec();
        while let Some(last) = path.pop() {
            let siblings = if path.is_empty() {
                self.steps().len()
            } else {
                match self.node(&path) {
                    Some(Step::Loop(children)) => children.len(),
                    _ => 0,
                }
            };
            let next = last.saturating_add(1);
            if (next as usize) < siblings {
                path.push(next);
                return Some(self.descend(path));
            }
        }
        None
    }

    fn advance(&self, progress: &Progress) -> Transition {
        let from = progress.position.step.clone();
        match self.next_leaf(&progress.position.path) {
            Some(position) => Transition {
                next: Next::at(position),
                round: progress.round,
                action_attempts: 0,
                change: Change::Advanced { from },
            },
            None => Transition {
                next: Next::Complete,
                round: progress.round,
                action_attempts: 0,
                change: Change::Completed,
            },
        }
    }

    /// Every leaf below the top level sits directly in a loop (only loops have children), so
    /// the innermost enclosing loop is the parent path.
    fn loop_back(&self, progress: &Progress, cause: LoopCause, limits: Limits) -> Transition {
        let path = &progress.position.path;
        let failed = |reason, round| Transition {
            next: Next::Failed { reason },
            round,
            action_attempts: 0,
            change: Change::Failed,
        };
        if path.len() < 2 {
            let at = path_label(path);
            return failed(FailReason::NoEnclosingLoop { cause, at }, progress.round);
        }
        let round = progress.round.saturating_add(1);
        if round >= limits.rounds() {
            let max = limits.rounds();
            return failed(FailReason::MaxRoundsReached { cause, round, max }, round);
        }
        let loop_path = path[..path.len() - 1].to_vec();
        let loop_at = path_label(&loop_path);
        let mut first = loop_path;
        first.push(0);
        Transition {
            next: Next::at(self.descend(first)),
            round,
            action_attempts: 0,
            change: Change::LoopedBack { cause, loop_at },
        }
    }
}

impl Task {
    /// The executor state of an in-progress task.
    ///
    /// # Errors
    /// [`StepError::MissingPosition`] when an in-progress task has no position (state written
    /// by something other than [`Transition::apply_to`]).
    pub fn progress(&self) -> Result<Option<Progress>, StepError> {
        match (&self.position, self.status) {
            (Some(position), _) => Ok(Some(Progress {
                position: position.clone(),
                round: self.round,
                action_attempts: self.action_attempts,
            })),
            (None, TaskStatus::InProgress) => Err(StepError::MissingPosition {
                task: self.id.to_string(),
                status: self.status,
            }),
            (None, _) => Ok(None),
        }
    }
}
