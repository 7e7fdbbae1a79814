//! `Forge`: the code-hosting service a task's work is landed through in GitHub mode
//! (`--repo owner/repo`): pull requests, their labels, gates, comments and merges.
//!
//! Guarantees every adapter gives:
//! - [`Forge::ensure_pr`] is idempotent: it finds the pull request of the head branch first
//!   (open or not) and opens one only when there is none, so a restart never opens a second.
//! - [`Forge::comment_once`] posts a comment carrying its [`CommentMarker`] only when no
//!   comment on the pull request carries it yet (also across coordinator restarts).
//! - [`Forge::set_labels`] adds and removes only what is needed; removing an absent label is
//!   not an error.
//! - Failures are typed: [`ForgeError::is_transient`] says whether trying later may succeed
//!   (rate limits, outages) and [`ForgeError::retry_after`] how long to wait, so the caller
//!   slows only the task that needed the forge.
//! - The token is never logged, never part of an error message.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use hyperloop_shared::config::MergeStrategy;
pub use hyperloop_shared::gates::GateStatus;
use hyperloop_shared::model::{SpecPath, TaskId};

/// A pull request number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrNumber(pub u64);

impl fmt::Display for PrNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The pull request to find or open for a task branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrRequest {
    /// The task branch (in the same repository), e.g. `hyperloop/task-007`.
    pub head: String,
    /// The branch work lands on.
    pub base: String,
    pub title: String,
    /// Markdown body; should link the spec and name the task.
    pub body: String,
    /// Labels a new pull request gets (see [`task_labels`]).
    pub labels: Vec<String>,
    /// Open as a draft.
    pub draft: bool,
}

/// The labels that tie a pull request to its task and spec: `hyperloop/task-007` and
/// `hyperloop/spec:<path>` (GitHub limits label names to 50 characters; a longer spec path
/// keeps its end).
pub fn task_labels(task: TaskId, spec: Option<&SpecPath>) -> Vec<String> {
    const MAX: usize = 50;
    let mut labels = vec![format!("hyperloop/{task}")];
    if let Some(spec) = spec {
        let prefix = "hyperloop/spec:";
        let path = spec.to_string();
        let room = MAX - prefix.len();
        let chars: Vec<char> = path.chars().collect();
        let tail: String = if chars.len() > room {
            std::iter::once('…')
                .chain(chars[chars.len() - (room - 1)..].iter().copied())
                .collect()
        } else {
            path
        };
        labels.push(format!("{prefix}{tail}"));
    }
    labels
}

/// The label a pull request carries while its task waits at a gate.
pub const NEEDS_APPROVAL_LABEL: &str = "hyperloop/needs-approval";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrState {
    Open,
    /// Closed without merging.
    Closed,
    Merged,
}

/// GitHub's `mergeable_state`, which has more values than it documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeableState {
    /// Mergeable, checks passing.
    Clean,
    /// Mergeable, some non-required checks failing.
    Unstable,
    /// Mergeable with passing commit hooks.
    HasHooks,
    /// The head branch is behind the base branch (branch protection wants it up to date).
    Behind,
    /// Blocked by branch protection (required reviews or checks).
    Blocked,
    /// Merge conflict.
    Dirty,
    Draft,
    /// Still being computed.
    Unknown,
    /// A value this version does not know.
    Other(String),
}

impl MergeableState {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("clean") => MergeableState::Clean,
            Some("unstable") => MergeableState::Unstable,
            Some("has_hooks") => MergeableState::HasHooks,
            Some("behind") => MergeableState::Behind,
            Some("blocked") => MergeableState::Blocked,
            Some("dirty") => MergeableState::Dirty,
            Some("draft") => MergeableState::Draft,
            None | Some("unknown") => MergeableState::Unknown,
            Some(other) => MergeableState::Other(other.to_owned()),
        }
    }
}

/// A pull request as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrSnapshot {
    pub number: PrNumber,
    /// GraphQL node id (what `markPullRequestReadyForReview` takes).
    pub node_id: String,
    /// Web page of the pull request.
    pub url: String,
    pub state: PrState,
    pub draft: bool,
    /// `None` while GitHub computes it.
    pub mergeable: Option<bool>,
    pub mergeable_state: MergeableState,
    pub head_ref: String,
    pub head_sha: String,
    pub base_ref: String,
    pub labels: Vec<String>,
    /// The merge commit, once merged.
    pub merge_commit_sha: Option<String>,
}

/// What [`Forge::ensure_pr`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnsuredPr {
    /// There was none: it was opened now.
    Opened(PrSnapshot),
    /// The head branch already had one (possibly closed or merged).
    Found(PrSnapshot),
}

impl EnsuredPr {
    pub fn snapshot(&self) -> &PrSnapshot {
        match self {
            EnsuredPr::Opened(pr) | EnsuredPr::Found(pr) => pr,
        }
    }
}

/// A gate the forge decides from a pull request ([`Forge::pr_gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrGate<'a> {
    /// The pull request carries this label.
    Label(&'a str),
    /// The pull request has an approving review of its current head.
    Approval,
    /// The head's commit statuses and check runs are all successful.
    Ci,
}

/// A hidden marker making a comment unique per task state entry, written into the comment as
/// `<!-- hyperloop:task-003:gate:lgtm:1 -->`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommentMarker(String);

impl CommentMarker {
    /// The marker of entry number `entry` of `task` into the state `kind:name` (say
    /// `gate:lgtm`, or `error:merge-pr`).
    pub fn new(task: TaskId, kind: &str, name: &str, entry: u64) -> Self {
        // Nothing that could end the HTML comment (`--`, `>`) or split the marker (`:`).
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
                .replace("--", "__")
        };
        CommentMarker(format!(
            "hyperloop:{task}:{}:{}:{entry}",
            clean(kind),
            clean(name)
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The HTML comment that carries the marker.
    pub fn html(&self) -> String {
        format!("<!-- {} -->", self.0)
    }
}

impl fmt::Display for CommentMarker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommentOutcome {
    Posted,
    /// A comment with the marker exists already.
    AlreadyPosted,
}

/// How to merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRequest {
    pub strategy: MergeStrategy,
    /// The merge commit's subject.
    pub title: String,
    /// The merge commit's body; must end with the `Spec-Ref:` / `Task-Ref:` trailers.
    pub message: String,
    /// Merge only if the head is still this commit (the one the gates passed on).
    pub expected_head: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    Merged {
        sha: String,
    },
    /// Merged before (by us earlier, or by a human): counts as success.
    AlreadyMerged {
        sha: Option<String>,
    },
    /// Closed without merging (by a human); see [`Forge::closed_feedback`].
    Closed,
    /// Still a draft: mark it ready first.
    Draft,
    /// GitHub has not decided yet (mergeable state unknown); ask again after a backoff.
    NotYetMergeable,
    /// The base branch moved on and the branch must be brought up to date
    /// ([`Forge::update_branch`]).
    Behind,
    /// Conflicts with the base branch: the rebase-resolver's turn.
    Conflict,
    /// Branch protection blocks it (missing review or required check); wait.
    Blocked {
        reason: String,
    },
    /// The head moved away from the expected commit; the gates must see the new head.
    HeadChanged {
        head: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// GitHub is merging the base branch into the head branch; poll the snapshot.
    Started,
    /// It cannot be done automatically: a conflict.
    Conflict,
}

/// One piece of human feedback on a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub author: String,
    pub kind: FeedbackKind,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedbackKind {
    /// A comment on the conversation.
    Comment,
    /// A review's summary, with its state (`CHANGES_REQUESTED`, ...).
    Review { state: String },
    /// A comment on a line of the diff.
    ReviewComment { path: String, line: Option<u64> },
}

/// The finding text of a closed pull request's feedback, oldest first.
pub fn feedback_finding(pr: &PrSnapshot, feedback: &[Feedback]) -> String {
    let mut out = format!(
        "Pull request {} ({}) was closed without merging.",
        pr.number, pr.url
    );
    if feedback.is_empty() {
        out.push_str(" Nobody left a comment.");
    } else {
        out.push_str(" What reviewers said:\n");
        for f in feedback {
            let place = match &f.kind {
                FeedbackKind::Comment => "comment".to_owned(),
                FeedbackKind::Review { state } => format!("review, {}", state.to_lowercase()),
                FeedbackKind::ReviewComment {
                    path,
                    line: Some(line),
                } => format!("on {path}:{line}"),
                FeedbackKind::ReviewComment { path, line: None } => format!("on {path}"),
            };
            out.push_str(&format!("\n- @{} ({place}): {}", f.author, f.body.trim()));
        }
    }
    out
}

/// Forge failures. Messages name the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    #[error(
        "GitHub rejected the token ({message}); set GITHUB_TOKEN or GH_TOKEN to a token with \
         repo scope"
    )]
    BadCredentials { message: String },
    #[error(
        "the GitHub token may not {action} in {repo} ({message}); give the token repo scope \
         (fine-grained: Contents, Issues and Pull requests read and write)"
    )]
    Forbidden {
        repo: String,
        action: String,
        message: String,
    },
    #[error(
        "repository {repo} was not found at {api} or the token cannot see it; check --repo \
         (or target.repo) and that GITHUB_TOKEN / GH_TOKEN has access to it"
    )]
    RepoNotFound { repo: String, api: String },
    #[error("`{repo}` is not a GitHub repository name; pass --repo OWNER/REPO")]
    InvalidRepo { repo: String },
    #[error(
        "GitHub API base URL `{url}` is invalid ({reason}); give a URL like https://github.example.com/api/v3"
    )]
    InvalidBaseUrl { url: String, reason: String },
    #[error("{what} was not found on GitHub ({message})")]
    NotFound { what: String, message: String },
    #[error(
        "GitHub rate limit{} hit while trying to {what}; retrying in {}s",
        if *.secondary { " (secondary)" } else { "" },
        .retry_after.as_secs()
    )]
    RateLimited {
        what: String,
        retry_after: Duration,
        secondary: bool,
    },
    #[error("GitHub is unavailable ({status}) while trying to {what}; retrying later")]
    Unavailable { what: String, status: u16 },
    #[error("could not reach GitHub to {what}: {message}; check the network and the API URL")]
    Transport { what: String, message: String },
    #[error("GitHub refused to {what} ({status}: {message})")]
    Rejected {
        what: String,
        status: u16,
        message: String,
    },
    #[error("GitHub's answer to {what} was not understood: {message}")]
    Decode { what: String, message: String },
    /// A gate that could not be evaluated for a reason of its own (an undefined gate, a
    /// command gate's checkout): the driver's replies carry only `ForgeError`s.
    #[error("{message}")]
    Gate { message: String, transient: bool },
}

impl ForgeError {
    /// Trying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ForgeError::RateLimited { .. }
                | ForgeError::Unavailable { .. }
                | ForgeError::Transport { .. }
                | ForgeError::Gate {
                    transient: true,
                    ..
                }
        )
    }

    /// How long to wait before trying again, when GitHub said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ForgeError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// The code-hosting service of GitHub mode.
pub trait Forge: Send + Sync {
    /// Checks the repository is reachable and the token may write to it (call at startup).
    fn check_access(&self) -> impl Future<Output = Result<(), ForgeError>> + Send;

    /// Finds the pull request whose head is `request.head` (in any state), or opens one.
    fn ensure_pr(
        &self,
        request: &PrRequest,
    ) -> impl Future<Output = Result<EnsuredPr, ForgeError>> + Send;

    /// The newest pull request whose head is the branch `head` (in any state), if any.
    fn find_pr(
        &self,
        head: &str,
    ) -> impl Future<Output = Result<Option<PrNumber>, ForgeError>> + Send;

    /// The pull request as it is now (conditional request: cheap when nothing changed).
    fn pr_snapshot(
        &self,
        pr: PrNumber,
    ) -> impl Future<Output = Result<PrSnapshot, ForgeError>> + Send;

    /// Adds `add` and removes `remove` (absent ones ignored); returns the labels after.
    fn set_labels(
        &self,
        pr: PrNumber,
        add: &[String],
        remove: &[String],
    ) -> impl Future<Output = Result<Vec<String>, ForgeError>> + Send;

    /// Where the leaf gate `gate` (its name, for messages) stands for the pull request as
    /// `pr` shows it.
    fn pr_gate(
        &self,
        pr: &PrSnapshot,
        gate: &str,
        check: PrGate<'_>,
    ) -> impl Future<Output = Result<GateStatus, ForgeError>> + Send;

    /// Requests reviews (`login`s, or `org/team` for teams). Already requested ones are fine.
    fn request_reviewers(
        &self,
        pr: PrNumber,
        reviewers: &[String],
    ) -> impl Future<Output = Result<(), ForgeError>> + Send;

    /// Posts `body` with `marker` hidden in it, unless a comment carries the marker already.
    fn comment_once(
        &self,
        pr: PrNumber,
        marker: &CommentMarker,
        body: &str,
    ) -> impl Future<Output = Result<CommentOutcome, ForgeError>> + Send;

    /// Marks a draft ready for review (a no-op when it is not a draft).
    fn mark_ready(&self, pr: PrNumber) -> impl Future<Output = Result<(), ForgeError>> + Send;

    /// Merges when GitHub says it can; otherwise says why not.
    fn merge(
        &self,
        pr: PrNumber,
        request: &MergeRequest,
    ) -> impl Future<Output = Result<MergeOutcome, ForgeError>> + Send;

    /// Brings the head branch up to date with the base branch (GitHub merges base into it).
    fn update_branch(
        &self,
        pr: PrNumber,
        expected_head: &str,
    ) -> impl Future<Output = Result<UpdateOutcome, ForgeError>> + Send;

    /// Deletes a branch (after a merge); an absent branch is fine.
    fn delete_branch(&self, branch: &str) -> impl Future<Output = Result<(), ForgeError>> + Send;

    /// What humans said on the pull request: conversation comments, review summaries and diff
    /// comments, oldest first, without hyperloop's own notifications.
    fn closed_feedback(
        &self,
        pr: PrNumber,
    ) -> impl Future<Output = Result<Vec<Feedback>, ForgeError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_html_comments_without_dangerous_characters() {
        let m = CommentMarker::new(TaskId(3), "gate", "lgtm-->x", 1);
        assert_eq!(m.html(), "<!-- hyperloop:task-003:gate:lgtm___x:1 -->");
        let m = CommentMarker::new(TaskId(3), "error", "merge-pr", 2);
        assert_eq!(m.as_str(), "hyperloop:task-003:error:merge-pr:2");
    }

    #[test]
    fn labels_fit_github_limits() {
        let spec = SpecPath::parse(&format!("specs/{}.md", "a".repeat(80))).unwrap();
        let labels = task_labels(TaskId(7), Some(&spec));
        assert_eq!(labels[0], "hyperloop/task-007");
        assert!(labels[1].chars().count() <= 50, "{}", labels[1]);
        assert!(labels[1].ends_with("aaa.md"));
    }
}
