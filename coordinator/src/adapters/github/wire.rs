//! The parts of GitHub's REST answers the forge reads. Fields GitHub may omit or null are
//! optional; unknown fields are ignored, so GitHub adding values breaks nothing.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Repository {
    pub full_name: String,
    #[serde(default)]
    pub permissions: Option<Permissions>,
}

#[derive(Debug, Deserialize)]
pub struct Permissions {
    #[serde(default)]
    pub push: bool,
}

#[derive(Debug, Deserialize)]
pub struct User {
    pub login: String,
}

#[derive(Debug, Deserialize)]
pub struct Label {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct BranchRef {
    #[serde(rename = "ref")]
    pub name: String,
    pub sha: String,
}

#[derive(Debug, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    pub node_id: String,
    pub html_url: String,
    /// `open` or `closed`.
    pub state: String,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub merged_at: Option<String>,
    /// Only in the single-pull-request answer.
    #[serde(default)]
    pub mergeable: Option<bool>,
    #[serde(default)]
    pub mergeable_state: Option<String>,
    pub head: BranchRef,
    pub base: BranchRef,
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct IssueComment {
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub body: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Deserialize)]
pub struct Review {
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub body: Option<String>,
    /// `APPROVED`, `CHANGES_REQUESTED`, `COMMENTED`, `DISMISSED`, `PENDING`.
    pub state: String,
    #[serde(default)]
    pub commit_id: Option<String>,
    #[serde(default)]
    pub submitted_at: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ReviewComment {
    #[serde(default)]
    pub user: Option<User>,
    pub body: String,
    pub path: String,
    #[serde(default)]
    pub line: Option<u64>,
    #[serde(default)]
    pub original_line: Option<u64>,
    pub created_at: String,
}

#[derive(Debug, Deserialize)]
pub struct CombinedStatus {
    /// `success`, `pending`, `failure` or `error`; `pending` also when nothing reported.
    pub state: String,
    #[serde(default)]
    pub total_count: u64,
    #[serde(default)]
    pub statuses: Vec<CommitStatus>,
}

#[derive(Debug, Deserialize)]
pub struct CommitStatus {
    pub state: String,
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub target_url: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CheckRuns {
    #[serde(default)]
    pub check_runs: Vec<CheckRun>,
}

#[derive(Debug, Deserialize)]
pub struct CheckRun {
    pub name: String,
    /// `queued`, `in_progress`, `completed`, `waiting`, `requested`, `pending`.
    pub status: String,
    #[serde(default)]
    pub conclusion: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
    #[serde(default)]
    pub output: Option<CheckOutput>,
}

#[derive(Debug, Deserialize)]
pub struct CheckOutput {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct MergeResult {
    pub sha: String,
}
