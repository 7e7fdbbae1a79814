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
            Outcome::Gate(GateCheck::Failed) => f.write_str("gate failed"),
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
    /// It will not clear as things are: the enclosing loop starts over (with the findings).
    Failed,
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
    AgentFailed {
        role: String,
    },
    ActionExhausted {
        action: String,
        attempts: u32,
    },
    /// A gate that can no longer clear as things are (a failing CI check).
    GateFailed {
        gate: String,
    },
}

impl fmt::Display for LoopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoopCause::AgentFailed { role } => write!(f, "agent `{role}` failed"),
            LoopCause::ActionExhausted { action, attempts } => {
                write!(f, "action `{action}` failed {attempts} times in a row")
            }
            LoopCause::GateFailed { gate } => write!(f, "gate `{gate}` failed"),
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
    /// Stopped from outside the pipeline: cancelled by an operator, its spec deleted, or a
    /// dependency failed. The text says which.
    #[error("{0}")]
    Stopped(String),
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

    /// Stops an unfinished task from outside the pipeline (cancel, spec deleted, dependency
    /// failed): it fails with `reason` and keeps its counters.
    ///
    /// # Errors
    /// [`StepError::AlreadyFinished`] for a complete or failed task.
    pub fn stop(task: &Task, reason: String) -> Result<Transition, StepError> {
        if task.status.is_terminal() {
            return Err(StepError::AlreadyFinished {
                task: task.id.to_string(),
                status: task.status,
            });
        }
        Ok(Transition {
            next: Next::Failed {
                reason: FailReason::Stopped(reason),
            },
            round: task.round,
            action_attempts: task.action_attempts,
            change: Change::Failed,
        })
    }

    /// Writes the outcome into the task: status, position, counters, failure reason.
    /// The coordinator owns status; this is the one place that maps executor output onto it.
    pub fn apply_to(&self, task: &mut Task) {
        // Any outcome ends a wait for a retry; a transient failure sets a new one after.
        task.retry = None;
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
    #[error("task {task} is already {status}; a finished task cannot be stopped")]
    AlreadyFinished { task: String, status: TaskStatus },
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
            (StepKind::Gate, Outcome::Gate(GateCheck::Failed)) => Ok(self.loop_back(
                progress,
                LoopCause::GateFailed {
                    gate: step.name.clone(),
                },
                limits,
            )),
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

    pub(crate) fn check(&self, position: &Position) -> Result<(), StepError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn a(role: &str) -> Step {
        Step::agent(role)
    }
    fn g(name: &str) -> Step {
        Step::gate(name)
    }
    fn x(name: &str) -> Step {
        Step::action(name)
    }
    fn l(steps: Vec<Step>) -> Step {
        Step::Loop(steps)
    }
    fn pl(steps: Vec<Step>) -> Pipeline {
        Pipeline::new(steps).unwrap()
    }

    const LIMITS: Limits = Limits {
        max_task_rounds: 10,
        max_action_attempts: 3,
    };

    fn show_state(t: &Transition) -> String {
        match &t.next {
            Next::Complete => format!("complete r{}", t.round),
            Next::Failed { reason } => format!("failed r{}: {reason}", t.round),
            next => {
                let p = next.position().unwrap();
                let path: Vec<String> = p.path().iter().map(u32::to_string).collect();
                let mut s = format!(
                    "{} {}:{} r{}",
                    path.join("."),
                    p.step().kind,
                    p.step().name,
                    t.round
                );
                if t.action_attempts > 0 {
                    s.push_str(&format!(" a{}", t.action_attempts));
                }
                s
            }
        }
    }

    fn outcome(word: &str) -> Outcome {
        match word {
            "pass" => Outcome::Agent(Verdict::Pass),
            "fail" => Outcome::Agent(Verdict::Fail),
            "wait" => Outcome::Gate(GateCheck::Waiting),
            "clear" => Outcome::Gate(GateCheck::Cleared),
            "gatefail" => Outcome::Gate(GateCheck::Failed),
            "ok" => Outcome::Action(ActionOutcome::Success),
            "retry" => Outcome::Action(ActionOutcome::Retry),
            "err" => Outcome::Action(ActionOutcome::Error),
            other => panic!("unknown outcome word {other}"),
        }
    }

    /// Starts a task, feeds it the outcomes, and renders every state it passes through,
    /// separated by ` | `.
    fn trace(p: &Pipeline, limits: Limits, outcomes: &str) -> String {
        let mut t = p.start();
        let mut out = vec![show_state(&t)];
        for word in outcomes.split_whitespace() {
            let progress = t.progress().expect("outcome given after the task ended");
            t = p.apply(&progress, outcome(word), limits).unwrap();
            out.push(show_state(&t));
        }
        out.join(" | ")
    }

    fn check(p: &Pipeline, outcomes: &str, expected: &str) {
        check_with(p, LIMITS, outcomes, expected);
    }

    fn check_with(p: &Pipeline, limits: Limits, outcomes: &str, expected: &str) {
        assert_eq!(trace(p, limits, outcomes), expected, "outcomes: {outcomes}");
    }

    #[test]
    fn passes_walk_the_pipeline_to_completion() {
        let p = pl(vec![a("impl"), a("verif")]);
        check(
            &p,
            "pass pass",
            "0 agent:impl r0 | 1 agent:verif r0 | complete r0",
        );
    }

    #[test]
    fn a_fail_without_an_enclosing_loop_fails_the_task() {
        let p = pl(vec![a("impl"), a("verif")]);
        check(
            &p,
            "pass fail",
            "0 agent:impl r0 | 1 agent:verif r0 | failed r0: agent `verif` failed at pipeline[1], which no loop encloses, so there is nothing to retry",
        );
    }

    #[test]
    fn a_verifier_fail_restarts_the_loop_in_a_new_round() {
        let p = pl(vec![l(vec![a("impl"), a("verif")]), x("merge-pr")]);
        check(
            &p,
            "pass fail pass pass ok",
            "0.0 agent:impl r0 | 0.1 agent:verif r0 | 0.0 agent:impl r1 | 0.1 agent:verif r1 | 1 action:merge-pr r1 | complete r1",
        );
    }

    #[test]
    fn a_fail_of_the_first_step_in_a_loop_restarts_at_that_same_step() {
        let p = pl(vec![l(vec![a("impl"), a("verif")])]);
        check(&p, "fail", "0.0 agent:impl r0 | 0.0 agent:impl r1");
    }

    #[test]
    fn nested_loops_inner_fail_restarts_the_inner_loop_and_outer_fail_the_outer_loop() {
        // The seed's example: loop(loop(impl, verif), security), gate, merge.
        let p = pl(vec![
            l(vec![l(vec![a("impl"), a("verif")]), a("security")]),
            g("human"),
            x("merge-pr"),
        ]);
        check(
            &p,
            "pass fail pass pass fail pass pass pass wait clear ok",
            "0.0.0 agent:impl r0 | 0.0.1 agent:verif r0 | 0.0.0 agent:impl r1 | 0.0.1 agent:verif r1 \
             | 0.1 agent:security r1 | 0.0.0 agent:impl r2 | 0.0.1 agent:verif r2 | 0.1 agent:security r2 \
             | 1 gate:human r2 | 1 gate:human r2 | 2 action:merge-pr r2 | complete r2",
        );
    }

    #[test]
    fn a_failed_gate_restarts_its_loop_and_fails_the_task_outside_one() {
        let p = pl(vec![l(vec![a("impl"), g("ci")]), x("merge-pr")]);
        check(
            &p,
            "pass wait gatefail pass clear ok",
            "0.0 agent:impl r0 | 0.1 gate:ci r0 | 0.1 gate:ci r0 | 0.0 agent:impl r1 \
             | 0.1 gate:ci r1 | 1 action:merge-pr r1 | complete r1",
        );
        let p = pl(vec![a("impl"), g("ci")]);
        let t = p.start();
        let t = p
            .apply(&t.progress().unwrap(), outcome("pass"), LIMITS)
            .unwrap();
        let t = p
            .apply(&t.progress().unwrap(), outcome("gatefail"), LIMITS)
            .unwrap();
        assert!(matches!(t.next, Next::Failed { .. }), "{t:?}");
    }

    #[test]
    fn an_inner_loop_after_outer_steps_retries_without_repeating_them() {
        let p = pl(vec![l(vec![a("plan"), l(vec![a("impl"), a("verif")])])]);
        check(
            &p,
            "pass pass fail pass pass",
            "0.0 agent:plan r0 | 0.1.0 agent:impl r0 | 0.1.1 agent:verif r0 | 0.1.0 agent:impl r1 \
             | 0.1.1 agent:verif r1 | complete r1",
        );
    }

    #[test]
    fn the_task_fails_when_a_loop_back_would_reach_max_task_rounds() {
        let p = pl(vec![l(vec![a("impl"), a("verif")])]);
        let limits = Limits {
            max_task_rounds: 3,
            max_action_attempts: 3,
        };
        check_with(
            &p,
            limits,
            "pass fail pass fail pass fail",
            "0.0 agent:impl r0 | 0.1 agent:verif r0 | 0.0 agent:impl r1 | 0.1 agent:verif r1 \
             | 0.0 agent:impl r2 | 0.1 agent:verif r2 | failed r3: agent `verif` failed and the retry \
             would start round 3, but max_task_rounds is 3",
        );
    }

    #[test]
    fn zero_limits_behave_as_one() {
        let p = pl(vec![l(vec![a("impl")]), l(vec![x("merge-pr")])]);
        let zero = Limits {
            max_task_rounds: 0,
            max_action_attempts: 0,
        };
        check_with(
            &p,
            zero,
            "fail",
            "0.0 agent:impl r0 | failed r1: agent `impl` failed and the retry would start round 1, but max_task_rounds is 1",
        );
        check_with(
            &p,
            zero,
            "pass err",
            "0.0 agent:impl r0 | 1.0 action:merge-pr r0 | failed r1: action `merge-pr` failed 1 times in a row and the retry would start round 1, but max_task_rounds is 1",
        );
    }

    #[test]
    fn action_retry_stays_without_counting_and_errors_count_until_success_resets() {
        let p = pl(vec![l(vec![a("impl"), x("merge-pr")])]);
        check(
            &p,
            "pass retry err retry err ok",
            "0.0 agent:impl r0 | 0.1 action:merge-pr r0 | 0.1 action:merge-pr r0 | 0.1 action:merge-pr r0 a1 \
             | 0.1 action:merge-pr r0 a1 | 0.1 action:merge-pr r0 a2 | complete r0",
        );
    }

    #[test]
    fn exhausted_action_attempts_restart_the_enclosing_loop_with_a_fresh_budget() {
        let p = pl(vec![l(vec![a("impl"), x("merge-pr")])]);
        check(
            &p,
            "pass err err err pass err",
            "0.0 agent:impl r0 | 0.1 action:merge-pr r0 | 0.1 action:merge-pr r0 a1 | 0.1 action:merge-pr r0 a2 \
             | 0.0 agent:impl r1 | 0.1 action:merge-pr r1 | 0.1 action:merge-pr r1 a1",
        );
    }

    #[test]
    fn exhausted_action_attempts_without_a_loop_fail_the_task() {
        let p = pl(vec![l(vec![a("impl")]), x("merge-pr")]);
        check(
            &p,
            "pass err err err",
            "0.0 agent:impl r0 | 1 action:merge-pr r0 | 1 action:merge-pr r0 a1 | 1 action:merge-pr r0 a2 \
             | failed r0: action `merge-pr` failed 3 times in a row at pipeline[1], which no loop encloses, so there is nothing to retry",
        );
    }

    #[test]
    fn a_pipeline_may_start_with_a_gate_or_an_action() {
        let p = pl(vec![g("triage"), a("impl")]);
        assert!(matches!(p.start().next, Next::WaitAtGate { ref gate, .. } if gate == "triage"));
        assert_eq!(p.first_step_kind(), StepKind::Gate);
        check(
            &p,
            "wait clear pass",
            "0 gate:triage r0 | 0 gate:triage r0 | 1 agent:impl r0 | complete r0",
        );
        let p = pl(vec![l(vec![x("mark-pr-ready"), a("impl")])]);
        assert!(
            matches!(p.start().next, Next::RunAction { ref action, .. } if action == "mark-pr-ready")
        );
    }

    #[test]
    fn entering_a_gate_is_reported_once_not_on_every_check() {
        let p = pl(vec![a("impl"), g("lgtm")]);
        let t = p.start();
        assert_eq!(t.entered_gate(), None);
        let t = p
            .apply(&t.progress().unwrap(), outcome("pass"), LIMITS)
            .unwrap();
        assert_eq!(t.entered_gate(), Some("lgtm"));
        let t = p
            .apply(&t.progress().unwrap(), outcome("wait"), LIMITS)
            .unwrap();
        assert_eq!(t.change, Change::Stayed);
        assert_eq!(t.entered_gate(), None);
        // A pipeline that starts at a gate enters it on start.
        assert_eq!(pl(vec![g("lgtm")]).start().entered_gate(), Some("lgtm"));
    }

    #[test]
    fn duplicate_step_names_keep_distinct_positions_and_retry_their_own_loop() {
        let p = pl(vec![
            l(vec![a("impl"), a("verif")]),
            l(vec![a("impl"), a("verif")]),
        ]);
        check(
            &p,
            "pass pass pass fail pass pass",
            "0.0 agent:impl r0 | 0.1 agent:verif r0 | 1.0 agent:impl r0 | 1.1 agent:verif r0 \
             | 1.0 agent:impl r1 | 1.1 agent:verif r1 | complete r1",
        );
    }

    #[test]
    fn transitions_describe_what_happened() {
        let p = pl(vec![l(vec![a("impl"), a("verif")]), x("merge-pr")]);
        let t0 = p.start();
        assert_eq!(t0.change, Change::Started);
        let t1 = p
            .apply(&t0.progress().unwrap(), outcome("pass"), LIMITS)
            .unwrap();
        assert_eq!(
            t1.change,
            Change::Advanced {
                from: StepRef::new(StepKind::Agent, "impl")
            }
        );
        let t2 = p
            .apply(&t1.progress().unwrap(), outcome("fail"), LIMITS)
            .unwrap();
        assert_eq!(
            t2.change,
            Change::LoopedBack {
                cause: LoopCause::AgentFailed {
                    role: "verif".into()
                },
                loop_at: "pipeline[0]".into()
            }
        );
    }

    #[test]
    fn an_outcome_of_the_wrong_kind_is_an_error_not_a_transition() {
        let p = pl(vec![a("impl"), g("lgtm"), x("merge-pr")]);
        let at_agent = p.start().progress().unwrap();
        for word in ["wait", "clear", "ok", "retry", "err"] {
            let err = p.apply(&at_agent, outcome(word), LIMITS).unwrap_err();
            assert!(
                matches!(err, StepError::OutcomeMismatch { .. }),
                "{word}: {err}"
            );
        }
        let err = p.apply(&at_agent, outcome("clear"), LIMITS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "gate cleared cannot be applied at `agent: impl`"
        );
    }

    #[test]
    fn a_position_from_another_pipeline_is_refused_until_relocated() {
        let old = pl(vec![a("impl"), a("verif")]);
        let new = pl(vec![a("impl"), a("verif"), x("merge-pr")]);
        let progress = old.start().progress().unwrap();
        let err = new.apply(&progress, outcome("pass"), LIMITS).unwrap_err();
        assert!(matches!(err, StepError::PipelineChanged { .. }), "{err}");
        assert!(new.next_at(&progress.position).is_err());
        let moved = new.relocate(&progress);
        assert_eq!(moved.kind, RelocationKind::Kept);
        assert!(new.apply(&moved.progress, outcome("pass"), LIMITS).is_ok());
    }

    #[test]
    fn a_tampered_position_is_refused() {
        let p = pl(vec![a("impl"), a("verif")]);
        let mut progress = p.start().progress().unwrap();
        progress.position.step.name = "verif".into();
        let err = p.apply(&progress, outcome("pass"), LIMITS).unwrap_err();
        assert!(matches!(err, StepError::PositionMismatch { .. }), "{err}");
    }

    /// Relocates the task sitting at `at` (a path in `old`) into `new`, rendering the result.
    fn relocation(old: &Pipeline, at: &[u32], new: &Pipeline) -> String {
        let progress = Progress {
            position: old.descend(at.to_vec()),
            round: 4,
            action_attempts: 2,
        };
        let r = new.relocate(&progress);
        assert!(
            new.next_at(&r.progress.position).is_ok(),
            "relocated position must resolve"
        );
        let path: Vec<String> = r
            .progress
            .position
            .path()
            .iter()
            .map(u32::to_string)
            .collect();
        let kind = match &r.kind {
            RelocationKind::Unchanged => "unchanged",
            RelocationKind::Kept => "kept",
            RelocationKind::Moved { .. } => "moved",
            RelocationKind::Restarted { .. } => "restarted",
        };
        format!(
            "{kind} {} {} r{} a{}",
            path.join("."),
            r.progress.position.step(),
            r.progress.round,
            r.progress.action_attempts
        )
    }

    #[test]
    fn pipeline_changes_under_a_running_task_follow_the_documented_policy() {
        let base = pl(vec![
            l(vec![a("impl"), a("verif")]),
            g("lgtm"),
            x("merge-pr"),
        ]);
        let cases: Vec<(&str, Pipeline, &[u32], &str)> = vec![
            (
                "same pipeline",
                base.clone(),
                &[0, 1],
                "unchanged 0.1 agent: verif r4 a2",
            ),
            (
                "a step appended after the task's step",
                pl(vec![
                    l(vec![a("impl"), a("verif")]),
                    g("lgtm"),
                    x("merge-pr"),
                    x("mark-pr-ready"),
                ]),
                &[1],
                "kept 1 gate: lgtm r4 a2",
            ),
            (
                "a step inserted before the task's step",
                pl(vec![
                    l(vec![a("impl"), a("lint"), a("verif")]),
                    g("lgtm"),
                    x("merge-pr"),
                ]),
                &[0, 1],
                "moved 0.2 agent: verif r4 a0",
            ),
            (
                "the task's loop unwrapped",
                pl(vec![a("impl"), a("verif"), g("lgtm"), x("merge-pr")]),
                &[2],
                "moved 3 action: merge-pr r4 a0",
            ),
            (
                "the task's step removed",
                pl(vec![l(vec![a("impl"), a("verif")]), x("merge-pr")]),
                &[1],
                "restarted 0.0 agent: impl r4 a0",
            ),
            (
                "the task's step renamed",
                pl(vec![
                    l(vec![a("impl"), a("checker")]),
                    g("lgtm"),
                    x("merge-pr"),
                ]),
                &[0, 1],
                "restarted 0.0 agent: impl r4 a0",
            ),
            (
                "the task's step now ambiguous and its path points elsewhere",
                pl(vec![
                    a("verif"),
                    l(vec![a("impl"), a("verif")]),
                    g("lgtm"),
                    x("merge-pr"),
                ]),
                &[0, 1],
                "restarted 0 agent: verif r4 a0",
            ),
            (
                "the task's step duplicated but still at its path",
                pl(vec![
                    l(vec![a("impl"), a("verif")]),
                    a("verif"),
                    g("lgtm"),
                    x("merge-pr"),
                ]),
                &[0, 1],
                "kept 0.1 agent: verif r4 a2",
            ),
        ];
        for (what, new, at, expected) in cases {
            assert_eq!(relocation(&base, at, &new), expected, "{what}");
        }
    }

    #[test]
    fn relocation_findings_say_what_changed_and_where_the_task_went() {
        let old = pl(vec![l(vec![a("impl"), a("verif")]), g("lgtm")]);
        let new = pl(vec![l(vec![a("impl"), a("verif")])]);
        let progress = Progress {
            position: old.descend(vec![1]),
            round: 2,
            action_attempts: 0,
        };
        let r = new.relocate(&progress);
        assert!(r.invalidates_running_step());
        assert_eq!(
            r.finding().unwrap(),
            "the pipeline changed: step `gate: lgtm` at pipeline[1] no longer exists; the task \
             restarts at pipeline[0].loop[0] (`agent: impl`) in round 2"
        );
        let same = old.relocate(&progress);
        assert_eq!(same.finding(), None);
        assert!(!same.invalidates_running_step());
    }

    #[test]
    fn fingerprints_are_pinned_so_persisted_positions_stay_valid_across_releases() {
        let p = pl(vec![
            l(vec![a("implementer"), a("verifier")]),
            x("merge-pr"),
        ]);
        // If this changes, every persisted position relocates once: only change it on purpose.
        assert_eq!(p.fingerprint(), Fingerprint(PINNED_DEFAULT_FINGERPRINT));
    }

    const PINNED_DEFAULT_FINGERPRINT: u64 = 0xf5af130fd97d5979;

    #[test]
    fn fingerprints_distinguish_nesting_kinds_and_names() {
        let variants = [
            pl(vec![l(vec![a("a")]), a("b")]),
            pl(vec![l(vec![a("a"), a("b")])]),
            pl(vec![a("a"), a("b")]),
            pl(vec![a("a"), g("b")]),
            pl(vec![a("ab")]),
            pl(vec![a("a"), x("b")]),
            pl(vec![a("b"), a("a")]),
        ];
        for (i, p) in variants.iter().enumerate() {
            for q in &variants[i + 1..] {
                assert_ne!(p.fingerprint(), q.fingerprint(), "{p:?} vs {q:?}");
            }
        }
    }

    #[test]
    fn transitions_write_status_position_counters_and_failure_into_the_task() {
        let p = pl(vec![l(vec![a("impl")]), x("merge-pr")]);
        let mut task = Task::new(
            crate::model::TaskId(1),
            "t",
            "specs/a.md@abcd".parse().unwrap(),
        );
        assert_eq!(task.progress(), Ok(None));
        p.start().apply_to(&mut task);
        assert_eq!(task.status, TaskStatus::InProgress);
        let t = p
            .apply(&task.progress().unwrap().unwrap(), outcome("pass"), LIMITS)
            .unwrap();
        t.apply_to(&mut task);
        let t = p
            .apply(&task.progress().unwrap().unwrap(), outcome("err"), LIMITS)
            .unwrap();
        t.apply_to(&mut task);
        assert_eq!(task.action_attempts, 1);
        assert_eq!(
            task.position
                .as_ref()
                .unwrap()
                .to_string()
                .split('@')
                .next(),
            Some("1/action:merge-pr")
        );
        for _ in 0..2 {
            let t = p
                .apply(&task.progress().unwrap().unwrap(), outcome("err"), LIMITS)
                .unwrap();
            t.apply_to(&mut task);
        }
        assert_eq!(task.status, TaskStatus::Failed);
        assert_eq!(task.position, None);
        assert!(task.failure.as_deref().unwrap().contains("merge-pr"));

        let mut broken = task.clone();
        broken.status = TaskStatus::InProgress;
        assert!(matches!(
            broken.progress(),
            Err(StepError::MissingPosition { .. })
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Random nested pipelines over a small name pool, so duplicate names are common.
        fn steps() -> impl Strategy<Value = Vec<Step>> {
            let leaf = prop_oneof![
                3 => prop::sample::select(vec!["a", "b", "c"]).prop_map(a),
                1 => prop::sample::select(vec!["g", "h"]).prop_map(g),
                1 => prop::sample::select(vec!["x", "y"]).prop_map(x),
            ];
            let tree = leaf.prop_recursive(4, 24, 4, |inner| {
                prop::collection::vec(inner, 1..4).prop_map(Step::Loop)
            });
            prop::collection::vec(tree, 1..5)
        }

        fn limits() -> impl Strategy<Value = Limits> {
            (0u32..5, 0u32..4).prop_map(|(r, a)| Limits {
                max_task_rounds: r,
                max_action_attempts: a,
            })
        }

        /// An outcome that fits the step kind, picked by `choice`. With `allow_stay`, gates may
        /// keep waiting and actions may ask to retry.
        fn outcome_for(kind: StepKind, choice: u8, allow_stay: bool) -> Outcome {
            let stay = allow_stay && choice % 5 == 4;
            match kind {
                StepKind::Agent if choice.is_multiple_of(2) => Outcome::Agent(Verdict::Pass),
                StepKind::Agent => Outcome::Agent(Verdict::Fail),
                StepKind::Gate if stay => Outcome::Gate(GateCheck::Waiting),
                StepKind::Gate => Outcome::Gate(GateCheck::Cleared),
                StepKind::Action if stay => Outcome::Action(ActionOutcome::Retry),
                StepKind::Action if choice.is_multiple_of(3) => {
                    Outcome::Action(ActionOutcome::Error)
                }
                StepKind::Action => Outcome::Action(ActionOutcome::Success),
            }
        }

        /// Within one round no step is visited twice (a revisit needs a loop-back, which
        /// starts a new round), and each visit absorbs at most `attempts` outcomes.
        fn bound(p: &Pipeline, limits: Limits) -> usize {
            let per_round = p.leaf_count() * limits.attempts() as usize;
            limits.rounds() as usize * per_round + 1
        }

        fn assert_valid(p: &Pipeline, t: &Transition, limits: Limits) {
            if let Some(pos) = t.next.position() {
                assert!(
                    p.next_at(pos).is_ok(),
                    "position {pos} must resolve to its leaf"
                );
                assert!(t.round < limits.rounds(), "round {} in flight", t.round);
                assert!(t.action_attempts < limits.attempts());
            }
        }

        proptest! {
            #[test]
            fn execution_terminates_within_the_bound_and_positions_stay_valid(
                steps in steps(),
                limits in limits(),
                choices in prop::collection::vec(any::<u8>(), 1..64),
            ) {
                let p = Pipeline::new(steps).unwrap();
                let bound = bound(&p, limits);
                let mut t = p.start();
                assert_valid(&p, &t, limits);
                prop_assert_eq!(Some(p.first_step_kind()), t.next.position().map(|pos| pos.step().kind));
                let mut moves = 0;
                // Cycle through the random choices until the task ends; stays are excluded
                // here because a gate may rightly wait forever.
                for &choice in choices.iter().cycle() {
                    let Some(progress) = t.progress() else { break };
                    let kind = progress.position.step().kind;
                    t = p.apply(&progress, outcome_for(kind, choice, false), limits).unwrap();
                    assert_valid(&p, &t, limits);
                    moves += 1;
                    prop_assert!(moves <= bound, "{moves} moves exceed the bound {bound}");
                }
                prop_assert!(t.next.is_terminal());
            }

            #[test]
            fn stays_change_nothing_and_every_state_resolves(
                steps in steps(),
                limits in limits(),
                choices in prop::collection::vec(any::<u8>(), 1..200),
            ) {
                let p = Pipeline::new(steps).unwrap();
                let mut t = p.start();
                let mut progress_moves = 0;
                for &choice in &choices {
                    let Some(progress) = t.progress() else { break };
                    let kind = progress.position.step().kind;
                    let next = p.apply(&progress, outcome_for(kind, choice, true), limits).unwrap();
                    assert_valid(&p, &next, limits);
                    if next.change == Change::Stayed {
                        prop_assert_eq!(next.progress(), Some(progress));
                    } else {
                        progress_moves += 1;
                    }
                    t = next;
                }
                prop_assert!(progress_moves <= bound(&p, limits));
            }

            #[test]
            fn positions_survive_a_serde_round_trip(steps in steps(), choices in prop::collection::vec(any::<u8>(), 0..20)) {
                let p = Pipeline::new(steps).unwrap();
                let mut t = p.start();
                for &choice in &choices {
                    let Some(progress) = t.progress() else { break };
                    let text = serde_json::to_string(&progress.position).unwrap();
                    let back: Position = serde_json::from_str(&text).unwrap();
                    prop_assert_eq!(&back, &progress.position);
                    let kind = progress.position.step().kind;
                    t = p.apply(&progress, outcome_for(kind, choice, true), LIMITS).unwrap();
                }
            }

            #[test]
            fn relocation_into_any_pipeline_yields_a_valid_position(
                old in steps(),
                new in steps(),
                choices in prop::collection::vec(any::<u8>(), 0..20),
            ) {
                let old = Pipeline::new(old).unwrap();
                let new = Pipeline::new(new).unwrap();
                let mut t = old.start();
                for &choice in &choices {
                    let Some(progress) = t.progress() else { break };
                    let kind = progress.position.step().kind;
                    let next = old.apply(&progress, outcome_for(kind, choice, true), LIMITS).unwrap();
                    if next.next.is_terminal() { break; }
                    t = next;
                }
                let progress = t.progress().unwrap();
                let r = new.relocate(&progress);
                prop_assert!(new.next_at(&r.progress.position).is_ok());
                prop_assert_eq!(r.progress.round, progress.round);
                let same_identity = r.progress.position.step() == progress.position.step();
                match r.kind {
                    RelocationKind::Restarted { .. } => {
                        prop_assert_eq!(&r.progress.position, &new.first_position());
                    }
                    _ => prop_assert!(same_identity),
                }
                // Relocating twice is a no-op.
                prop_assert_eq!(new.relocate(&r.progress).kind, RelocationKind::Unchanged);
            }
        }
    }

    #[test]
    fn stopping_a_task_fails_it_with_the_reason_and_a_finished_task_cannot_be_stopped() {
        let mut task = Task::new(
            crate::model::TaskId(4),
            "t".to_owned(),
            crate::model::SpecRef {
                path: crate::model::SpecPath::parse("specs/a.md").unwrap(),
                commit: "c".into(),
            },
        );
        task.round = 2;
        let stop = Transition::stop(&task, "cancelled by an operator".to_owned()).unwrap();
        stop.apply_to(&mut task);
        assert_eq!(task.status, TaskStatus::Failed);
        assert_eq!(task.round, 2);
        assert_eq!(task.position, None);
        assert_eq!(task.failure.as_deref(), Some("cancelled by an operator"));
        assert!(matches!(
            Transition::stop(&task, "again".to_owned()),
            Err(StepError::AlreadyFinished { .. })
        ));
    }
}
