//! The reconcile loop's behaviours through `CoordinatorHarness`: in-memory adapters, workers
//! the test plays, tokio's paused time (timers fire in order, nothing sleeps for real).

use std::time::Duration;

use hyperloop_coordinator::control::Command;
use hyperloop_coordinator::ports::lander::{LandError, WorkRef};
use hyperloop_coordinator::reconcile::harness::CoordinatorHarness;
use hyperloop_coordinator::reconcile::{Halt, Mode};
use hyperloop_proto::v1;
use hyperloop_shared::config::Config;
use hyperloop_shared::event::EventKind;
use hyperloop_shared::model::{Proposal, SpecPath, TaskId, TaskStatus, Verdict};

const SPEC_A: (&str, &str) = ("specs/a.md", "# A\n\nA works.\n");

fn proposal(title: &str, spec: &str) -> Proposal {
    Proposal {
        key: None,
        title: title.to_owned(),
        spec: spec.to_owned(),
        deps: Vec::new(),
    }
}

fn config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    edit(&mut config);
    config
}

/// Starts the loop with one worker of two slots.
async fn start(specs: &[(&str, &str)], config: Config, mode: Mode) -> CoordinatorHarness {
    let mut h = CoordinatorHarness::start(specs, config, mode).await;
    h.add_worker("w1", 2).await;
    h
}

/// The next step for `w1` that is not the process-improver's (the default pipeline runs it
/// after failed results; it passes without changes here).
async fn next_work(h: &mut CoordinatorHarness) -> v1::Assign {
    loop {
        let assign = h.next_assign("w1").await;
        if assign.role != "process-improver" {
            return assign;
        }
        h.finish(
            "w1",
            &assign,
            Verdict::Fail,
            "no change",
            &[],
            Duration::from_millis(5),
        )
        .await;
    }
}

/// Answers the next intake with `proposals`; returns its prompt.
async fn intake(h: &mut CoordinatorHarness, proposals: &[Proposal]) -> String {
    let assign = next_work(h).await;
    assert_eq!(assign.role, "pm", "expected intake, got {assign:?}");
    h.finish(
        "w1",
        &assign,
        Verdict::Pass,
        "",
        proposals,
        Duration::from_millis(5),
    )
    .await;
    assign.prompt
}

/// Runs the task's next step with `verdict`, checking it is `role`'s.
async fn step(h: &mut CoordinatorHarness, role: &str, verdict: Verdict) -> v1::Assign {
    let assign = next_work(h).await;
    assert_eq!(assign.role, role, "{assign:?}");
    h.finish("w1", &assign, verdict, "", &[], Duration::from_millis(10))
        .await;
    assign
}

#[tokio::test(start_paused = true)]
async fn a_rejected_proposal_keeps_its_spec_open_and_the_next_intake_is_told_why() {
    let mut h = start(&[SPEC_A], Config::default(), Mode::Watch).await;
    intake(&mut h, &[proposal("Build A", "specs/nope.md")]).await;
    // The spec stays open: intake runs again, told why the proposal was rejected.
    let prompt = intake(&mut h, &[proposal("Build A", "specs/a.md")]).await;
    assert!(prompt.contains("specs/nope.md"), "{prompt}");
    assert!(prompt.contains("was rejected"), "{prompt}");
    assert!(prompt.contains("specs/a.md"), "{prompt}");
    h.await_task_state(TaskId(1), TaskStatus::InProgress).await;
    let state = h.state().await;
    let a = SpecPath::parse("specs/a.md").unwrap();
    assert!(state.specs.contains_key(&a), "accepted work closes the gap");
    assert_eq!(
        state.meta.spec_failures[&a].count, 1,
        "the rejection counted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pm_that_proposes_nothing_closes_the_gap_and_run_converges() {
    let mut h = start(&[SPEC_A], Config::default(), Mode::Run).await;
    intake(&mut h, &[]).await;
    assert_eq!(
        h.halted().await.unwrap(),
        Halt::Converged {
            complete: 0,
            failed: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn intake_of_more_specs_than_a_session_takes_is_split_across_sessions() {
    let texts: Vec<(String, String)> = (0..7)
        .map(|i| (format!("specs/s{i}.md"), format!("# S{i}\n")))
        .collect();
    let specs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let mut h = start(&specs, config(|c| c.max_specs_per_intake = 3), Mode::Run).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let prompt = intake(&mut h, &[]).await;
        sessions.push(
            texts
                .iter()
                .filter(|(p, _)| prompt.contains(p.as_str()))
                .count(),
        );
    }
    assert_eq!(sessions, [3, 3, 1]);
    assert!(matches!(h.halted().await.unwrap(), Halt::Converged { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_spec_that_keeps_failing_is_given_up_and_run_halts_naming_it() {
    // One round per task: a failed verifier fails the task.
    let mut h = start(&[SPEC_A], config(|c| c.max_task_rounds = 1), Mode::Run).await;
    for n in 1..=3 {
        intake(&mut h, &[proposal(&format!("Attempt {n}"), "specs/a.md")]).await;
        step(&mut h, "implementer", Verdict::Pass).await;
        step(&mut h, "verifier", Verdict::Fail).await;
        h.await_task_state(TaskId(n), TaskStatus::Failed).await;
    }
    let Halt::SpecsFailed { specs, failed, .. } = h.halted().await.unwrap() else {
        panic!("run should halt on the given-up spec");
    };
    assert_eq!(failed, 3);
    assert_eq!(specs.len(), 1);
    assert!(
        specs[0].starts_with("specs/a.md: specs/a.md failed 3 time(s)"),
        "{specs:?}"
    );
    let pending: Vec<String> = h
        .pending_assigns("w1")
        .into_iter()
        .map(|a| a.role)
        .collect();
    assert!(
        !pending.iter().any(|r| r == "pm" || r == "implementer"),
        "a given-up spec costs nothing more: {pending:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retrying_a_given_up_spec_asks_the_pm_about_it_again() {
    let mut h = start(
        &[SPEC_A],
        config(|c| {
            c.max_task_rounds = 1;
            c.max_spec_failures = 1;
        }),
        Mode::Watch,
    )
    .await;
    intake(&mut h, &[proposal("Build A", "specs/a.md")]).await;
    step(&mut h, "implementer", Verdict::Pass).await;
    step(&mut h, "verifier", Verdict::Fail).await;
    h.await_task_state(TaskId(1), TaskStatus::Failed).await;
    let a = SpecPath::parse("specs/a.md").unwrap();
    let retried = h
        .command(|reply| Command::RetrySpec {
            path: a.clone(),
            reply,
        })
        .await
        .unwrap();
    assert_eq!(retried, a);
    let prompt = intake(&mut h, &[]).await;
    assert!(prompt.contains("specs/a.md"), "{prompt}");
    // Retrying a spec that is not given up is refused, saying why.
    let refused = h
        .command(|reply| Command::RetrySpec { path: a, reply })
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("was not given up"),
        "{refused}"
    );
}

#[tokio::test(start_paused = true)]
async fn watch_never_halts_on_max_cycles_but_run_stops_a_loop_that_makes_no_progress() {
    for mode in [Mode::Watch, Mode::Run] {
        let mut h = start(&[SPEC_A], config(|c| c.max_cycles = 3), mode).await;
        intake(&mut h, &[proposal("Build A", "specs/a.md")]).await;
        // Every verifier fails: the task loops back round after round, finishing nothing.
        let mut steps = 0;
        while steps < 12 {
            let Some(assign) = h.next_assign_unless_halted("w1").await else {
                break;
            };
            let verdict = if assign.role == "implementer" {
                Verdict::Pass
            } else {
                Verdict::Fail
            };
            h.finish("w1", &assign, verdict, "", &[], Duration::from_millis(5))
                .await;
            steps += 1;
        }
        match mode {
            Mode::Watch => {
                assert_eq!(steps, 12);
                assert!(h.is_running(), "watch stopped on max_cycles");
            }
            Mode::Run => {
                assert!(steps < 12, "run kept spinning for {steps} steps");
                assert_eq!(h.halted().await.unwrap(), Halt::MaxCycles(3));
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_task_fails_its_dependents_through_the_same_transition() {
    let mut h = start(&[SPEC_A], Config::default(), Mode::Watch).await;
    let first = Proposal {
        key: Some("a".into()),
        ..proposal("Build A", "specs/a.md")
    };
    let second = Proposal {
        deps: vec!["a".into()],
        ..proposal("Extend A", "specs/a.md")
    };
    intake(&mut h, &[first, second]).await;
    let running = next_work(&mut h).await;
    assert_eq!(running.task_id, "task-001");
    let task = h
        .command(|reply| Command::Cancel {
            task: TaskId(1),
            reason: "obsolete".into(),
            reply,
        })
        .await
        .unwrap();
    assert_eq!(
        task.failure.as_deref(),
        Some("cancelled by an operator: obsolete")
    );
    h.await_task_state(TaskId(2), TaskStatus::Failed).await;
    let state = h.state().await;
    assert_eq!(
        state.tasks[&TaskId(2)].failure.as_deref(),
        Some("dependency task-001 failed, so this task cannot start")
    );
    assert!(
        state.assignments.is_empty(),
        "the running step's lease is gone"
    );
    // The operator's decision does not re-enter intake; the dependent's failure does.
    assert_eq!(state.meta.failed_since_intake, [TaskId(2)]);
    let kinds: Vec<(Option<TaskId>, &'static str)> = h
        .events()
        .await
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::TaskCancelled { .. } | EventKind::TaskFailed { .. }
            )
        })
        .map(|e| (e.task, e.kind.name()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Some(TaskId(1)), "task_cancelled"),
            (Some(TaskId(2)), "task_failed")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_landing_that_failed_transiently_waits_out_the_backoff_kept_in_the_task() {
    let mut h = start(&[SPEC_A], Config::default(), Mode::Run).await;
    h.lander.push_outcome(Err(LandError::Contended {
        task: WorkRef::Task(TaskId(1)),
        branch: "main".into(),
        attempts: 5,
    }));
    intake(&mut h, &[proposal("Build A", "specs/a.md")]).await;
    step(&mut h, "implementer", Verdict::Pass).await;
    step(&mut h, "verifier", Verdict::Pass).await;
    // The first landing failed: the task waits at its action with the backoff stored.
    let wait = async {
        loop {
            if let Some(retry) = h.state().await.tasks[&TaskId(1)].retry.clone() {
                return retry;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let retry = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap();
    assert_eq!(retry.failures, 1);
    assert!(retry.reason.contains("kept moving"), "{}", retry.reason);
    // After the backoff it lands, once.
    h.await_task_state(TaskId(1), TaskStatus::Complete).await;
    assert_eq!(h.lander.landed().len(), 1);
    assert!(matches!(
        h.halted().await.unwrap(),
        Halt::Converged { complete: 1, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_finished_step_is_stored_before_its_landing_starts() {
    let mut h = start(&[SPEC_A], Config::default(), Mode::Run).await;
    let gate = h.lander.hold();
    intake(&mut h, &[proposal("Build A", "specs/a.md")]).await;
    step(&mut h, "implementer", Verdict::Pass).await;
    let verifier = step(&mut h, "verifier", Verdict::Pass).await;
    // While the landing is held, the verifier's result is already stored: a crash now
    // would land again, not run the verifier again. (No timers here: a blocked landing
    // thread stops paused time from advancing.)
    gate.until_waiting(1).await;
    let state = h.state().await;
    let position = state.tasks[&TaskId(1)].position.clone().unwrap();
    assert_eq!(position.step().to_string(), "action: merge-pr");
    assert!(state.assignments.is_empty(), "{:?}", state.assignments);
    assert!(h.lander.landed().is_empty(), "the landing is still held");
    let reaped = h.events().await.into_iter().any(|e| {
        matches!(&e.kind, EventKind::ResultReaped { attempt, .. } if *attempt == verifier.attempt_id)
    });
    assert!(reaped, "the verifier's result is journaled before landing");
    drop(gate);
    h.await_task_state(TaskId(1), TaskStatus::Complete).await;
}

#[tokio::test(start_paused = true)]
async fn a_step_duration_is_journaled_to_the_millisecond() {
    let mut h = start(&[SPEC_A], Config::default(), Mode::Watch).await;
    intake(&mut h, &[proposal("Build A", "specs/a.md")]).await;
    let assign = next_work(&mut h).await;
    h.finish(
        "w1",
        &assign,
        Verdict::Pass,
        "",
        &[],
        Duration::from_millis(144),
    )
    .await;
    let wait = async {
        loop {
            let found = h.events().await.into_iter().find_map(|e| match e.kind {
                EventKind::ResultReaped { duration_ms, .. } => Some(duration_ms),
                _ => None,
            });
            if let Some(ms) = found {
                return ms;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap(),
        144
    );
}

#[tokio::test(start_paused = true)]
async fn the_notifier_hears_every_stored_event_once_in_journal_order() {
    let mut h = start(&[SPEC_A], Config::default(), Mode::Run).await;
    intake(&mut h, &[proposal("Build A", "specs/a.md")]).await;
    step(&mut h, "implementer", Verdict::Pass).await;
    step(&mut h, "verifier", Verdict::Pass).await;
    h.halted().await.unwrap();
    let stored: Vec<u64> = h.events().await.iter().map(|e| e.seq).collect();
    let heard: Vec<u64> = h.notified().iter().map(|e| e.seq).collect();
    assert!(stored.len() > 10, "{stored:?}");
    assert_eq!(heard, stored);
}

#[tokio::test(start_paused = true)]
async fn a_lost_worker_gives_its_step_to_another() {
    let mut h = start(&[SPEC_A], Config::default(), Mode::Watch).await;
    intake(&mut h, &[proposal("Build A", "specs/a.md")]).await;
    let first = next_work(&mut h).await;
    h.lose_worker("w1").await;
    h.add_worker("w2", 1).await;
    // After the reconnect grace the step goes to the worker that is left.
    let again = h.next_assign("w2").await;
    assert_eq!(again.task_id, first.task_id);
    assert_eq!(again.step_path, first.step_path);
    assert_ne!(again.attempt_id, first.attempt_id);
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_step_was_given_away_is_refused_its_push_and_the_new_holder_may_push() {
    let mut h = start(&[SPEC_A], Config::default(), Mode::Watch).await;
    intake(&mut h, &[proposal("Build A", "specs/a.md")]).await;
    let first = next_work(&mut h).await;
    let granted = h.ask_push("w1", first.attempt_id).await;
    assert!(granted.granted, "{granted:?}");
    let valid_for =
        hyperloop_proto::convert::parse_duration("valid_for", granted.valid_for).unwrap();
    assert!(
        !valid_for.is_zero() && valid_for <= hyperloop_coordinator::dispatch::RECONNECT_GRACE,
        "{valid_for:?}"
    );

    h.lose_worker("w1").await;
    h.add_worker("w2", 1).await;
    let again = h.next_assign("w2").await;
    // The first worker comes back after its step was given away, and asks to push it.
    h.add_worker("w1", 2).await;
    let refused = h.ask_push("w1", first.attempt_id).await;
    assert!(!refused.granted);
    assert!(
        refused
            .reason
            .contains("was revoked: w1 did not come back in time"),
        "{}",
        refused.reason
    );
    assert!(h.ask_push("w2", again.attempt_id).await.granted);

    // The refusal is journaled with the next write.
    h.finish(
        "w2",
        &again,
        Verdict::Pass,
        "",
        &[],
        Duration::from_millis(5),
    )
    .await;
    h.await_task_state(TaskId(1), TaskStatus::InProgress).await;
    let journaled = |events: &[hyperloop_shared::event::Event]| {
        events.iter().any(|e| {
            matches!(&e.kind, EventKind::OrphanFound { kind, action, .. }
                if kind == "push" && action.starts_with("refused"))
        })
    };
    for _ in 0..100 {
        if journaled(&h.events().await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the refused push was not journaled: {:?}", h.events().await);
}
