//! The GitHub forge adapter against a small scripted HTTP server: each test answers GitHub's
//! REST paths with bodies shaped like GitHub's (the full schema-validating fake GitHub lives in
//! the e2e tests crate), and checks what the adapter sent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode, Uri};
use hyperloop_coordinator::adapters::forge_gates::ForgeGates;
use hyperloop_coordinator::adapters::github::{GitHubConfig, GitHubForge, RetryPolicy};
use hyperloop_coordinator::ports::forge::{
    CommentMarker, CommentOutcome, EnsuredPr, Forge, ForgeError, GateStatus, MergeOutcome,
    MergeRequest, NEEDS_APPROVAL_LABEL, PrNumber, PrRequest, PrState, task_labels,
};
use hyperloop_coordinator::ports::gate::{GateError, GateTarget, evaluate_gate};
use hyperloop_shared::config::{MergeStrategy, Secret};
use hyperloop_shared::model::{SpecPath, TaskId};
use hyperloop_shared::pipeline::{GateDef, GateKind};
use serde_json::{Value, json};

const HEAD: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";
const OLD: &str = "e5bd3914e2e596debea16f433f57875b5b90bcd6";

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// Path and query.
    uri: String,
    headers: HeaderMap,
    body: Value,
}

type Handler =
    dyn Fn(&Seen, usize) -> (StatusCode, Vec<(&'static str, String)>, Value) + Send + Sync;

struct Server {
    seen: Mutex<Vec<Seen>>,
    handler: Box<Handler>,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, method: &Method, prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.uri.starts_with(prefix))
            .count()
    }
}

async fn answer(
    State(server): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        method,
        uri: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let nth = {
        let mut log = server.seen.lock().unwrap();
        log.push(seen.clone());
        log.iter()
            .filter(|s| s.method == seen.method && s.uri == seen.uri)
            .count()
    };
    let (status, extra, body) = (server.handler)(&seen, nth);
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-github-media-type", "github.v3; format=json");
    for (k, v) in extra {
        response = response.header(k, v);
    }
    let text = if status == StatusCode::NOT_MODIFIED || body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    response.body(axum::body::Body::from(text)).unwrap()
}

type Answer = (StatusCode, Vec<(&'static str, String)>, Value);

/// Starts a server answering with `handler(request, nth time this method+URI was asked)`.
async fn serve(
    handler: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static,
) -> (Arc<Server>, GitHubForge) {
    serve_at("", handler).await
}

/// [`serve`] with the API under `base_path` (GitHub Enterprise Server: `/api/v3`).
async fn serve_at(
    base_path: &str,
    handler: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static,
) -> (Arc<Server>, GitHubForge) {
    let server = Arc::new(Server {
        seen: Mutex::new(Vec::new()),
        handler: Box::new(handler),
    });
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut config = GitHubConfig::new("octo-org/hello-world", Secret::new("ghp_testtoken"));
    config.api_url = Some(format!("http://{addr}{base_path}"));
    config.retry = RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(10),
        max_inline_wait: Duration::from_secs(2),
        secondary_wait: Duration::from_secs(60),
    };
    (server, GitHubForge::new(config).unwrap())
}

fn ok(body: Value) -> (StatusCode, Vec<(&'static str, String)>, Value) {
    (StatusCode::OK, vec![], body)
}

fn error(status: StatusCode, message: &str) -> (StatusCode, Vec<(&'static str, String)>, Value) {
    (
        status,
        vec![],
        json!({
            "message": message,
            "documentation_url": "https://docs.github.com/rest",
            "status": status.as_u16().to_string(),
        }),
    )
}

fn user(login: &str) -> Value {
    json!({
        "login": login, "id": 1, "node_id": "MDQ6VXNlcjE=", "type": "User", "site_admin": false,
        "avatar_url": "https://github.com/images/error/octocat_happy.gif",
        "url": format!("https://api.github.com/users/{login}"),
        "html_url": format!("https://github.com/{login}"),
    })
}

fn label(name: &str) -> Value {
    json!({
        "id": 208045946, "node_id": "MDU6TGFiZWwyMDgwNDU5NDY=",
        "url": format!("https://api.github.com/repos/octo-org/hello-world/labels/{name}"),
        "name": name, "description": null, "color": "f29513", "default": false,
    })
}

struct PrFields<'a> {
    number: u64,
    head: &'a str,
    state: &'a str,
    draft: bool,
    merged: bool,
    mergeable: Option<bool>,
    mergeable_state: &'a str,
    labels: &'a [&'a str],
}

impl Default for PrFields<'_> {
    fn default() -> Self {
        PrFields {
            number: 7,
            head: "hyperloop/task-001",
            state: "open",
            draft: true,
            merged: false,
            mergeable: Some(true),
            mergeable_state: "clean",
            labels: &[],
        }
    }
}

/// A pull request shaped like GitHub's `GET /repos/{owner}/{repo}/pulls/{number}`.
fn pr(f: PrFields<'_>) -> Value {
    let n = f.number;
    let branch = |name: &str, sha: &str| {
        json!({
            "label": format!("octo-org:{name}"), "ref": name, "sha": sha,
            "user": user("octo-org"),
            "repo": { "id": 1296269, "name": "hello-world", "full_name": "octo-org/hello-world" },
        })
    };
    json!({
        "url": format!("https://api.github.com/repos/octo-org/hello-world/pulls/{n}"),
        "id": 1000 + n, "node_id": format!("PR_kwDOAB{n}"),
        "html_url": format!("https://github.com/octo-org/hello-world/pull/{n}"),
        "number": n, "state": f.state, "locked": false,
        "title": "task-001: add login form", "user": user("hyperloop-bot"),
        "body": "Implements specs/auth.md", "labels": f.labels.iter().map(|l| label(l)).collect::<Vec<_>>(),
        "created_at": "2026-11-02T10:00:00Z", "updated_at": "2026-11-02T10:05:00Z",
        "closed_at": if f.state == "closed" { json!("2026-11-02T11:00:00Z") } else { Value::Null },
        "merged_at": if f.merged { json!("2026-11-02T11:00:00Z") } else { Value::Null },
        "merge_commit_sha": "e5bd3914e2e596debea16f433f57875b5b90bcd6",
        "head": branch(f.head, HEAD), "base": branch("main", OLD),
        "draft": f.draft, "merged": f.merged, "mergeable": f.mergeable,
        "mergeable_state": f.mergeable_state, "comments": 0, "commits": 1,
        "additions": 10, "deletions": 2, "changed_files": 1,
    })
}

fn comment(id: u64, login: &str, body: &str) -> Value {
    json!({
        "id": id, "node_id": "MDEyOklzc3VlQ29tbWVudDE=",
        "url": format!("https://api.github.com/repos/octo-org/hello-world/issues/comments/{id}"),
        "html_url": format!("https://github.com/octo-org/hello-world/pull/7#issuecomment-{id}"),
        "body": body, "user": user(login),
        "created_at": format!("2026-11-02T10:{:02}:00Z", id % 60),
        "updated_at": "2026-11-02T10:30:00Z", "author_association": "MEMBER",
    })
}

const PULL7: &str = "/repos/octo-org/hello-world/pulls/7";

fn request() -> PrRequest {
    let spec = SpecPath::parse("specs/auth.md").unwrap();
    PrRequest {
        head: "hyperloop/task-001".into(),
        base: "main".into(),
        title: "task-001: add login form".into(),
        body: "Implements [specs/auth.md](https://github.com/octo-org/hello-world/blob/abc/specs/auth.md) for task-001".into(),
        labels: task_labels(TaskId(1), Some(&spec)),
        draft: true,
    }
}

#[tokio::test]
async fn an_existing_pull_request_is_found_by_its_head_branch_and_none_is_opened() {
    let (server, forge) = serve(|s, _| match (s.method.as_str(), s.uri.as_str()) {
        ("GET", u) if u.starts_with("/repos/octo-org/hello-world/pulls?") => {
            ok(json!([pr(PrFields {
                mergeable: None,
                mergeable_state: "unknown",
                ..Default::default()
            })]))
        }
        ("GET", PULL7) => ok(pr(PrFields {
            labels: &["hyperloop/task-001", "hyperloop/spec:specs/auth.md"],
            ..Default::default()
        })),
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    })
    .await;
    let found = forge.ensure_pr(&request()).await.unwrap();
    assert!(matches!(found, EnsuredPr::Found(_)), "{found:?}");
    assert_eq!(found.snapshot().number, PrNumber(7));
    assert!(found.snapshot().draft);
    let list = &server.seen()[0];
    assert!(
        list.uri.contains("head=octo-org%3Ahyperloop%2Ftask-001") && list.uri.contains("state=all"),
        "{}",
        list.uri
    );
    assert_eq!(server.count(&Method::POST, "/"), 0, "{:?}", server.seen());
}

#[tokio::test]
async fn a_pull_request_is_opened_once_as_a_labelled_draft() {
    let opened = Arc::new(Mutex::new(false));
    let o = opened.clone();
    let (server, forge) = serve(move |s, _| {
        let is_open = *o.lock().unwrap();
        match (s.method.as_str(), s.uri.as_str()) {
            ("GET", u) if u.starts_with("/repos/octo-org/hello-world/pulls?") => ok(if is_open {
                json!([pr(PrFields::default())])
            } else {
                json!([])
            }),
            ("POST", "/repos/octo-org/hello-world/pulls") => {
                *o.lock().unwrap() = true;
                (StatusCode::CREATED, vec![], pr(PrFields::default()))
            }
            ("GET", PULL7) => ok(pr(PrFields::default())),
            ("POST", "/repos/octo-org/hello-world/issues/7/labels") => ok(json!(
                s.body["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| label(l.as_str().unwrap()))
                    .collect::<Vec<_>>()
            )),
            _ => error(StatusCode::NOT_FOUND, "Not Found"),
        }
    })
    .await;
    let first = forge.ensure_pr(&request()).await.unwrap();
    assert!(matches!(first, EnsuredPr::Opened(_)), "{first:?}");
    assert_eq!(
        first.snapshot().labels,
        ["hyperloop/task-001", "hyperloop/spec:specs/auth.md"]
    );
    let create = server
        .seen()
        .into_iter()
        .find(|s| s.method == Method::POST && s.uri.ends_with("/pulls"))
        .unwrap();
    assert_eq!(create.body["draft"], true);
    assert_eq!(create.body["head"], "hyperloop/task-001");
    assert_eq!(create.body["base"], "main");
    assert_eq!(create.body["title"], "task-001: add login form");
    assert!(
        create.body["body"]
            .as_str()
            .unwrap()
            .contains("specs/auth.md")
    );
    assert!(create.headers.get("authorization").is_some());

    // A restart: the pull request is found, not opened again.
    let again = forge.ensure_pr(&request()).await.unwrap();
    assert!(matches!(again, EnsuredPr::Found(_)), "{again:?}");
    assert_eq!(
        server.count(&Method::POST, "/repos/octo-org/hello-world/pulls"),
        1
    );
}

#[tokio::test]
async fn labels_are_added_and_removed_only_as_needed() {
    let (server, forge) = serve(|s, _| match (s.method.as_str(), s.uri.as_str()) {
        ("GET", PULL7) => ok(pr(PrFields {
            labels: &["hyperloop/task-001", NEEDS_APPROVAL_LABEL],
            ..Default::default()
        })),
        ("POST", "/repos/octo-org/hello-world/issues/7/labels") => ok(json!([
            label("hyperloop/task-001"),
            label(NEEDS_APPROVAL_LABEL),
            label("lgtm")
        ])),
        ("DELETE", "/repos/octo-org/hello-world/issues/7/labels/hyperloop%2Fneeds-approval") => {
            ok(json!([label("hyperloop/task-001"), label("lgtm")]))
        }
        _ => error(StatusCode::NOT_FOUND, "Label does not exist"),
    })
    .await;
    let labels = forge
        .set_labels(
            PrNumber(7),
            &["lgtm".into(), "hyperloop/task-001".into()],
            &[NEEDS_APPROVAL_LABEL.into(), "never-there".into()],
        )
        .await
        .unwrap();
    assert_eq!(labels, ["hyperloop/task-001", "lgtm"]);
    let add = server
        .seen()
        .into_iter()
        .find(|s| s.method == Method::POST)
        .unwrap();
    assert_eq!(add.body, json!({ "labels": ["lgtm"] }));
    assert_eq!(server.count(&Method::DELETE, "/"), 1, "{:?}", server.seen());
}

#[tokio::test]
async fn comment_once_does_not_repeat_a_marked_comment() {
    let marker = CommentMarker::new(TaskId(3), "gate", "lgtm", 1);
    let existing = format!("Add the `lgtm` label.\n\n{}", marker.html());
    let (server, forge) = serve(move |s, _| match (s.method.as_str(), s.uri.as_str()) {
        ("GET", u) if u.starts_with("/repos/octo-org/hello-world/issues/7/comments?") => {
            ok(json!([
                comment(1, "alice", "Looks promising"),
                comment(2, "hyperloop-bot", &existing),
            ]))
        }
        ("POST", "/repos/octo-org/hello-world/issues/7/comments") => (
            StatusCode::CREATED,
            vec![],
            comment(3, "hyperloop-bot", s.body["body"].as_str().unwrap()),
        ),
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    })
    .await;
    let again = forge
        .comment_once(PrNumber(7), &marker, "Add the `lgtm` label.")
        .await
        .unwrap();
    assert_eq!(again, CommentOutcome::AlreadyPosted);
    assert_eq!(server.count(&Method::POST, "/"), 0);

    let next = CommentMarker::new(TaskId(3), "gate", "lgtm", 2);
    let posted = forge
        .comment_once(PrNumber(7), &next, "Add the `lgtm` label again.")
        .await
        .unwrap();
    assert_eq!(posted, CommentOutcome::Posted);
    let post = server
        .seen()
        .into_iter()
        .find(|s| s.method == Method::POST)
        .unwrap();
    assert_eq!(
        post.body["body"],
        "Add the `lgtm` label again.\n\n<!-- hyperloop:task-003:gate:lgtm:2 -->"
    );
}

fn merge_request() -> MergeRequest {
    MergeRequest {
        strategy: MergeStrategy::Squash,
        title: "task-001: add login form (#7)".into(),
        message: "Spec-Ref: specs/auth.md@abc123\nTask-Ref: task-001\n".into(),
        expected_head: Some(HEAD.into()),
    }
}

async fn merge_with(fields: PrFields<'static>) -> (Arc<Server>, MergeOutcome) {
    let body = pr(fields);
    let (server, forge) = serve(move |s, _| match (s.method.as_str(), s.uri.as_str()) {
        ("GET", PULL7) => ok(body.clone()),
        ("PUT", "/repos/octo-org/hello-world/pulls/7/merge") => ok(json!({
            "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5f",
            "merged": true,
            "message": "Pull Request successfully merged",
        })),
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    })
    .await;
    let outcome = forge.merge(PrNumber(7), &merge_request()).await.unwrap();
    (server, outcome)
}

#[tokio::test]
async fn merge_reports_behind_conflict_pending_or_merges() {
    let (_, behind) = merge_with(PrFields {
        draft: false,
        mergeable_state: "behind",
        ..Default::default()
    })
    .await;
    assert_eq!(behind, MergeOutcome::Behind);

    let (_, conflict) = merge_with(PrFields {
        draft: false,
        mergeable: Some(false),
        mergeable_state: "dirty",
        ..Default::default()
    })
    .await;
    assert_eq!(conflict, MergeOutcome::Conflict);

    let (_, unknown) = merge_with(PrFields {
        draft: false,
        mergeable: None,
        mergeable_state: "unknown",
        ..Default::default()
    })
    .await;
    assert_eq!(unknown, MergeOutcome::NotYetMergeable);

    let (_, human) = merge_with(PrFields {
        draft: false,
        state: "closed",
        merged: true,
        ..Default::default()
    })
    .await;
    assert!(
        matches!(human, MergeOutcome::AlreadyMerged { sha: Some(_) }),
        "{human:?}"
    );

    let (server, merged) = merge_with(PrFields {
        draft: false,
        ..Default::default()
    })
    .await;
    assert_eq!(
        merged,
        MergeOutcome::Merged {
            sha: "6dcb09b5b57875f334f61aebed695e2e4193db5f".into()
        }
    );
    let put = server
        .seen()
        .into_iter()
        .find(|s| s.method == Method::PUT)
        .unwrap();
    assert_eq!(put.body["merge_method"], "squash");
    assert_eq!(put.body["sha"], HEAD);
    assert!(
        put.body["commit_message"]
            .as_str()
            .unwrap()
            .contains("Task-Ref: task-001")
    );
}

#[tokio::test]
async fn a_secondary_rate_limit_is_waited_out_then_succeeds() {
    let (server, forge) = serve(|s, nth| match (s.method.as_str(), s.uri.as_str()) {
        ("GET", PULL7) if nth == 1 => (
            StatusCode::FORBIDDEN,
            vec![("retry-after", "1".to_owned())],
            json!({
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                "status": "403",
            }),
        ),
        ("GET", PULL7) => ok(pr(PrFields::default())),
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    })
    .await;
    let started = Instant::now();
    let snap = forge.pr_snapshot(PrNumber(7)).await.unwrap();
    assert_eq!(snap.state, PrState::Open);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(server.count(&Method::GET, PULL7), 2);
}

#[tokio::test]
async fn a_long_rate_limit_wait_is_a_transient_error_for_the_caller() {
    let (_, forge) = serve(|_, _| {
        (
            StatusCode::TOO_MANY_REQUESTS,
            vec![("retry-after", "120".to_owned())],
            json!({ "message": "API rate limit exceeded", "documentation_url": "https://docs.github.com/rest" }),
        )
    })
    .await;
    let err = forge.pr_snapshot(PrNumber(7)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
}

#[tokio::test]
async fn an_unchanged_pull_request_is_read_with_a_conditional_request() {
    let (server, forge) = serve(|s, _| match (s.method.as_str(), s.uri.as_str()) {
        ("GET", PULL7)
            if s.headers
                .get("if-none-match")
                .is_some_and(|v| v == "\"644b5b0155e6404a9cc4bd9d8b1ae730\"") =>
        {
            (
                StatusCode::NOT_MODIFIED,
                vec![("etag", "\"644b5b0155e6404a9cc4bd9d8b1ae730\"".to_owned())],
                Value::Null,
            )
        }
        ("GET", PULL7) => (
            StatusCode::OK,
            vec![("etag", "\"644b5b0155e6404a9cc4bd9d8b1ae730\"".to_owned())],
            pr(PrFields {
                labels: &["lgtm"],
                ..Default::default()
            }),
        ),
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    })
    .await;
    let first = forge.pr_snapshot(PrNumber(7)).await.unwrap();
    let second = forge.pr_snapshot(PrNumber(7)).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(second.labels, ["lgtm"]);
    let seen = server.seen();
    assert!(seen[0].headers.get("if-none-match").is_none());
    assert!(seen[1].headers.get("if-none-match").is_some());
}

fn gates() -> BTreeMap<String, GateDef> {
    let def = |kind| GateDef {
        kind,
        reviewers: vec![],
    };
    BTreeMap::from([
        (
            "lgtm".to_owned(),
            def(GateKind::Label {
                label: "lgtm".into(),
            }),
        ),
        ("approval".to_owned(), def(GateKind::PrApproval)),
        ("ci".to_owned(), def(GateKind::CiStatus)),
        ("human".to_owned(), def(GateKind::Manual)),
        (
            "e2e".to_owned(),
            def(GateKind::Command {
                run: vec!["make".into(), "e2e".into()],
                timeout: Duration::from_secs(60),
            }),
        ),
        (
            "everything".to_owned(),
            def(GateKind::All {
                require: vec!["lgtm".into(), "approval".into(), "ci".into()],
            }),
        ),
        (
            "reviewed".to_owned(),
            def(GateKind::All {
                require: vec!["lgtm".into(), "human".into()],
            }),
        ),
    ])
}

fn review(login: &str, state: &str, commit: &str, at: &str) -> Value {
    json!({
        "id": 80, "node_id": "MDE3OlB1bGxSZXF1ZXN0UmV2aWV3ODA=", "user": user(login),
        "body": "", "state": state, "commit_id": commit, "submitted_at": at,
        "html_url": "https://github.com/octo-org/hello-world/pull/7#pullrequestreview-80",
        "author_association": "COLLABORATOR",
    })
}

#[tokio::test]
async fn gates_read_labels_fresh_approvals_and_ci() {
    let (_, forge) = serve(|s, _| match (s.method.as_str(), s.uri.as_str()) {
        ("GET", PULL7) => ok(pr(PrFields {
            labels: &["lgtm"],
            ..Default::default()
        })),
        ("GET", u) if u.starts_with("/repos/octo-org/hello-world/pulls/7/reviews") => ok(json!([
            review("alice", "APPROVED", OLD, "2026-11-02T10:10:00Z"),
            review("bob", "APPROVED", HEAD, "2026-11-02T10:20:00Z"),
        ])),
        ("GET", u)
            if u.starts_with(&format!(
                "/repos/octo-org/hello-world/commits/{HEAD}/status"
            )) =>
        {
            ok(json!({
                "state": "failure", "sha": HEAD, "total_count": 1,
                "statuses": [{
                    "url": "https://api.github.com/repos/octo-org/hello-world/statuses/x", "id": 1,
                    "node_id": "MDY6U3RhdHVzMQ==", "state": "failure", "context": "ci/lint",
                    "description": "2 lint errors", "target_url": "https://ci.example.com/1",
                    "created_at": "2026-11-02T10:00:00Z", "updated_at": "2026-11-02T10:00:00Z",
                }],
                "repository": { "id": 1296269, "full_name": "octo-org/hello-world" },
            }))
        }
        ("GET", u)
            if u.starts_with(&format!(
                "/repos/octo-org/hello-world/commits/{HEAD}/check-runs"
            )) =>
        {
            ok(json!({
                "total_count": 1,
                "check_runs": [{
                    "id": 4, "head_sha": HEAD, "node_id": "MDg6Q2hlY2tSdW40", "name": "test",
                    "status": "in_progress", "conclusion": null,
                    "html_url": "https://github.com/octo-org/hello-world/runs/4",
                    "output": { "title": null, "summary": null },
                }],
            }))
        }
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    })
    .await;
    let gates = gates();
    let evaluator = ForgeGates::new(Arc::new(forge), None);
    let target = GateTarget {
        task: TaskId(7),
        branch: Some("hyperloop/task-007".to_owned()),
        commit: Some(HEAD.to_owned()),
        pr: Some(PrNumber(7)),
    };
    let status = |gate: &'static str| evaluate_gate(&evaluator, &gates, gate, &target);
    assert_eq!(status("lgtm").await, Ok(GateStatus::Cleared));
    assert_eq!(status("approval").await, Ok(GateStatus::Cleared));
    match status("everything").await.unwrap() {
        GateStatus::Failed { findings } => {
            assert_eq!(findings.len(), 1, "{findings:?}");
            assert!(findings[0].contains("ci/lint") && findings[0].contains("2 lint errors"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        status("reviewed").await,
        Ok(GateStatus::Waiting {
            reasons: vec![
                "gate `human` waits for a human: run `hyperloopctl approve task-007` to let it \
                 pass"
                    .to_owned()
            ]
        })
    );
    // Without the operator's --allow-command-gates there is nothing to run them with.
    let refused = status("e2e").await.unwrap_err();
    assert_eq!(
        refused,
        GateError::CommandGatesRefused {
            gate: "e2e".to_owned(),
            command: "make e2e".to_owned()
        }
    );
    assert!(
        refused.to_string().contains("--allow-command-gates"),
        "{refused}"
    );
    let no_pr = GateTarget {
        pr: None,
        ..target.clone()
    };
    let missing = evaluate_gate(&evaluator, &gates, "lgtm", &no_pr)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, GateError::NoPullRequest { .. }),
        "{missing:?}"
    );
    assert!(!missing.is_transient());
}

#[tokio::test]
async fn errors_name_the_fix() {
    let (_, forge) = serve(|s, _| match s.uri.as_str() {
        "/repos/octo-org/hello-world" => error(StatusCode::NOT_FOUND, "Not Found"),
        _ => error(StatusCode::UNAUTHORIZED, "Bad credentials"),
    })
    .await;
    let missing = forge.check_access().await.unwrap_err();
    assert!(matches!(missing, ForgeError::RepoNotFound { .. }));
    assert!(missing.to_string().contains("--repo"), "{missing}");
    let bad = forge.pr_snapshot(PrNumber(7)).await.unwrap_err();
    assert!(matches!(bad, ForgeError::BadCredentials { .. }));
    assert!(
        bad.to_string().contains("GITHUB_TOKEN or GH_TOKEN"),
        "{bad}"
    );
    assert!(!bad.to_string().contains("ghp_testtoken"));
    assert!(!bad.is_transient());
}

#[tokio::test]
async fn enterprise_server_paths_and_graphql_mark_ready() {
    let (server, forge) = serve_at("/api/v3", |s, _| {
        match (s.method.as_str(), s.uri.as_str()) {
            ("GET", "/api/v3/repos/octo-org/hello-world/pulls/7") => ok(pr(PrFields::default())),
            ("POST", "/api/graphql") => ok(json!({
                "data": { "markPullRequestReadyForReview": { "pullRequest": { "isDraft": false } } }
            })),
            _ => error(StatusCode::NOT_FOUND, "Not Found"),
        }
    })
    .await;
    forge.mark_ready(PrNumber(7)).await.unwrap();
    let mutation = server
        .seen()
        .into_iter()
        .find(|s| s.method == Method::POST)
        .expect("a GraphQL request");
    assert_eq!(mutation.uri, "/api/graphql");
    assert!(
        mutation.body["query"]
            .as_str()
            .unwrap()
            .contains("markPullRequestReadyForReview")
    );
    assert_eq!(mutation.body["variables"]["id"], "PR_kwDOAB7");
}

#[tokio::test]
async fn graphql_errors_are_reported() {
    let (_, forge) = serve(|s, _| match (s.method.as_str(), s.uri.as_str()) {
        ("GET", PULL7) => ok(pr(PrFields::default())),
        ("POST", "/graphql") => ok(json!({
            "data": { "markPullRequestReadyForReview": null },
            "errors": [{ "type": "FORBIDDEN", "path": ["markPullRequestReadyForReview"],
                         "message": "Resource not accessible by integration" }],
        })),
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    })
    .await;
    let err = forge.mark_ready(PrNumber(7)).await.unwrap_err();
    assert!(err.to_string().contains("Resource not accessible"), "{err}");
}

#[tokio::test]
async fn a_closed_pull_request_yields_its_human_feedback_in_order() {
    let (_, forge) = serve(|s, _| match (s.method.as_str(), s.uri.as_str()) {
        ("GET", u) if u.starts_with("/repos/octo-org/hello-world/issues/7/comments?") => ok(json!([
            comment(5, "hyperloop-bot", "Waiting for `lgtm`.\n\n<!-- hyperloop:task-001:gate:lgtm:1 -->"),
            comment(20, "alice", "We agreed to use the existing session store instead."),
        ])),
        ("GET", u) if u.starts_with("/repos/octo-org/hello-world/pulls/7/reviews?") => {
            let mut r = review("bob", "CHANGES_REQUESTED", HEAD, "2026-11-02T10:10:00Z");
            r["body"] = json!("This duplicates auth/session.rs.");
            ok(json!([r, review("carol", "APPROVED", OLD, "2026-11-02T10:01:00Z")]))
        }
        ("GET", u) if u.starts_with("/repos/octo-org/hello-world/pulls/7/comments?") => ok(json!([{
            "id": 10, "node_id": "MDI0OlB1bGxSZXF1ZXN0UmV2aWV3Q29tbWVudDEw",
            "pull_request_review_id": 80, "diff_hunk": "@@ -1,3 +1,4 @@", "path": "src/login.rs",
            "position": 3, "original_position": 3, "commit_id": HEAD, "original_commit_id": HEAD,
            "user": user("bob"), "body": "Plain-text passwords here.", "line": 12, "original_line": 12,
            "created_at": "2026-11-02T10:09:00Z", "updated_at": "2026-11-02T10:09:00Z",
            "html_url": "https://github.com/octo-org/hello-world/pull/7#discussion_r10",
            "author_association": "MEMBER",
        }])),
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    })
    .await;
    let feedback = forge.closed_feedback(PrNumber(7)).await.unwrap();
    let authors: Vec<&str> = feedback.iter().map(|f| f.author.as_str()).collect();
    assert_eq!(authors, ["bob", "bob", "alice"], "{feedback:?}");
    assert!(feedback.iter().all(|f| !f.body.contains("hyperloop:")));
    let snap = {
        let (_, f) = serve(|_, _| {
            ok(pr(PrFields {
                state: "closed",
                ..Default::default()
            }))
        })
        .await;
        f.pr_snapshot(PrNumber(7)).await.unwrap()
    };
    assert_eq!(snap.state, PrState::Closed);
    let finding = hyperloop_coordinator::ports::forge::feedback_finding(&snap, &feedback);
    assert!(finding.contains("on src/login.rs:12"), "{finding}");
    assert!(finding.contains("existing session store"), "{finding}");
}

#[tokio::test]
async fn update_branch_reports_conflicts_and_missing_branches_are_fine_to_delete() {
    let (server, forge) = serve(|s, _| match (s.method.as_str(), s.uri.as_str()) {
        ("PUT", "/repos/octo-org/hello-world/pulls/7/update-branch") => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "merge conflict between base and head",
        ),
        ("DELETE", "/repos/octo-org/hello-world/git/refs/heads/hyperloop/task-001") => {
            error(StatusCode::UNPROCESSABLE_ENTITY, "Reference does not exist")
        }
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    })
    .await;
    assert_eq!(
        forge.update_branch(PrNumber(7), HEAD).await.unwrap(),
        hyperloop_coordinator::ports::forge::UpdateOutcome::Conflict
    );
    let put = &server.seen()[0];
    assert_eq!(put.body["expected_head_sha"], HEAD);
    forge.delete_branch("hyperloop/task-001").await.unwrap();
}

#[tokio::test]
async fn every_call_is_counted_with_the_rate_limit_github_reports() {
    let limits = |remaining: u64, resource: &str| {
        vec![
            ("x-ratelimit-limit", "5000".to_owned()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-used", (5000 - remaining).to_string()),
            ("x-ratelimit-reset", "1700000000".to_owned()),
            ("x-ratelimit-resource", resource.to_owned()),
        ]
    };
    let (_, forge) = serve(move |s, nth| match (s.method.as_str(), s.uri.as_str()) {
        // A secondary rate limit first: the retry is a call of its own.
        ("GET", PULL7) if nth == 1 => (
            StatusCode::FORBIDDEN,
            [limits(4999, "core"), vec![("retry-after", "0".to_owned())]].concat(),
            json!({ "message": "You have exceeded a secondary rate limit.", "documentation_url": "https://docs.github.com/rest" }),
        ),
        ("GET", PULL7) if nth == 2 => (
            StatusCode::OK,
            [limits(4998, "core"), vec![("etag", "\"e1\"".to_owned())]].concat(),
            pr(PrFields {
                draft: true,
                ..Default::default()
            }),
        ),
        ("GET", PULL7) => (StatusCode::NOT_MODIFIED, limits(4998, "core"), Value::Null),
        ("POST", "/graphql") => (
            StatusCode::OK,
            limits(4990, "graphql"),
            json!({ "data": { "markPullRequestReadyForReview": { "pullRequest": { "isDraft": false } } } }),
        ),
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    })
    .await;
    let stats = forge.stats();
    assert_eq!(stats.snapshot().total_calls(), 0);
    forge.pr_snapshot(PrNumber(7)).await.unwrap();
    forge.mark_ready(PrNumber(7)).await.unwrap(); // a conditional GET, then GraphQL
    let _ = forge.pr_snapshot(PrNumber(8)).await.unwrap_err();

    let snapshot = stats.snapshot();
    let calls: Vec<(&str, &str, u64)> = snapshot
        .calls
        .iter()
        .map(|((op, class), n)| (op.as_str(), class.as_str(), *n))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET", "2xx", 1),
            ("GET", "3xx", 1),
            ("GET", "4xx", 2),
            ("graphql", "2xx", 1)
        ]
    );
    // The 404 sent no rate-limit headers: the last REST answer that did still stands.
    assert_eq!(snapshot.rate_limit_remaining(), Some(4998));
    assert_eq!(snapshot.rate_limit_limit(), Some(5000));
    assert_eq!(snapshot.core().and_then(|c| c.reset), Some(1_700_000_000));
    assert_eq!(snapshot.rate_limits["graphql"].remaining, 4990);
}
