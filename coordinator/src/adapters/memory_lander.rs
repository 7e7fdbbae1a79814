//! [`MemoryLander`]: a [`Lander`] that lands nowhere, for tests of the reconcile loop. Clones
//! share one record, so a test keeps a clone to script answers and inspect what was landed.
//!
//! Without a script every landing succeeds, and landing the same work again finds it already
//! landed, as the git lander does after a crash between its merge and the state write.
//! Scripted outcomes ([`MemoryLander::push_outcome`]) are answered first, one per call. A
//! [`LandHold`] keeps landings waiting, so a test can look at the loop mid-landing.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::ports::lander::{
    CheckoutSync, LandError, LandOutcome, LandRequest, LandedEvidence, Lander, Landing, PushStatus,
};
use crate::ports::spec_source::CommitId;

#[derive(Debug, Clone, Default)]
pub struct MemoryLander {
    shared: Arc<Shared>,
}

/// One `land` call: what was asked and what was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandCall {
    pub request: LandRequest,
    pub outcome: Result<LandOutcome, LandError>,
}

#[derive(Debug, Default)]
struct Shared {
    // std Mutexes: `land` runs on a blocking thread and nothing awaits while holding them.
    record: Mutex<Record>,
    /// Live [`LandHold`]s; landings wait while there is any.
    holds: Mutex<usize>,
    released: Condvar,
    /// Landings waiting at the hold, watched by async tests.
    waiting: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct Record {
    script: VecDeque<Result<LandOutcome, LandError>>,
    calls: Vec<LandCall>,
}

/// Keeps every landing waiting until it (and every other hold) is released or dropped.
#[derive(Debug)]
#[must_use = "landings are held only while the hold lives"]
pub struct LandHold {
    shared: Arc<Shared>,
}

impl MemoryLander {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues the answer of a future `land` call; queued answers are given in order, before
    /// any landing is made. A scripted landing (fresh or found) counts as landed afterwards.
    pub fn push_outcome(&self, outcome: Result<LandOutcome, LandError>) {
        lock(&self.shared.record).script.push_back(outcome);
    }

    /// Holds every landing (those already waiting and those to come) until the hold goes.
    pub fn hold(&self) -> LandHold {
        *lock(&self.shared.holds) += 1;
        LandHold {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Every finished `land` call, in order.
    pub fn calls(&self) -> Vec<LandCall> {
        lock(&self.shared.record).calls.clone()
    }

    /// The requests that made a landing ([`LandOutcome::Landed`]), in order.
    pub fn landed(&self) -> Vec<LandRequest> {
        lock(&self.shared.record)
            .calls
            .iter()
            .filter(|c| matches!(c.outcome, Ok(LandOutcome::Landed(_))))
            .map(|c| c.request.clone())
            .collect()
    }
}

impl LandHold {
    /// Resolves once at least `n` landings wait at the hold.
    pub async fn until_waiting(&self, n: usize) {
        let mut waiting = self.shared.waiting.subscribe();
        // The sender lives in `shared`, which this hold keeps alive: it cannot close.
        let _ = waiting.wait_for(|&w| w >= n).await;
    }

    /// Lets the landings go (as dropping the hold does), unless another hold remains.
    pub fn release(self) {}
}

impl Drop for LandHold {
    fn drop(&mut self) {
        let mut holds = lock(&self.shared.holds);
        *holds -= 1;
        if *holds == 0 {
            self.shared.released.notify_all();
        }
    }
}

impl Record {
    fn answer(&self, request: &LandRequest) -> LandOutcome {
        // The same work is the same task, branch and pinned head: a process improvement of a
        // later round is new work although its WorkRef is the same.
        let earlier = self.calls.iter().find_map(|c| match &c.outcome {
            Ok(LandOutcome::Landed(landing) | LandOutcome::AlreadyLanded { landing, .. })
                if c.request.task == request.task
                    && c.request.branch == request.branch
                    && c.request.head == request.head =>
            {
                Some(landing)
            }
            _ => None,
        });
        match earlier {
            // Found by its trailer, as the git lander finds it; a found landing never
            // touches the checkout.
            Some(landing) => LandOutcome::AlreadyLanded {
                landing: Landing {
                    checkout: CheckoutSync::Untouched,
                    ..landing.clone()
                },
                evidence: LandedEvidence::Trailer,
            },
            None => LandOutcome::Landed(Landing {
                // Distinct per call, and readable in a failing test's output.
                commit: CommitId(format!("{:040x}", self.calls.len() + 1)),
                checkout: CheckoutSync::Untouched,
                push: PushStatus::NoOrigin,
                branch_deleted: request.delete_branch,
            }),
        }
    }
}

impl Lander for MemoryLander {
    fn land(&self, request: &LandRequest) -> Result<LandOutcome, LandError> {
        let shared = &*self.shared;
        let holds = lock(&shared.holds);
        if *holds > 0 {
            shared.waiting.send_modify(|w| *w += 1);
            let released = shared.released.wait_while(holds, |h| *h > 0);
            drop(released.unwrap_or_else(PoisonError::into_inner));
            shared.waiting.send_modify(|w| *w -= 1);
        } else {
            drop(holds);
        }
        let mut record = lock(&shared.record);
        let outcome = match record.script.pop_front() {
            Some(scripted) => scripted,
            None => Ok(record.answer(request)),
        };
        record.calls.push(LandCall {
            request: request.clone(),
            outcome: outcome.clone(),
        });
        outcome
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section finishes its update before anything can panic, so the data
    // behind a poisoned lock (a panicking test thread) is consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyperloop_shared::config::MergeStrategy;
    use hyperloop_shared::model::TaskId;

    use super::*;
    use crate::ports::lander::WorkRef;

    fn request(task: WorkRef, head: Option<&str>) -> LandRequest {
        LandRequest {
            task,
            title: format!("land {task}"),
            spec_ref: None,
            branch: format!("hyperloop/{task}"),
            head: head.map(|h| CommitId(h.to_owned())),
            strategy: MergeStrategy::Squash,
            delete_branch: true,
        }
    }

    fn landing_of(outcome: &Result<LandOutcome, LandError>) -> &Landing {
        match outcome {
            Ok(LandOutcome::Landed(landing) | LandOutcome::AlreadyLanded { landing, .. }) => {
                landing
            }
            other => panic!("not landed: {other:?}"),
        }
    }

    #[test]
    fn landing_the_same_work_again_finds_the_first_landing() {
        let lander = MemoryLander::new();
        let seven = request(WorkRef::Task(TaskId(7)), None);
        let first = lander.land(&seven);
        assert!(matches!(first, Ok(LandOutcome::Landed(_))), "{first:?}");
        let again = lander.land(&seven);
        assert_eq!(
            again,
            Ok(LandOutcome::AlreadyLanded {
                landing: landing_of(&first).clone(),
                evidence: LandedEvidence::Trailer,
            })
        );
        assert_eq!(
            lander.landed(),
            std::slice::from_ref(&seven),
            "found again is not landed twice"
        );
        assert_eq!(lander.calls().len(), 2);

        let eight = request(WorkRef::Task(TaskId(8)), None);
        let other = lander.land(&eight);
        assert_ne!(landing_of(&other).commit, landing_of(&first).commit);
        assert_eq!(lander.landed(), [seven, eight]);
    }

    #[test]
    fn a_later_process_improvement_is_new_work() {
        let lander = MemoryLander::new();
        let round = |head| request(WorkRef::ProcessImprovement, Some(head));
        lander.land(&round("aaaa")).unwrap();
        let next = lander.land(&round("bbbb"));
        assert!(matches!(next, Ok(LandOutcome::Landed(_))), "{next:?}");
    }

    #[test]
    fn scripted_outcomes_are_answered_in_order_before_any_landing() {
        let lander = MemoryLander::new();
        let task = WorkRef::Task(TaskId(3));
        let conflict = LandOutcome::Conflict {
            files: vec!["src/lib.rs".into()],
        };
        let deferred = LandOutcome::Deferred {
            reason: "uncommitted changes".into(),
        };
        let contended = LandError::Contended {
            task,
            branch: "main".into(),
            attempts: 3,
        };
        lander.push_outcome(Ok(conflict.clone()));
        lander.push_outcome(Ok(deferred.clone()));
        lander.push_outcome(Err(contended.clone()));
        let req = request(task, None);
        assert_eq!(lander.land(&req), Ok(conflict));
        assert_eq!(lander.land(&req), Ok(deferred));
        assert_eq!(lander.land(&req), Err(contended));
        assert!(lander.landed().is_empty(), "nothing landed yet");
        assert!(matches!(lander.land(&req), Ok(LandOutcome::Landed(_))));
        let outcomes: Vec<_> = lander.calls().into_iter().map(|c| c.outcome).collect();
        assert_eq!(outcomes.len(), 4);
    }

    #[test]
    fn a_scripted_landing_counts_as_landed_afterwards() {
        let lander = MemoryLander::new();
        let landing = Landing {
            commit: CommitId("c0ffee".into()),
            checkout: CheckoutSync::Updated,
            push: PushStatus::Pushed,
            branch_deleted: true,
        };
        lander.push_outcome(Ok(LandOutcome::Landed(landing.clone())));
        let req = request(WorkRef::Task(TaskId(1)), None);
        lander.land(&req).unwrap();
        let again = lander.land(&req);
        assert_eq!(landing_of(&again).commit, landing.commit);
        assert_eq!(landing_of(&again).checkout, CheckoutSync::Untouched);
    }

    #[tokio::test]
    async fn a_held_landing_waits_until_the_hold_is_released() {
        let lander = MemoryLander::new();
        let hold = lander.hold();
        let req = request(WorkRef::Task(TaskId(5)), None);
        let landing = tokio::task::spawn_blocking({
            let (lander, req) = (lander.clone(), req.clone());
            move || lander.land(&req)
        });
        tokio::time::timeout(Duration::from_secs(5), hold.until_waiting(1))
            .await
            .expect("the landing reaches the hold");
        assert!(lander.calls().is_empty(), "a held landing has not answered");
        assert!(!landing.is_finished());

        hold.release();
        let outcome = tokio::time::timeout(Duration::from_secs(5), landing)
            .await
            .expect("a released landing finishes")
            .unwrap();
        assert!(matches!(outcome, Ok(LandOutcome::Landed(_))), "{outcome:?}");
        assert_eq!(lander.landed(), [req]);
    }
}
