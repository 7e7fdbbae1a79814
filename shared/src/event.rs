//! Domain events: a typed value for every interesting moment, numbered by the journal.
//! The coordinator appends them to a bounded journal in the state store and fans them out to
//! sinks (logs, `hyperloopctl get events`, the dashboard). Mirrors `hyperloop.v1.Event`.

use serde::{Deserialize, Serialize};

use crate::model::{SpecRef, TaskId, Verdict};
use crate::step::Usage;

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic per state store, starting at 1; assigned when the event is journaled.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The task the event is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Field names are the event schema: logs and the journal use them as-is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    CoordinatorStarted {
        version: String,
        mode: String,
    },
    CoordinatorHalted {
        reason: String,
        exit_code: i32,
    },
    LeaderElected {
        coordinator: String,
        term: u64,
    },
    CycleCompleted {
        cycle: u64,
        reaped: u32,
        advanced: u32,
        dispatched: u32,
    },
    Recovery {
        tasks_loaded: u32,
        attempts_resumed: u32,
        attempts_orphaned: u32,
    },
    OrphanFound {
        kind: String,
        name: String,
        action: String,
    },
    SpecChanged {
        path: String,
        change: SpecChange,
    },
    IntakeRun {
        changed_specs: Vec<String>,
        failures_considered: u32,
        created: Vec<TaskId>,
        rejected: Vec<String>,
    },
    TaskCreated {
        title: String,
        spec_ref: SpecRef,
        deps: Vec<TaskId>,
    },
    TaskAdvanced {
        from_step: String,
        to_step: String,
        /// The task's round (journals from before it was recorded read 0).
        #[serde(default)]
        round: u32,
        /// Set when the task arrived at a gate: which, and what clears it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gate: Option<GateWait>,
    },
    TaskLoopedBack {
        from_step: String,
        to_step: String,
        round: u32,
    },
    TaskCompleted {
        rounds: u32,
    },
    TaskFailed {
        reason: String,
    },
    TaskReset {
        reason: String,
    },
    TaskCancelled {
        reason: String,
    },
    SpecFailed {
        path: String,
        reason: String,
    },
    SpecRetried {
        path: String,
    },
    PromptComposed {
        role: String,
        round: u32,
        bytes: u64,
    },
    StepDispatched {
        step: String,
        role: String,
        round: u32,
        attempt: u64,
        worker: String,
    },
    SpawnFailed {
        step: String,
        role: String,
        reason: String,
    },
    ResultReaped {
        step: String,
        role: String,
        round: u32,
        attempt: u64,
        worker: String,
        verdict: Verdict,
        duration_ms: u64,
        /// Turns, cost and tokens as the runtime reported them.
        #[serde(default, skip_serializing_if = "Usage::is_zero")]
        usage: Usage,
    },
    ProcessImproved {
        verdict: Verdict,
        commit: Option<String>,
    },
    GateChecked {
        gate: String,
        cleared: bool,
    },
    GateCleared {
        gate: String,
        by: String,
    },
    BranchPushed {
        branch: String,
        commit: String,
        remote: String,
    },
    PrCreated {
        number: u64,
        url: String,
    },
    PrLabelled {
        number: u64,
        added: Vec<String>,
        removed: Vec<String>,
    },
    PrReady {
        number: u64,
    },
    Merged {
        branch: String,
        into: String,
        commit: String,
        strategy: String,
        /// From asking to land to landed, when this coordinator saw both.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    RebaseConflict {
        branch: String,
        attempt: u32,
        files: Vec<String>,
    },
    WorkerJoined {
        worker: String,
        capacity: u32,
    },
    WorkerLost {
        worker: String,
        reason: String,
    },
}

/// A gate a task arrived at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateWait {
    pub gate: String,
    /// What lets the task continue, for a person ("add the label `lgtm` to the pull
    /// request"; see [`crate::gates::clears`]).
    pub clears: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecChange {
    Added,
    Modified,
    Deleted,
}

/// Who a notification sink (chat room, webhook) tells about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// What a person acts on or wants to know: results, completions, failures, merges, a
    /// gate waiting for a human, a halt.
    Always,
    /// Progress detail: dispatches, cycles, intake runs, new tasks, workers coming and going.
    Verbose,
    /// Never sent: bookkeeping and phase transitions (the next event says what matters).
    Never,
}

impl Audience {
    /// Whether a sink that is `verbose` (or not) is told.
    pub fn reaches(self, verbose: bool) -> bool {
        match self {
            Audience::Always => true,
            Audience::Verbose => verbose,
            Audience::Never => false,
        }
    }
}

impl EventKind {
    /// Whom notification sinks tell about this event.
    pub fn audience(&self) -> Audience {
        match self {
            // Arriving at a gate step is when a person may be needed; other moves are noise.
            EventKind::TaskAdvanced { to_step, .. } if to_step.starts_with("gate: ") => {
                Audience::Always
            }
            EventKind::CoordinatorHalted { .. }
            | EventKind::TaskCreated { .. }
            | EventKind::TaskLoopedBack { .. }
            | EventKind::TaskReset { .. }
            | EventKind::TaskCompleted { .. }
            | EventKind::TaskFailed { .. }
            | EventKind::TaskCancelled { .. }
            | EventKind::SpecFailed { .. }
            | EventKind::ResultReaped { .. }
            | EventKind::SpawnFailed { .. }
            | EventKind::ProcessImproved { .. }
            | EventKind::GateChecked { cleared: false, .. }
            | EventKind::GateCleared { .. }
            | EventKind::PrCreated { .. }
            | EventKind::Merged { .. }
            | EventKind::RebaseConflict { .. }
            | EventKind::OrphanFound { .. }
            | EventKind::WorkerLost { .. } => Audience::Always,
            EventKind::CoordinatorStarted { .. }
            | EventKind::LeaderElected { .. }
            | EventKind::CycleCompleted { .. }
            | EventKind::Recovery { .. }
            | EventKind::SpecChanged { .. }
            | EventKind::IntakeRun { .. }
            | EventKind::SpecRetried { .. }
            | EventKind::StepDispatched { .. }
            | EventKind::BranchPushed { .. }
            | EventKind::PrReady { .. }
            | EventKind::PrLabelled { .. }
            | EventKind::WorkerJoined { .. } => Audience::Verbose,
            EventKind::TaskAdvanced { .. }
            | EventKind::PromptComposed { .. }
            | EventKind::GateChecked { cleared: true, .. } => Audience::Never,
        }
    }

    /// The snake_case name used in logs and filters.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::CoordinatorStarted { .. } => "coordinator_started",
            EventKind::CoordinatorHalted { .. } => "coordinator_halted",
            EventKind::LeaderElected { .. } => "leader_elected",
            EventKind::CycleCompleted { .. } => "cycle_completed",
            EventKind::Recovery { .. } => "recovery",
            EventKind::OrphanFound { .. } => "orphan_found",
            EventKind::SpecChanged { .. } => "spec_changed",
            EventKind::IntakeRun { .. } => "intake_run",
            EventKind::TaskCreated { .. } => "task_created",
            EventKind::TaskAdvanced { .. } => "task_advanced",
            EventKind::TaskLoopedBack { .. } => "task_looped_back",
            EventKind::TaskCompleted { .. } => "task_completed",
            EventKind::TaskFailed { .. } => "task_failed",
            EventKind::TaskReset { .. } => "task_reset",
            EventKind::TaskCancelled { .. } => "task_cancelled",
            EventKind::SpecFailed { .. } => "spec_failed",
            EventKind::SpecRetried { .. } => "spec_retried",
            EventKind::PromptComposed { .. } => "prompt_composed",
            EventKind::StepDispatched { .. } => "step_dispatched",
            EventKind::SpawnFailed { .. } => "spawn_failed",
            EventKind::ResultReaped { .. } => "result_reaped",
            EventKind::ProcessImproved { .. } => "process_improved",
            EventKind::GateChecked { .. } => "gate_checked",
            EventKind::GateCleared { .. } => "gate_cleared",
            EventKind::BranchPushed { .. } => "branch_pushed",
            EventKind::PrCreated { .. } => "pr_created",
            EventKind::PrLabelled { .. } => "pr_labelled",
            EventKind::PrReady { .. } => "pr_ready",
            EventKind::Merged { .. } => "merged",
            EventKind::RebaseConflict { .. } => "rebase_conflict",
            EventKind::WorkerJoined { .. } => "worker_joined",
            EventKind::WorkerLost { .. } => "worker_lost",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_hear_of_a_gate_arrival_always_of_dispatches_when_verbose_and_of_other_moves_never() {
        let advanced = |to: &str| EventKind::TaskAdvanced {
            from_step: "agent: verifier".into(),
            to_step: to.into(),
            round: 0,
            gate: None,
        };
        assert_eq!(advanced("gate: lgtm").audience(), Audience::Always);
        assert_eq!(advanced("action: merge-pr").audience(), Audience::Never);
        let dispatched = EventKind::StepDispatched {
            step: "0".into(),
            role: "implementer".into(),
            round: 0,
            attempt: 1,
            worker: "w".into(),
        };
        assert!(dispatched.audience().reaches(true) && !dispatched.audience().reaches(false));
        let halted = EventKind::CoordinatorHalted {
            reason: "converged".into(),
            exit_code: 0,
        };
        assert!(halted.audience().reaches(false));
    }

    #[test]
    fn events_serialize_flat_with_their_name_as_the_tag() {
        let event = Event {
            seq: 7,
            at_ms: 1_700_000_000_000,
            task: Some(TaskId(3)),
            kind: EventKind::TaskLoopedBack {
                from_step: "agent: verifier".into(),
                to_step: "agent: implementer".into(),
                round: 1,
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], "task_looped_back");
        assert_eq!(json["task"], "task-003");
        assert_eq!(json["round"], 1);
        assert_eq!(event.kind.name(), "task_looped_back");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn a_task_advanced_journaled_before_rounds_and_gates_were_recorded_still_reads() {
        let old = r#"{"seq":4,"at_ms":1,"task":"task-001","event":"task_advanced",
            "from_step":"agent: verifier","to_step":"gate: lgtm"}"#;
        let event: Event = serde_json::from_str(old).unwrap();
        assert_eq!(
            event.kind,
            EventKind::TaskAdvanced {
                from_step: "agent: verifier".into(),
                to_step: "gate: lgtm".into(),
                round: 0,
                gate: None,
            }
        );
    }
}
