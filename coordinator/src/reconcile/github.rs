//! GitHub mode in the loop: which tasks need GitHub now, what to ask for, and what the
//! answers change. The asking and answering happen off the loop ([`crate::forge_driver`]);
//! here every task has at most one request in flight and its own backoff, so GitHub trouble
//! slows only the tasks that wait on it.
//!
//! Telling humans (comments on pull requests) is not the loop's business: notifiers do it
//! from the stored events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use hyperloop_shared::config::Config;
use hyperloop_shared::model::{Task, TaskId};
use hyperloop_shared::pipeline::{ActionKind, GateKind, Next};
use hyperloop_shared::reconcile::{Core, ForgeAsk, ForgeNews};
use tokio::sync::mpsc;

use crate::forge_driver::{ActionResult, Arrival, ForgeReply, ForgeRequest};
use crate::ports::forge::{GateStatus, MergeRequest, PrNumber, PrRequest, task_labels};

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
    /// Gate entries (task, gate, round) whose arrival was done; after a restart it is done
    /// once more, which sets nothing twice.
    arrived: BTreeSet<(TaskId, String, u32)>,
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
            arrived: BTreeSet::new(),
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

impl GitHub {
    /// Carries out what the core asks about a task, paced per task.
    pub(super) fn ask(&mut self, ask: &ForgeAsk, core: &Core) {
        let (ForgeAsk::Pushed(id) | ForgeAsk::Advance(id)) = *ask;
        let Some(task) = core.state().tasks.get(&id) else {
            return;
        };
        match ask {
            ForgeAsk::Pushed(_) => self.ensure_pr(task, core),
            ForgeAsk::Advance(_) => self.advance(task, core),
        }
    }

    /// After a task's first pushed work: its draft pull request.
    fn ensure_pr(&mut self, task: &Task, core: &Core) {
        if task.pr.is_some() || task.branch.is_none() || !self.due(task.id) {
            return;
        }
        let request = self.pr_request(task, &core.settings().config);
        self.send(ForgeRequest::EnsurePr {
            task: task.id,
            request,
        });
    }

    fn pr_request(&self, task: &Task, config: &Config) -> PrRequest {
        let spec = &task.spec_ref;
        let spec_link = match self.web_url.as_deref() {
            Some(web) => format!(
                "[`{}`]({web}/blob/{}/{})",
                spec.path, spec.commit, spec.path
            ),
            None => format!("`{}`", spec.path),
        };
        PrRequest {
            head: task.branch.clone().unwrap_or_default(),
            base: config.target.base_branch.clone(),
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

    /// A task waiting at a gate or an action: ask GitHub where the gate stands, or do the
    /// action.
    fn advance(&mut self, task: &Task, core: &Core) {
        if !self.due(task.id) {
            return;
        }
        let Some(pr) = pr_of(task) else {
            // No pull request yet (its creation failed or is pending): make one first.
            self.ensure_pr(task, core);
            return;
        };
        let config = &core.settings().config;
        let process = &core.project().process;
        let next = task
            .position
            .as_ref()
            .and_then(|p| process.pipeline.next_at(p).ok());
        let request = match next {
            Some(Next::WaitAtGate { gate, .. }) => {
                let Some(def) = process.gates.get(&gate) else {
                    return;
                };
                if def.kind == GateKind::Manual {
                    return; // only `hyperloopctl approve` clears it
                }
                let entry = (task.id, gate.clone(), task.round);
                let arrival = (!self.arrived.contains(&entry)).then(|| Arrival {
                    reviewers: def.reviewers.clone(),
                });
                ForgeRequest::Gate {
                    task: task.id,
                    pr,
                    gate,
                    gates: Arc::new(process.gates.clone()),
                    arrival,
                }
            }
            Some(Next::RunAction { action, .. }) => match process.actions.get(&action) {
                Some(ActionKind::MarkPrReady) => ForgeRequest::MarkReady { task: task.id, pr },
                Some(ActionKind::PrMerge) => ForgeRequest::Merge {
                    task: task.id,
                    pr,
                    request: MergeRequest {
                        strategy: config.merge.strategy,
                        title: format!("{} ({})", task.title, task.id),
                        message: format!("Spec-Ref: {}\nTask-Ref: {}", task.spec_ref, task.id),
                        expected_head: None,
                    },
                    auto: config.merge.auto_merge,
                    delete_branch: config
                        .merge
                        .delete_branch
                        .then(|| task.branch.clone())
                        .flatten(),
                },
                None => return,
            },
            _ => return,
        };
        self.send(request);
        self.wait(task.id, config.poll_interval);
    }

    /// What a reply means to the core, after the pacing bookkeeping; `None` when it means
    /// nothing yet (still waiting, a transient failure being backed off).
    pub(super) fn news(&mut self, reply: ForgeReply, core: &Core) -> Option<ForgeNews> {
        let id = reply.task();
        self.busy.remove(&id);
        if !matches!(reply, ForgeReply::Failed { .. }) {
            self.failures.remove(&id);
        }
        let round = core.state().tasks.get(&id)?.round;
        match reply {
            ForgeReply::Pr { pr, opened, .. } => Some(ForgeNews::Pr {
                task: id,
                number: pr.number.0,
                url: pr.url,
                opened,
            }),
            ForgeReply::Gate {
                gate,
                status,
                arrived,
                ..
            } => {
                if arrived {
                    self.arrived.insert((id, gate.clone(), round));
                }
                match status {
                    GateStatus::Cleared => Some(ForgeNews::GateCleared { task: id, gate }),
                    GateStatus::Waiting { .. } => None,
                    GateStatus::Failed { findings } => Some(ForgeNews::GateFailed {
                        task: id,
                        gate,
                        findings,
                    }),
                }
            }
            ForgeReply::Action { result, .. } => match result {
                ActionResult::Done => Some(ForgeNews::ActionDone { task: id }),
                ActionResult::Merged { commit } => Some(ForgeNews::Merged { task: id, commit }),
                ActionResult::Retry(why) => {
                    tracing::info!(task = %id, %why, "GitHub action not done yet");
                    None
                }
                ActionResult::Conflict => Some(ForgeNews::ActionConflict { task: id }),
            },
            ForgeReply::MergedByHuman { pr, .. } => Some(ForgeNews::MergedByHuman {
                task: id,
                branch: pr.head_ref,
                into: pr.base_ref,
                commit: pr.merge_commit_sha.unwrap_or_default(),
            }),
            ForgeReply::Closed { finding, .. } => Some(ForgeNews::Closed { task: id, finding }),
            ForgeReply::Failed { error, .. } => {
                if error.is_transient() {
                    let n = self.failures.entry(id).or_insert(0);
                    *n += 1;
                    let backoff = error
                        .retry_after()
                        .unwrap_or_else(|| hyperloop_shared::retry::delay(*n));
                    tracing::warn!(task = %id, error = %error, retry_in_s = backoff.as_secs(), "GitHub call failed; this task waits");
                    self.wait(id, backoff);
                    None
                } else {
                    tracing::warn!(task = %id, error = %error, "GitHub refused; the step counts as failed");
                    Some(ForgeNews::Refused {
                        task: id,
                        error: error.to_string(),
                    })
                }
            }
        }
    }
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
