//! The loop's behaviours as unit tests of the pure core: inputs in, effects out, no clock,
//! no I/O. `check` runs a script of (input, expected effects) steps; effects are compared in a
//! short text form so a script reads like the loop's log.

use super::*;
use crate::model::{Proposal, SpecPath};
use crate::project::fixtures::base_project;
use crate::specs::{CommitId, SpecChange, SpecVersion};

const W1: &str = "w1";
const W2: &str = "w2";

fn settings(mode: Mode) -> Settings {
    Settings {
        config: Config::default(),
        mode,
        distributed: false,
        coordinator_id: "test".to_owned(),
        term: 1,
        forge: false,
        takeover_grace_ms: 6_000,
        check_gates: false,
    }
}

fn path(name: &str) -> SpecPath {
    SpecPath::parse(&format!("specs/{name}.md")).expect("a valid spec path")
}

/// A scan of the base branch at commit `c{n}` holding `specs` (name, blob).
fn scan(n: u32, changes: Vec<SpecChange>) -> SpecChanges {
    SpecChanges {
        version: SpecVersion {
            commit: CommitId(format!("c{n}")),
            tree: Some(format!("t{n}")),
        },
        changes,
        skipped: Vec::new(),
    }
}

fn added(name: &str) -> SpecChange {
    SpecChange::Added {
        path: path(name),
        blob: BlobId(format!("{name}-1")),
    }
}

fn start(mode: Mode, specs: &[&str]) -> Core {
    let changes = scan(1, specs.iter().map(|s| added(s)).collect());
    let (core, effects) = Core::start(settings(mode), base_project(), State::default(), changes, 0);
    assert_eq!(summary(&effects), ["persist"], "start journals itself");
    core
}

fn offer(name: &str, capacity: u32) -> Offer {
    Offer {
        name: name.to_owned(),
        labels: HashMap::new(),
        capacity,
        draining: false,
    }
}

fn tick(workers: &[&str]) -> Input {
    Input::Tick(Tick {
        workers: workers.iter().map(|w| offer(w, 1)).collect(),
        forge_busy: false,
    })
}

fn report(attempt: u64, subject: &str, verdict: Verdict) -> StepReport {
    StepReport {
        attempt: AttemptId(attempt),
        subject: subject.to_owned(),
        step: String::new(),
        verdict,
        detail: format!("{verdict:?} by test"),
        branch: (subject.starts_with("task")).then(|| format!("hyperloop/{subject}")),
        head_commit: Some("abc".to_owned()),
        new_commits: verdict == Verdict::Pass,
        duration: std::time::Duration::from_millis(144),
        usage: Default::default(),
        proposals: Vec::new(),
    }
}

fn result(worker: &str, report: StepReport) -> Input {
    Input::Result {
        worker: worker.to_owned(),
        report,
    }
}

fn intake_result(attempt: u64, specs: &[&str]) -> Input {
    let mut r = report(attempt, "intake", Verdict::Pass);
    r.proposals = specs
        .iter()
        .map(|s| Proposal {
            key: None,
            title: format!("Build {s}"),
            spec: path(s).to_string(),
            deps: Vec::new(),
        })
        .collect();
    result(W1, r)
}

/// Takes a core started with spec `a` through intake to task-001's implementer running as
/// attempt #2 on w1 (times 1 to 3).
fn implementing(core: &mut Core) {
    core.on(tick(&[W1]), 1);
    core.on(intake_result(1, &["a"]), 2);
    core.on(tick(&[W1]), 3);
}

/// As [`implementing`], then on through a passing implementer and verifier (times 4 to 6).
fn verified(core: &mut Core) {
    implementing(core);
    core.on(result(W1, report(2, "task-001", Verdict::Pass)), 4);
    core.on(tick(&[W1]), 5);
    core.on(result(W1, report(3, "task-001", Verdict::Pass)), 6);
}

/// Effects in a short text form: `persist`, `dispatch pm #1 -> w1`, `ack #1`, ...
fn summary(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .map(|e| match e {
            Effect::Persist(_) => "persist".to_owned(),
            Effect::Ack { attempt, .. } => format!("ack #{}", attempt.0),
            Effect::Cancel { attempt, .. } => format!("cancel #{}", attempt.0),
            Effect::Dispatch(o) => {
                format!(
                    "dispatch {} #{} -> {}",
                    o.work.role(),
                    o.attempt.0,
                    o.worker
                )
            }
            Effect::Forget(attempt) => format!("forget #{}", attempt.0),
            Effect::AnswerPush {
                worker,
                attempt,
                granted: true,
                ..
            } => format!("grant push #{} -> {worker}", attempt.0),
            Effect::AnswerPush {
                worker,
                attempt,
                reason,
                ..
            } => format!("refuse push #{} -> {worker}: {reason}", attempt.0),
            Effect::Land { request, .. } => format!("land {}", request.task),
            Effect::Forge(ask) => format!("forge {ask:?}"),
            Effect::CheckGate { task, gate } => format!("check gate {gate} of {task}"),
            Effect::Recompose => "recompose".to_owned(),
            Effect::Answer(Ok(_)) => "answer ok".to_owned(),
            Effect::Answer(Err(e)) => format!("answer error: {e}"),
            Effect::WakeAt(at) => format!("wake at {at}"),
            Effect::Halt(h) => format!("halt {h:?}"),
        })
        .collect()
}

/// Feeds each input at its time and compares the effects with the expected summary.
fn check(core: &mut Core, script: Vec<(u64, Input, &[&str])>) {
    for (i, (now, input, expected)) in script.into_iter().enumerate() {
        let label = format!("step {i} at {now}: {input:?}");
        let got = summary(&core.on(input, now));
        assert_eq!(got, expected, "{label}");
    }
}

/// The journaled event names in a batch of effects.
fn events(effects: &[Effect]) -> Vec<&'static str> {
    journaled(effects).iter().map(EventKind::name).collect()
}

#[test]
fn a_spec_goes_through_intake_implementation_verification_and_landing_then_run_converges() {
    let mut core = start(Mode::Run, &["a"]);
    check(
        &mut core,
        vec![
            // The assignment is stored before the order goes out.
            (1, tick(&[W1]), &["persist", "dispatch pm #1 -> w1"]),
            (
                2,
                Input::Dispatched {
                    attempt: AttemptId(1),
                    outcome: Ok(10),
                },
                &[],
            ),
            (3, intake_result(1, &["a"]), &[]),
            // The result's consequences are stored before it is acknowledged.
            (
                4,
                tick(&[W1]),
                &[
                    "persist",
                    "ack #1",
                    "forget #1",
                    "dispatch implementer #2 -> w1",
                ],
            ),
            (5, result(W1, report(2, "task-001", Verdict::Pass)), &[]),
            (
                6,
                tick(&[W1]),
                &[
                    "persist",
                    "ack #2",
                    "forget #2",
                    "dispatch verifier #3 -> w1",
                ],
            ),
            (7, result(W1, report(3, "task-001", Verdict::Pass)), &[]),
            // The landing starts only after the verdict that leads to it is stored.
            (
                8,
                tick(&[W1]),
                &["persist", "ack #3", "forget #3", "land task-001"],
            ),
        ],
    );
    let request = LandRequest {
        task: crate::landing::WorkRef::Task(TaskId(1)),
        title: String::new(),
        spec_ref: None,
        branch: "hyperloop/task-001".to_owned(),
        head: None,
        strategy: crate::config::MergeStrategy::Squash,
        delete_branch: true,
    };
    let done = Landed::Done {
        commit: CommitId("m1".to_owned()),
    };
    check(
        &mut core,
        vec![
            (
                9,
                Input::Landed {
                    request,
                    action: "merge-pr".to_owned(),
                    outcome: done,
                },
                &[],
            ),
            (
                10,
                tick(&[W1]),
                &["persist", "halt Converged { complete: 1, failed: 0 }"],
            ),
        ],
    );
    assert_eq!(core.state().tasks[&TaskId(1)].status, TaskStatus::Complete);
}

#[test]
fn a_cycle_with_nothing_new_writes_nothing_and_sends_nothing() {
    let mut core = start(Mode::Watch, &[]);
    check(
        &mut core,
        vec![
            (1, tick(&[W1]), &[]),
            (2, tick(&[W1]), &[]),
            (3, tick(&[W1]), &[]),
        ],
    );
}

#[test]
fn an_order_that_could_not_be_prepared_or_sent_is_journaled_and_planned_again() {
    let mut core = start(Mode::Run, &["a"]);
    check(
        &mut core,
        vec![
            (1, tick(&[W1]), &["persist", "dispatch pm #1 -> w1"]),
            (
                2,
                Input::Dispatched {
                    attempt: AttemptId(1),
                    outcome: Err("queue full".to_owned()),
                },
                &[],
            ),
        ],
    );
    let effects = core.on(tick(&[W1]), 3);
    assert_eq!(
        summary(&effects),
        ["persist", "forget #1", "dispatch pm #2 -> w1"]
    );
    assert!(
        events(&effects).contains(&"spawn_failed"),
        "the failed dispatch is in the journal"
    );
}

#[test]
fn a_lost_worker_keeps_its_step_for_the_grace_period_then_another_worker_takes_it() {
    let mut core = start(Mode::Run, &["a"]);
    core.on(tick(&[W1]), 1);
    let lost = Input::WorkerLost {
        worker: W1.to_owned(),
        reason: "connection closed".to_owned(),
        grace_ms: 2_000,
    };
    check(
        &mut core,
        vec![
            (10, lost, &[]),
            // Before the grace runs out the step stays put, and the core says when to look.
            (11, tick(&[W2]), &["persist", "wake at 2010"]),
            (
                2_010,
                tick(&[W2]),
                &["persist", "forget #1", "dispatch pm #2 -> w2"],
            ),
        ],
    );
}

#[test]
fn a_worker_that_comes_back_in_time_keeps_its_step_and_a_stale_one_is_cancelled() {
    let mut core = start(Mode::Run, &["a"]);
    core.on(tick(&[W1]), 1);
    core.on(
        Input::WorkerLost {
            worker: W1.to_owned(),
            reason: "connection closed".to_owned(),
            grace_ms: 2_000,
        },
        10,
    );
    let back = Input::WorkerJoined {
        worker: W1.to_owned(),
        capacity: 1,
        held: vec![
            Held {
                attempt: AttemptId(1),
                reporting: false,
            },
            Held {
                attempt: AttemptId(99),
                reporting: false,
            },
        ],
    };
    check(
        &mut core,
        vec![
            (100, back, &["cancel #99"]),
            // Its slot is taken by the reclaimed step: nothing new goes out.
            (5_000, tick(&[W1]), &["persist"]),
        ],
    );
    assert!(core.leases()[&AttemptId(1)].orphaned_until.is_none());
}

fn push(worker: &str, attempt: u64) -> Input {
    Input::PushAsked {
        worker: worker.to_owned(),
        attempt: AttemptId(attempt),
    }
}

#[test]
fn a_live_attempt_may_push_and_the_grant_is_not_journaled() {
    let mut core = start(Mode::Run, &["a"]);
    implementing(&mut core); // task-001's implementer is #2 on w1
    check(&mut core, vec![(4, push(W1, 2), &["grant push #2 -> w1"])]);
    let effects = core.on(result(W1, report(2, "task-001", Verdict::Pass)), 5);
    assert!(effects.is_empty());
    let effects = core.on(tick(&[W1]), 6);
    assert!(!events(&effects).contains(&"orphan_found"), "{effects:?}");
}

#[test]
fn an_attempt_whose_worker_was_lost_and_that_was_given_to_another_worker_may_not_push() {
    let mut core = start(Mode::Run, &["a"]);
    implementing(&mut core);
    let lost = Input::WorkerLost {
        worker: W1.to_owned(),
        reason: "stopped heartbeating".to_owned(),
        grace_ms: 0,
    };
    check(
        &mut core,
        vec![
            (10, lost, &["forget #2"]),
            (
                11,
                tick(&[W2]),
                &["persist", "dispatch implementer #3 -> w2"],
            ),
            // The frozen worker wakes up and asks: its attempt is gone, and it hears why.
            (
                12,
                push(W1, 2),
                &["refuse push #2 -> w1: attempt-2 was revoked: w1 stopped heartbeating"],
            ),
            (13, push(W2, 3), &["grant push #3 -> w2"]),
        ],
    );
    let effects = core.on(result(W2, report(3, "task-001", Verdict::Pass)), 14);
    assert!(effects.is_empty());
    let effects = core.on(tick(&[W2]), 15);
    assert!(
        events(&effects).contains(&"orphan_found"),
        "the refused push is journaled with the next write: {:?}",
        events(&effects)
    );
}

#[test]
fn a_cancelled_attempt_may_not_push() {
    let mut core = start(Mode::Run, &["a"]);
    implementing(&mut core);
    core.on(
        Input::Command(Op::Cancel {
            task: TaskId(1),
            reason: "not wanted".to_owned(),
        }),
        4,
    );
    check(
        &mut core,
        vec![(
            5,
            push(W1, 2),
            &["refuse push #2 -> w1: attempt-2 was revoked: cancelled by an operator: not wanted"],
        )],
    );
}

#[test]
fn a_push_asked_by_another_worker_or_while_the_holder_is_away_or_for_an_unknown_attempt_is_refused()
{
    let mut core = start(Mode::Run, &["a"]);
    implementing(&mut core);
    check(
        &mut core,
        vec![
            (
                4,
                push(W2, 2),
                &["refuse push #2 -> w2: attempt-2 is held by w1, not by w2"],
            ),
            (
                5,
                push(W1, 77),
                &[
                    "refuse push #77 -> w1: attempt-77 is not current (it was revoked, or it \
                   already finished)",
                ],
            ),
            (
                6,
                Input::WorkerLost {
                    worker: W1.to_owned(),
                    reason: "connection closed".to_owned(),
                    grace_ms: 2_000,
                },
                &[],
            ),
            (
                7,
                push(W1, 2),
                &["refuse push #2 -> w1: attempt-2 waits for w1 to reconnect"],
            ),
        ],
    );
}

#[test]
fn an_operator_cancel_is_answered_only_after_it_is_stored_and_stops_the_running_step() {
    let mut core = start(Mode::Run, &["a"]);
    implementing(&mut core); // task-001's implementer is #2 on w1
    let cancel = Input::Command(Op::Cancel {
        task: TaskId(1),
        reason: "not wanted".to_owned(),
    });
    check(
        &mut core,
        vec![
            (
                4,
                cancel,
                &["persist", "cancel #2", "forget #2", "answer ok"],
            ),
            (
                5,
                Input::Command(Op::Cancel {
                    task: TaskId(1),
                    reason: String::new(),
                }),
                &["answer error: task-001 is already failed; there is nothing to cancel"],
            ),
        ],
    );
}

#[test]
fn a_landing_that_must_wait_is_retried_at_the_time_kept_in_the_task() {
    let mut core = start(Mode::Run, &["a"]);
    verified(&mut core);
    let effects = core.on(tick(&[W1]), 7);
    let Some(Effect::Land { request, action }) = effects
        .into_iter()
        .find(|e| matches!(e, Effect::Land { .. }))
    else {
        panic!("a landing");
    };
    let busy = Landed::RetryLater {
        reason: "the checkout has uncommitted changes".to_owned(),
    };
    check(
        &mut core,
        vec![
            (
                8,
                Input::Landed {
                    request: request.clone(),
                    action: action.clone(),
                    outcome: busy,
                },
                &[],
            ),
            // The first retry waits retry::delay(1) = 1 s, stored with the task.
            (9, tick(&[W1]), &["persist", "wake at 1008"]),
            (500, tick(&[W1]), &["wake at 1008"]),
            (1_008, tick(&[W1]), &["persist", "land task-001"]),
        ],
    );
    let retry = core.state().tasks[&TaskId(1)]
        .retry
        .clone()
        .expect("kept in the task");
    assert_eq!(retry.failures, 1);
}

#[test]
fn every_result_is_acknowledged_even_one_for_an_attempt_that_is_no_longer_current() {
    let mut core = start(Mode::Run, &["a"]);
    core.on(tick(&[W1]), 1);
    let effects = {
        core.on(result(W2, report(42, "task-009", Verdict::Pass)), 2);
        core.on(tick(&[]), 3)
    };
    assert_eq!(summary(&effects), ["persist", "ack #42", "forget #42"]);
    assert_eq!(events(&effects), ["orphan_found"]);
}

#[test]
fn run_halts_after_max_cycles_without_progress_but_watch_never_does() {
    for (mode, halts) in [(Mode::Run, true), (Mode::Watch, false)] {
        let mut core = start(mode, &["a"]);
        core.settings.config.max_cycles = 3;
        // A PM that keeps being declined: work every cycle, never progress.
        let mut halted = false;
        for n in 1..=10u64 {
            let effects = core.on(tick(&[W1]), n * 10);
            halted |= effects
                .iter()
                .any(|e| matches!(e, Effect::Halt(Halt::MaxCycles(3))));
            core.on(
                Input::Declined {
                    attempt: AttemptId(n),
                },
                n * 10 + 1,
            );
        }
        assert_eq!(halted, halts, "{mode:?}");
    }
}

#[test]
fn a_shutdown_cancels_running_steps_so_they_resume_on_restart() {
    let mut core = start(Mode::Run, &["a"]);
    implementing(&mut core);
    let effects = core.on(Input::Stop(Halt::Shutdown), 4);
    assert_eq!(summary(&effects), ["cancel #2", "persist"]);
    assert_eq!(events(&effects), ["coordinator_halted"]);
    assert!(
        core.state().assignments.contains_key(&TaskId(1)),
        "the assignment stays, to be reclaimed or redone after the restart"
    );
}

/// A core whose task 1 has passed its implementer and verifier and waits at gate `suite`
/// (a `command` gate inside the loop).
fn at_command_gate() -> Core {
    let yaml = "apiVersion: hyperloop.io/v1\nkind: Process\nmetadata: {name: default}\n\
                pipeline:\n- loop:\n  - agent: implementer\n  - agent: verifier\n  - gate: suite\n\
                - action: merge-pr\ngates:\n  suite:\n    type: command\n    run: [make, test]\n";
    let mut project = base_project();
    let agents: Vec<&String> = project.agents.keys().collect();
    project.process = crate::pipeline::Process::parse_str(yaml, "process.yaml", &agents)
        .expect("a valid process");
    let mut s = settings(Mode::Run);
    s.check_gates = true;
    let changes = scan(1, vec![added("a")]);
    let (mut core, _) = Core::start(s, project, State::default(), changes, 0);
    verified(&mut core);
    core
}

fn gate_checked(outcome: Result<GateStatus, String>) -> Input {
    Input::GateChecked {
        task: TaskId(1),
        gate: "suite".to_owned(),
        outcome,
    }
}

#[test]
fn a_command_gate_is_checked_once_per_poll_interval_and_green_lets_the_task_land() {
    let mut core = at_command_gate();
    let waiting = GateStatus::Waiting {
        reasons: vec!["running".to_owned()],
    };
    check(
        &mut core,
        vec![
            (
                7,
                tick(&[W1]),
                &[
                    "persist",
                    "ack #3",
                    "forget #3",
                    "check gate suite of task-001",
                ],
            ),
            // One check at a time: while it runs nothing is asked again.
            (8, Input::Wake, &[]),
            (9, tick(&[W1]), &[]),
            (10, gate_checked(Ok(waiting)), &[]),
            // Asked again after poll_interval (30 s by default), not before.
            (11, Input::Wake, &[]),
            (12, tick(&[W1]), &["wake at 30010"]),
            (30_010, tick(&[W1]), &["check gate suite of task-001"]),
            (30_020, gate_checked(Ok(GateStatus::Cleared)), &[]),
            (30_021, tick(&[W1]), &["persist", "land task-001"]),
        ],
    );
}

#[test]
fn a_red_command_gate_sends_the_task_back_to_the_implementer_with_its_findings() {
    let mut core = at_command_gate();
    core.on(tick(&[W1]), 7);
    let red = GateStatus::Failed {
        findings: vec!["make test: 1 failure".to_owned()],
    };
    check(
        &mut core,
        vec![
            (8, gate_checked(Ok(red)), &[]),
            (
                9,
                tick(&[W1]),
                &["persist", "dispatch implementer #4 -> w1"],
            ),
        ],
    );
    let reviews = &core.state().reviews[&TaskId(1)];
    assert!(
        reviews
            .iter()
            .any(|r| r.role == "gate:suite" && r.detail == "make test: 1 failure"),
        "{reviews:?}"
    );
    assert_eq!(core.state().tasks[&TaskId(1)].round, 1, "a new round");
}

#[test]
fn an_unusable_spec_is_given_up_alone_and_an_intake_in_flight_does_not_close_it() {
    let mut core = start(Mode::Run, &["a", "bad"]);
    core.on(tick(&[W1]), 1); // intake #1 for a and bad
    let unusable = Input::SpecUnusable {
        path: path("bad"),
        reason: "it is not UTF-8 text".to_owned(),
    };
    check(
        &mut core,
        vec![
            (2, unusable, &[]),
            // The PM answered for `a` only; silence about `bad` must not close its gap.
            (3, intake_result(1, &["a"]), &[]),
        ],
    );
    let effects = core.on(tick(&[W1]), 4);
    assert!(
        events(&effects).contains(&"spec_failed"),
        "{:?}",
        events(&effects)
    );
    assert!(
        !core.state().specs.contains_key(&path("bad")),
        "bad was not recorded as processed"
    );
    assert!(core.state().specs.contains_key(&path("a")));
    let given_up = core.given_up_specs();
    assert_eq!(given_up.len(), 1);
    assert!(given_up[0].contains("specs/bad.md cannot be used: it is not UTF-8 text"));
}

#[test]
fn a_role_that_requires_labels_goes_only_to_a_worker_carrying_them_and_capacity_counts() {
    let mut core = start(Mode::Run, &["a", "b"]);
    core.settings.config.agent.roles.insert(
        "implementer".to_owned(),
        crate::config::RoleOverrides {
            labels: Some(std::collections::BTreeMap::from([(
                "gpu".to_owned(),
                "a100".to_owned(),
            )])),
            ..Default::default()
        },
    );
    let plain = offer("plain", 4);
    let mut gpu = offer("gpu", 1);
    gpu.labels.insert("gpu".to_owned(), "a100".to_owned());
    let workers = Input::Tick(Tick {
        workers: vec![plain, gpu],
        forge_busy: false,
    });
    // The PM needs no label: it goes to the worker with the most free slots.
    assert_eq!(
        summary(&core.on(workers.clone(), 1)),
        ["persist", "dispatch pm #1 -> plain"]
    );
    let mut r = report(1, "intake", Verdict::Pass);
    r.proposals = ["a", "b"]
        .iter()
        .map(|s| Proposal {
            key: None,
            title: format!("Build {s}"),
            spec: path(s).to_string(),
            deps: Vec::new(),
        })
        .collect();
    core.on(result("plain", r), 2);
    // Two implementers are due, but only the one-slot gpu worker carries the label.
    assert_eq!(
        summary(&core.on(workers, 3)),
        [
            "persist",
            "ack #1",
            "forget #1",
            "dispatch implementer #2 -> gpu"
        ]
    );
}

#[test]
fn an_implementer_that_passes_without_a_new_commit_fails_its_round_with_a_finding_that_says_so() {
    let mut core = start(Mode::Run, &["a"]);
    implementing(&mut core);
    let mut idle = report(2, "task-001", Verdict::Pass);
    idle.new_commits = false;
    check(
        &mut core,
        vec![
            (4, result(W1, idle), &[]),
            (
                5,
                tick(&[W1]),
                // The failed round's finding goes to the process improver first.
                &[
                    "persist",
                    "ack #2",
                    "forget #2",
                    "dispatch process-improver #3 -> w1",
                ],
            ),
        ],
    );
    let reviews = &core.state().reviews[&TaskId(1)];
    assert!(
        reviews.iter().any(|r| r.role == "implementer"
            && r.verdict == Verdict::Fail
            && r.detail
                .contains("made no new commit on hyperloop/task-001")),
        "{reviews:?}"
    );
    assert_eq!(core.state().tasks[&TaskId(1)].round, 1, "a new round");
}

#[test]
fn a_verifier_that_passes_without_commits_lets_the_task_land() {
    let mut core = start(Mode::Run, &["a"]);
    implementing(&mut core);
    core.on(result(W1, report(2, "task-001", Verdict::Pass)), 4);
    core.on(tick(&[W1]), 5);
    let mut review = report(3, "task-001", Verdict::Pass);
    review.new_commits = false;
    check(
        &mut core,
        vec![
            (6, result(W1, review), &[]),
            (
                7,
                tick(&[W1]),
                &["persist", "ack #3", "forget #3", "land task-001"],
            ),
        ],
    );
}

/// The journaled event kinds in `effects`.
fn journaled(effects: &[Effect]) -> Vec<EventKind> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist(changes) => Some(changes),
            _ => None,
        })
        .flatten()
        .filter_map(|c| match c {
            Change::AppendEvent(e) => Some(e.kind.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_landing_is_timed_from_the_first_ask_through_its_retries() {
    let mut core = start(Mode::Run, &["a"]);
    verified(&mut core);
    let effects = core.on(tick(&[W1]), 7);
    let Some(Effect::Land { request, action }) = effects
        .into_iter()
        .find(|e| matches!(e, Effect::Land { .. }))
    else {
        panic!("a landing");
    };
    let busy = Landed::RetryLater {
        reason: "the checkout has uncommitted changes".to_owned(),
    };
    core.on(
        Input::Landed {
            request: request.clone(),
            action: action.clone(),
            outcome: busy,
        },
        8,
    );
    core.on(tick(&[W1]), 1_008);
    let done = Landed::Done {
        commit: CommitId("m1".to_owned()),
    };
    core.on(
        Input::Landed {
            request,
            action,
            outcome: done,
        },
        1_200,
    );
    let effects = core.on(tick(&[W1]), 1_201);
    let merged = journaled(&effects)
        .into_iter()
        .find_map(|k| match k {
            EventKind::Merged { duration_ms, .. } => Some(duration_ms),
            _ => None,
        })
        .expect("a merged event");
    assert_eq!(merged, Some(1_193), "from the ask at 7 to done at 1200");
}

#[test]
fn reaped_results_carry_the_reported_usage_and_an_impossible_cost_counts_as_unknown() {
    let mut core = start(Mode::Run, &["a"]);
    implementing(&mut core);
    let mut spent = report(2, "task-001", Verdict::Pass);
    spent.usage = crate::step::Usage {
        turns: 7,
        cost_usd: f64::NAN,
        tokens: crate::step::Tokens {
            input: 1_000,
            output: 200,
            cache_read: 0,
            cache_write: 50,
        },
    };
    core.on(result(W1, spent), 4);
    let effects = core.on(tick(&[W1]), 5);
    let usage = journaled(&effects)
        .into_iter()
        .find_map(|k| match k {
            EventKind::ResultReaped { usage, .. } => Some(usage),
            _ => None,
        })
        .expect("a reaped result");
    assert_eq!(usage.turns, 7);
    assert_eq!(usage.cost_usd, 0.0);
    assert_eq!(usage.tokens.input, 1_000);
    assert_eq!(usage.tokens.cache_write, 50);
}

#[test]
fn tasks_ready_for_an_agent_without_a_free_slot_are_counted_as_queued() {
    let mut core = start(Mode::Run, &["a", "b", "c"]);
    core.on(tick(&[W1]), 1);
    core.on(intake_result(1, &["a", "b", "c"]), 2);
    core.on(tick(&[W1]), 3);
    assert_eq!(core.queued(), 2, "one of three runs on the only slot");
    core.on(
        Input::WorkerJoined {
            worker: W2.to_owned(),
            capacity: 2,
            held: Vec::new(),
        },
        4,
    );
    core.on(
        Input::Tick(Tick {
            workers: vec![offer(W1, 1), offer(W2, 2)],
            forge_busy: false,
        }),
        5,
    );
    assert_eq!(core.queued(), 0, "a second worker takes the other two");
}

#[test]
fn slots_offered_without_a_join_seen_by_this_loop_still_get_work() {
    // A worker that connected before this term's loop started: its slots appear in the
    // offers, and no WorkerJoined input ever comes.
    let mut core = start(Mode::Run, &["a"]);
    assert!(
        summary(&core.on(tick(&[]), 1))
            .iter()
            .all(|e| !e.contains("dispatch"))
    );
    let effects = core.on(tick(&[W1]), 2);
    assert!(
        summary(&effects)
            .iter()
            .any(|e| e.starts_with("dispatch pm")),
        "{:?}",
        summary(&effects)
    );
}
