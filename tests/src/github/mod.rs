//! A fake GitHub (REST + GraphQL) for hyperloop's pull-request tests, held to GitHub's
//! published schema.
//!
//! ```no_run
//! use hyperloop_tests::github::{FakeGitHub, ReviewState, CheckState};
//! let gh = FakeGitHub::start("acme/widgets")?;
//! gh.set_git_repo("/abs/path/to/origin.git"); // merges land on the base branch for real
//! // point the client under test at gh.base_url() (REST) and gh.graphql_url()
//! gh.add_label(1, "lgtm", "alice");
//! gh.submit_review(1, "alice", ReviewState::Approved, None);
//! gh.set_status("abc123", "ci/test", CheckState::Success);
//! assert!(gh.violations().is_empty());
//! # anyhow::Ok(())
//! ```
//!
//! Every request is matched to an operation of GitHub's OpenAPI description
//! ([`schema::OpenApi`]); its JSON body is validated against the operation's request schema
//! and every answer against the documented response schema for its status. GraphQL requests
//! are validated against GitHub's GraphQL schema ([`graphql`]). Any mismatch, and any request
//! the fake does not implement, is recorded in [`FakeGitHub::violations`] and answered with an
//! error (422 for a bad request, 500 for a bad answer, 404 for an unimplemented route), so a
//! test asserting `violations().is_empty()` fails loudly.

pub mod graphql;
pub mod objects;
pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use objects::{example, label, patch, user};
use schema::{OpenApi, Operation, decode_component};

/// The login the client under test acts as (the token's owner).
pub const BOT: &str = "hyperloop-bot";

/// A review's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewState {
    Approved,
    ChangesRequested,
    Commented,
}

impl ReviewState {
    fn api(self) -> &'static str {
        match self {
            ReviewState::Approved => "APPROVED",
            ReviewState::ChangesRequested => "CHANGES_REQUESTED",
            ReviewState::Commented => "COMMENTED",
        }
    }
}

/// The state of a commit status or check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckState {
    Pending,
    Success,
    Failure,
}

/// One request the fake received, with what it answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub status: u16,
    /// The request's JSON body, if any.
    pub body: Option<Value>,
}

#[derive(Debug, Clone)]
struct Comment {
    id: u64,
    user: String,
    body: String,
    created_at: String,
}

#[derive(Debug, Clone)]
struct Review {
    id: u64,
    user: String,
    state: ReviewState,
    commit_id: String,
    body: String,
    submitted_at: String,
}

/// A pull request as the fake keeps it.
#[derive(Debug, Clone)]
struct Pr {
    number: u64,
    title: String,
    body: Option<String>,
    head: String,
    head_sha: String,
    base: String,
    draft: bool,
    open: bool,
    merged: bool,
    merged_by: Option<String>,
    merge_commit_sha: Option<String>,
    labels: Vec<String>,
    requested_reviewers: Vec<String>,
    /// `(mergeable, mergeable_state)` forced by the test, else computed.
    mergeable_override: Option<(Option<bool>, String)>,
    comments: Vec<Comment>,
    review_comments: Vec<Comment>,
    reviews: Vec<Review>,
    created_at: String,
    updated_at: String,
    closed_at: Option<String>,
}

#[derive(Default)]
struct Inner {
    owner: String,
    repo: String,
    git_repo: Option<PathBuf>,
    next_id: u64,
    prs: BTreeMap<u64, Pr>,
    label_ids: HashMap<String, u64>,
    /// sha → context → (state, description)
    statuses: HashMap<String, BTreeMap<String, (CheckState, String)>>,
    /// sha → name → state
    check_runs: HashMap<String, BTreeMap<String, CheckState>>,
    violations: Vec<String>,
    requests: Vec<Recorded>,
    rate_limit_next: usize,
    retry_after_secs: u64,
    conditional_hits: usize,
    /// Rate-limited calls spent per resource (`core`, `graphql`), as GitHub counts them.
    spent: HashMap<&'static str, u64>,
}

/// The primary rate limit of an authenticated user, per resource and hour.
const RATE_LIMIT: u64 = 5000;
/// When the fake's rate-limit window resets (seconds since the epoch; far ahead).
const RATE_LIMIT_RESET: u64 = 4_102_444_800;

type Shared = Arc<Mutex<Inner>>;

/// The fake GitHub server; stops when dropped.
pub struct FakeGitHub {
    addr: SocketAddr,
    state: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeGitHub {
    /// Starts a fake serving the one repository `owner/repo` on a loopback port. Loads
    /// GitHub's schemas first (panics with how to install them if `tests/setup` did not).
    pub fn start(full_name: &str) -> anyhow::Result<FakeGitHub> {
        let (owner, repo) = full_name
            .split_once('/')
            .context("the fake GitHub repository must be `owner/repo`")?;
        OpenApi::get();
        graphql::schema();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state: Shared = Arc::new(Mutex::new(Inner {
            owner: owner.to_string(),
            repo: repo.to_string(),
            next_id: 100,
            retry_after_secs: 1,
            ..Inner::default()
        }));
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("build the fake GitHub's runtime")?;
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let thread = std::thread::Builder::new()
            .name(format!("fake-github-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return eprintln!("fake GitHub: {e}"),
                    };
                    tokio::select! {
                        r = axum::serve(listener, app) => {
                            if let Err(e) = r {
                                eprintln!("fake GitHub: {e}");
                            }
                        }
                        _ = shutdown_rx => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .context("spawn the fake GitHub thread")?;
        Ok(FakeGitHub {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The REST API base URL (`http://127.0.0.1:PORT`), as for GitHub Enterprise's `api/v3`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The GraphQL endpoint.
    pub fn graphql_url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.state.lock().expect("fake GitHub state"))
    }

    fn with_pr<T>(&self, number: u64, f: impl FnOnce(&mut Pr, String) -> T) -> T {
        self.with(|s| {
            let pr = s
                .prs
                .get_mut(&number)
                .unwrap_or_else(|| panic!("the fake GitHub has no PR #{number}"));
            let t = f(pr, now());
            pr.updated_at = now();
            t
        })
    }

    /// Backs the repository with a bare git repository: PR heads are read from its branches
    /// and merges (by the client or [`Self::merge_as_human`]) really update the base branch.
    pub fn set_git_repo(&self, bare: impl AsRef<Path>) {
        let path = bare.as_ref().to_path_buf();
        self.with(|s| s.git_repo = Some(path));
    }

    /// Every schema mismatch and unimplemented request seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.with(|s| s.violations.clone())
    }

    /// Every request received so far, in order, with when it arrived.
    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    /// How many conditional GETs were answered `304 Not Modified`.
    pub fn conditional_hits(&self) -> usize {
        self.with(|s| s.conditional_hits)
    }

    /// The next `n` requests get `403` with a secondary-rate-limit message and
    /// `retry-after: retry_after_secs`.
    pub fn rate_limit_next(&self, n: usize, retry_after_secs: u64) {
        self.with(|s| {
            s.rate_limit_next = n;
            s.retry_after_secs = retry_after_secs;
        });
    }

    /// The PR numbers, oldest first.
    pub fn pull_numbers(&self) -> Vec<u64> {
        self.with(|s| s.prs.keys().copied().collect())
    }

    /// The PR as `GET /pulls/{n}` would answer it.
    pub fn pull(&self, number: u64) -> Value {
        self.with(|s| {
            let pr = s.prs.get(&number).cloned().expect("no such PR");
            s.pr_json(&pr, true)
        })
    }

    /// Labels on a PR.
    pub fn labels(&self, number: u64) -> Vec<String> {
        self.with_pr(number, |pr, _| pr.labels.clone())
    }

    /// Issue comments on a PR: (author, body).
    pub fn comments(&self, number: u64) -> Vec<(String, String)> {
        self.with_pr(number, |pr, _| {
            pr.comments
                .iter()
                .map(|c| (c.user.clone(), c.body.clone()))
                .collect()
        })
    }

    /// Reviewers requested on a PR.
    pub fn requested_reviewers(&self, number: u64) -> Vec<String> {
        self.with_pr(number, |pr, _| pr.requested_reviewers.clone())
    }

    /// A human adds a label.
    pub fn add_label(&self, number: u64, name: &str, _by: &str) {
        self.with_pr(number, |pr, _| {
            if !pr.labels.iter().any(|l| l == name) {
                pr.labels.push(name.to_string());
            }
        });
    }

    /// A human removes a label.
    pub fn remove_label(&self, number: u64, name: &str) {
        self.with_pr(number, |pr, _| pr.labels.retain(|l| l != name));
    }

    /// A human submits a review on `commit_id` (default: the PR's current head).
    pub fn submit_review(
        &self,
        number: u64,
        by: &str,
        state: ReviewState,
        commit_id: Option<&str>,
    ) {
        let id = self.next_id();
        let head = self.head_sha(number);
        self.with_pr(number, |pr, now| {
            pr.requested_reviewers.retain(|r| r != by);
            pr.reviews.push(Review {
                id,
                user: by.to_string(),
                state,
                commit_id: commit_id.map_or(head, str::to_string),
                body: String::new(),
                submitted_at: now,
            });
        });
    }

    /// A human (or the test) comments on the PR conversation.
    pub fn add_comment(&self, number: u64, by: &str, body: &str) {
        let id = self.next_id();
        self.with_pr(number, |pr, now| {
            pr.comments.push(Comment {
                id,
                user: by.to_string(),
                body: body.to_string(),
                created_at: now,
            });
        });
    }

    /// A human leaves a review comment on the diff.
    pub fn add_review_comment(&self, number: u64, by: &str, body: &str) {
        let id = self.next_id();
        self.with_pr(number, |pr, now| {
            pr.review_comments.push(Comment {
                id,
                user: by.to_string(),
                body: body.to_string(),
                created_at: now,
            });
        });
    }

    /// A human closes the PR without merging.
    pub fn close(&self, number: u64) {
        self.with_pr(number, |pr, now| {
            pr.open = false;
            pr.closed_at = Some(now);
        });
    }

    /// Sets a commit status (`context`) on `sha`.
    pub fn set_status(&self, sha: &str, context: &str, state: CheckState) {
        self.with(|s| {
            s.statuses.entry(sha.to_string()).or_default().insert(
                context.to_string(),
                (state, format!("{context} is {state:?}")),
            );
        });
    }

    /// Sets a check run (`name`) on `sha`.
    pub fn set_check_run(&self, sha: &str, name: &str, state: CheckState) {
        self.with(|s| {
            s.check_runs
                .entry(sha.to_string())
                .or_default()
                .insert(name.to_string(), state);
        });
    }

    /// Forces what GitHub reports as mergeability (`None` = still computing, as GitHub does
    /// right after a push); `Self::clear_mergeable` returns to computing it from git.
    pub fn set_mergeable(&self, number: u64, mergeable: Option<bool>, state: &str) {
        self.with_pr(number, |pr, _| {
            pr.mergeable_override = Some((mergeable, state.to_string()));
        });
    }

    /// Stops forcing mergeability.
    pub fn clear_mergeable(&self, number: u64) {
        self.with_pr(number, |pr, _| pr.mergeable_override = None);
    }

    /// The PR's current head commit (from git when backed by a repository).
    pub fn head_sha(&self, number: u64) -> String {
        self.with(|s| {
            s.refresh(number);
            s.prs[&number].head_sha.clone()
        })
    }

    /// A human merges the PR (`method`: `merge` or `squash`).
    pub fn merge_as_human(&self, number: u64, by: &str, method: &str) -> anyhow::Result<String> {
        self.with(|s| s.merge(number, by, method, None, None))
    }

    fn next_id(&self) -> u64 {
        self.with(Inner::id)
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An answer: status and optional JSON body.
type Answer = (u16, Option<Value>);

fn err(status: u16, message: &str) -> Answer {
    (
        status,
        Some(json!({
            "message": message,
            "documentation_url": "https://docs.github.com/rest",
        })),
    )
}

async fn handle(State(state): State<Shared>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_else(|_| Bytes::new());
    let mut s = state.lock().expect("fake GitHub state");
    let body: Option<Result<Value, _>> =
        (!bytes.is_empty()).then(|| serde_json::from_slice::<Value>(&bytes));
    let uri = parts.uri.to_string();
    let (status, answer, headers) = match body {
        Some(Err(e)) => {
            let what = format!("{} {uri}: the body is not JSON: {e}", parts.method);
            s.violations.push(what.clone());
            (400, Some(json!({"message": what})), HeaderMap::new())
        }
        Some(Ok(json)) => s.serve(&parts.method, &parts.uri, &parts.headers, Some(json)),
        None => s.serve(&parts.method, &parts.uri, &parts.headers, None),
    };
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("x-github-request-id", format!("FAKE:{}", s.requests.len()));
    for (k, v) in &headers {
        resp = resp.header(k, v);
    }
    match answer {
        Some(v) => resp
            .header("content-type", "application/json; charset=utf-8")
            .body(Body::from(v.to_string())),
        None => resp.body(Body::empty()),
    }
    .expect("build a response")
}

impl Inner {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn serve(
        &mut self,
        method: &Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: Option<Value>,
    ) -> (u16, Option<Value>, HeaderMap) {
        let path = uri.path().to_string();
        let query: HashMap<String, String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((decode_component(k), decode_component(v)))
            })
            .collect();
        let mut out_headers = HeaderMap::new();
        let (status, answer) = if self.rate_limit_next > 0 {
            self.rate_limit_next -= 1;
            out_headers.insert(
                "retry-after",
                self.retry_after_secs.to_string().parse().expect("header"),
            );
            err(
                403,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you \
                 try again.",
            )
        } else if path == "/graphql" && method == Method::POST {
            self.graphql(body.as_ref())
        } else {
            self.rest(method, &path, &query, body.as_ref())
        };
        // Conditional GETs: an ETag on every 200, 304 when the client already has it.
        let (status, answer) = match (method, status, answer) {
            (&Method::GET, 200, Some(v)) => {
                let etag = format!("W/\"{:016x}\"", fnv(v.to_string().as_bytes()));
                out_headers.insert("etag", etag.parse().expect("header"));
                let cached = headers
                    .get("if-none-match")
                    .and_then(|h| h.to_str().ok())
                    .is_some_and(|h| h.split(',').any(|t| t.trim() == etag));
                if cached {
                    self.conditional_hits += 1;
                    (304, None)
                } else {
                    (200, Some(v))
                }
            }
            (_, status, answer) => (status, answer),
        };
        self.rate_limit_headers(&path, status, &mut out_headers);
        self.requests.push(Recorded {
            at: Instant::now(),
            method: method.to_string(),
            uri: uri.to_string(),
            status,
            body,
        });
        (status, answer, out_headers)
    }

    /// What GitHub says of its primary rate limit on every answer: a `304 Not Modified` to
    /// an authenticated client is free, everything else spends one call of its resource.
    fn rate_limit_headers(&mut self, path: &str, status: u16, out: &mut HeaderMap) {
        let resource = if path == "/graphql" {
            "graphql"
        } else {
            "core"
        };
        let used = self.spent.entry(resource).or_insert(0);
        if status != 304 {
            *used += 1;
        }
        let values = [
            ("x-ratelimit-limit", RATE_LIMIT.to_string()),
            (
                "x-ratelimit-remaining",
                RATE_LIMIT.saturating_sub(*used).to_string(),
            ),
            ("x-ratelimit-used", used.to_string()),
            ("x-ratelimit-reset", RATE_LIMIT_RESET.to_string()),
            ("x-ratelimit-resource", resource.to_owned()),
        ];
        for (name, value) in values {
            out.insert(name, value.parse().expect("header"));
        }
    }

    fn rest(
        &mut self,
        method: &Method,
        path: &str,
        query: &HashMap<String, String>,
        body: Option<&Value>,
    ) -> Answer {
        let api = OpenApi::get();
        let Some(op) = api.find(method.as_str(), path) else {
            self.violations.push(format!(
                "{method} {path}: not an operation of GitHub's REST API"
            ));
            return err(404, "Not Found");
        };
        if let Err(e) = api.check_request(&op, body) {
            self.violations
                .push(format!("request {method} {path}: {e}"));
            return (
                422,
                Some(json!({
                    "message": "Validation Failed",
                    "errors": [e],
                    "documentation_url": "https://docs.github.com/rest",
                })),
            );
        }
        if op.params.get("owner") != Some(&self.owner) || op.params.get("repo") != Some(&self.repo)
        {
            self.violations.push(format!(
                "{method} {path}: the fake serves only {}/{}",
                self.owner, self.repo
            ));
            return err(404, "Not Found");
        }
        let empty = json!({});
        let answer = self.dispatch(&op, query, body.unwrap_or(&empty));
        let answer = match answer {
            Some(a) => a,
            None => {
                self.violations.push(format!(
                    "{method} {path}: the fake does not implement {} ({})",
                    op.id, op.template
                ));
                return err(404, "Not Found");
            }
        };
        if let Err(e) = api.check_response(&op, answer.0, answer.1.as_ref()) {
            self.violations
                .push(format!("response to {method} {path}: {e}"));
            return err(500, &format!("the fake GitHub answered off-schema: {e}"));
        }
        answer
    }

    /// Answers an implemented operation; `None` when the fake does not implement it.
    fn dispatch(
        &mut self,
        op: &Operation,
        query: &HashMap<String, String>,
        body: &Value,
    ) -> Option<Answer> {
        let number = ["pull_number", "issue_number"]
            .iter()
            .find_map(|p| op.params.get(*p)?.parse::<u64>().ok());
        if let Some(n) = number {
            if !self.prs.contains_key(&n) {
                return Some(err(404, "Not Found"));
            }
            self.refresh(n);
        }
        let n = number.unwrap_or_default();
        Some(match op.id.as_str() {
            "repos/get" => {
                let full = format!("{}/{}", self.owner, self.repo);
                (
                    200,
                    Some(patch(
                        example("full-repository"),
                        json!({
                            "name": self.repo, "full_name": full, "owner": user(&self.owner),
                            "default_branch": "main", "has_discussions": false,
                            "permissions": {"admin": false, "maintain": false, "push": true,
                                            "triage": true, "pull": true},
                        }),
                    )),
                )
            }
            "pulls/create" => self.create_pr(body),
            "pulls/list" => {
                let state = query.get("state").map_or("open", String::as_str);
                let head = query.get("head").cloned();
                let base = query.get("base").cloned();
                let owner = self.owner.clone();
                let numbers: Vec<u64> = self.prs.keys().copied().collect();
                let mut list = Vec::new();
                for n in numbers {
                    self.refresh(n);
                    let pr = &self.prs[&n];
                    let state_ok = match state {
                        "all" => true,
                        "closed" => !pr.open,
                        _ => pr.open,
                    };
                    let head_ok = head
                        .as_ref()
                        .is_none_or(|h| *h == format!("{owner}:{}", pr.head) || *h == pr.head);
                    let base_ok = base.as_ref().is_none_or(|b| *b == pr.base);
                    if state_ok && head_ok && base_ok {
                        list.push(self.pr_json(&pr.clone(), false));
                    }
                }
                (200, Some(Value::Array(list)))
            }
            "pulls/get" => (200, Some(self.pr_json(&self.prs[&n].clone(), true))),
            "pulls/update" => {
                let now = now();
                let pr = self.prs.get_mut(&n)?;
                if let Some(t) = body["title"].as_str() {
                    pr.title = t.to_string();
                }
                if let Some(b) = body["body"].as_str() {
                    pr.body = Some(b.to_string());
                }
                if let Some(b) = body["base"].as_str() {
                    pr.base = b.to_string();
                }
                match body["state"].as_str() {
                    Some("closed") if pr.open => {
                        pr.open = false;
                        pr.closed_at = Some(now.clone());
                    }
                    Some("open") if !pr.merged => {
                        pr.open = true;
                        pr.closed_at = None;
                    }
                    _ => {}
                }
                pr.updated_at = now;
                (200, Some(self.pr_json(&self.prs[&n].clone(), true)))
            }
            "issues/add-labels" | "issues/set-labels" => {
                let names: Vec<String> = match &body["labels"] {
                    Value::Array(items) => items
                        .iter()
                        .filter_map(|l| l.as_str().or_else(|| l["name"].as_str()))
                        .map(str::to_string)
                        .collect(),
                    _ => Vec::new(),
                };
                let pr = self.prs.get_mut(&n)?;
                if op.id == "issues/set-labels" {
                    pr.labels.clear();
                }
                for name in names {
                    if !pr.labels.contains(&name) {
                        pr.labels.push(name);
                    }
                }
                (200, Some(self.labels_json(n)))
            }
            "issues/remove-label" => {
                let name = op.params.get("name")?.clone();
                let pr = self.prs.get_mut(&n)?;
                if !pr.labels.contains(&name) {
                    return Some(err(404, "Label does not exist"));
                }
                pr.labels.retain(|l| *l != name);
                (200, Some(self.labels_json(n)))
            }
            "issues/list-labels-on-issue" => (200, Some(self.labels_json(n))),
            "issues/create-comment" => {
                let id = self.id();
                let c = Comment {
                    id,
                    user: BOT.to_string(),
                    body: body["body"].as_str().unwrap_or_default().to_string(),
                    created_at: now(),
                };
                let json = self.comment_json(n, &c, false);
                self.prs.get_mut(&n)?.comments.push(c);
                (201, Some(json))
            }
            "issues/list-comments" => {
                let list = self.prs[&n]
                    .comments
                    .clone()
                    .iter()
                    .map(|c| self.comment_json(n, c, false))
                    .collect();
                (200, Some(Value::Array(list)))
            }
            "pulls/list-review-comments" => {
                let list = self.prs[&n]
                    .review_comments
                    .clone()
                    .iter()
                    .map(|c| self.comment_json(n, c, true))
                    .collect();
                (200, Some(Value::Array(list)))
            }
            "pulls/list-reviews" => {
                let list = self.prs[&n]
                    .reviews
                    .clone()
                    .iter()
                    .map(|r| self.review_json(n, r))
                    .collect();
                (200, Some(Value::Array(list)))
            }
            "pulls/request-reviewers" => {
                let pr = self.prs.get_mut(&n)?;
                for r in body["reviewers"].as_array().into_iter().flatten() {
                    if let Some(r) = r.as_str()
                        && !pr.requested_reviewers.iter().any(|x| x == r)
                    {
                        pr.requested_reviewers.push(r.to_string());
                    }
                }
                (201, Some(self.pr_json(&self.prs[&n].clone(), false)))
            }
            "repos/get-combined-status-for-ref" => {
                let sha = self.resolve_ref(op.params.get("ref")?);
                (200, Some(self.combined_status_json(&sha)))
            }
            "checks/list-for-ref" => {
                let sha = self.resolve_ref(op.params.get("ref")?);
                (200, Some(self.check_runs_json(&sha)))
            }
            "pulls/merge" => {
                let method = body["merge_method"].as_str().unwrap_or("merge");
                if let Some(sha) = body["sha"].as_str()
                    && sha != self.prs[&n].head_sha
                {
                    return Some(err(
                        409,
                        "Head branch was modified. Review and try the merge again.",
                    ));
                }
                let (mergeable, _) = self.mergeability(n);
                if !self.prs[&n].open || mergeable != Some(true) {
                    return Some(err(405, "Pull Request is not mergeable"));
                }
                match self.merge(
                    n,
                    BOT,
                    method,
                    body["commit_title"].as_str(),
                    body["commit_message"].as_str(),
                ) {
                    Ok(sha) => (
                        200,
                        Some(json!({
                            "sha": sha,
                            "merged": true,
                            "message": "Pull Request successfully merged",
                        })),
                    ),
                    Err(e) => err(405, &format!("Pull Request is not mergeable: {e:#}")),
                }
            }
            "pulls/update-branch" => match self.update_branch(n) {
                Ok(()) => (
                    202,
                    Some(json!({
                        "message": "Updating pull request branch.",
                        "url": format!("https://github.com/{}/{}/pull/{n}", self.owner, self.repo),
                    })),
                ),
                Err(e) => err(422, &format!("merge conflict between base and head: {e:#}")),
            },
            "git/delete-ref" => {
                let r = op.params.get("ref")?;
                if let Some(git) = &self.git_repo {
                    let _ = git_cmd(git, &["update-ref", "-d", &format!("refs/{r}")]);
                }
                (204, None)
            }
            _ => return None,
        })
    }

    fn graphql(&mut self, body: Option<&Value>) -> Answer {
        let empty = Value::Null;
        let request = match graphql::check(body.unwrap_or(&empty)) {
            Ok(r) => r,
            Err(e) => {
                self.violations.push(format!("POST /graphql: {e}"));
                return (200, Some(json!({"errors": [{"message": e}]})));
            }
        };
        let mut data = serde_json::Map::new();
        for (key, field, args) in &request.root_fields {
            let value = match (request.kind.as_str(), field.as_str()) {
                ("mutation", "markPullRequestReadyForReview") => {
                    let node = args["input"]["pullRequestId"].as_str().unwrap_or_default();
                    let Some(n) = self
                        .prs
                        .values()
                        .find(|p| pr_node_id(p.number) == node)
                        .map(|p| p.number)
                    else {
                        return (
                            200,
                            Some(json!({"data": null, "errors": [{
                                "type": "NOT_FOUND",
                                "path": [key],
                                "message": format!("Could not resolve to a node with the global id of '{node}'"),
                            }]})),
                        );
                    };
                    let pr = self.prs.get_mut(&n).expect("found above");
                    pr.draft = false;
                    pr.updated_at = now();
                    json!({
                        "clientMutationId": args["input"]["clientMutationId"],
                        "pullRequest": {
                            "id": node,
                            "number": n,
                            "isDraft": false,
                            "state": "OPEN",
                            "url": format!("https://github.com/{}/{}/pull/{n}", self.owner, self.repo),
                        },
                    })
                }
                (kind, field) => {
                    let e = format!("POST /graphql: the fake does not implement {kind} {field}");
                    self.violations.push(e.clone());
                    return (200, Some(json!({"errors": [{"message": e}]})));
                }
            };
            data.insert(key.clone(), value);
        }
        let data = Value::Object(data);
        if let Err(e) = request.check_response(&data) {
            self.violations.push(format!("POST /graphql response: {e}"));
            return (500, Some(json!({"errors": [{"message": e}]})));
        }
        (200, Some(json!({"data": data})))
    }

    fn create_pr(&mut self, body: &Value) -> Answer {
        let (Some(title), Some(head), Some(base)) = (
            body["title"].as_str(),
            body["head"].as_str(),
            body["base"].as_str(),
        ) else {
            return err(422, "Validation Failed: title, head and base are required");
        };
        let head = head.rsplit(':').next().unwrap_or(head).to_string();
        if let Some(existing) = self
            .prs
            .values()
            .find(|p| p.open && p.head == head && p.base == base)
        {
            return (
                422,
                Some(json!({
                    "message": "Validation Failed",
                    "errors": [{
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": format!("A pull request already exists for {}:{head} (#{}).", self.owner, existing.number),
                    }],
                    "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                })),
            );
        }
        let number = self.prs.keys().last().map_or(1, |n| n + 1);
        let now = now();
        let head_sha = self
            .branch_sha(&head)
            .unwrap_or_else(|| fake_sha(&format!("{head}@{number}")));
        self.prs.insert(
            number,
            Pr {
                number,
                title: title.to_string(),
                body: body["body"].as_str().map(str::to_string),
                head,
                head_sha,
                base: base.to_string(),
                draft: body["draft"].as_bool().unwrap_or(false),
                open: true,
                merged: false,
                merged_by: None,
                merge_commit_sha: None,
                labels: Vec::new(),
                requested_reviewers: Vec::new(),
                mergeable_override: None,
                comments: Vec::new(),
                review_comments: Vec::new(),
                reviews: Vec::new(),
                created_at: now.clone(),
                updated_at: now,
                closed_at: None,
            },
        );
        (201, Some(self.pr_json(&self.prs[&number].clone(), true)))
    }

    /// Re-reads the PR's head from git.
    fn refresh(&mut self, number: u64) {
        let Some(pr) = self.prs.get(&number) else {
            return;
        };
        if pr.merged {
            return;
        }
        if let Some(sha) = self.branch_sha(&pr.head.clone()) {
            self.prs.get_mut(&number).expect("present").head_sha = sha;
        }
    }

    fn branch_sha(&self, branch: &str) -> Option<String> {
        let git = self.git_repo.as_ref()?;
        git_cmd(
            git,
            &[
                "rev-parse",
                "--verify",
                &format!("refs/heads/{branch}^{{commit}}"),
            ],
        )
        .ok()
    }

    /// A ref as the API takes it (sha, branch name or `heads/x`) → sha.
    fn resolve_ref(&self, r: &str) -> String {
        if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
            return r.to_string();
        }
        self.branch_sha(r.trim_start_matches("heads/"))
            .unwrap_or_else(|| r.to_string())
    }

    /// `(mergeable, mergeable_state)`: forced, or from git (`dirty` on conflicts, `behind`
    /// when the base has moved on, `draft`, else `clean`).
    fn mergeability(&self, n: u64) -> (Option<bool>, String) {
        let pr = &self.prs[&n];
        if let Some(forced) = &pr.mergeable_override {
            return forced.clone();
        }
        if pr.merged || !pr.open {
            return (None, "unknown".into());
        }
        let Some(git) = &self.git_repo else {
            return (Some(true), if pr.draft { "draft" } else { "clean" }.into());
        };
        let base = format!("refs/heads/{}", pr.base);
        if git_cmd(git, &["merge-tree", "--write-tree", &base, &pr.head_sha]).is_err() {
            return (Some(false), "dirty".into());
        }
        let behind = git_cmd(git, &["merge-base", "--is-ancestor", &base, &pr.head_sha]).is_err();
        let state = if pr.draft {
            "draft"
        } else if behind {
            "behind"
        } else {
            "clean"
        };
        (Some(true), state.into())
    }

    fn merge(
        &mut self,
        n: u64,
        by: &str,
        method: &str,
        title: Option<&str>,
        message: Option<&str>,
    ) -> anyhow::Result<String> {
        self.refresh(n);
        let pr = self.prs.get(&n).context("no such PR")?.clone();
        anyhow::ensure!(pr.open && !pr.merged, "PR #{n} is not open");
        let title = title.map_or_else(
            || match method {
                "squash" => format!("{} (#{n})", pr.title),
                _ => format!("Merge pull request #{n} from {}/{}", self.owner, pr.head),
            },
            str::to_string,
        );
        let message = match message {
            Some(m) if !m.is_empty() => format!("{title}\n\n{m}"),
            _ => title,
        };
        let sha = match &self.git_repo {
            Some(git) => {
                let base_ref = format!("refs/heads/{}", pr.base);
                let base = git_cmd(git, &["rev-parse", "--verify", &base_ref])?;
                let tree = git_cmd(git, &["merge-tree", "--write-tree", &base, &pr.head_sha])
                    .context("the head does not merge cleanly into the base")?;
                let tree = tree.lines().next().unwrap_or_default().to_string();
                let mut args = vec!["commit-tree", tree.as_str(), "-p", base.as_str()];
                match method {
                    "squash" => {}
                    "merge" => args.extend(["-p", pr.head_sha.as_str()]),
                    other => anyhow::bail!("merge_method {other} is not supported by the fake"),
                }
                args.extend(["-m", message.as_str()]);
                let commit = git_cmd(git, &args)?;
                git_cmd(git, &["update-ref", &base_ref, &commit, &base])?;
                commit
            }
            None => fake_sha(&format!("merge {n} {message}")),
        };
        let now = now();
        let pr = self.prs.get_mut(&n).context("no such PR")?;
        pr.open = false;
        pr.merged = true;
        pr.merged_by = Some(by.to_string());
        pr.merge_commit_sha = Some(sha.clone());
        pr.closed_at = Some(now.clone());
        pr.updated_at = now;
        Ok(sha)
    }

    fn update_branch(&mut self, n: u64) -> anyhow::Result<()> {
        self.refresh(n);
        let pr = self.prs.get(&n).context("no such PR")?.clone();
        let Some(git) = self.git_repo.clone() else {
            return Ok(());
        };
        let base = git_cmd(
            &git,
            &["rev-parse", "--verify", &format!("refs/heads/{}", pr.base)],
        )?;
        if git_cmd(&git, &["merge-base", "--is-ancestor", &base, &pr.head_sha]).is_ok() {
            return Ok(());
        }
        let tree = git_cmd(&git, &["merge-tree", "--write-tree", &pr.head_sha, &base])?;
        let tree = tree.lines().next().unwrap_or_default().to_string();
        let msg = format!("Merge branch '{}' into {}", pr.base, pr.head);
        let commit = git_cmd(
            &git,
            &[
                "commit-tree",
                &tree,
                "-p",
                &pr.head_sha,
                "-p",
                &base,
                "-m",
                &msg,
            ],
        )?;
        git_cmd(
            &git,
            &[
                "update-ref",
                &format!("refs/heads/{}", pr.head),
                &commit,
                &pr.head_sha,
            ],
        )?;
        self.refresh(n);
        Ok(())
    }

    fn repo_json(&self) -> Value {
        let full = format!("{}/{}", self.owner, self.repo);
        // GitHub publishes no stand-alone `repository` example; a PR's head repo is one.
        patch(
            example("pull-request")["head"]["repo"].clone(),
            json!({
                "name": self.repo,
                "full_name": full,
                "owner": user(&self.owner),
                "url": format!("https://api.github.com/repos/{full}"),
                "html_url": format!("https://github.com/{full}"),
            }),
        )
    }

    fn pr_json(&self, pr: &Pr, full: bool) -> Value {
        let n = pr.number;
        let full_name = format!("{}/{}", self.owner, self.repo);
        let api = format!("https://api.github.com/repos/{full_name}");
        let (mergeable, mergeable_state) = self.mergeability(n);
        let base_sha = self
            .branch_sha(&pr.base)
            .unwrap_or_else(|| fake_sha(&pr.base));
        let branch = |name: &str, sha: &str| {
            json!({
                "label": format!("{}:{name}", self.owner),
                "ref": name,
                "sha": sha,
                "user": user(&self.owner),
                "repo": self.repo_json(),
            })
        };
        let reviewers: Vec<Value> = pr.requested_reviewers.iter().map(|r| user(r)).collect();
        let mut v = patch(
            example(if full {
                "pull-request"
            } else {
                "pull-request-simple-items"
            }),
            json!({
                "url": format!("{api}/pulls/{n}"),
                "id": 1_000_000 + n,
                "node_id": pr_node_id(n),
                "html_url": format!("https://github.com/{full_name}/pull/{n}"),
                "diff_url": format!("https://github.com/{full_name}/pull/{n}.diff"),
                "patch_url": format!("https://github.com/{full_name}/pull/{n}.patch"),
                "issue_url": format!("{api}/issues/{n}"),
                "commits_url": format!("{api}/pulls/{n}/commits"),
                "review_comments_url": format!("{api}/pulls/{n}/comments"),
                "comments_url": format!("{api}/issues/{n}/comments"),
                "statuses_url": format!("{api}/statuses/{}", pr.head_sha),
                "number": n,
                "state": if pr.open { "open" } else { "closed" },
                "locked": false,
                "title": pr.title,
                "user": user(BOT),
                "body": pr.body,
                "labels": pr.labels.iter().map(|l| self.label_json(l)).collect::<Vec<_>>(),
                "milestone": null,
                "active_lock_reason": null,
                "created_at": pr.created_at,
                "updated_at": pr.updated_at,
                "closed_at": pr.closed_at,
                "merged_at": if pr.merged { pr.closed_at.clone() } else { None },
                "merge_commit_sha": pr.merge_commit_sha,
                "assignee": null,
                "assignees": [],
                "requested_reviewers": reviewers,
                "requested_teams": [],
                "head": branch(&pr.head, &pr.head_sha),
                "base": branch(&pr.base, &base_sha),
                "author_association": "MEMBER",
                "auto_merge": null,
                "draft": pr.draft,
            }),
        );
        if full {
            v = patch(
                v,
                json!({
                    "merged": pr.merged,
                    "mergeable": mergeable,
                    "rebaseable": mergeable,
                    "mergeable_state": mergeable_state,
                    "merged_by": pr.merged_by.as_deref().map(user),
                    "comments": pr.comments.len(),
                    "review_comments": pr.review_comments.len(),
                    "maintainer_can_modify": false,
                    "commits": 1,
                    "additions": 1,
                    "deletions": 0,
                    "changed_files": 1,
                }),
            );
        }
        v
    }

    fn label_json(&self, name: &str) -> Value {
        let id = self
            .label_ids
            .get(name)
            .copied()
            .unwrap_or_else(|| fnv(name.as_bytes()) % 1_000_000_000);
        label(name, id)
    }

    fn labels_json(&self, n: u64) -> Value {
        Value::Array(
            self.prs[&n]
                .labels
                .iter()
                .map(|l| self.label_json(l))
                .collect(),
        )
    }

    fn comment_json(&self, n: u64, c: &Comment, review: bool) -> Value {
        let full = format!("{}/{}", self.owner, self.repo);
        let api = format!("https://api.github.com/repos/{full}");
        let common = json!({
            "id": c.id,
            "node_id": format!("IC_{}", c.id),
            "user": user(&c.user),
            "body": c.body,
            "created_at": c.created_at,
            "updated_at": c.created_at,
            "author_association": "MEMBER",
        });
        if review {
            let mut template = example("pull-request-review-comment-items");
            if let Some(m) = template.as_object_mut() {
                m.remove("in_reply_to_id"); // optional, and not nullable
            }
            patch(
                patch(template, common),
                json!({
                    "url": format!("{api}/pulls/comments/{}", c.id),
                    "pull_request_url": format!("{api}/pulls/{n}"),
                    "html_url": format!("https://github.com/{full}/pull/{n}#discussion_r{}", c.id),
                    "pull_request_review_id": null,
                }),
            )
        } else {
            patch(
                patch(example("issue-comment"), common),
                json!({
                    "url": format!("{api}/issues/comments/{}", c.id),
                    "issue_url": format!("{api}/issues/{n}"),
                    "html_url": format!("https://github.com/{full}/pull/{n}#issuecomment-{}", c.id),
                }),
            )
        }
    }

    fn review_json(&self, n: u64, r: &Review) -> Value {
        let full = format!("{}/{}", self.owner, self.repo);
        patch(
            example("pull-request-review-items"),
            json!({
                "id": r.id,
                "node_id": format!("PRR_{}", r.id),
                "user": user(&r.user),
                "body": r.body,
                "state": r.state.api(),
                "commit_id": r.commit_id,
                "submitted_at": r.submitted_at,
                "html_url": format!("https://github.com/{full}/pull/{n}#pullrequestreview-{}", r.id),
                "pull_request_url": format!("https://api.github.com/repos/{full}/pulls/{n}"),
                "author_association": "MEMBER",
            }),
        )
    }

    fn combined_status_json(&self, sha: &str) -> Value {
        let full = format!("{}/{}", self.owner, self.repo);
        let empty = BTreeMap::new();
        let statuses = self.statuses.get(sha).unwrap_or(&empty);
        let template = example("combined-commit-status");
        let item = template["statuses"][0].clone();
        let list: Vec<Value> = statuses
            .iter()
            .enumerate()
            .map(|(i, (ctx, (state, desc)))| {
                patch(
                    item.clone(),
                    json!({
                        "url": format!("https://api.github.com/repos/{full}/statuses/{sha}"),
                        "id": i + 1,
                        "node_id": format!("SC_{}", i + 1),
                        "state": status_word(*state),
                        "description": desc,
                        "context": ctx,
                    }),
                )
            })
            .collect();
        let state = if statuses.values().any(|(s, _)| *s == CheckState::Failure) {
            "failure"
        } else if statuses.is_empty() || statuses.values().any(|(s, _)| *s == CheckState::Pending) {
            "pending"
        } else {
            "success"
        };
        patch(
            template,
            json!({
                "state": state,
                "total_count": list.len(),
                "statuses": list,
                "sha": sha,
                "repository": patch(example("minimal-repository"), json!({
                    "name": self.repo, "full_name": full, "owner": user(&self.owner),
                })),
                "commit_url": format!("https://api.github.com/repos/{full}/commits/{sha}"),
                "url": format!("https://api.github.com/repos/{full}/commits/{sha}/status"),
            }),
        )
    }

    fn check_runs_json(&self, sha: &str) -> Value {
        let empty = BTreeMap::new();
        let runs = self.check_runs.get(sha).unwrap_or(&empty);
        let template = example("check-run-paginated");
        let item = template["check_runs"][0].clone();
        let list: Vec<Value> = runs
            .iter()
            .enumerate()
            .map(|(i, (name, state))| {
                let (status, conclusion) = match state {
                    CheckState::Pending => ("in_progress", Value::Null),
                    CheckState::Success => ("completed", json!("success")),
                    CheckState::Failure => ("completed", json!("failure")),
                };
                patch(
                    item.clone(),
                    json!({
                        "id": i + 1,
                        "node_id": format!("CR_{}", i + 1),
                        "head_sha": sha,
                        "name": name,
                        "status": status,
                        "conclusion": conclusion,
                        "completed_at": if status == "completed" { json!(now()) } else { Value::Null },
                        "pull_requests": [],
                        "output": {
                            "title": format!("{name}: {state:?}"),
                            "summary": format!("{name} is {state:?}"),
                            "text": null,
                            "annotations_count": 0,
                            "annotations_url": "https://api.github.com/repos/annotations",
                        },
                    }),
                )
            })
            .collect();
        json!({"total_count": list.len(), "check_runs": list})
    }
}

fn status_word(s: CheckState) -> &'static str {
    match s {
        CheckState::Pending => "pending",
        CheckState::Success => "success",
        CheckState::Failure => "failure",
    }
}

/// The GraphQL node id of PR `n`.
pub fn pr_node_id(n: u64) -> String {
    format!("PR_kwFAKE{n}")
}

fn git_cmd(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_AUTHOR_NAME", "GitHub")
        .env("GIT_AUTHOR_EMAIL", "noreply@github.com")
        .env("GIT_COMMITTER_NAME", "GitHub")
        .env("GIT_COMMITTER_EMAIL", "noreply@github.com")
        .output()
        .with_context(|| format!("run git {args:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?} in {}: {}{}",
        repo.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fake_sha(seed: &str) -> String {
    let a = fnv(seed.as_bytes());
    let b = fnv(format!("{seed}#").as_bytes());
    format!("{a:016x}{b:016x}{:08x}", a as u32 ^ b as u32)
}

/// The current time as GitHub writes it (`2024-01-02T03:04:05Z`).
fn now() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    hyperloop_coordinator::lock::format_utc(ms)
}
