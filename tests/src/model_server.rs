//! A scripted stand-in for the Anthropic Messages API, for running the real Claude Code CLI
//! offline.
//!
//! PROTOCOL_FACTS

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
