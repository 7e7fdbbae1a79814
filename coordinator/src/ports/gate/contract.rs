//! The contract every [`GateEvaluator`] adapter passes. An adapter's test file instantiates it
//! with [`gate_contract_tests!`](crate::gate_contract_tests), giving a function returning a
//! fresh [`Harness`]; each check gets its own backing.

use std::collections::BTreeMap;

use hyperloop_shared::gates::GateStatus;
use hyperloop_shared::model::TaskId;
use hyperloop_shared::pipeline::{GateDef, GateKind};

use super::{GateError, GateEvaluator, GateQuery, GateTarget, evaluate_gate};

/// Work an evaluator can see (a repository, a table of answers) that a test arranges.
pub trait Harness: Send + Sync {
    type Evaluator: GateEvaluator;

    fn evaluator(&self) -> &Self::Evaluator;

    /// A task with committed work (a branch and its head commit).
    fn target(&self) -> GateTarget;

    /// A gate named `gate` that clears on [`Harness::target`].
    fn passing(&self, gate: &str) -> GateKind;

    /// A gate named `gate` that fails on [`Harness::target`].
    fn failing(&self, gate: &str) -> GateKind;

    /// The target's task with work that does not exist (a commit the repository lacks; for
    /// an evaluator with no repository, no work at all).
    fn unknown(&self) -> GateTarget;

    /// What evaluations could leave behind (checkouts, say), to compare before and after.
    fn residue(&self) -> Vec<String>;
}

/// Instantiates every contract check as a `#[tokio::test]`.
/// `$new_harness` is an expression of type `impl Fn() -> impl Harness`.
#[macro_export]
macro_rules! gate_contract_tests {
    ($new_harness:expr) => {
        $crate::gate_contract_tests!(@each $new_harness;
            a_passing_gate_clears_and_a_failing_one_fails_with_findings,
            a_manual_gate_is_never_cleared,
            an_all_gate_combines_its_leaves,
            an_all_gate_is_not_a_leaf,
            a_task_without_work_is_a_typed_error,
            unknown_work_is_a_typed_error_not_cleared,
            evaluating_again_gives_the_same_answer_and_leaves_nothing_behind,
        );
    };
    (@each $new_harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::ports::gate::contract::$check(&$new_harness).await;
            }
        )*
    };
}

async fn evaluate<H: Harness>(
    h: &H,
    gate: &str,
    kind: GateKind,
    target: GateTarget,
) -> Result<GateStatus, GateError> {
    let query = GateQuery {
        gate: gate.to_owned(),
        kind,
        target,
    };
    h.evaluator().evaluate(query).await
}

fn def(kind: GateKind) -> GateDef {
    GateDef {
        kind,
        reviewers: vec![],
    }
}

pub async fn a_passing_gate_clears_and_a_failing_one_fails_with_findings<H: Harness>(
    new_harness: &impl Fn() -> H,
) {
    let h = new_harness();
    let passing = h.passing("green");
    let got = evaluate(&h, "green", passing, h.target()).await;
    assert_eq!(got, Ok(GateStatus::Cleared));
    let failing = h.failing("red");
    match evaluate(&h, "red", failing, h.target()).await {
        Ok(GateStatus::Failed { findings }) => {
            assert!(!findings.is_empty(), "a failure says why");
        }
        other => panic!("a failing gate fails, got {other:?}"),
    }
}

pub async fn a_manual_gate_is_never_cleared<H: Harness>(new_harness: &impl Fn() -> H) {
    let h = new_harness();
    // Whatever makes a gate of that name pass otherwise does not clear a manual one.
    h.passing("sign-off");
    let target = h.target();
    match evaluate(&h, "sign-off", GateKind::Manual, target.clone()).await {
        Ok(GateStatus::Waiting { reasons }) => {
            let approve = format!("hyperloopctl approve {}", target.task);
            assert!(
                reasons.iter().any(|r| r.contains(&approve)),
                "the reason names `{approve}`: {reasons:?}"
            );
        }
        other => panic!("a manual gate waits, got {other:?}"),
    }
}

pub async fn an_all_gate_combines_its_leaves<H: Harness>(new_harness: &impl Fn() -> H) {
    let h = new_harness();
    let all = |require: &[&str]| {
        def(GateKind::All {
            require: require.iter().map(|s| (*s).to_owned()).collect(),
        })
    };
    let defs = BTreeMap::from([
        ("green".to_owned(), def(h.passing("green"))),
        ("red".to_owned(), def(h.failing("red"))),
        ("human".to_owned(), def(GateKind::Manual)),
        ("checks".to_owned(), all(&["green"])),
        ("ship".to_owned(), all(&["checks", "human"])),
        ("broken".to_owned(), all(&["human", "red", "green"])),
        ("dangling".to_owned(), all(&["green", "nope"])),
    ]);
    let target = h.target();
    let status = |gate: &'static str| evaluate_gate(h.evaluator(), &defs, gate, &target);
    assert_eq!(status("checks").await, Ok(GateStatus::Cleared));
    match status("ship").await {
        Ok(GateStatus::Waiting { reasons }) => {
            assert!(reasons.iter().any(|r| r.contains("human")), "{reasons:?}");
        }
        other => panic!("green and a manual gate wait for the human, got {other:?}"),
    }
    match status("broken").await {
        Ok(GateStatus::Failed { findings }) => assert!(!findings.is_empty()),
        other => panic!("a failed leaf fails the whole gate, got {other:?}"),
    }
    assert!(matches!(
        status("dangling").await,
        Err(GateError::Undefined(u)) if u.gate == "nope"
    ));
}

pub async fn an_all_gate_is_not_a_leaf<H: Harness>(new_harness: &impl Fn() -> H) {
    let h = new_harness();
    let all = GateKind::All {
        require: vec!["green".to_owned()],
    };
    assert_eq!(
        evaluate(&h, "checks", all, h.target()).await,
        Err(GateError::NotALeaf {
            gate: "checks".to_owned()
        })
    );
}

pub async fn a_task_without_work_is_a_typed_error<H: Harness>(new_harness: &impl Fn() -> H) {
    let h = new_harness();
    let nothing = GateTarget {
        task: TaskId(404),
        branch: None,
        commit: None,
        pr: None,
    };
    match evaluate(&h, "green", h.passing("green"), nothing).await {
        Err(e) => {
            assert!(!e.is_transient(), "waiting will not make work appear: {e}");
            assert!(e.to_string().contains("task-404"), "names the task: {e}");
        }
        Ok(status) => panic!("no work to judge is an error, got {status:?}"),
    }
}

pub async fn unknown_work_is_a_typed_error_not_cleared<H: Harness>(new_harness: &impl Fn() -> H) {
    let h = new_harness();
    let unknown = h.unknown();
    match evaluate(&h, "green", h.passing("green"), unknown.clone()).await {
        Err(e) => {
            assert!(!e.is_transient(), "{e}");
            let task = unknown.task.to_string();
            assert!(e.to_string().contains(&task), "names {task}: {e}");
        }
        Ok(status) => panic!("unknown work is an error, got {status:?}"),
    }
}

pub async fn evaluating_again_gives_the_same_answer_and_leaves_nothing_behind<H: Harness>(
    new_harness: &impl Fn() -> H,
) {
    let h = new_harness();
    let before = h.residue();
    for (gate, kind) in [("green", h.passing("green")), ("red", h.failing("red"))] {
        let first = evaluate(&h, gate, kind.clone(), h.target()).await;
        assert_eq!(h.residue(), before, "after evaluating {gate}");
        let second = evaluate(&h, gate, kind, h.target()).await;
        assert_eq!(first, second, "{gate} evaluated twice");
        assert_eq!(h.residue(), before, "after evaluating {gate} again");
    }
}
