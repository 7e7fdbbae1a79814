//! GitHub mode's calls to the [`Forge`], off the reconcile loop: the loop sends a
//! [`ForgeRequest`] per task that needs GitHub and goes on; each request runs as its own
//! task (bounded), and its [`ForgeReply`] comes back on a channel. A slow or unavailable
//! GitHub therefore delays only the tasks waiting on it, never the cycle.
//!
//! Each request is one small, idempotent conversation (look at the pull request, then act),
//! so a request repeated after a restart or a lost reply does no harm: PRs are found before
//! they are opened, labels are set, merges of merged PRs succeed. Comments are not made here:
//! they are notifications ([`crate::adapters::github::GithubComments`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use hyperloop_shared::model::TaskId;
use hyperloop_shared::pipeline::GateDef;
use tokio::sync::{Semaphore, mpsc};

use crate::ports::forge::{
    Forge, ForgeError, GateStatus, MergeOutcome, MergeRequest, NEEDS_APPROVAL_LABEL, PrNumber,
    PrRequest, PrSnapshot, PrState, UpdateOutcome, feedback_finding,
};
use crate::ports::gate::{GateEvaluator, GateTarget, evaluate_gate};

/// GitHub calls in flight at once. GitHub asks integrations not to make many concurrent
/// requests (secondary rate limits), and a handful keeps dozens of tasks moving.
const CONCURRENCY: usize = 4;

/// Something the loop needs GitHub for.
#[derive(Debug, Clone)]
pub enum ForgeRequest {
    /// Find or open the task's pull request.
    EnsurePr {
        task: TaskId,
        request: PrRequest,
    },
    /// Check a gate. `arrival`, when set, is done first (once per gate entry).
    Gate {
        task: TaskId,
        pr: PrNumber,
        gate: String,
        gates: Arc<BTreeMap<String, GateDef>>,
        arrival: Option<Arrival>,
    },
    MarkReady {
        task: TaskId,
        pr: PrNumber,
    },
    /// Merge (`auto: false`: only wait for a human to merge).
    Merge {
        task: TaskId,
        pr: PrNumber,
        request: MergeRequest,
        auto: bool,
        delete_branch: Option<String>,
    },
}

/// What a pull request gets when its task reaches a gate: the needs-approval label, and
/// review requests when the gate names reviewers. Part of the gate, not a notification:
/// branch protection and reviewers' queues go by them.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub reviewers: Vec<String>,
}

impl ForgeRequest {
    pub fn task(&self) -> TaskId {
        match self {
            ForgeRequest::EnsurePr { task, .. }
            | ForgeRequest::Gate { task, .. }
            | ForgeRequest::MarkReady { task, .. }
            | ForgeRequest::Merge { task, .. } => *task,
        }
    }
}

/// How an action went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionResult {
    Done,
    /// This merge put the work in the base branch, as `commit`.
    Merged {
        commit: String,
    },
    /// Not yet (GitHub still deciding, branch being updated, waiting for a human merge).
    Retry(String),
    /// The branch conflicts with the base: the rebase-resolver's turn.
    Conflict,
}

/// GitHub's answer for one task.
#[derive(Debug, Clone)]
pub enum ForgeReply {
    Pr {
        task: TaskId,
        pr: PrSnapshot,
        opened: bool,
    },
    Gate {
        task: TaskId,
        gate: String,
        status: GateStatus,
        /// The arrival was done (so the loop stops sending it).
        arrived: bool,
    },
    Action {
        task: TaskId,
        result: ActionResult,
    },
    /// A human merged the pull request: the work landed.
    MergedByHuman {
        task: TaskId,
        pr: PrSnapshot,
    },
    /// A human closed the pull request without merging; what they said.
    Closed {
        task: TaskId,
        finding: String,
    },
    Failed {
        task: TaskId,
        error: ForgeError,
    },
}

impl ForgeReply {
    pub fn task(&self) -> TaskId {
        match self {
            ForgeReply::Pr { task, .. }
            | ForgeReply::Gate { task, .. }
            | ForgeReply::Action { task, .. }
            | ForgeReply::MergedByHuman { task, .. }
            | ForgeReply::Closed { task, .. }
            | ForgeReply::Failed { task, .. } => *task,
        }
    }
}

/// Serves requests until the loop drops its sender, evaluating gates with `gates` (in
/// GitHub mode a [`crate::adapters::forge_gates::ForgeGates`] over the same forge).
pub async fn drive_with_gates<F: Forge + 'static, G: GateEvaluator>(
    forge: Arc<F>,
    gates: Arc<G>,
    mut requests: mpsc::Receiver<ForgeRequest>,
    replies: mpsc::Sender<ForgeReply>,
) {
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    while let Some(request) = requests.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let forge = forge.clone();
        let gates = gates.clone();
        let replies = replies.clone();
        tokio::spawn(async move {
            let task = request.task();
            let reply = handle(&*forge, &*gates, request)
                .await
                .unwrap_or_else(|error| ForgeReply::Failed { task, error });
            drop(permit);
            let _ = replies.send(reply).await;
        });
    }
}

async fn handle<F: Forge, G: GateEvaluator>(
    forge: &F,
    gates: &G,
    request: ForgeRequest,
) -> Result<ForgeReply, ForgeError> {
    match request {
        ForgeRequest::EnsurePr { task, request } => {
            let ensured = forge.ensure_pr(&request).await?;
            let opened = matches!(ensured, crate::ports::forge::EnsuredPr::Opened(_));
            Ok(ForgeReply::Pr {
                task,
                pr: ensured.snapshot().clone(),
                opened,
            })
        }
        ForgeRequest::Gate {
            task,
            pr,
            gate,
            gates: defs,
            arrival,
        } => {
            let snapshot = forge.pr_snapshot(pr).await?;
            if let Some(reply) = settled(forge, task, &snapshot).await? {
                return Ok(reply);
            }
            let arrived = arrival.is_some();
            if let Some(arrival) = arrival {
                forge
                    .set_labels(pr, &[NEEDS_APPROVAL_LABEL.to_owned()], &[])
                    .await?;
                if !arrival.reviewers.is_empty() {
                    forge.request_reviewers(pr, &arrival.reviewers).await?;
                }
            }
            let target = GateTarget {
                task,
                branch: Some(snapshot.head_ref.clone()),
                commit: Some(snapshot.head_sha.clone()),
                pr: Some(pr),
            };
            let status = evaluate_gate(gates, &defs, &gate, &target).await?;
            if status == GateStatus::Cleared {
                forge
                    .set_labels(pr, &[], &[NEEDS_APPROVAL_LABEL.to_owned()])
                    .await?;
            }
            Ok(ForgeReply::Gate {
                task,
                gate,
                status,
                arrived,
            })
        }
        ForgeRequest::MarkReady { task, pr } => {
            let snapshot = forge.pr_snapshot(pr).await?;
            if let Some(reply) = settled(forge, task, &snapshot).await? {
                return Ok(reply);
            }
            forge.mark_ready(pr).await?;
            Ok(ForgeReply::Action {
                task,
                result: ActionResult::Done,
            })
        }
        ForgeRequest::Merge {
            task,
            pr,
            request,
            auto,
            delete_branch,
        } => {
            let snapshot = forge.pr_snapshot(pr).await?;
            if let Some(reply) = settled(forge, task, &snapshot).await? {
                return Ok(reply);
            }
            if !auto {
                return Ok(ForgeReply::Action {
                    task,
                    result: ActionResult::Retry(format!(
                        "waiting for a human to merge {} (merge.auto_merge is false)",
                        snapshot.url
                    )),
                });
            }
            let result = merge(forge, pr, &snapshot, &request).await?;
            if matches!(result, ActionResult::Done | ActionResult::Merged { .. })
                && let Some(branch) = delete_branch
            {
                // The work is in; a branch left behind is only clutter.
                if let Err(e) = forge.delete_branch(&branch).await {
                    tracing::warn!(%task, %branch, error = %e, "could not delete the merged branch");
                }
            }
            Ok(ForgeReply::Action { task, result })
        }
    }
}

/// A pull request a human already merged or closed ends the task's wait either way.
async fn settled<F: Forge>(
    forge: &F,
    task: TaskId,
    snapshot: &PrSnapshot,
) -> Result<Option<ForgeReply>, ForgeError> {
    Ok(match snapshot.state {
        PrState::Open => None,
        PrState::Merged => Some(ForgeReply::MergedByHuman {
            task,
            pr: snapshot.clone(),
        }),
        PrState::Closed => {
            let feedback = forge.closed_feedback(snapshot.number).await?;
            Some(ForgeReply::Closed {
                task,
                finding: feedback_finding(snapshot, &feedback),
            })
        }
    })
}

async fn merge<F: Forge>(
    forge: &F,
    pr: PrNumber,
    snapshot: &PrSnapshot,
    request: &MergeRequest,
) -> Result<ActionResult, ForgeError> {
    if snapshot.draft {
        forge.mark_ready(pr).await?;
    }
    Ok(match forge.merge(pr, request).await? {
        MergeOutcome::Merged { sha } => ActionResult::Merged { commit: sha },
        // Merged before (the merge of an earlier attempt, journaled then).
        MergeOutcome::AlreadyMerged { .. } => ActionResult::Done,
        MergeOutcome::Closed => {
            ActionResult::Retry("the pull request was closed; looking at why".to_owned())
        }
        MergeOutcome::Draft => {
            forge.mark_ready(pr).await?;
            ActionResult::Retry("marked the draft ready for review".to_owned())
        }
        MergeOutcome::NotYetMergeable => {
            ActionResult::Retry("GitHub is still working out whether it can merge".to_owned())
        }
        MergeOutcome::Behind => match forge.update_branch(pr, &snapshot.head_sha).await? {
            UpdateOutcome::Started => {
                ActionResult::Retry("bringing the branch up to date with the base".to_owned())
            }
            UpdateOutcome::Conflict => ActionResult::Conflict,
        },
        MergeOutcome::Conflict => ActionResult::Conflict,
        MergeOutcome::Blocked { reason } => ActionResult::Retry(reason),
        MergeOutcome::HeadChanged { head } => {
            ActionResult::Retry(format!("the branch moved to {head}; checking again"))
        }
    })
}
