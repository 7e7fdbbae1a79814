//! Which events become Matrix messages, and their text: pure functions, no I/O.
//!
//! - Always: worker results, loop-backs, task completions, failures and cancellations,
//!   merges and pull requests, rebase conflicts, gates waiting for a human (with the command
//!   that clears them), a coordinator halt. A task's creation opens its thread.
//! - With `verbose`: dispatches, cycle completions, intake runs.
//! - Never: gate polls, phase transitions, prompt sizes and the other bookkeeping events.
//!
//! Event fields carry no secrets (tokens live in the config, never in events), so the text is
//! made from them as they are.

use hyperloop_shared::event::{Event, EventKind};
use hyperloop_shared::model::{TaskId, Verdict};

/// Where a message goes in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A top-level message about no task in particular.
    Room,
    /// The root of a task's thread (sent when the task is created).
    Root(TaskId),
    /// A reply in a task's thread.
    Thread(TaskId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub place: Place,
    pub body: String,
}

/// The message for `event`, or `None` when it is not sent (noise, or low-signal without
/// `verbose`).
pub fn render(event: &Event, verbose: bool) -> Option<Message> {
    let kind = &event.kind;
    if !wanted(kind, verbose) {
        return None;
    }
    let place = match (event.task, kind) {
        (Some(task), EventKind::TaskCreated { .. }) => Place::Root(task),
        (Some(task), _) => Place::Thread(task),
        (None, _) => Place::Room,
    };
    let body = text(event.task, kind)?;
    Some(Message { place, body })
}

/// Whether `kind` is sent at all (the core's [`EventKind::audience`], which every
/// notification sink shares); cheap, so the notifier filters before queueing.
pub fn wanted(kind: &EventKind, verbose: bool) -> bool {
    kind.audience().reaches(verbose)
}

/// The root message of a task whose creation was not seen (created before notifications
/// were on).
pub fn fallback_root(task: TaskId) -> String {
    format!("{task}")
}

fn approve(task: Option<TaskId>) -> String {
    task.map_or_else(
        || "hyperloopctl approve TASK".to_owned(),
        |t| format!("hyperloopctl approve {t}"),
    )
}

fn seconds(ms: u64) -> String {
    format!("{:.0} s", ms as f64 / 1000.0)
}

fn text(task: Option<TaskId>, kind: &EventKind) -> Option<String> {
    let t = task.map_or_else(String::new, |t| format!("{t}: "));
    Some(match kind {
        EventKind::CoordinatorHalted { reason, exit_code } => {
            format!("hyperloop halted: {reason} (exit code {exit_code})")
        }
        EventKind::TaskCreated {
            title, spec_ref, ..
        } => format!("{t}{title} ({})", spec_ref.path),
        EventKind::ResultReaped {
            step,
            role,
            round,
            verdict,
            duration_ms,
            ..
        } => {
            let mark = match verdict {
                Verdict::Pass => "✅",
                Verdict::Fail => "❌",
            };
            format!(
                "{mark} {t}{role} {verdict} ({step}, round {round}, {})",
                seconds(*duration_ms)
            )
        }
        EventKind::TaskLoopedBack {
            from_step,
            to_step,
            round,
        } => format!("↩️ {t}looped back from {from_step} to {to_step} (round {round})"),
        EventKind::TaskCompleted { rounds } => {
            format!("🎉 {t}completed after {rounds} round(s)")
        }
        EventKind::TaskFailed { reason } => format!("🛑 {t}failed: {reason}"),
        EventKind::TaskReset { reason } => format!("🔁 {t}reset: {reason}"),
        EventKind::TaskCancelled { reason } => format!("⏹️ {t}cancelled: {reason}"),
        EventKind::SpecFailed { path, reason } => format!("🛑 spec {path} failed: {reason}"),
        EventKind::SpawnFailed { step, role, reason } => {
            format!("⚠️ {t}could not start {role} ({step}): {reason}")
        }
        EventKind::ProcessImproved { verdict, commit } => match commit {
            Some(commit) => format!("🔧 {t}process improved ({verdict}, commit {commit})"),
            None => format!("🔧 {t}process improvement: {verdict}"),
        },
        EventKind::GateChecked { gate, .. } => {
            if gate.contains("hyperloopctl approve") {
                format!("⏳ {t}waiting for a human at {gate}")
            } else {
                format!(
                    "⏳ {t}waiting for a human at {gate}; clear it with `{}`",
                    approve(task)
                )
            }
        }
        EventKind::TaskAdvanced { to_step, .. } => format!(
            "⏳ {t}waiting at {to_step}; a human can clear it with `{}`",
            approve(task)
        ),
        EventKind::GateCleared { gate, by } => format!("✔️ {t}gate {gate} cleared by {by}"),
        EventKind::PrCreated { number, url } => {
            format!("📬 {t}opened pull request #{number}: {url}")
        }
        EventKind::Merged {
            branch,
            into,
            commit,
            strategy,
            ..
        } => {
            let short = commit.get(..12).unwrap_or(commit);
            format!("🚀 {t}merged {branch} into {into} ({strategy}, {short})")
        }
        EventKind::RebaseConflict {
            branch,
            attempt,
            files,
        } => format!(
            "⚠️ {t}rebase of {branch} conflicts (attempt {attempt}): {}",
            files.join(", ")
        ),
        EventKind::WorkerLost { worker, reason } => format!("⚠️ worker {worker} lost: {reason}"),
        EventKind::StepDispatched {
            step,
            role,
            round,
            worker,
            ..
        } => format!("▶️ {t}spawned {role} for {step} (round {round}) on {worker}"),
        EventKind::CycleCompleted {
            cycle,
            reaped,
            advanced,
            dispatched,
        } => {
            format!("cycle {cycle}: {reaped} reaped, {advanced} advanced, {dispatched} dispatched")
        }
        EventKind::IntakeRun {
            changed_specs,
            created,
            ..
        } => {
            let created: Vec<String> = created.iter().map(ToString::to_string).collect();
            format!(
                "intake: {} spec(s) changed, created {}",
                changed_specs.len(),
                if created.is_empty() {
                    "no tasks".to_owned()
                } else {
                    created.join(", ")
                }
            )
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperloop_shared::model::{SpecPath, SpecRef};

    fn event(task: Option<u64>, kind: EventKind) -> Event {
        Event {
            seq: 1,
            at_ms: 0,
            task: task.map(TaskId),
            kind,
        }
    }

    fn dispatched() -> EventKind {
        EventKind::StepDispatched {
            step: "agent: implementer".into(),
            role: "implementer".into(),
            round: 0,
            attempt: 1,
            worker: "local-1".into(),
        }
    }

    #[test]
    fn a_tasks_creation_is_its_thread_root_and_its_results_are_replies() {
        let created = render(
            &event(
                Some(3),
                EventKind::TaskCreated {
                    title: "Add widgets".into(),
                    spec_ref: SpecRef {
                        path: SpecPath::parse("specs/widget.md").expect("path"),
                        commit: "abc".into(),
                    },
                    deps: vec![],
                },
            ),
            false,
        )
        .expect("sent");
        assert_eq!(created.place, Place::Root(TaskId(3)));
        assert_eq!(created.body, "task-003: Add widgets (specs/widget.md)");
        let reaped = render(
            &event(
                Some(3),
                EventKind::ResultReaped {
                    step: "agent: verifier".into(),
                    role: "verifier".into(),
                    round: 2,
                    attempt: 4,
                    worker: "w".into(),
                    verdict: Verdict::Pass,
                    duration_ms: 142_300,
                    usage: Default::default(),
                },
            ),
            false,
        )
        .expect("sent");
        assert_eq!(reaped.place, Place::Thread(TaskId(3)));
        assert_eq!(
            reaped.body,
            "✅ task-003: verifier pass (agent: verifier, round 2, 142 s)"
        );
    }

    #[test]
    fn spawns_cycles_and_intake_are_sent_only_when_verbose() {
        let cycle = EventKind::CycleCompleted {
            cycle: 7,
            reaped: 1,
            advanced: 2,
            dispatched: 3,
        };
        let intake = EventKind::IntakeRun {
            changed_specs: vec!["specs/a.md".into()],
            failures_considered: 0,
            created: vec![TaskId(1)],
            rejected: vec![],
        };
        for kind in [dispatched(), cycle, intake] {
            assert_eq!(render(&event(Some(1), kind.clone()), false), None);
            assert!(render(&event(Some(1), kind), true).is_some());
        }
        let spawn = render(&event(Some(1), dispatched()), true).expect("verbose");
        assert_eq!(
            spawn.body,
            "▶️ task-001: spawned implementer for agent: implementer (round 0) on local-1"
        );
    }

    #[test]
    fn gate_polls_and_phase_transitions_are_never_sent() {
        let noise = [
            EventKind::GateChecked {
                gate: "lgtm".into(),
                cleared: true,
            },
            EventKind::TaskAdvanced {
                from_step: "agent: implementer".into(),
                to_step: "agent: verifier".into(),
                round: 0,
                gate: None,
            },
            EventKind::PromptComposed {
                role: "implementer".into(),
                round: 0,
                bytes: 10,
            },
            EventKind::CoordinatorStarted {
                version: "1".into(),
                mode: "run".into(),
            },
        ];
        for kind in noise {
            assert_eq!(
                render(&event(Some(1), kind.clone()), true),
                None,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_gate_waiting_for_a_human_names_the_command_that_clears_it() {
        let arrived = render(
            &event(
                Some(3),
                EventKind::TaskAdvanced {
                    from_step: "agent: verifier".into(),
                    to_step: "gate: human-review".into(),
                    round: 0,
                    gate: None,
                },
            ),
            false,
        )
        .expect("sent");
        assert_eq!(
            arrived.body,
            "⏳ task-003: waiting at gate: human-review; a human can clear it with \
             `hyperloopctl approve task-003`"
        );
        let merge = render(
            &event(
                Some(3),
                EventKind::GateChecked {
                    gate: "merge-pr (merge.auto_merge is false: run `hyperloopctl approve \
                           task-003` to merge)"
                        .into(),
                    cleared: false,
                },
            ),
            false,
        )
        .expect("sent");
        assert_eq!(
            merge.body.matches("hyperloopctl approve task-003").count(),
            1
        );
    }

    #[test]
    fn completions_failures_merges_and_halts_are_always_sent() {
        let cases = [
            (
                Some(2),
                EventKind::TaskCompleted { rounds: 1 },
                "🎉 task-002: completed after 1 round(s)",
            ),
            (
                Some(2),
                EventKind::TaskFailed {
                    reason: "max rounds".into(),
                },
                "🛑 task-002: failed: max rounds",
            ),
            (
                Some(2),
                EventKind::Merged {
                    branch: "hyperloop/task-002".into(),
                    into: "main".into(),
                    commit: "0123456789abcdef0123".into(),
                    strategy: "squash".into(),
                    duration_ms: None,
                },
                "🚀 task-002: merged hyperloop/task-002 into main (squash, 0123456789ab)",
            ),
            (
                None,
                EventKind::CoordinatorHalted {
                    reason: "converged".into(),
                    exit_code: 0,
                },
                "hyperloop halted: converged (exit code 0)",
            ),
        ];
        for (task, kind, body) in cases {
            let message = render(&event(task, kind), false).expect("sent");
            assert_eq!(message.body, body);
        }
        let halt = render(
            &event(
                None,
                EventKind::CoordinatorHalted {
                    reason: "x".into(),
                    exit_code: 1,
                },
            ),
            false,
        );
        assert_eq!(halt.map(|m| m.place), Some(Place::Room));
    }
}
