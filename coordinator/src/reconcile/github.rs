//! GitHub mode in the loop: which tasks need GitHub now, what to ask for, and what the
//! answers change. The asking and answering happen off the loop ([`crate::forge_driver`]);
//! here every task has at most one request in flight and its own backoff, so GitHub trouble
//! slows only the tasks that wait on it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::compose::ProjectLoadError;
use hyperloop_shared::config::NotificationKind;
use hyperloop_shared::event::EventKind;
use hyperloop_shared::model::{Review, Task, TaskId, TaskStatus, Verdict};
use hyperloop_shared::pipeline::{ActionKind, ActionOutcome, GateCheck, GateKind, Next, Outcome};
use hyperloop_shared::project::Project;
use tokio::sync::mpsc;

use super::Reconciler;
use crate::forge_driver::{ActionResult, ForgeReply, ForgeRequest, Notice};
use crate::ports::forge::{
    CommentMarker, GateStatus, MergeRequest, PrNumber, PrRequest, PrSnapshot, task_labels,
};
use crate::ports::lander::Lander;
use crate::ports::spec_source::SpecSource;
use crate::ports::state_store::Change;
use crate::ports::state_store::StateStore;

/// The loop's side of GitHub mode.
pub struct GitHub {
    pub repo: String,
    /// The repository's web address (for links in pull request bodies), when known.
    web_url: Option<String>,
    requests: mpsc::Sender<ForgeRequest>,
    replies: mpsc::Receiver<ForgeReply>,
    /// Tasks with a request in flight.
    busy: BTreeSet<TaskId>,
    /// When each task may ask again (poll cadence, backoff).
    not_before: BTreeMap<TaskId, Instant>,
    /// Consecutive transient failures per task, for the backoff.
    failures: BTreeMap<TaskId, u32>,
    /// Gate notices already sent (by marker); after a restart they are sent once more, and
    /// the markers keep GitHub from showing them twice.
    notified: BTreeSet<String>,
}

impl GitHub {
    /// `api_url` is the REST API's (`None`: github.com) and gives the web address links use.
    pub fn new(
        repo: String,
        api_url: Option<&str>,
        requests: mpsc::Sender<ForgeRequest>,
        replies: mpsc::Receiver<ForgeReply>,
    ) -> Self {
        let web = match api_url {
            None => Some("https://github.com".to_owned()),
            // GitHub Enterprise Server: https://HOST/api/v3 → https://HOST
            Some(url) => url
                .trim_end_matches('/')
                .strip_suffix("/api/v3")
                .map(str::to_owned),
        };
        GitHub {
            web_url: web.map(|w| format!("{w}/{repo}")),
            repo,
            requests,
            replies,
            busy: BTreeSet::new(),
            not_before: BTreeMap::new(),
            failures: BTreeMap::new(),
            notified: BTreeSet::new(),
        }
    }

    /// The next reply, for the loop's `select!`.
    pub async fn reply(&mut self) -> Option<ForgeReply> {
        self.replies.recv().await
    }

    pub fn busy(&self) -> bool {
        !self.busy.is_empty()
    }

    fn due(&self, task: TaskId) -> bool {
        !self.busy.contains(&task)
            && self
                .not_before
                .get(&task)
                .is_none_or(|t| Instant::now() >= *t)
    }

    /// Sends without waiting: a full queue means GitHub is behind, and the task asks again.
    fn send(&mut self, request: ForgeRequest) {
        let task = request.task();
        if self.requests.try_send(request).is_ok() {
            self.busy.insert(task);
        }
    }

    fn wait(&mut self, task: TaskId, after: Duration) {
        self.not_before.insert(task, Instant::now() + after);
    }
}

/// The PR number stored on a task (`Task::pr` holds it as text).
fn pr_of(task: &Task) -> Option<PrNumber> {
    task.pr.as_deref()?.parse().ok().map(PrNumber)
}

impl<S, P, L, C> Reconciler<S, P, L, C>
where
    S: StateStore,
    P: SpecSource,
    L: Lander,
    C: Fn() -> Result<Project, ProjectLoadError>,
{
    /// After a task's first pushed work: its draft pull request.
    pub(super) fn github_after_push(&mut self, task: &Task) {
        if task.pr.is_some() || task.branch.is_none() {
            return;
        }
        let request = self.pr_request(task);
        if let Some(gh) = self.github.as_mut()
            && gh.due(task.id)
        {
            gh.send(ForgeRequest::EnsurePr {
                task: task.id,
                request,
            });
        }
    }

    fn pr_request(&self, task: &Task) -> PrRequest {
        let base = self.ctx.config.target.base_branch.clone();
        let spec = &task.spec_ref;
        let spec_link = match self.github.as_ref().and_then(|g| g.web_url.as_deref()) {
            Some(web) => format!(
                "[`{}`]({web}/blob/{}/{})",
                spec.path, spec.commit, spec.path
            ),
            None => format!("`{}`", spec.path),
        };
        PrRequest {
            head: task.branch.clone().unwrap_or_default(),
            base,
            title: format!("{} ({})", task.title, task.id),
            body: format!(
                "hyperloop task **{}**: {}\n\nSpec: {spec_link} at `{}`\n\nThis pull request \
                 is maintained by hyperloop; review it here, and use the gates the process \
                 defines to let it land.\n",
                task.id, task.title, spec.commit
            ),
            labels: task_labels(task.id, Some(&task.spec_ref.path)),
            draft: true,
        }
    }

    /// ADVANCE in GitHub mode for one task waiting at a gate or an action. Returns whether a
    /// request went out.
    pub(super) fn github_advance(&mut self, task: &Task, next: &Next) -> bool {
        let Some(gh) = self.github.as_ref() else {
            return false;
        };
        if !gh.due(task.id) {
            return false;
        }
        let Some(pr) = pr_of(task) else {
            // No pull request yet (its creation failed or is pending): make one first.
            self.github_after_push(task);
            return true;
        };
        let poll = self.ctx.config.poll_interval;
        let request = match next {
            Next::WaitAtGate { gate, .. } => {
                let gates = &self.project.process.gates;
                let Some(def) = gates.get(gate) else {
                    return false;
                };
                if def.kind == GateKind::Manual {
                    return false; // only `hyperloopctl approve` clears it
                }
                let marker = CommentMarker::new(task.id, "gate", gate, u64::from(task.round));
                let notice = (!gh.notified.contains(marker.as_str())).then(|| Notice {
                    body: self.comments().then(|| gate_notice(gate, &def.kind, task)),
                    marker,
                    reviewers: def.reviewers.clone(),
                });
                ForgeRequest::Gate {
                    task: task.id,
                    pr,
                    gate: gate.clone(),
                    gates: Arc::new(gates.clone()),
                    notice,
                }
            }
            Next::RunAction { action, .. } => match self.project.process.actions.get(action) {
                Some(ActionKind::MarkPrReady) => ForgeRequest::MarkReady { task: task.id, pr },
                Some(ActionKind::PrMerge) => ForgeRequest::Merge {
                    task: task.id,
                    pr,
                    request: MergeRequest {
                        strategy: self.ctx.config.merge.strategy,
                        title: format!("{} ({})", task.title, task.id),
                        message: format!("Spec-Ref: {}\nTask-Ref: {}", task.spec_ref, task.id),
                        expected_head: None,
                    },
                    auto: self.ctx.config.merge.auto_merge,
                    delete_branch: self
                        .ctx
                        .config
                        .merge
                        .delete_branch
                        .then(|| task.branch.clone())
                        .flatten(),
                },
                None => return false,
            },
            _ => return false,
        };
        let gh = self.github.as_mut().expect("checked above");
        gh.send(request);
        gh.wait(task.id, poll);
        true
    }

    /// Whether humans are told things in pull request comments (`notifications.type`).
    fn comments(&self) -> bool {
        self.ctx.config.notifications.kind == NotificationKind::GithubComment
    }

    /// A task that failed tells its pull request why (once per failure).
    pub(super) fn github_failed(&mut self, task: &Task) {
        if !self.comments() {
            return;
        }
        let Some(pr) = pr_of(task) else { return };
        let Some(gh) = self.github.as_mut() else {
            return;
        };
        let marker = CommentMarker::new(task.id, "error", "task", u64::from(task.round));
        let body = format!(
            "hyperloop: {} failed: {}\n\nThe gap goes back to the PM with this history; a \
             new task will take it up.",
            task.id,
            task.failure.as_deref().unwrap_or("no reason recorded")
        );
        let _ = gh.requests.try_send(ForgeRequest::Notify {
            task: task.id,
            pr,
            marker,
            body,
        });
    }

    pub(super) fn github_reply(&mut self, reply: ForgeReply) {
        self.wake = true;
        let id = reply.task();
        if let Some(gh) = self.github.as_mut() {
            gh.busy.remove(&id);
            if !matches!(reply, ForgeReply::Failed { .. }) {
                gh.failures.remove(&id);
            }
        }
        let Some(task) = self.state.tasks.get(&id).cloned() else {
            return;
        };
        match reply {
            ForgeReply::Pr { pr, opened, .. } => {
                let mut task = task;
                task.pr = Some(pr.number.0.to_string());
                if opened {
                    self.event(
                        Some(id),
                        EventKind::PrCreated {
                            number: pr.number.0,
                            url: pr.url.clone(),
                        },
                    );
                }
                self.put_task(task);
            }
            ForgeReply::Gate {
                gate,
                status,
                notified,
                ..
            } => {
                if notified && let Some(gh) = self.github.as_mut() {
                    let marker = CommentMarker::new(id, "gate", &gate, u64::from(task.round));
                    gh.notified.insert(marker.as_str().to_owned());
                }
                if !at_gate(&self.project, &task, &gate) {
                    return; // moved on meanwhile (approved by an operator, cancelled)
                }
                match status {
                    GateStatus::Cleared => {
                        self.event(
                            Some(id),
                            EventKind::GateCleared {
                                gate,
                                by: "github".to_owned(),
                            },
                        );
                        self.apply_outcome(task, Outcome::Gate(GateCheck::Cleared));
                    }
                    GateStatus::Waiting { .. } => {}
                    GateStatus::Failed { findings } => {
                        self.add_review(Review {
                            task_id: id,
                            round: task.round,
                            role: format!("gate:{gate}"),
                            verdict: Verdict::Fail,
                            detail: findings.join("\n"),
                        });
                        self.apply_outcome(task, Outcome::Gate(GateCheck::Failed));
                    }
                }
            }
            ForgeReply::Action { result, .. } => match result {
                ActionResult::Done => self.github_landed(task, None),
                ActionResult::Retry(why) => {
                    tracing::info!(task = %id, %why, "GitHub action not done yet");
                }
                ActionResult::Conflict => {
                    let branch = task.branch.clone().unwrap_or_default();
                    let action = current_action(&self.project, &task).unwrap_or_default();
                    self.conflicted(task, &action, &branch, Vec::new());
                }
            },
            ForgeReply::MergedByHuman { pr, .. } => self.github_landed(task, Some(pr)),
            ForgeReply::Closed { finding, .. } => self.github_closed(task, finding),
            ForgeReply::Notified { .. } => {}
            ForgeReply::Failed { error, .. } => {
                if error.is_transient() {
                    let Some(gh) = self.github.as_mut() else {
                        return;
                    };
                    let n = gh.failures.entry(id).or_insert(0);
                    *n += 1;
                    let backoff = error
                        .retry_after()
                        .unwrap_or_else(|| hyperloop_shared::retry::delay(*n));
                    tracing::warn!(task = %id, error = %error, retry_in_s = backoff.as_secs(), "GitHub call failed; this task waits");
                    gh.wait(id, backoff);
                } else {
                    tracing::warn!(task = %id, error = %error, "GitHub refused; the step counts as failed");
                    self.add_review(Review {
                        task_id: id,
                        round: task.round,
                        role: "coordinator".to_owned(),
                        verdict: Verdict::Fail,
                        detail: error.to_string(),
                    });
                    if current_action(&self.project, &task).is_some() {
                        self.apply_outcome(task, Outcome::Action(ActionOutcome::Error));
                    }
                }
            }
        }
    }

    /// The pull request is merged (by us or by a human): the action at hand succeeds, and a
    /// task still at a gate is done waiting too.
    fn github_landed(&mut self, task: Task, pr: Option<PrSnapshot>) {
        let id = task.id;
        if self.state.meta.rebase_attempts.remove(&id).is_some() {
            let meta = self.state.meta.clone();
            self.record(Change::PutMeta(meta));
        }
        let next = task
            .position
            .as_ref()
            .and_then(|p| self.project.process.pipeline.next_at(p).ok());
        let outcome = match next {
            Some(Next::RunAction { .. }) => Outcome::Action(ActionOutcome::Success),
            Some(Next::WaitAtGate { .. }) => Outcome::Gate(GateCheck::Cleared),
            _ => return,
        };
        if let Some(pr) = pr {
            self.event(
                Some(id),
                EventKind::Merged {
                    branch: pr.head_ref.clone(),
                    into: pr.base_ref.clone(),
                    commit: pr.merge_commit_sha.clone().unwrap_or_default(),
                    strategy: "by a human".to_owned(),
                },
            );
        }
        self.apply_outcome(task, outcome);
    }

    /// A human closed the pull request: what they said becomes the finding, the task fails,
    /// and the gap goes back to intake with it.
    fn github_closed(&mut self, mut task: Task, finding: String) {
        let id = task.id;
        self.add_review(Review {
            task_id: id,
            round: task.round,
            role: "human".to_owned(),
            verdict: Verdict::Fail,
            detail: finding,
        });
        let reason = "its pull request was closed without merging".to_owned();
        task.status = TaskStatus::Failed;
        task.position = None;
        task.failure = Some(reason.clone());
        self.event(Some(id), EventKind::TaskFailed { reason });
        self.task_failed(id);
        self.github_failed(&task);
        self.put_task(task);
        self.fail_dependents(id);
    }
}

fn at_gate(project: &Project, task: &Task, gate: &str) -> bool {
    matches!(
        task.position.as_ref().and_then(|p| project.process.pipeline.next_at(p).ok()),
        Some(Next::WaitAtGate { gate: g, .. }) if g == gate
    )
}

fn current_action(project: &Project, task: &Task) -> Option<String> {
    match task
        .position
        .as_ref()
        .and_then(|p| project.process.pipeline.next_at(p).ok())
    {
        Some(Next::RunAction { action, .. }) => Some(action),
        _ => None,
    }
}

/// What a human reads on the pull request when a task reaches a gate.
fn gate_notice(gate: &str, kind: &GateKind, task: &Task) -> String {
    let what = match kind {
        GateKind::Label { label } => format!("add the label `{label}` to this pull request"),
        GateKind::PrApproval => {
            "approve this pull request (a review on its current head)".to_owned()
        }
        GateKind::CiStatus => "nothing: it waits for CI to pass on the current head".to_owned(),
        GateKind::All { require } => format!("clear every one of the gates {}", require.join(", ")),
        GateKind::Manual => "run `hyperloopctl approve` for it".to_owned(),
        GateKind::Command { run, .. } => format!(
            "nothing: it waits for `{}` to pass on the task's branch",
            hyperloop_shared::gates::command_line(run)
        ),
    };
    format!(
        "hyperloop: {} ({}) waits at gate `{gate}`. To let it continue, {what}.",
        task.id, task.title
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_point_at_the_web_address_of_github_or_an_enterprise_server() {
        let web = |api: Option<&str>| {
            let (tx, _) = mpsc::channel(1);
            let (_, rx) = mpsc::channel(1);
            GitHub::new("acme/widgets".to_owned(), api, tx, rx).web_url
        };
        assert_eq!(
            web(None).as_deref(),
            Some("https://github.com/acme/widgets")
        );
        assert_eq!(
            web(Some("https://ghe.example.com/api/v3/")).as_deref(),
            Some("https://ghe.example.com/acme/widgets")
        );
        // A test server or proxy with no known web address: plain text, no link.
        assert_eq!(web(Some("http://127.0.0.1:9000")), None);
    }
}
