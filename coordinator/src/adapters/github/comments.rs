//! [`GithubComments`]: the `notifications.type: github-comment` notifier. Stored events a
//! person looking at a task's pull request should hear of become comments there:
//! - a task arriving at a gate: which gate, and what lets it continue (a label to add, an
//!   approval, `hyperloopctl approve`, or nothing but CI);
//! - a task failing: why, and that the gap goes back to the PM;
//! - a task cancelled: why, and that hyperloop no longer maintains the pull request.
//!
//! Each comment carries a [`CommentMarker`] naming its event (task, kind, journal number), and
//! [`Forge::comment_once`] posts only when no comment carries it yet: a retried request that
//! GitHub had carried out, or an event handled again, shows once.
//!
//! The pull request of a task: `PrCreated` events name it; for one opened before this process
//! started (a restart, a new leader) the forge is asked for the pull request of the task's
//! branch (`<branch_prefix><task>`), and the answer kept.
//!
//! `notify` never waits: events go into a bounded queue (dropped and counted when full),
//! which one task works through in order, retrying transient GitHub failures with backoff.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyperloop_shared::event::{Event, EventKind};
use hyperloop_shared::model::TaskId;
use tokio::sync::mpsc;

use crate::ports::forge::{CommentMarker, CommentOutcome, Forge, ForgeError, PrNumber};
use crate::ports::notifier::Notifier;

/// Events waiting to be posted; beyond this they are dropped (and counted).
const QUEUE: usize = 1024;
/// Tries per comment, the first included.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the notifier needs of the forge: finding a task's pull request and commenting once.
/// Any [`Forge`] does; tests use a small double.
pub trait PrComments: Send + Sync + 'static {
    /// [`Forge::find_pr`].
    fn branch_pr(
        &self,
        head: &str,
    ) -> impl Future<Output = Result<Option<PrNumber>, ForgeError>> + Send;

    /// [`Forge::comment_once`].
    fn post_once(
        &self,
        pr: PrNumber,
        marker: &CommentMarker,
        body: &str,
    ) -> impl Future<Output = Result<CommentOutcome, ForgeError>> + Send;
}

impl<F: Forge + 'static> PrComments for F {
    fn branch_pr(
        &self,
        head: &str,
    ) -> impl Future<Output = Result<Option<PrNumber>, ForgeError>> + Send {
        self.find_pr(head)
    }

    fn post_once(
        &self,
        pr: PrNumber,
        marker: &CommentMarker,
        body: &str,
    ) -> impl Future<Output = Result<CommentOutcome, ForgeError>> + Send {
        self.comment_once(pr, marker, body)
    }
}

pub struct GithubComments {
    // std Mutex: never held across an await (drain takes the queue and task out first).
    sender: Mutex<Option<(mpsc::Sender<Event>, tokio::task::JoinHandle<()>)>>,
    dropped: AtomicU64,
}

impl GithubComments {
    /// Starts the posting task (call inside a tokio runtime). Task branches are
    /// `branch_prefix` followed by the task id.
    pub fn start<F: PrComments>(forge: Arc<F>, branch_prefix: &str) -> Self {
        let (queue, events) = mpsc::channel(QUEUE);
        let poster = Poster {
            forge,
            branch_prefix: branch_prefix.to_owned(),
            prs: HashMap::new(),
        };
        let task = tokio::spawn(poster.run(events));
        GithubComments {
            sender: Mutex::new(Some((queue, task))),
            dropped: AtomicU64::new(0),
        }
    }
}

impl Notifier for GithubComments {
    fn notify(&self, events: &[Event]) {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((queue, _)) = sender.as_ref() else {
            return; // drained: shutting down
        };
        let wanted = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::PrCreated { .. }) || comment(e).is_some());
        for event in wanted {
            if queue.try_send(event.clone()).is_err() {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Said at 1, 2, 4, 8, ... drops: visible without flooding the log.
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        "GitHub comments are not keeping up; events for them are dropped"
                    );
                }
            }
        }
    }

    fn drain(&self, within: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let taken = self
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Box::pin(async move {
            let Some((queue, task)) = taken else { return };
            // Dropping the queue ends the task once the backlog is posted.
            drop(queue);
            if tokio::time::timeout(within, task).await.is_err() {
                tracing::warn!(
                    "GitHub comments still pending at shutdown were dropped after {}s",
                    within.as_secs()
                );
            }
        })
    }
}

/// A comment an event makes on its task's pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Comment {
    task: TaskId,
    marker: CommentMarker,
    body: String,
}

/// The comment `event` makes, if any.
fn comment(event: &Event) -> Option<Comment> {
    let task = event.task?;
    let (kind, name, body) = match &event.kind {
        EventKind::TaskAdvanced {
            gate: Some(wait), ..
        } => (
            "gate",
            wait.gate.as_str(),
            format!(
                "hyperloop: {task} waits at gate `{}`. To let it continue, {}.",
                wait.gate, wait.clears
            ),
        ),
        EventKind::TaskFailed { reason } => (
            "error",
            "task",
            format!(
                "hyperloop: {task} failed: {reason}\n\nThe gap goes back to the PM with this \
                 history; a new task will take it up."
            ),
        ),
        EventKind::TaskCancelled { reason } => (
            "cancelled",
            "task",
            format!(
                "hyperloop: {task} was cancelled: {reason}\n\nhyperloop no longer maintains \
                 this pull request."
            ),
        ),
        _ => return None,
    };
    Some(Comment {
        task,
        // The journal number makes each event's comment its own, and the same on a retry.
        marker: CommentMarker::new(task, kind, name, event.seq),
        body,
    })
}

/// The posting task's side.
struct Poster<F> {
    forge: Arc<F>,
    branch_prefix: String,
    /// Each task's pull request, once known.
    prs: HashMap<TaskId, PrNumber>,
}

impl<F: PrComments> Poster<F> {
    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        while let Some(event) = events.recv().await {
            if let (Some(task), EventKind::PrCreated { number, .. }) = (event.task, &event.kind) {
                self.prs.insert(task, PrNumber(*number));
            } else if let Some(comment) = comment(&event) {
                self.post(&comment).await;
            }
        }
    }

    /// Posts one comment, retrying transient failures; gives up (with a warning) otherwise.
    async fn post(&mut self, comment: &Comment) {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let error = match self.try_post(comment).await {
                Ok(()) => return,
                Err(error) => error,
            };
            if !error.is_transient() || attempt == ATTEMPTS {
                tracing::warn!(task = %comment.task, marker = %comment.marker, %error, "could not comment on the task's pull request");
                return;
            }
            tokio::time::sleep(error.retry_after().unwrap_or(backoff).min(MAX_BACKOFF)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn try_post(&mut self, comment: &Comment) -> Result<(), ForgeError> {
        let Some(pr) = self.pr(comment.task).await? else {
            // The task never pushed work (failed before it, or its dependency did).
            tracing::debug!(task = %comment.task, "no pull request to comment on");
            return Ok(());
        };
        self.forge
            .post_once(pr, &comment.marker, &comment.body)
            .await?;
        Ok(())
    }

    async fn pr(&mut self, task: TaskId) -> Result<Option<PrNumber>, ForgeError> {
        if let Some(pr) = self.prs.get(&task) {
            return Ok(Some(*pr));
        }
        let branch = format!("{}{task}", self.branch_prefix);
        let found = self.forge.branch_pr(&branch).await?;
        if let Some(pr) = found {
            self.prs.insert(task, pr);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperloop_shared::event::GateWait;

    /// A pull request per branch, its comments, and failures to answer with first.
    #[derive(Default)]
    struct FakePrs {
        branches: HashMap<String, PrNumber>,
        comments: Mutex<Vec<(PrNumber, String)>>,
        lookups: AtomicU64,
        failures: Mutex<Vec<ForgeError>>,
    }

    impl FakePrs {
        fn comments(&self) -> Vec<(PrNumber, String)> {
            self.comments.lock().unwrap().clone()
        }
    }

    impl PrComments for FakePrs {
        async fn branch_pr(&self, head: &str) -> Result<Option<PrNumber>, ForgeError> {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            Ok(self.branches.get(head).copied())
        }

        async fn post_once(
            &self,
            pr: PrNumber,
            marker: &CommentMarker,
            body: &str,
        ) -> Result<CommentOutcome, ForgeError> {
            if let Some(error) = self.failures.lock().unwrap().pop() {
                return Err(error);
            }
            let mut comments = self.comments.lock().unwrap();
            let tag = marker.html();
            if comments.iter().any(|(_, c)| c.contains(&tag)) {
                return Ok(CommentOutcome::AlreadyPosted);
            }
            comments.push((pr, format!("{body}\n\n{tag}")));
            Ok(CommentOutcome::Posted)
        }
    }

    fn event(seq: u64, task: u64, kind: EventKind) -> Event {
        Event {
            seq,
            at_ms: 1,
            task: Some(TaskId(task)),
            kind,
        }
    }

    fn at_gate(seq: u64, task: u64) -> Event {
        event(
            seq,
            task,
            EventKind::TaskAdvanced {
                from_step: "agent: verifier".into(),
                to_step: "gate: lgtm".into(),
                round: 1,
                gate: Some(GateWait {
                    gate: "lgtm".into(),
                    clears: "add the label `lgtm` to the pull request".into(),
                }),
            },
        )
    }

    async fn post_all(forge: &Arc<FakePrs>, events: &[Event]) {
        let notifier = GithubComments::start(forge.clone(), "hyperloop/");
        notifier.notify(events);
        notifier.drain(Duration::from_secs(600)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn gate_arrivals_failures_and_cancellations_are_told_on_the_tasks_pull_request() {
        let forge = Arc::new(FakePrs::default());
        let created = |seq, task, number| {
            event(
                seq,
                task,
                EventKind::PrCreated {
                    number,
                    url: format!("https://github.com/acme/widgets/pull/{number}"),
                },
            )
        };
        let moved = event(
            4,
            1,
            EventKind::TaskAdvanced {
                from_step: "agent: implementer".into(),
                to_step: "agent: verifier".into(),
                round: 1,
                gate: None,
            },
        );
        let failed = event(
            6,
            2,
            EventKind::TaskFailed {
                reason: "max_task_rounds reached".into(),
            },
        );
        let cancelled = event(
            7,
            1,
            EventKind::TaskCancelled {
                reason: "cancelled by alice".into(),
            },
        );
        post_all(
            &forge,
            &[
                created(1, 1, 10),
                created(2, 2, 11),
                moved,
                at_gate(5, 1),
                failed,
                cancelled,
            ],
        )
        .await;
        let comments = forge.comments();
        assert_eq!(comments.len(), 3, "{comments:?}");
        assert_eq!(comments[0].0, PrNumber(10));
        assert!(
            comments[0].1.starts_with(
                "hyperloop: task-001 waits at gate `lgtm`. To let it continue, add the label \
                 `lgtm` to the pull request."
            ) && comments[0]
                .1
                .contains("<!-- hyperloop:task-001:gate:lgtm:5 -->"),
            "{comments:?}"
        );
        assert_eq!(comments[1].0, PrNumber(11));
        assert!(
            comments[1]
                .1
                .contains("task-002 failed: max_task_rounds reached")
                && comments[1].1.contains("goes back to the PM"),
            "{comments:?}"
        );
        assert_eq!(comments[2].0, PrNumber(10));
        assert!(comments[2].1.contains("cancelled by alice"), "{comments:?}");
        assert_eq!(
            forge.lookups.load(Ordering::Relaxed),
            0,
            "PrCreated named both pull requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_restart_the_pull_request_is_found_by_branch_and_nothing_is_posted_twice() {
        let forge = Arc::new(FakePrs {
            branches: HashMap::from([("hyperloop/task-003".to_owned(), PrNumber(42))]),
            ..FakePrs::default()
        });
        // One coordinator told of the arrival; the next one handles the same event again.
        post_all(&forge, &[at_gate(9, 3)]).await;
        post_all(&forge, &[at_gate(9, 3), at_gate(9, 3)]).await;
        let comments = forge.comments();
        assert_eq!(comments.len(), 1, "{comments:?}");
        assert_eq!(comments[0].0, PrNumber(42));
        // Once per process: the answer is kept.
        assert_eq!(forge.lookups.load(Ordering::Relaxed), 2);
        // A task without a pull request (it never pushed) gets no comment, and no error.
        post_all(
            &forge,
            &[event(
                10,
                4,
                EventKind::TaskFailed {
                    reason: "dependency task-003 failed".into(),
                },
            )],
        )
        .await;
        assert_eq!(forge.comments().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_refusals_are_not() {
        let unavailable = || ForgeError::Unavailable {
            what: "comment".into(),
            status: 502,
        };
        let forge = Arc::new(FakePrs {
            branches: HashMap::from([("hyperloop/task-001".to_owned(), PrNumber(7))]),
            failures: Mutex::new(vec![unavailable(), unavailable()]),
            ..FakePrs::default()
        });
        post_all(&forge, &[at_gate(3, 1)]).await;
        assert_eq!(forge.comments().len(), 1, "posted after two 502s");

        let refused = Arc::new(FakePrs {
            branches: HashMap::from([("hyperloop/task-001".to_owned(), PrNumber(7))]),
            failures: Mutex::new(vec![
                unavailable(),
                ForgeError::Forbidden {
                    repo: "acme/widgets".into(),
                    action: "comment".into(),
                    message: "Resource not accessible by integration".into(),
                },
            ]),
            ..FakePrs::default()
        });
        post_all(&refused, &[at_gate(3, 1)]).await;
        assert!(refused.comments().is_empty());
        assert_eq!(
            refused.failures.lock().unwrap().len(),
            1,
            "a refusal is not tried again"
        );
    }
}
