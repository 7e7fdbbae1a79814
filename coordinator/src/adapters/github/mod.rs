//! The `Forge` on GitHub (or GitHub Enterprise) through octocrab.
//!
//! REST for everything but marking a draft ready, which GitHub offers only in GraphQL
//! (`markPullRequestReadyForReview`). Polled reads are conditional requests; rate limits and
//! outages come back as transient [`ForgeError`]s (see [`http`]).

mod comments;
mod http;
mod stats;
mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::http::{Method, StatusCode};
use hyperloop_shared::config::{MergeStrategy, Secret};
use octocrab::Octocrab;
use octocrab::service::middleware::retry::RetryConfig;
use serde_json::json;

pub use self::comments::{GithubComments, PrComments};
pub use self::http::RetryPolicy;
use self::http::{Api, enc};
pub use self::stats::{ApiSnapshot, ApiStats, RateLimit};
use crate::ports::forge::{
    CommentMarker, CommentOutcome, EnsuredPr, Feedback, FeedbackKind, Forge, ForgeError,
    GateStatus, MergeOutcome, MergeRequest, MergeableState, PrGate, PrNumber, PrRequest,
    PrSnapshot, PrState, UpdateOutcome,
};

/// GitHub's public API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// How to reach a repository on GitHub.
#[derive(Debug, Clone)]
pub struct GitHubConfig {
    /// `owner/repo`.
    pub repo: String,
    /// REST base URL: `https://api.github.com` (default), `https://HOST/api/v3` for GitHub
    /// Enterprise Server, or a test server's URL.
    pub api_url: Option<String>,
    /// From `GITHUB_TOKEN` / `GH_TOKEN`.
    pub token: Secret,
    pub retry: RetryPolicy,
    /// Per-request read timeout.
    pub timeout: Duration,
}

impl GitHubConfig {
    pub fn new(repo: impl Into<String>, token: Secret) -> Self {
        GitHubConfig {
            repo: repo.into(),
            api_url: None,
            token,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

pub struct GitHubForge {
    api: Api,
    owner: String,
    name: String,
}

impl GitHubForge {
    /// # Errors
    /// A repository name that is not `owner/repo`, or an invalid API URL. Nothing is sent.
    pub fn new(config: GitHubConfig) -> Result<Self, ForgeError> {
        let (owner, name) = match config.repo.split_once('/') {
            Some((o, n)) if valid_name(o) && valid_name(n) => (o.to_owned(), n.to_owned()),
            _ => {
                return Err(ForgeError::InvalidRepo {
                    repo: config.repo.clone(),
                });
            }
        };
        let api_url = config
            .api_url
            .clone()
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        let api_url = api_url.trim_end_matches('/').to_owned();
        // GitHub Enterprise Server serves REST under /api/v3 and GraphQL at /api/graphql;
        // elsewhere GraphQL is /graphql beside the REST root.
        let graphql_base = match api_url.strip_suffix("/api/v3") {
            Some(host) => format!("{host}/api"),
            None => api_url.clone(),
        };
        let build = |base: &str| -> Result<Octocrab, ForgeError> {
            let invalid = |reason: String| ForgeError::InvalidBaseUrl {
                url: api_url.clone(),
                reason,
            };
            Octocrab::builder()
                .base_uri(base)
                .map_err(|e| invalid(e.to_string()))?
                .personal_token(config.token.expose().to_owned())
                .add_retry_config(RetryConfig::None)
                .set_connect_timeout(Some(Duration::from_secs(10)))
                .set_read_timeout(Some(config.timeout))
                .build()
                .map_err(|e| invalid(e.to_string()))
        };
        let rest = build(&api_url)?;
        let graphql = build(&graphql_base)?;
        Ok(GitHubForge {
            api: Api::new(
                rest,
                graphql,
                config.retry,
                format!("{owner}/{name}"),
                api_url,
            ),
            owner,
            name,
        })
    }

    /// The calls this forge made and the rate limit GitHub last reported.
    pub fn stats(&self) -> Arc<ApiStats> {
        self.api.stats.clone()
    }

    fn repo_path(&self, rest: &str) -> String {
        format!("/repos/{}/{}{rest}", enc(&self.owner), enc(&self.name))
    }

    async fn open_pr(&self, request: &PrRequest, draft: bool) -> Result<Option<u64>, ForgeError> {
        let what = format!("open a pull request for branch {}", request.head);
        let body = json!({
            "title": request.title,
            "head": request.head,
            "base": request.base,
            "body": request.body,
            "draft": draft,
        });
        let reply = self
            .api
            .rest(Method::POST, &self.repo_path("/pulls"), Some(&body), &what)
            .await?;
        if reply.status == StatusCode::UNPROCESSABLE_ENTITY {
            let message = reply.message();
            if message.contains("already exists") {
                return Ok(None);
            }
            if draft && message.to_lowercase().contains("draft") {
                // Draft pull requests are not available for this repository's plan.
                tracing::warn!(repo = %self.api.repo, "draft pull requests unsupported; opening a ready one");
                return Box::pin(self.open_pr(request, false)).await;
            }
        }
        let pr: wire::PullRequest = reply.ok(&self.api, &what)?.json(&what)?;
        Ok(Some(pr.number))
    }

    async fn issue_comments(&self, pr: PrNumber) -> Result<Vec<wire::IssueComment>, ForgeError> {
        self.api
            .get_all(
                &self.repo_path(&format!("/issues/{}/comments", pr.0)),
                &format!("read the comments of pull request {pr}"),
            )
            .await
    }

    async fn reviews(&self, pr: PrNumber) -> Result<Vec<wire::Review>, ForgeError> {
        self.api
            .get_all(
                &self.repo_path(&format!("/pulls/{}/reviews", pr.0)),
                &format!("read the reviews of pull request {pr}"),
            )
            .await
    }

    async fn ci_status(&self, name: &str, pr: &PrSnapshot) -> Result<GateStatus, ForgeError> {
        let sha = &pr.head_sha;
        let combined: wire::CombinedStatus = self
            .api
            .get(
                &self.repo_path(&format!("/commits/{sha}/status?per_page=100")),
                &format!("read the commit status of {sha}"),
            )
            .await?;
        let checks: wire::CheckRuns = self
            .api
            .get(
                &self.repo_path(&format!("/commits/{sha}/check-runs?per_page=100")),
                &format!("read the check runs of {sha}"),
            )
            .await?;
        Ok(ci_verdict(name, sha, &combined, &checks))
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn waiting(reason: String) -> GateStatus {
    GateStatus::Waiting {
        reasons: vec![reason],
    }
}

fn snapshot(pr: wire::PullRequest) -> PrSnapshot {
    let state = if pr.merged_at.is_some() {
        PrState::Merged
    } else if pr.state == "open" {
        PrState::Open
    } else {
        PrState::Closed
    };
    PrSnapshot {
        number: PrNumber(pr.number),
        node_id: pr.node_id,
        url: pr.html_url,
        draft: pr.draft,
        mergeable: pr.mergeable,
        mergeable_state: MergeableState::parse(pr.mergeable_state.as_deref()),
        head_ref: pr.head.name,
        head_sha: pr.head.sha,
        base_ref: pr.base.name,
        labels: pr.labels.into_iter().map(|l| l.name).collect(),
        merge_commit_sha: if state == PrState::Merged {
            pr.merge_commit_sha
        } else {
            None
        },
        state,
    }
}

fn login(user: &Option<wire::User>) -> String {
    user.as_ref()
        .map_or_else(|| "ghost".to_owned(), |u| u.login.clone())
}

/// An approval counts when it is each reviewer's latest verdict, no one's latest verdict
/// asks for changes, and it was given on the current head.
fn approval_status(name: &str, pr: &PrSnapshot, reviews: &[wire::Review]) -> GateStatus {
    let mut latest: BTreeMap<String, &wire::Review> = BTreeMap::new();
    for review in reviews {
        if matches!(
            review.state.as_str(),
            "APPROVED" | "CHANGES_REQUESTED" | "DISMISSED"
        ) {
            latest.insert(login(&review.user), review);
        }
    }
    let changes: Vec<&str> = latest
        .iter()
        .filter(|(_, r)| r.state == "CHANGES_REQUESTED")
        .map(|(who, _)| who.as_str())
        .collect();
    if !changes.is_empty() {
        return waiting(format!(
            "gate `{name}`: changes requested by @{} on pull request {}; they must approve",
            changes.join(", @"),
            pr.number
        ));
    }
    let approvals: Vec<(&String, &&wire::Review)> = latest
        .iter()
        .filter(|(_, r)| r.state == "APPROVED")
        .collect();
    if approvals
        .iter()
        .any(|(_, r)| r.commit_id.as_deref() == Some(pr.head_sha.as_str()))
    {
        return GateStatus::Cleared;
    }
    if approvals.is_empty() {
        waiting(format!(
            "gate `{name}`: approve pull request {} ({})",
            pr.number, pr.url
        ))
    } else {
        waiting(format!(
            "gate `{name}`: the approval on pull request {} is for an older commit; approve \
             the current head {}",
            pr.number, pr.head_sha
        ))
    }
}

/// Combined commit status AND check runs: any failure fails, anything unfinished waits,
/// nothing reported at all waits for CI to start.
fn ci_verdict(
    name: &str,
    sha: &str,
    combined: &wire::CombinedStatus,
    checks: &wire::CheckRuns,
) -> GateStatus {
    let mut failed = Vec::new();
    let mut pending = Vec::new();
    for s in &combined.statuses {
        let line = || {
            let mut l = format!("status `{}` is {}", s.context, s.state);
            if let Some(d) = s.description.as_deref().filter(|d| !d.is_empty()) {
                l.push_str(&format!(": {d}"));
            }
            if let Some(u) = &s.target_url {
                l.push_str(&format!(" ({u})"));
            }
            l
        };
        match s.state.as_str() {
            "success" => {}
            "pending" => pending.push(line()),
            _ => failed.push(line()),
        }
    }
    if failed.is_empty() && matches!(combined.state.as_str(), "failure" | "error") {
        // More statuses than one page lists: the combined state still tells.
        failed.push(format!("the combined commit status is {}", combined.state));
    }
    for run in &checks.check_runs {
        let line = |state: &str| {
            let mut l = format!("check `{}` {state}", run.name);
            if let Some(out) = &run.output {
                for part in [&out.title, &out.summary].into_iter().flatten() {
                    if !part.is_empty() {
                        l.push_str(&format!(": {part}"));
                    }
                }
            }
            if let Some(u) = &run.html_url {
                l.push_str(&format!(" ({u})"));
            }
            l
        };
        if run.status != "completed" {
            pending.push(line(&run.status));
            continue;
        }
        match run.conclusion.as_deref() {
            Some("success" | "neutral" | "skipped") => {}
            Some("stale") | None => pending.push(line("is stale")),
            Some(other) => failed.push(line(&format!("concluded {other}"))),
        }
    }
    if !failed.is_empty() {
        return GateStatus::Failed {
            findings: failed
                .into_iter()
                .map(|f| format!("CI on {sha}: {f}"))
                .collect(),
        };
    }
    if combined.total_count == 0 && combined.statuses.is_empty() && checks.check_runs.is_empty() {
        return waiting(format!(
            "gate `{name}`: no CI status or check has been reported for {sha} yet"
        ));
    }
    if !pending.is_empty() {
        return GateStatus::Waiting {
            reasons: pending
                .into_iter()
                .map(|p| format!("gate `{name}`: {p}"))
                .collect(),
        };
    }
    GateStatus::Cleared
}

impl Forge for GitHubForge {
    async fn check_access(&self) -> Result<(), ForgeError> {
        let what = format!("read repository {}", self.api.repo);
        let reply = self
            .api
            .rest(Method::GET, &self.repo_path(""), None, &what)
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(ForgeError::RepoNotFound {
                repo: self.api.repo.clone(),
                api: self.api.api_url.clone(),
            });
        }
        let repo: wire::Repository = reply.ok(&self.api, &what)?.json(&what)?;
        if repo.permissions.is_some_and(|p| !p.push) {
            return Err(ForgeError::Forbidden {
                repo: repo.full_name,
                action: "push branches and open pull requests".to_owned(),
                message: "the token has read access only".to_owned(),
            });
        }
        Ok(())
    }

    async fn find_pr(&self, head: &str) -> Result<Option<PrNumber>, ForgeError> {
        let what = format!("list pull requests of branch {head}");
        let query = format!(
            "/pulls?head={}&state=all&sort=created&direction=desc",
            enc(&format!("{}:{head}", self.owner))
        );
        let prs: Vec<wire::PullRequest> = self.api.get(&self.repo_path(&query), &what).await?;
        Ok(prs
            .into_iter()
            .filter(|p| p.head.name == head)
            .map(|p| PrNumber(p.number))
            .max())
    }

    async fn ensure_pr(&self, request: &PrRequest) -> Result<EnsuredPr, ForgeError> {
        let (number, opened) = match self.find_pr(&request.head).await? {
            Some(n) => (n.0, false),
            None => match self.open_pr(request, request.draft).await? {
                Some(n) => (n, true),
                // Opened concurrently (or just before a crash): use that one.
                None => match self.find_pr(&request.head).await? {
                    Some(n) => (n.0, false),
                    None => {
                        return Err(ForgeError::Rejected {
                            what: format!("open a pull request for branch {}", request.head),
                            status: 422,
                            message: "GitHub says one exists but lists none".to_owned(),
                        });
                    }
                },
            },
        };
        let pr = PrNumber(number);
        let mut snap = self.pr_snapshot(pr).await?;
        let missing: Vec<String> = request
            .labels
            .iter()
            .filter(|l| !snap.labels.contains(l))
            .cloned()
            .collect();
        if !missing.is_empty() && snap.state == PrState::Open {
            snap.labels = self.set_labels(pr, &missing, &[]).await?;
        }
        Ok(if opened {
            EnsuredPr::Opened(snap)
        } else {
            EnsuredPr::Found(snap)
        })
    }

    async fn pr_snapshot(&self, pr: PrNumber) -> Result<PrSnapshot, ForgeError> {
        let what = format!("read pull request {pr}");
        let wire: wire::PullRequest = self
            .api
            .get(&self.repo_path(&format!("/pulls/{}", pr.0)), &what)
            .await?;
        Ok(snapshot(wire))
    }

    async fn set_labels(
        &self,
        pr: PrNumber,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, ForgeError> {
        let mut labels = self.pr_snapshot(pr).await?.labels;
        let to_add: Vec<&String> = add.iter().filter(|l| !labels.contains(l)).collect();
        if !to_add.is_empty() {
            let what = format!("label pull request {pr}");
            let reply = self
                .api
                .rest(
                    Method::POST,
                    &self.repo_path(&format!("/issues/{}/labels", pr.0)),
                    Some(&json!({ "labels": to_add })),
                    &what,
                )
                .await?
                .ok(&self.api, &what)?;
            let now: Vec<wire::Label> = reply.json(&what)?;
            labels = now.into_iter().map(|l| l.name).collect();
        }
        let present: Vec<&String> = remove.iter().filter(|l| labels.contains(l)).collect();
        for label in present {
            let what = format!("remove label {label} from pull request {pr}");
            let reply = self
                .api
                .rest(
                    Method::DELETE,
                    &self.repo_path(&format!("/issues/{}/labels/{}", pr.0, enc(label))),
                    None,
                    &what,
                )
                .await?;
            if reply.status != StatusCode::NOT_FOUND {
                reply.ok(&self.api, &what)?;
            }
            labels.retain(|l| l != label);
        }
        Ok(labels)
    }

    async fn pr_gate(
        &self,
        pr: &PrSnapshot,
        gate: &str,
        check: PrGate<'_>,
    ) -> Result<GateStatus, ForgeError> {
        Ok(match check {
            PrGate::Label(label) => {
                if pr.labels.iter().any(|l| l == label) {
                    GateStatus::Cleared
                } else {
                    waiting(format!(
                        "gate `{gate}`: add the label `{label}` to pull request {} ({})",
                        pr.number, pr.url
                    ))
                }
            }
            PrGate::Approval => approval_status(gate, pr, &self.reviews(pr.number).await?),
            PrGate::Ci => self.ci_status(gate, pr).await?,
        })
    }

    async fn request_reviewers(
        &self,
        pr: PrNumber,
        reviewers: &[String],
    ) -> Result<(), ForgeError> {
        if reviewers.is_empty() {
            return Ok(());
        }
        let (teams, users): (Vec<&String>, Vec<&String>) =
            reviewers.iter().partition(|r| r.contains('/'));
        let teams: Vec<&str> = teams
            .iter()
            .filter_map(|t| t.split_once('/').map(|(_, slug)| slug))
            .collect();
        let what = format!(
            "request reviews from {} on pull request {pr} (reviewers must be collaborators and \
             not the pull request's author)",
            reviewers.join(", ")
        );
        self.api
            .rest(
                Method::POST,
                &self.repo_path(&format!("/pulls/{}/requested_reviewers", pr.0)),
                Some(&json!({ "reviewers": users, "team_reviewers": teams })),
                &what,
            )
            .await?
            .ok(&self.api, &what)?;
        Ok(())
    }

    async fn comment_once(
        &self,
        pr: PrNumber,
        marker: &CommentMarker,
        body: &str,
    ) -> Result<CommentOutcome, ForgeError> {
        let tag = marker.html();
        let existing = self.issue_comments(pr).await?;
        if existing
            .iter()
            .any(|c| c.body.as_deref().is_some_and(|b| b.contains(&tag)))
        {
            return Ok(CommentOutcome::AlreadyPosted);
        }
        let what = format!("comment on pull request {pr}");
        self.api
            .rest(
                Method::POST,
                &self.repo_path(&format!("/issues/{}/comments", pr.0)),
                Some(&json!({ "body": format!("{}\n\n{tag}", body.trim_end()) })),
                &what,
            )
            .await?
            .ok(&self.api, &what)?;
        Ok(CommentOutcome::Posted)
    }

    async fn mark_ready(&self, pr: PrNumber) -> Result<(), ForgeError> {
        let snap = self.pr_snapshot(pr).await?;
        if !snap.draft {
            return Ok(());
        }
        let _: serde_json::Value = self
            .api
            .graphql(
                "mutation($id: ID!) { markPullRequestReadyForReview(input: {pullRequestId: $id}) \
                 { pullRequest { isDraft } } }",
                json!({ "id": snap.node_id }),
                &format!("mark pull request {pr} ready for review"),
            )
            .await?;
        Ok(())
    }

    async fn merge(
        &self,
        pr: PrNumber,
        request: &MergeRequest,
    ) -> Result<MergeOutcome, ForgeError> {
        let snap = self.pr_snapshot(pr).await?;
        match snap.state {
            PrState::Merged => {
                return Ok(MergeOutcome::AlreadyMerged {
                    sha: snap.merge_commit_sha,
                });
            }
            PrState::Closed => return Ok(MergeOutcome::Closed),
            PrState::Open => {}
        }
        if let Some(expected) = &request.expected_head
            && *expected != snap.head_sha
        {
            return Ok(MergeOutcome::HeadChanged {
                head: snap.head_sha,
            });
        }
        if snap.draft {
            return Ok(MergeOutcome::Draft);
        }
        if let Some(outcome) = not_mergeable(&snap) {
            return Ok(outcome);
        }
        let what = format!("merge pull request {pr}");
        let method = match request.strategy {
            MergeStrategy::Squash => "squash",
            MergeStrategy::Merge => "merge",
        };
        let reply = self
            .api
            .rest(
                Method::PUT,
                &self.repo_path(&format!("/pulls/{}/merge", pr.0)),
                Some(&json!({
                    "commit_title": request.title,
                    "commit_message": request.message,
                    "merge_method": method,
                    "sha": snap.head_sha,
                })),
                &what,
            )
            .await?;
        match reply.status {
            StatusCode::OK => {
                let merged: wire::MergeResult = reply.json(&what)?;
                Ok(MergeOutcome::Merged { sha: merged.sha })
            }
            StatusCode::CONFLICT => Ok(MergeOutcome::HeadChanged {
                head: self.pr_snapshot(pr).await?.head_sha,
            }),
            StatusCode::METHOD_NOT_ALLOWED => {
                let now = self.pr_snapshot(pr).await?;
                Ok(not_mergeable(&now).unwrap_or(MergeOutcome::Blocked {
                    reason: reply.message(),
                }))
            }
            _ => Err(reply.error(&self.api, &what)),
        }
    }

    async fn update_branch(
        &self,
        pr: PrNumber,
        expected_head: &str,
    ) -> Result<UpdateOutcome, ForgeError> {
        let what = format!("update the branch of pull request {pr}");
        let reply = self
            .api
            .rest(
                Method::PUT,
                &self.repo_path(&format!("/pulls/{}/update-branch", pr.0)),
                Some(&json!({ "expected_head_sha": expected_head })),
                &what,
            )
            .await?;
        if reply.status == StatusCode::UNPROCESSABLE_ENTITY
            && reply.message().to_lowercase().contains("conflict")
        {
            return Ok(UpdateOutcome::Conflict);
        }
        reply.ok(&self.api, &what)?;
        Ok(UpdateOutcome::Started)
    }

    async fn delete_branch(&self, branch: &str) -> Result<(), ForgeError> {
        let what = format!("delete branch {branch}");
        let path: Vec<String> = branch.split('/').map(enc).collect();
        let reply = self
            .api
            .rest(
                Method::DELETE,
                &self.repo_path(&format!("/git/refs/heads/{}", path.join("/"))),
                None,
                &what,
            )
            .await?;
        let gone = reply.status == StatusCode::NOT_FOUND
            || (reply.status == StatusCode::UNPROCESSABLE_ENTITY
                && reply.message().contains("does not exist"));
        if !gone {
            reply.ok(&self.api, &what)?;
        }
        Ok(())
    }

    async fn closed_feedback(&self, pr: PrNumber) -> Result<Vec<Feedback>, ForgeError> {
        let mut dated: Vec<(String, Feedback)> = Vec::new();
        for c in self.issue_comments(pr).await? {
            let body = c.body.unwrap_or_default();
            if body.trim().is_empty() || body.contains("<!-- hyperloop:") {
                continue;
            }
            dated.push((
                c.created_at,
                Feedback {
                    author: login(&c.user),
                    kind: FeedbackKind::Comment,
                    body,
                },
            ));
        }
        for r in self.reviews(pr).await? {
            let body = r.body.unwrap_or_default();
            if body.trim().is_empty() {
                continue;
            }
            dated.push((
                r.submitted_at.unwrap_or_default(),
                Feedback {
                    author: login(&r.user),
                    kind: FeedbackKind::Review { state: r.state },
                    body,
                },
            ));
        }
        let comments: Vec<wire::ReviewComment> = self
            .api
            .get_all(
                &self.repo_path(&format!("/pulls/{}/comments", pr.0)),
                &format!("read the review comments of pull request {pr}"),
            )
            .await?;
        for c in comments {
            dated.push((
                c.created_at,
                Feedback {
                    author: login(&c.user),
                    kind: FeedbackKind::ReviewComment {
                        path: c.path,
                        line: c.line.or(c.original_line),
                    },
                    body: c.body,
                },
            ));
        }
        // RFC 3339 UTC timestamps sort as strings; the sort is stable.
        dated.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(dated.into_iter().map(|(_, f)| f).collect())
    }
}

/// Why the pull request cannot be merged now, if GitHub already says so.
fn not_mergeable(snap: &PrSnapshot) -> Option<MergeOutcome> {
    match (&snap.mergeable_state, snap.mergeable) {
        (MergeableState::Dirty, _) | (_, Some(false)) => Some(MergeOutcome::Conflict),
        (MergeableState::Unknown, _) | (_, None) => Some(MergeOutcome::NotYetMergeable),
        (MergeableState::Behind, _) => Some(MergeOutcome::Behind),
        _ => None,
    }
}
