//! Journal events and live views on the wire (`hyperloop.v1.Event`, `WorkerInfo`, ...) and
//! back, so `hyperloopctl --server` prints them with the same views as `--path`.
//!
//! Known gaps of `events.proto` against the domain (lossy until the contract grows):
//! `spec_changed` has no wire kind (sent as an event without a kind, which readers skip),
//! `process_improved` carries its verdict and commit in `summary`, and `leader_elected`'s
//! coordinator travels as both id and address.

use std::collections::BTreeMap;

use hyperloop_proto::ConversionError;
use hyperloop_proto::convert::{duration_to_wire, parse_task_id, parse_task_ids};
use hyperloop_proto::v1::{self, event::Kind};
use hyperloop_shared::event::{Event, EventKind, GateWait};
use hyperloop_shared::model::{SpecRef, TaskId, Verdict};

use crate::control::{AttemptView, WorkerView};

pub fn timestamp(ms: u64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| prost_types::Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    })
}

pub fn millis(ts: Option<&prost_types::Timestamp>) -> u64 {
    ts.map_or(0, |t| {
        u64::try_from(t.seconds).unwrap_or(0) * 1000
            + u64::try_from(t.nanos / 1_000_000).unwrap_or(0)
    })
}

fn ids(list: &[TaskId]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

fn verdict(v: Verdict) -> i32 {
    v1::Verdict::from(v).into()
}

/// A journal event on the wire.
pub fn event_to_wire(e: &Event) -> v1::Event {
    let kind = match e.kind.clone() {
        EventKind::CoordinatorStarted { version, mode } => {
            Kind::CoordinatorStarted(v1::CoordinatorStarted {
                coordinator_id: String::new(),
                version,
                mode,
            })
        }
        EventKind::CoordinatorHalted { reason, exit_code } => {
            Kind::CoordinatorHalted(v1::CoordinatorHalted { reason, exit_code })
        }
        EventKind::LeaderElected { coordinator, term } => Kind::LeaderElected(v1::LeaderElected {
            address: coordinator.clone(),
            coordinator_id: coordinator,
            term,
        }),
        EventKind::CycleCompleted {
            cycle,
            reaped,
            advanced,
            dispatched,
        } => Kind::CycleCompleted(v1::CycleCompleted {
            cycle,
            duration: None,
            reaped,
            advanced,
            dispatched,
        }),
        EventKind::Recovery {
            tasks_loaded,
            attempts_resumed,
            attempts_orphaned,
        } => Kind::Recovery(v1::Recovery {
            tasks_loaded,
            attempts_resumed,
            attempts_orphaned,
            detail: String::new(),
        }),
        EventKind::OrphanFound { kind, name, action } => {
            Kind::OrphanFound(v1::OrphanFound { kind, name, action })
        }
        EventKind::SpecChanged { .. } => {
            return v1::Event {
                seq: e.seq,
                at: timestamp(e.at_ms),
                task_id: e.task.map(|t| t.to_string()).unwrap_or_default(),
                trace_id: String::new(),
                kind: None,
            };
        }
        EventKind::IntakeRun {
            changed_specs,
            failures_considered,
            created,
            rejected,
        } => Kind::IntakeRun(v1::IntakeRun {
            changed_specs,
            failures_considered,
            proposals: 0,
            created_tasks: ids(&created),
            rejected,
        }),
        EventKind::TaskCreated {
            title,
            spec_ref,
            deps,
        } => Kind::TaskCreated(v1::TaskCreated {
            title,
            spec_ref: Some(spec_ref.into()),
            deps: ids(&deps),
        }),
        EventKind::TaskAdvanced {
            from_step,
            to_step,
            round,
            gate,
        } => Kind::TaskAdvanced(v1::TaskAdvanced {
            from_step,
            to_step,
            round,
            gate: gate.map(|g| v1::GateWait {
                gate: g.gate,
                clears: g.clears,
            }),
        }),
        EventKind::TaskLoopedBack {
            from_step,
            to_step,
            round,
        } => Kind::TaskLoopedBack(v1::TaskLoopedBack {
            from_step,
            to_step,
            round,
        }),
        EventKind::TaskCompleted { rounds } => Kind::TaskCompleted(v1::TaskCompleted { rounds }),
        EventKind::TaskFailed { reason } => Kind::TaskFailed(v1::TaskFailed { reason }),
        EventKind::TaskReset { reason } => Kind::TaskReset(v1::TaskReset { reason }),
        EventKind::TaskCancelled { reason } => Kind::TaskCancelled(v1::TaskCancelled {
            reason,
            by: String::new(),
        }),
        EventKind::SpecFailed { path, reason } => Kind::SpecFailed(v1::SpecFailed { path, reason }),
        EventKind::SpecRetried { path } => Kind::SpecRetried(v1::SpecRetried { path }),
        EventKind::PromptComposed { role, round, bytes } => {
            Kind::PromptComposed(v1::PromptComposed {
                role,
                round,
                bytes,
                sha256: String::new(),
            })
        }
        EventKind::StepDispatched {
            step,
            role,
            round,
            attempt,
            worker,
        } => Kind::StepDispatched(v1::StepDispatched {
            step_path: step,
            role,
            round,
            attempt_id: attempt,
            worker,
        }),
        EventKind::SpawnFailed { step, role, reason } => Kind::SpawnFailed(v1::SpawnFailed {
            step_path: step,
            role,
            reason,
        }),
        EventKind::ResultReaped {
            step,
            role,
            round,
            attempt,
            worker,
            verdict: v,
            duration_ms,
            usage,
        } => Kind::ResultReaped(v1::ResultReaped {
            step_path: step,
            role,
            round,
            attempt_id: attempt,
            worker,
            verdict: verdict(v),
            failure_cause: 0,
            duration: Some(duration_to_wire(std::time::Duration::from_millis(
                duration_ms,
            ))),
            cost_usd: usage.cost_usd,
            turns: usage.turns,
            tokens: Some(usage.tokens.into()),
        }),
        EventKind::ProcessImproved { verdict: v, commit } => {
            Kind::ProcessImproved(v1::ProcessImproved {
                files: Vec::new(),
                summary: match commit {
                    Some(c) => format!("{v}, commit {c}"),
                    None => v.to_string(),
                },
            })
        }
        EventKind::GateChecked { gate, cleared } => Kind::GateChecked(v1::GateChecked {
            gate,
            cleared,
            detail: String::new(),
        }),
        EventKind::GateCleared { gate, by } => Kind::GateCleared(v1::GateCleared { gate, by }),
        EventKind::BranchPushed {
            branch,
            commit,
            remote,
        } => Kind::BranchPushed(v1::BranchPushed {
            branch,
            commit,
            remote,
        }),
        EventKind::PrCreated { number, url } => Kind::PrCreated(v1::PrCreated {
            number,
            url,
            draft: false,
        }),
        EventKind::PrLabelled {
            number,
            added,
            removed,
        } => Kind::PrLabelled(v1::PrLabelled {
            number,
            added,
            removed,
        }),
        EventKind::PrReady { number } => Kind::PrReady(v1::PrReady { number }),
        EventKind::Merged {
            branch,
            into,
            commit,
            strategy,
            duration_ms,
        } => Kind::Merged(v1::Merged {
            branch,
            into,
            commit,
            strategy,
            pr: None,
            duration: duration_ms.map(|ms| duration_to_wire(std::time::Duration::from_millis(ms))),
        }),
        EventKind::RebaseConflict {
            branch,
            attempt,
            files,
        } => Kind::RebaseConflict(v1::RebaseConflict {
            branch,
            attempt,
            files,
        }),
        EventKind::WorkerJoined { worker, capacity } => Kind::WorkerJoined(v1::WorkerJoined {
            worker,
            capacity,
            ..Default::default()
        }),
        EventKind::WorkerLost { worker, reason } => Kind::WorkerLost(v1::WorkerLost {
            worker,
            reason,
            released_attempts: Vec::new(),
        }),
    };
    v1::Event {
        seq: e.seq,
        at: timestamp(e.at_ms),
        task_id: e.task.map(|t| t.to_string()).unwrap_or_default(),
        trace_id: String::new(),
        kind: Some(kind),
    }
}

/// A wire event as a journal event; `Ok(None)` for a kind this build does not show
/// (unknown to it, or without a domain counterpart).
///
/// # Errors
/// Malformed ids, spec refs or enums, naming the field.
pub fn event_from_wire(e: v1::Event) -> Result<Option<Event>, ConversionError> {
    let task = (!e.task_id.is_empty())
        .then(|| parse_task_id("task_id", &e.task_id))
        .transpose()?;
    let verdict_of = |field: &str, v: i32| hyperloop_proto::convert::parse_verdict(field, v);
    let kind = match e.kind {
        None => return Ok(None),
        Some(k) => match k {
            Kind::CycleStarted(_) => return Ok(None),
            Kind::CoordinatorStarted(k) => EventKind::CoordinatorStarted {
                version: k.version,
                mode: k.mode,
            },
            Kind::CoordinatorHalted(k) => EventKind::CoordinatorHalted {
                reason: k.reason,
                exit_code: k.exit_code,
            },
            Kind::LeaderElected(k) => EventKind::LeaderElected {
                coordinator: k.coordinator_id,
                term: k.term,
            },
            Kind::CycleCompleted(k) => EventKind::CycleCompleted {
                cycle: k.cycle,
                reaped: k.reaped,
                advanced: k.advanced,
                dispatched: k.dispatched,
            },
            Kind::Recovery(k) => EventKind::Recovery {
                tasks_loaded: k.tasks_loaded,
                attempts_resumed: k.attempts_resumed,
                attempts_orphaned: k.attempts_orphaned,
            },
            Kind::OrphanFound(k) => EventKind::OrphanFound {
                kind: k.kind,
                name: k.name,
                action: k.action,
            },
            Kind::IntakeRun(k) => EventKind::IntakeRun {
                changed_specs: k.changed_specs,
                failures_considered: k.failures_considered,
                created: parse_task_ids("intake_run.created_tasks", &k.created_tasks)?,
                rejected: k.rejected,
            },
            Kind::TaskCreated(k) => EventKind::TaskCreated {
                title: k.title,
                spec_ref: hyperloop_proto::convert::require::<_, SpecRef>(
                    "task_created.spec_ref",
                    k.spec_ref,
                )?,
                deps: parse_task_ids("task_created.deps", &k.deps)?,
            },
            Kind::TaskAdvanced(k) => EventKind::TaskAdvanced {
                from_step: k.from_step,
                to_step: k.to_step,
                round: k.round,
                gate: k.gate.map(|g| GateWait {
                    gate: g.gate,
                    clears: g.clears,
                }),
            },
            Kind::TaskLoopedBack(k) => EventKind::TaskLoopedBack {
                from_step: k.from_step,
                to_step: k.to_step,
                round: k.round,
            },
            Kind::TaskCompleted(k) => EventKind::TaskCompleted { rounds: k.rounds },
            Kind::TaskFailed(k) => EventKind::TaskFailed { reason: k.reason },
            Kind::TaskReset(k) => EventKind::TaskReset { reason: k.reason },
            Kind::TaskCancelled(k) => EventKind::TaskCancelled { reason: k.reason },
            Kind::SpecFailed(k) => EventKind::SpecFailed {
                path: k.path,
                reason: k.reason,
            },
            Kind::SpecRetried(k) => EventKind::SpecRetried { path: k.path },
            Kind::PromptComposed(k) => EventKind::PromptComposed {
                role: k.role,
                round: k.round,
                bytes: k.bytes,
            },
            Kind::StepDispatched(k) => EventKind::StepDispatched {
                step: k.step_path,
                role: k.role,
                round: k.round,
                attempt: k.attempt_id,
                worker: k.worker,
            },
            Kind::SpawnFailed(k) => EventKind::SpawnFailed {
                step: k.step_path,
                role: k.role,
                reason: k.reason,
            },
            Kind::ResultReaped(k) => EventKind::ResultReaped {
                step: k.step_path,
                role: k.role,
                round: k.round,
                attempt: k.attempt_id,
                worker: k.worker,
                verdict: verdict_of("result_reaped.verdict", k.verdict)?,
                duration_ms: duration_millis(k.duration).unwrap_or(0),
                usage: hyperloop_shared::step::Usage {
                    turns: k.turns,
                    cost_usd: k.cost_usd,
                    tokens: k.tokens.map(Into::into).unwrap_or_default(),
                }
                .sanitized(),
            },
            Kind::ProcessImproved(k) => {
                let (v, commit) = match k.summary.split_once(", commit ") {
                    Some((v, c)) => (v.to_owned(), Some(c.to_owned())),
                    None => (k.summary, None),
                };
                EventKind::ProcessImproved {
                    verdict: if v == Verdict::Fail.to_string() {
                        Verdict::Fail
                    } else {
                        Verdict::Pass
                    },
                    commit,
                }
            }
            Kind::GateChecked(k) => EventKind::GateChecked {
                gate: k.gate,
                cleared: k.cleared,
            },
            Kind::GateCleared(k) => EventKind::GateCleared {
                gate: k.gate,
                by: k.by,
            },
            Kind::BranchPushed(k) => EventKind::BranchPushed {
                branch: k.branch,
                commit: k.commit,
                remote: k.remote,
            },
            Kind::PrCreated(k) => EventKind::PrCreated {
                number: k.number,
                url: k.url,
            },
            Kind::PrLabelled(k) => EventKind::PrLabelled {
                number: k.number,
                added: k.added,
                removed: k.removed,
            },
            Kind::PrReady(k) => EventKind::PrReady { number: k.number },
            Kind::Merged(k) => EventKind::Merged {
                branch: k.branch,
                into: k.into,
                commit: k.commit,
                strategy: k.strategy,
                duration_ms: duration_millis(k.duration),
            },
            Kind::RebaseConflict(k) => EventKind::RebaseConflict {
                branch: k.branch,
                attempt: k.attempt,
                files: k.files,
            },
            Kind::WorkerJoined(k) => EventKind::WorkerJoined {
                worker: k.worker,
                capacity: k.capacity,
            },
            Kind::WorkerLost(k) => EventKind::WorkerLost {
                worker: k.worker,
                reason: k.reason,
            },
            // Not produced by this build's coordinator.
            Kind::WorkerDraining(_) => return Ok(None),
        },
    };
    Ok(Some(Event {
        seq: e.seq,
        at_ms: millis(e.at.as_ref()),
        task,
        kind,
    }))
}

pub fn attempt_to_wire(a: &AttemptView) -> v1::AttemptInfo {
    v1::AttemptInfo {
        attempt_id: a.attempt,
        task_id: a.task_id.clone(),
        step_path: a.step_path.clone(),
        role: a.role.clone(),
        round: a.round,
        worker: a.worker.clone(),
        phase: a.phase.into(),
        started_at: timestamp(a.started_at_ms),
        deadline: timestamp(a.deadline_ms),
        turns: a.turns,
        cost_usd: a.cost_usd,
    }
}

pub fn attempt_from_wire(a: v1::AttemptInfo) -> AttemptView {
    AttemptView {
        attempt: a.attempt_id,
        phase: a.phase(),
        started_at_ms: millis(a.started_at.as_ref()),
        deadline_ms: millis(a.deadline.as_ref()),
        task_id: a.task_id,
        step_path: a.step_path,
        role: a.role,
        round: a.round,
        worker: a.worker,
        turns: a.turns,
        cost_usd: a.cost_usd,
    }
}

pub fn worker_to_wire(w: &WorkerView) -> v1::WorkerInfo {
    v1::WorkerInfo {
        name: w.name.clone(),
        worker_id: w.worker_id.clone(),
        capacity: w.capacity,
        load: u32::try_from(w.attempts.len()).unwrap_or(u32::MAX),
        labels: w.labels.clone().into_iter().collect(),
        version: w.version.clone(),
        last_heartbeat: timestamp(w.last_heartbeat_ms),
        connected_since: timestamp(w.connected_since_ms),
        draining: w.draining,
        local: w.local,
        attempts: w.attempts.iter().map(attempt_to_wire).collect(),
    }
}

pub fn worker_from_wire(w: v1::WorkerInfo) -> WorkerView {
    WorkerView {
        last_heartbeat_ms: millis(w.last_heartbeat.as_ref()),
        connected_since_ms: millis(w.connected_since.as_ref()),
        name: w.name,
        worker_id: w.worker_id,
        capacity: w.capacity,
        labels: w.labels.into_iter().collect::<BTreeMap<_, _>>(),
        version: w.version,
        draining: w.draining,
        local: w.local,
        attempts: w.attempts.into_iter().map(attempt_from_wire).collect(),
    }
}

/// A wire duration in whole milliseconds; `None` when absent or negative.
fn duration_millis(d: Option<prost_types::Duration>) -> Option<u64> {
    d.and_then(|d| std::time::Duration::try_from(d).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_the_wire() {
        let spec_ref: SpecRef = "specs/a.md@0123abcd".parse().unwrap();
        let kinds = [
            EventKind::TaskCreated {
                title: "t".into(),
                spec_ref,
                deps: vec![TaskId(1)],
            },
            EventKind::ResultReaped {
                step: "0/agent:x@ab".into(),
                role: "x".into(),
                round: 1,
                attempt: 4,
                worker: "w".into(),
                verdict: Verdict::Fail,
                duration_ms: 1500,
                usage: hyperloop_shared::step::Usage {
                    turns: 3,
                    cost_usd: 0.5,
                    tokens: hyperloop_shared::step::Tokens {
                        input: 10,
                        output: 2,
                        cache_read: 1,
                        cache_write: 0,
                    },
                },
            },
            EventKind::Merged {
                branch: "hyperloop/task-001".into(),
                into: "main".into(),
                commit: "abc".into(),
                strategy: "squash".into(),
                duration_ms: Some(2_500),
            },
            EventKind::ProcessImproved {
                verdict: Verdict::Pass,
                commit: Some("abc".into()),
            },
            EventKind::WorkerJoined {
                worker: "w".into(),
                capacity: 2,
            },
            EventKind::TaskAdvanced {
                from_step: "agent: verifier".into(),
                to_step: "gate: lgtm".into(),
                round: 2,
                gate: Some(GateWait {
                    gate: "lgtm".into(),
                    clears: "add the label `lgtm` to the pull request".into(),
                }),
            },
        ];
        for kind in kinds {
            let e = Event {
                seq: 3,
                at_ms: 1_700_000_000_123,
                task: Some(TaskId(2)),
                kind,
            };
            assert_eq!(event_from_wire(event_to_wire(&e)).unwrap(), Some(e));
        }
        let spec = Event {
            seq: 1,
            at_ms: 5,
            task: None,
            kind: EventKind::SpecChanged {
                path: "specs/a.md".into(),
                change: hyperloop_shared::event::SpecChange::Added,
            },
        };
        assert_eq!(event_from_wire(event_to_wire(&spec)).unwrap(), None);
    }
}
