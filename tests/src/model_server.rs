//! A scripted stand-in for the Anthropic Messages API, for running the real Claude Code CLI
//! offline.
//!
//! # Scripting an agent session
//!
//! ```no_run
//! use hyperloop_tests::model_server::{ClaudeSession, ModelServer, ResultFront, Script, claude_bin};
//! let server = ModelServer::start()?;
//! server.set_script(
//!     "agent-7", // the path prefix of this agent's ANTHROPIC_BASE_URL
//!     Script::new()
//!         .write_file("/abs/worktree/src/a.txt", "content\n") // Write tool
//!         .commit_all("Add a\n\nSpec-Ref: specs/a.md@abc\nTask-Ref: task-007") // Bash tool
//!         .write_result(&ResultFront::new("task-007", 1, "implementer", "pass"), "body\n")
//!         .done("finished"), // text, stop_reason end_turn
//! );
//! // Give the agent `ANTHROPIC_BASE_URL=server.base_url("agent-7")` (see `offline_env`),
//! // or run the CLI directly:
//! let run = ClaudeSession::new(claude_bin()?, "/abs/worktree", server.base_url("agent-7"),
//!     "/tmp/state", "the prompt").run()?;
//! assert!(run.succeeded() && server.problems().is_empty());
//! let requests = server.messages("agent-7"); // bodies: prompt text, tool results, ...
//! # anyhow::Ok(())
//! ```
//!
//! A [`Script`] is a list of [`Turn`]s; a turn is a list of [`Block`]s (text or a tool call)
//! with a [`StopReason`], an API [`Fault`], or a hang, optionally after a delay. The turn
//! answered is chosen from the request itself: the number of `assistant` messages in its
//! history. So a retried request gets the same turn again, and the script needs no counter.
//! A request with no script, or past the script's end, is answered with HTTP 500 and listed
//! in [`ModelServer::problems`].
//!
//! # Protocol facts, verified against claude 2.1.330 (`tests/tests/claude_cli.rs`)
//!
//! What the CLI sends, with the environment of [`offline_env`]:
//! - Only `POST {base}/v1/messages?beta=true`, one per turn: no probes, no
//!   `count_tokens`, no telemetry (other paths are still answered and recorded, see
//!   [`ModelServer::other_requests`]). A path prefix in `ANTHROPIC_BASE_URL` is kept.
//! - Headers: `x-api-key` (the `ANTHROPIC_API_KEY`), `anthropic-version: 2023-06-01`, a
//!   long `anthropic-beta` list, `x-claude-code-session-id`, `user-agent:
//!   claude-cli/<version> (external, sdk-cli)`, `x-stainless-timeout: 600` (it waits up to
//!   10 minutes for an answer: a hanging server hangs the CLI, the caller must time out).
//! - Body: `model` (default `claude-opus-5-5` when `--model` is not given), `max_tokens:
//!   128000`, `stream: true`, `system` (three text blocks), `tools` (Agent, Bash, Edit,
//!   Read, Write, ... 12 of them), `thinking: {type: adaptive}`, `metadata`,
//!   `context_management`, `output_config`.
//! - `messages` starts with one `user` message of three text blocks: a `<system-reminder>`
//!   with the git status, one with commit attribution guidance (it asks the model to add a
//!   `Co-Authored-By: Claude` trailer, which a scripted commit of course does not), then
//!   the prompt from stdin verbatim. Then a **`role: "system"`** message (not the public
//!   API's shape) holding the environment section with the working directory.
//! - Each later request repeats the history: the assistant message as one message with all
//!   its blocks (text and tool_use merged back), then a `user` message of `tool_result`
//!   blocks (`tool_use_id`, `content` string, `is_error` for Bash).
//!
//! What it needs back:
//! - `200`, `content-type: text/event-stream`, events `message_start` (message with empty
//!   `content`, `usage.input_tokens`), per block `content_block_start` /
//!   `content_block_delta`* / `content_block_stop`, then `message_delta` (`stop_reason`,
//!   `usage.output_tokens`) and `message_stop`. Text arrives as `text_delta`s; a tool call
//!   as a `tool_use` start with `input: {}` and the input JSON split over
//!   `input_json_delta`s (input in the start event is ignored). `ping` events are fine.
//! - `stop_reason: tool_use` makes it run every tool_use block and send the next request;
//!   `end_turn` ends the session, and the last text becomes the `result` line's `result`.
//! - Tool ids must match `[a-zA-Z0-9_-]+`; `Write` accepts absolute and relative paths
//!   (relative to the cwd); Bash runs in the cwd with the `PATH` it was given.
//! - The reported usage drives `total_cost_usd` (100 input tokens a turn, list price of the
//!   requested model); `num_turns` counts requests. `--model M` is sent as `model`.
//! - `--max-turns N` with a longer script: N requests, then exit 1 with `is_error: true`
//!   and `errors: ["Reached maximum number of turns (N)"]`.
//!
//! Errors (with `CLAUDE_CODE_MAX_RETRIES=0`):
//! - HTTP 500 `api_error` or 529 `overloaded_error`: exactly one request, then exit 1 within
//!   about a second, with a result line `is_error: true`, `subtype: "success"` (!),
//!   `terminal_reason: "api_error"`, `api_error_status`, `api_error_type` and `result:
//!   "API Error: 500 <message> ..."`.
//! - An `error` event mid-stream: the CLI retries the same turn once WITHOUT streaming
//!   (`stream` false, `max_tokens: 64000`); this server then answers with the error's HTTP
//!   status (529 for `overloaded_error`), and the CLI exits 1 as above. A non-streaming
//!   request for a reply turn gets the message as one JSON object.
//! - HTTP 400 `invalid_request_error` is retried regardless of MAX_RETRIES: the CLI drops
//!   beta headers one by one, then re-sends with all tools inline (21 instead of 12): six
//!   requests for one turn. Hence this server's own complaints use 500.

mod claude;
mod script;
mod sse;

pub use claude::{ClaudeRun, ClaudeSession, INSTALL_HINT, claude_bin, claude_version, offline_env};
pub use script::{
    Action, Block, Fault, ResultFront, Script, StopReason, Turn, write_result_command,
};
pub use sse::INPUT_TOKENS;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::Value;

/// One request the server received, whatever its path.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The path prefix before `/v1/` without its leading slash (`agent-7`); empty when the
    /// base URL had no path.
    pub agent: String,
    pub method: String,
    /// The full path, e.g. `/agent-7/v1/messages`.
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy UTF-8).
    pub body_text: String,
    /// The body parsed as JSON, if it was JSON.
    pub body: Option<Value>,
    /// For `POST /v1/messages`: the index of the scripted turn it was answered with.
    pub turn: Option<usize>,
}

/// A `tool_result` block sent back by the CLI.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub tool_use_id: String,
    /// The result's text (text blocks joined with newlines when it is a list).
    pub content: String,
    pub is_error: bool,
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

impl Recorded {
    /// Whether this is a Messages API call (`POST .../v1/messages`).
    pub fn is_messages(&self) -> bool {
        self.method == "POST" && self.path.ends_with("/v1/messages")
    }

    fn messages(&self) -> &[Value] {
        self.body
            .as_ref()
            .and_then(|b| b["messages"].as_array())
            .map_or(&[], Vec::as_slice)
    }

    /// The `model` the CLI asked for.
    pub fn model(&self) -> Option<&str> {
        self.body.as_ref()?["model"].as_str()
    }

    /// The system prompt's text: the top-level `system` blocks, then the `role: "system"`
    /// entries inside `messages` (the CLI puts its environment section, with the working
    /// directory, there).
    pub fn system_text(&self) -> String {
        let mut parts: Vec<String> = self
            .body
            .as_ref()
            .map(|b| text_of(&b["system"]))
            .into_iter()
            .collect();
        parts.extend(
            self.messages()
                .iter()
                .filter(|m| m["role"] == "system")
                .map(|m| text_of(&m["content"])),
        );
        parts.join("\n")
    }

    /// All text the user side sent: string contents and text blocks of `user` messages.
    pub fn user_text(&self) -> String {
        self.messages()
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| text_of(&m["content"]))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The names of the tools the CLI offered.
    pub fn tool_names(&self) -> Vec<String> {
        self.body
            .as_ref()
            .and_then(|b| b["tools"].as_array())
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every `tool_result` block in the conversation, in order.
    pub fn tool_results(&self) -> Vec<ToolResult> {
        let mut out = Vec::new();
        for message in self.messages().iter().filter(|m| m["role"] == "user") {
            let Some(blocks) = message["content"].as_array() else {
                continue;
            };
            for block in blocks.iter().filter(|b| b["type"] == "tool_result") {
                out.push(ToolResult {
                    tool_use_id: block["tool_use_id"].as_str().unwrap_or("").to_owned(),
                    content: text_of(&block["content"]),
                    is_error: block["is_error"].as_bool().unwrap_or(false),
                });
            }
        }
        out
    }

    /// How many assistant messages the conversation holds: the number of turns already
    /// answered, so the index of the turn this request asks for.
    pub fn assistant_turns(&self) -> usize {
        self.messages()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .count()
    }
}

#[derive(Default)]
struct Shared {
    scripts: HashMap<String, Script>,
    requests: Vec<Recorded>,
    /// Requests the scripts could not answer (no script, script exhausted, bad body).
    problems: Vec<String>,
    next_id: u64,
}

type SharedState = Arc<Mutex<Shared>>;

fn lock(state: &SharedState) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock only ever happens in a failing test; keep recording.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The scripted model server. Runs on its own thread and runtime, so it works from plain
/// `#[test]`s and async tests alike; dropping it stops the server (hanging requests too).
pub struct ModelServer {
    addr: SocketAddr,
    state: SharedState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ModelServer {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = SharedState::default();
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("build the model server's runtime")?;
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let thread = std::thread::Builder::new()
            .name(format!("model-server-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("model server: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        r = axum::serve(listener, app) => {
                            if let Err(e) = r {
                                eprintln!("model server: {e}");
                            }
                        }
                        _ = shutdown_rx => {}
                    }
                });
                // Dropping the runtime cancels connection tasks, including hanging ones.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .context("spawn the model server thread")?;
        Ok(ModelServer {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ANTHROPIC_BASE_URL` for `agent`: `http://127.0.0.1:PORT/agent`; with an empty
    /// `agent`, just `http://127.0.0.1:PORT`.
    pub fn base_url(&self, agent: &str) -> String {
        let agent = agent.trim_matches('/');
        if agent.is_empty() {
            format!("http://{}", self.addr)
        } else {
            format!("http://{}/{agent}", self.addr)
        }
    }

    /// Sets (or replaces) the script of `agent` (the path prefix of its base URL).
    pub fn set_script(&self, agent: &str, script: Script) {
        lock(&self.state)
            .scripts
            .insert(agent.trim_matches('/').to_owned(), script);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// The `POST /v1/messages` requests of `agent`, in arrival order.
    pub fn messages(&self, agent: &str) -> Vec<Recorded> {
        let agent = agent.trim_matches('/');
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.agent == agent && r.is_messages())
            .cloned()
            .collect()
    }

    /// Requests other than `POST /v1/messages` (probes, token counting, ...).
    pub fn other_requests(&self) -> Vec<Recorded> {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| !r.is_messages())
            .cloned()
            .collect()
    }

    /// Requests the scripts could not answer: no script for the agent, the script ran out
    /// of turns, or the body was not a Messages request. A passing test expects none.
    pub fn problems(&self) -> Vec<String> {
        lock(&self.state).problems.clone()
    }

    /// Waits until `agent` has sent at least `n` Messages requests; false on timeout.
    pub fn wait_for_messages(&self, agent: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.messages(agent).len() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A readable log of everything received, for failure messages.
    pub fn dump(&self) -> String {
        let state = lock(&self.state);
        let mut out = String::new();
        for r in &state.requests {
            out.push_str(&format!(
                "{} {}{} agent={:?} turn={:?} body={}B\n",
                r.method,
                r.path,
                r.query
                    .as_deref()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default(),
                r.agent,
                r.turn,
                r.body_text.len()
            ));
        }
        for p in &state.problems {
            out.push_str(&format!("PROBLEM: {p}\n"));
        }
        out
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Splits `/agent-7/v1/messages` into (`agent-7`, `/v1/messages`).
fn split_path(path: &str) -> (&str, &str) {
    match path.find("/v1/") {
        Some(i) => (path[..i].trim_matches('/'), &path[i..]),
        None => ("", path),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("request-id", "req_scripted")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn sse_response(body: String) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("request-id", "req_scripted")
        .body(Body::from(body))
        .unwrap_or_default()
}

async fn handle(
    State(state): State<SharedState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let (agent, endpoint) = split_path(&path);
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let recorded = Recorded {
        agent: agent.to_owned(),
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body: serde_json::from_str(&body_text).ok(),
        body_text,
        turn: None,
    };

    if method == Method::POST && endpoint == "/v1/messages" {
        return messages(&state, recorded).await;
    }
    let response = if method == Method::POST && endpoint == "/v1/messages/count_tokens" {
        // A rough count (4 bytes a token) is all the CLI uses it for.
        let tokens = recorded.body_text.len() / 4 + 1;
        json_response(StatusCode::OK, &serde_json::json!({"input_tokens": tokens}))
    } else if method == Method::HEAD || method == Method::GET {
        json_response(StatusCode::OK, &serde_json::json!({}))
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            &sse::error_body("not_found_error", &format!("no route {method} {path}")),
        )
    };
    lock(&state).requests.push(recorded);
    response
}

/// Answers a Messages request with the agent's scripted turn.
async fn messages(state: &SharedState, mut recorded: Recorded) -> Response {
    let model = recorded.model().unwrap_or("claude-scripted").to_owned();
    let turn_index = recorded.assistant_turns();
    recorded.turn = Some(turn_index);
    // The CLI streams; after a broken stream it retries the turn without streaming.
    let streaming = recorded.body.as_ref().map(|b| &b["stream"]) == Some(&Value::Bool(true));
    let (turn, message_id, problem) = {
        let mut s = lock(state);
        s.next_id += 1;
        let message_id = format!("msg_scripted_{:06}", s.next_id);
        let turn = s
            .scripts
            .get(&recorded.agent)
            .and_then(|script| script.turns.get(turn_index))
            .cloned();
        let problem = if recorded.body.is_none() {
            Some(format!("{}: body is not JSON", recorded.path))
        } else if !s.scripts.contains_key(&recorded.agent) {
            Some(format!("no script for agent {:?}", recorded.agent))
        } else if turn.is_none() {
            Some(format!(
                "agent {:?}: script has no turn {turn_index}",
                recorded.agent
            ))
        } else {
            None
        };
        if let Some(p) = &problem {
            s.problems.push(p.clone());
        }
        s.requests.push(recorded.clone());
        (turn, message_id, problem)
    };
    if let Some(problem) = problem {
        // 500, not 400: the CLI answers a 400 by retrying with beta features stripped.
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &sse::error_body("api_error", &format!("model server: {problem}")),
        );
    }
    let Some(turn) = turn else {
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, &Value::Null);
    };
    if !turn.delay.is_zero() {
        tokio::time::sleep(turn.delay).await;
    }
    let tool_id = |index: usize| format!("toolu_{message_id}_{index}");
    match turn.action {
        Action::Reply { blocks, stop } if streaming => {
            sse_response(sse::message(&message_id, &model, &blocks, stop, tool_id))
        }
        Action::Reply { blocks, stop } => json_response(
            StatusCode::OK,
            &sse::message_json(&message_id, &model, &blocks, stop, tool_id),
        ),
        Action::Fault(Fault::Http {
            status,
            error_type,
            message,
        }) => json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &sse::error_body(&error_type, &message),
        ),
        Action::Fault(Fault::StreamError {
            error_type,
            message,
        }) if streaming => sse_response(sse::stream_error(
            &message_id,
            &model,
            &error_type,
            &message,
        )),
        // The non-streaming retry of a turn whose stream broke fails too, the way the API
        // reports that error outside a stream.
        Action::Fault(Fault::StreamError {
            error_type,
            message,
        }) => json_response(
            sse::error_status(&error_type),
            &sse::error_body(&error_type, &message),
        ),
        Action::Hang => {
            std::future::pending::<()>().await;
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &Value::Null)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    /// One HTTP/1.1 request over a plain socket; returns (status line, body).
    fn http(server: &ModelServer, method: &str, path: &str, body: &str) -> (String, String) {
        let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("head");
        (
            head.lines().next().unwrap_or("").to_owned(),
            body.to_owned(),
        )
    }

    fn request(stream: bool, assistant_turns: usize) -> String {
        let mut messages = vec![serde_json::json!({"role": "user", "content": "hi"})];
        for _ in 0..assistant_turns {
            messages.push(serde_json::json!({"role": "assistant", "content": [{"type": "text", "text": "x"}]}));
            messages.push(serde_json::json!({"role": "user", "content": "more"}));
        }
        serde_json::json!({"model": "m", "stream": stream, "messages": messages}).to_string()
    }

    fn script() -> Script {
        Script::new()
            .turn(Turn::tools(vec![
                Block::text("a long enough text to be split into more than one delta event"),
                Block::bash("echo hi"),
            ]))
            .done("bye")
    }

    #[test]
    fn streams_the_event_sequence_and_picks_the_turn_from_the_history() {
        let server = ModelServer::start().expect("start");
        server.set_script("a", script());
        let (status, body) = http(
            &server,
            "POST",
            "/a/v1/messages?beta=true",
            &request(true, 0),
        );
        assert!(status.contains("200"), "{status}");
        let events: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            events,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let data: Vec<Value> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect();
        assert_eq!(data[6]["content_block"]["input"], serde_json::json!({}));
        let partial: String = data[7..9]
            .iter()
            .map(|d| d["delta"]["partial_json"].as_str().expect("partial_json"))
            .collect();
        let input: Value = serde_json::from_str(&partial).expect("input");
        assert_eq!(input["command"], "echo hi");
        assert_eq!(data[10]["delta"]["stop_reason"], "tool_use");

        let (_, body) = http(
            &server,
            "POST",
            "/a/v1/messages?beta=true",
            &request(true, 1),
        );
        assert!(body.contains(r#""stop_reason":"end_turn""#), "{body}");
        assert_eq!(
            server
                .messages("a")
                .iter()
                .map(|r| r.turn)
                .collect::<Vec<_>>(),
            [Some(0), Some(1)]
        );
        assert!(server.problems().is_empty());
    }

    #[test]
    fn answers_without_streaming_when_asked() {
        let server = ModelServer::start().expect("start");
        server.set_script("", script());
        let (status, body) = http(&server, "POST", "/v1/messages", &request(false, 0));
        assert!(status.contains("200"), "{status}");
        let message: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(message["content"][1]["input"]["command"], "echo hi");
        assert_eq!(server.messages("")[0].agent, "");
    }

    #[test]
    fn logs_probes_and_counts_tokens_and_reports_unscripted_requests() {
        let server = ModelServer::start().expect("start");
        let (status, _) = http(&server, "HEAD", "/x", "");
        assert!(status.contains("200"), "{status}");
        let (status, body) = http(&server, "POST", "/b/v1/messages/count_tokens", "{}");
        assert!(
            status.contains("200") && body.contains("input_tokens"),
            "{body}"
        );
        let (status, body) = http(&server, "POST", "/c/v1/messages", &request(true, 0));
        assert!(
            status.contains("500") && body.contains("no script"),
            "{body}"
        );
        assert_eq!(server.other_requests().len(), 2);
        assert_eq!(server.problems(), [r#"no script for agent "c""#]);
    }
}
