//! The contract every [`StateStore`] adapter passes. An adapter's test file instantiates it
//! with [`state_store_contract_tests!`](crate::state_store_contract_tests), giving a function
//! from journal limit to a fresh [`Harness`]; each check gets its own backing.

use hyperloop_shared::event::{Event, EventKind};
use hyperloop_shared::model::{
    AttemptId, Review, SpecPath, SpecRef, Task, TaskId, TaskStatus, Verdict,
};

use super::{Assignment, Change, Meta, Revision, SpecRecord, State, StateStore, StoreError};
use hyperloop_shared::state::SpecFailures;

/// One backing (a repository, an etcd prefix, a shared map) that store instances open. The
/// backing lives as long as the harness (a temp dir is removed when it drops).
pub trait Harness: Send + Sync + 'static {
    type Store: StateStore;

    /// A new store instance over this backing: every instance sees the same data, as a
    /// restarted coordinator would.
    fn open(&self) -> Self::Store;

    /// Damages the backing behind the store's back and returns the key the store's
    /// [`StoreError::Corrupt`] must name, or `None` if this backing cannot hold such a record
    /// (a typed in-memory map).
    fn corrupt(&self, how: Corruption) -> Option<String>;
}

/// Ways a backing can hold a record the store cannot read.
#[derive(Debug, Clone, Copy)]
pub enum Corruption {
    /// The record of this (existing) task is not valid JSON.
    UnreadableTask(TaskId),
    /// A record under a key no version of the layout uses.
    UnknownKey,
}

/// Journal limit for checks that do not test the bound.
const ROOMY_JOURNAL: usize = 1_000;

/// Instantiates every contract check as a `#[tokio::test]`.
/// `$new_harness` is an expression of type `impl Fn(usize) -> impl Harness`.
#[macro_export]
macro_rules! state_store_contract_tests {
    ($new_harness:expr) => {
        $crate::state_store_contract_tests!(@each $new_harness;
            empty_store_loads_as_default,
            every_change_kind_round_trips,
            stale_revision_is_refused_with_conflict,
            revision_grows_by_one_per_apply,
            reviews_keep_the_order_they_were_added_in,
            events_are_numbered_and_the_journal_keeps_the_newest,
            deleted_specs_and_assignments_are_gone,
            a_reopened_store_sees_everything,
            concurrent_writers_at_one_revision_one_wins,
            corrupt_records_are_reported_by_key,
        );
    };
    (@each $new_harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::ports::state_store::contract::$check(&$new_harness).await;
            }
        )*
    };
}

pub fn task(id: u64) -> Task {
    Task {
        id: TaskId(id),
        title: format!("task number {id}"),
        spec_ref: SpecRef {
            path: SpecPath::parse("specs/auth.md").expect("valid literal"),
            commit: "3f2a9c1".into(),
        },
        status: TaskStatus::InProgress,
        deps: if id > 1 { vec![TaskId(id - 1)] } else { vec![] },
        round: 1,
        branch: Some(format!("hyperloop/task-{id:03}")),
        pr: None,
        position: None,
        action_attempts: 0,
        failure: None,
        retry: None,
    }
}

pub fn review(task: u64, round: u32, verdict: Verdict) -> Review {
    Review {
        task_id: TaskId(task),
        round,
        role: "verifier".into(),
        verdict,
        detail: format!("round {round} of task {task}"),
    }
}

pub fn spec(path: &str) -> SpecRecord {
    SpecRecord {
        path: SpecPath::parse(path).expect("valid spec path in test"),
        blob: "5d1c0a".into(),
        commit: "3f2a9c1".into(),
    }
}

pub fn assignment(task: u64, attempt: u64) -> Assignment {
    Assignment {
        task: TaskId(task),
        attempt: AttemptId(attempt),
        step: "agent: implementer".into(),
        role: "implementer".into(),
        round: 1,
        worker: "worker-a".into(),
        dispatched_at_ms: 1_700_000_000_000,
    }
}

pub fn event(n: u64) -> Event {
    Event {
        seq: 0,
        at_ms: 1_700_000_000_000 + n,
        task: Some(TaskId(n)),
        kind: EventKind::TaskCompleted { rounds: n as u32 },
    }
}

fn expected_after(before: &State, changes: &[Change]) -> State {
    let mut state = before.clone();
    for change in changes {
        state.apply(change);
    }
    state.revision = Revision(before.revision.0 + 1);
    state
}

async fn apply_ok<S: StateStore>(store: &S, expected: u64, changes: Vec<Change>) -> Vec<Event> {
    let (revision, events) = store
        .apply(Revision(expected), changes)
        .await
        .unwrap_or_else(|e| panic!("apply at revision {expected} failed: {e}"));
    assert_eq!(
        revision,
        Revision(expected + 1),
        "apply returns the new revision"
    );
    events
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

pub async fn empty_store_loads_as_default<H: Harness>(new_harness: &impl Fn(usize) -> H) {
    let harness = new_harness(ROOMY_JOURNAL);
    let store = harness.open();
    assert_eq!(store.load().await.unwrap(), State::default());
    assert!(store.events(0, 10).await.unwrap().is_empty());
}

pub async fn every_change_kind_round_trips<H: Harness>(new_harness: &impl Fn(usize) -> H) {
    let harness = new_harness(ROOMY_JOURNAL);
    let store = harness.open();
    let meta = Meta {
        next_task_id: 3,
        next_attempt: 8,
        cycle: 12,
        intake_round: 2,
        improvement_round: 1,
        failed_since_intake: vec![TaskId(2)],
        intake_rejections: vec!["duplicate of task-001".into()],
        rebase_attempts: [(TaskId(2), 1)].into_iter().collect(),
        spec_failures: [(
            SpecPath::parse("specs/auth.md").unwrap(),
            SpecFailures {
                blob: "b1".into(),
                count: 3,
                failed: Some("given up".into()),
            },
        )]
        .into_iter()
        .collect(),
    };
    let changes = vec![
        Change::PutTask(task(1)),
        Change::PutTask(task(2)),
        Change::AddReview(review(1, 1, Verdict::Fail)),
        Change::PutSpec(spec("specs/auth.md")),
        Change::PutSpec(spec("specs/nested/dir/with space%.md")),
        Change::PutAssignment(assignment(2, 7)),
        Change::PutMeta(meta),
        Change::AppendEvent(event(1)),
    ];
    let expected = expected_after(&State::default(), &changes);
    let events = apply_ok(&store, 0, changes).await;
    assert_eq!(seqs(&events), [1]);
    assert_eq!(store.load().await.unwrap(), expected);

    // Overwrites replace the record.
    let mut updated = task(2);
    updated.status = TaskStatus::Complete;
    updated.failure = Some("none".into());
    let changes = vec![Change::PutTask(updated)];
    let expected = expected_after(&expected, &changes);
    apply_ok(&store, 1, changes).await;
    assert_eq!(store.load().await.unwrap(), expected);
}

pub async fn stale_revision_is_refused_with_conflict<H: Harness>(
    new_harness: &impl Fn(usize) -> H,
) {
    let harness = new_harness(ROOMY_JOURNAL);
    let store = harness.open();
    apply_ok(&store, 0, vec![Change::PutTask(task(1))]).await;
    let before = store.load().await.unwrap();
    for stale in [0, 5] {
        let err = store
            .apply(Revision(stale), vec![Change::PutTask(task(9))])
            .await
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::Conflict {
                expected: Revision(stale),
                found: Revision(1)
            }
        );
        assert!(!err.is_transient());
    }
    assert_eq!(
        store.load().await.unwrap(),
        before,
        "a refused batch leaves no trace"
    );
}

pub async fn revision_grows_by_one_per_apply<H: Harness>(new_harness: &impl Fn(usize) -> H) {
    let harness = new_harness(ROOMY_JOURNAL);
    let store = harness.open();
    for n in 0..5 {
        // An empty batch is still a write: it proves the writer was current.
        let changes = if n == 2 {
            vec![]
        } else {
            vec![Change::PutTask(task(n + 1))]
        };
        apply_ok(&store, n, changes).await;
        assert_eq!(store.load().await.unwrap().revision, Revision(n + 1));
    }
}

pub async fn reviews_keep_the_order_they_were_added_in<H: Harness>(
    new_harness: &impl Fn(usize) -> H,
) {
    let harness = new_harness(ROOMY_JOURNAL);
    let store = harness.open();
    // Twelve rounds: `round 10` must not sort before `round 9` (a bug of the original).
    let mut wanted = Vec::new();
    for (revision, chunk) in (1..=12u32).collect::<Vec<_>>().chunks(5).enumerate() {
        let mut changes = Vec::new();
        for &round in chunk {
            let r = review(4, round, Verdict::Fail);
            wanted.push(r.clone());
            changes.push(Change::AddReview(r));
            changes.push(Change::AddReview(review(5, round, Verdict::Pass)));
        }
        apply_ok(&store, revision as u64, changes).await;
    }
    let state = store.load().await.unwrap();
    assert_eq!(state.reviews[&TaskId(4)], wanted);
    assert_eq!(state.reviews[&TaskId(5)].len(), 12);
}

pub async fn events_are_numbered_and_the_journal_keeps_the_newest<H: Harness>(
    new_harness: &impl Fn(usize) -> H,
) {
    let harness = new_harness(5);
    let store = harness.open();
    let events = apply_ok(
        &store,
        0,
        (1..=3).map(|n| Change::AppendEvent(event(n))).collect(),
    )
    .await;
    assert_eq!(seqs(&events), [1, 2, 3]);
    assert_eq!(
        events[1].kind,
        event(2).kind,
        "events come back as given, numbered"
    );
    apply_ok(&store, 1, vec![Change::PutTask(task(1))]).await;
    let events = apply_ok(
        &store,
        2,
        (4..=7).map(|n| Change::AppendEvent(event(n))).collect(),
    )
    .await;
    assert_eq!(seqs(&events), [4, 5, 6, 7]);

    assert_eq!(seqs(&store.events(0, 100).await.unwrap()), [3, 4, 5, 6, 7]);
    assert_eq!(seqs(&store.events(4, 2).await.unwrap()), [5, 6]);
    assert!(store.events(7, 10).await.unwrap().is_empty());
    let all = store.events(0, 100).await.unwrap();
    assert_eq!(
        all[0].at_ms,
        event(3).at_ms,
        "the journal keeps whole events"
    );

    // Numbers never repeat, even after the older ones were dropped.
    let events = apply_ok(&store, 3, vec![Change::AppendEvent(event(8))]).await;
    assert_eq!(seqs(&events), [8]);
}

pub async fn deleted_specs_and_assignments_are_gone<H: Harness>(new_harness: &impl Fn(usize) -> H) {
    let harness = new_harness(ROOMY_JOURNAL);
    let store = harness.open();
    let changes = vec![
        Change::PutSpec(spec("specs/a.md")),
        Change::PutSpec(spec("specs/b.md")),
        Change::PutAssignment(assignment(1, 1)),
        Change::PutAssignment(assignment(2, 2)),
    ];
    apply_ok(&store, 0, changes).await;
    let changes = vec![
        Change::DeleteSpec(SpecPath::parse("specs/a.md").unwrap()),
        Change::DeleteAssignment(TaskId(1)),
        // Deleting what is not there is not an error: cleanup is idempotent.
        Change::DeleteSpec(SpecPath::parse("specs/never.md").unwrap()),
        Change::DeleteAssignment(TaskId(99)),
    ];
    apply_ok(&store, 1, changes).await;
    let state = store.load().await.unwrap();
    assert_eq!(
        state.specs.keys().map(|p| p.as_str()).collect::<Vec<_>>(),
        ["specs/b.md"]
    );
    assert_eq!(
        state.assignments.keys().copied().collect::<Vec<_>>(),
        [TaskId(2)]
    );

    // Deleting the last ones leaves an empty, loadable state.
    let changes = vec![
        Change::DeleteSpec(SpecPath::parse("specs/b.md").unwrap()),
        Change::DeleteAssignment(TaskId(2)),
    ];
    apply_ok(&store, 2, changes).await;
    let state = store.load().await.unwrap();
    assert!(state.specs.is_empty() && state.assignments.is_empty());
}

pub async fn a_reopened_store_sees_everything<H: Harness>(new_harness: &impl Fn(usize) -> H) {
    let harness = new_harness(ROOMY_JOURNAL);
    let first = harness.open();
    let changes = vec![
        Change::PutTask(task(1)),
        Change::AddReview(review(1, 1, Verdict::Pass)),
        Change::PutSpec(spec("specs/auth.md")),
        Change::PutAssignment(assignment(1, 3)),
        Change::PutMeta(Meta {
            next_task_id: 2,
            ..Meta::default()
        }),
        Change::AppendEvent(event(1)),
    ];
    apply_ok(&first, 0, changes).await;
    let state = first.load().await.unwrap();

    let second = harness.open();
    assert_eq!(second.load().await.unwrap(), state);
    assert_eq!(
        second.events(0, 10).await.unwrap(),
        first.events(0, 10).await.unwrap()
    );

    // A write through the second instance is visible to the first, whose stale view is refused.
    apply_ok(&second, 1, vec![Change::PutTask(task(2))]).await;
    assert!(first.load().await.unwrap().tasks.contains_key(&TaskId(2)));
    let err = first.apply(Revision(1), vec![]).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                found: Revision(2),
                ..
            }
        ),
        "{err}"
    );
    let events = apply_ok(&first, 2, vec![Change::AppendEvent(event(2))]).await;
    assert_eq!(seqs(&events), [2], "numbering continues across instances");
}

pub async fn concurrent_writers_at_one_revision_one_wins<H: Harness>(
    new_harness: &impl Fn(usize) -> H,
) {
    let harness = new_harness(ROOMY_JOURNAL);
    let (a, b) = (harness.open(), harness.open());
    apply_ok(&a, 0, vec![Change::PutTask(task(1))]).await;
    let (ra, rb) = tokio::join!(
        a.apply(Revision(1), vec![Change::PutTask(task(2))]),
        b.apply(Revision(1), vec![Change::PutTask(task(3))]),
    );
    let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one writer wins: {ra:?} {rb:?}");
    let loser = if ra.is_err() { ra } else { rb };
    assert!(
        matches!(loser, Err(StoreError::Conflict { .. })),
        "{loser:?}"
    );
    let state = harness.open().load().await.unwrap();
    assert_eq!(state.revision, Revision(2));
    assert_eq!(state.tasks.len(), 2);
}

pub async fn corrupt_records_are_reported_by_key<H: Harness>(new_harness: &impl Fn(usize) -> H) {
    for how in [
        Corruption::UnreadableTask(TaskId(1)),
        Corruption::UnknownKey,
    ] {
        let harness = new_harness(ROOMY_JOURNAL);
        apply_ok(&harness.open(), 0, vec![Change::PutTask(task(1))]).await;
        let Some(key) = harness.corrupt(how) else {
            return;
        };
        match harness.open().load().await {
            Err(StoreError::Corrupt { key: named, reason }) => {
                assert_eq!(named, key, "{how:?}: {reason}");
            }
            other => panic!("{how:?}: expected Corrupt naming {key}, got {other:?}"),
        }
    }
}
