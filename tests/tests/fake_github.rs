//! The fake GitHub server holds itself and its clients to GitHub's published schemas.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperloop_tests::github::{CheckState, FakeGitHub, ReviewState, pr_node_id};
use serde_json::{Value, json};

struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: Value,
}

async fn call(
    method: &str,
    url: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "hyperloop-tests");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(
        body.map(|b| b.to_string()).unwrap_or_default(),
    )))?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

async fn create_pr(gh: &FakeGitHub, draft: bool) -> anyhow::Result<Reply> {
    call(
        "POST",
        &format!("{}/repos/acme/widgets/pulls", gh.base_url()),
        Some(json!({
            "title": "task-001: add widgets",
            "head": "hyperloop/task-001",
            "base": "main",
            "body": "Spec: specs/widgets.md",
            "draft": draft,
        })),
        &[],
    )
    .await
}

#[tokio::test]
async fn create_pr_round_trip_is_schema_valid() -> anyhow::Result<()> {
    let gh = FakeGitHub::start("acme/widgets")?;
    let base = gh.base_url();
    let created = create_pr(&gh, true).await?;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["draft"], true);
    let n = created.body["number"].as_u64().expect("number");

    let listed = call(
        "GET",
        &format!("{base}/repos/acme/widgets/pulls?head=acme%3Ahyperloop%2Ftask-001&state=all"),
        None,
        &[],
    )
    .await?;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body.as_array().map(Vec::len), Some(1));

    let labels = call(
        "POST",
        &format!("{base}/repos/acme/widgets/issues/{n}/labels"),
        Some(json!({"labels": ["hyperloop/needs-approval", "spec:widgets"]})),
        &[],
    )
    .await?;
    assert_eq!(labels.status, 200, "{}", labels.body);
    let removed = call(
        "DELETE",
        &format!("{base}/repos/acme/widgets/issues/{n}/labels/hyperloop%2Fneeds-approval"),
        None,
        &[],
    )
    .await?;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(gh.labels(n), vec!["spec:widgets".to_string()]);

    let comment = call(
        "POST",
        &format!("{base}/repos/acme/widgets/issues/{n}/comments"),
        Some(json!({"body": "waiting for `lgtm`"})),
        &[],
    )
    .await?;
    assert_eq!(comment.status, 201, "{}", comment.body);

    gh.submit_review(n, "alice", ReviewState::Approved, None);
    gh.add_review_comment(n, "bob", "nit: naming");
    let sha = gh.head_sha(n);
    gh.set_status(&sha, "ci/test", CheckState::Pending);
    gh.set_check_run(&sha, "build", CheckState::Success);
    for path in [
        format!("pulls/{n}"),
        format!("pulls/{n}/reviews"),
        format!("pulls/{n}/comments"),
        format!("issues/{n}/comments"),
        format!("issues/{n}/labels"),
        format!("commits/{sha}/status"),
        format!("commits/{sha}/check-runs"),
    ] {
        let r = call(
            "GET",
            &format!("{base}/repos/acme/widgets/{path}"),
            None,
            &[],
        )
        .await?;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    }
    let reviewers = call(
        "POST",
        &format!("{base}/repos/acme/widgets/pulls/{n}/requested_reviewers"),
        Some(json!({"reviewers": ["carol"]})),
        &[],
    )
    .await?;
    assert_eq!(reviewers.status, 201, "{}", reviewers.body);

    let merged = call(
        "PUT",
        &format!("{base}/repos/acme/widgets/pulls/{n}/merge"),
        Some(json!({"merge_method": "squash", "commit_title": "t", "commit_message": "Task-Ref: task-001", "sha": "0000000000000000000000000000000000000000"})),
        &[],
    )
    .await?;
    assert_eq!(merged.status, 409, "a stale sha conflicts: {}", merged.body);
    let merged = call(
        "PUT",
        &format!("{base}/repos/acme/widgets/pulls/{n}/merge"),
        Some(json!({"merge_method": "squash", "commit_title": "t", "commit_message": "Task-Ref: task-001"})),
        &[],
    )
    .await?;
    assert_eq!(merged.status, 200, "{}", merged.body);
    assert_eq!(gh.pull(n)["merged"], true);
    assert_eq!(gh.violations(), Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn schema_invalid_request_is_a_violation() -> anyhow::Result<()> {
    let gh = FakeGitHub::start("acme/widgets")?;
    let r = call(
        "POST",
        &format!("{}/repos/acme/widgets/pulls", gh.base_url()),
        Some(json!({"title": "t", "head": "h", "base": "main", "draft": "yes"})),
        &[],
    )
    .await?;
    assert_eq!(r.status, 422);
    let v = gh.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("draft"), "{v:?}");

    let r = call(
        "GET",
        &format!("{}/repos/acme/widgets/hooks", gh.base_url()),
        None,
        &[],
    )
    .await?;
    assert_eq!(r.status, 404);
    let v = gh.violations();
    assert!(
        v[1].contains("does not implement repos/list-webhooks"),
        "{v:?}"
    );
    Ok(())
}

#[tokio::test]
async fn secondary_rate_limit_then_success() -> anyhow::Result<()> {
    let gh = FakeGitHub::start("acme/widgets")?;
    gh.rate_limit_next(1, 1);
    let first = create_pr(&gh, false).await?;
    assert_eq!(first.status, 403);
    assert_eq!(
        first
            .headers
            .get("retry-after")
            .and_then(|h| h.to_str().ok()),
        Some("1")
    );
    assert!(
        first.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("secondary rate limit"))
    );
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = create_pr(&gh, false).await?;
    assert_eq!(second.status, 201, "{}", second.body);
    let reqs = gh.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].at - reqs[0].at >= started.elapsed().min(Duration::from_secs(1)));
    assert!(gh.violations().is_empty(), "{:?}", gh.violations());
    Ok(())
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header: {:?}", reply.headers))
}

/// Answers carry GitHub's primary rate-limit headers; a 304 does not spend the limit.
#[tokio::test]
async fn etag_answers_not_modified() -> anyhow::Result<()> {
    let gh = FakeGitHub::start("acme/widgets")?;
    let n = create_pr(&gh, false).await?.body["number"]
        .as_u64()
        .expect("n");
    let url = format!("{}/repos/acme/widgets/issues/{n}/labels", gh.base_url());
    let first = call("GET", &url, None, &[]).await?;
    let etag = first.headers["etag"].to_str()?.to_string();
    assert_eq!(header(&first, "x-ratelimit-limit"), "5000");
    assert_eq!(header(&first, "x-ratelimit-remaining"), "4998");
    assert_eq!(header(&first, "x-ratelimit-used"), "2");
    assert_eq!(header(&first, "x-ratelimit-resource"), "core");
    assert!(header(&first, "x-ratelimit-reset").parse::<u64>().is_ok());
    let again = call("GET", &url, None, &[("if-none-match", &etag)]).await?;
    assert_eq!(again.status, 304);
    assert_eq!(gh.conditional_hits(), 1);
    assert_eq!(header(&again, "x-ratelimit-remaining"), "4998");
    gh.add_label(n, "lgtm", "alice");
    let changed = call("GET", &url, None, &[("if-none-match", &etag)]).await?;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body[0]["name"], "lgtm");
    assert!(gh.violations().is_empty(), "{:?}", gh.violations());
    Ok(())
}

#[tokio::test]
async fn graphql_mark_ready_flips_draft() -> anyhow::Result<()> {
    let gh = FakeGitHub::start("acme/widgets")?;
    let n = create_pr(&gh, true).await?.body["number"]
        .as_u64()
        .expect("n");
    let query = "mutation($id: ID!) { markPullRequestReadyForReview(input: {pullRequestId: $id}) \
                 { pullRequest { isDraft number } } }";
    let r = call(
        "POST",
        &gh.graphql_url(),
        Some(json!({"query": query, "variables": {"id": pr_node_id(n)}})),
        &[],
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    // GraphQL has a rate limit of its own.
    assert_eq!(header(&r, "x-ratelimit-resource"), "graphql");
    assert_eq!(header(&r, "x-ratelimit-used"), "1");
    assert_eq!(
        r.body["data"]["markPullRequestReadyForReview"]["pullRequest"]["isDraft"],
        false
    );
    assert_eq!(gh.pull(n)["draft"], false);
    assert!(gh.violations().is_empty(), "{:?}", gh.violations());

    // A misspelt field is caught by the schema.
    let bad =
        "mutation { markPullRequestReady(input: {pullRequestId: \"x\"}) { clientMutationId } }";
    call("POST", &gh.graphql_url(), Some(json!({"query": bad})), &[]).await?;
    let v = gh.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("markPullRequestReady"), "{v:?}");
    Ok(())
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn merge_lands_on_the_base_branch_of_a_real_repository() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bare = tmp.path().join("origin.git");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work)?;
    git(
        tmp.path(),
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            bare.to_str().expect("utf-8"),
        ],
    );
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("a.txt"), "a\n")?;
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "init"]);
    git(&work, &["switch", "-qc", "hyperloop/task-001"]);
    std::fs::write(work.join("b.txt"), "b\n")?;
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "add b"]);
    git(
        &work,
        &[
            "push",
            "-q",
            bare.to_str().expect("utf-8"),
            "main",
            "hyperloop/task-001",
        ],
    );

    let gh = FakeGitHub::start("acme/widgets")?;
    gh.set_git_repo(&bare);
    let n = create_pr(&gh, false).await?.body["number"]
        .as_u64()
        .expect("n");
    assert_eq!(
        gh.head_sha(n),
        git(&bare, &["rev-parse", "hyperloop/task-001"])
    );
    let pr = call(
        "GET",
        &format!("{}/repos/acme/widgets/pulls/{n}", gh.base_url()),
        None,
        &[],
    )
    .await?;
    assert_eq!(pr.body["mergeable_state"], "clean", "{}", pr.body);
    let merged = call(
        "PUT",
        &format!("{}/repos/acme/widgets/pulls/{n}/merge", gh.base_url()),
        Some(json!({"merge_method": "squash", "commit_title": "Add b (#1)", "commit_message": "Task-Ref: task-001"})),
        &[],
    )
    .await?;
    assert_eq!(merged.status, 200, "{}", merged.body);
    assert_eq!(
        git(&bare, &["log", "-1", "--format=%B", "main"]),
        "Add b (#1)\n\nTask-Ref: task-001"
    );
    assert_eq!(git(&bare, &["show", "main:b.txt"]), "b");
    assert_eq!(
        git(&bare, &["rev-list", "--count", "main"]),
        "2",
        "squash: one new commit"
    );
    assert!(gh.violations().is_empty(), "{:?}", gh.violations());
    Ok(())
}
