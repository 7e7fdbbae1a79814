//! What the scripted model says: a [`Script`] is a list of [`Turn`]s, one per request of the
//! agent loop, each a list of content [`Block`]s and a [`StopReason`] (or a [`Fault`]).

use std::time::Duration;

use serde_json::{Value, json};

/// One content block of a scripted assistant message.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Plain text, streamed as `text_delta`s.
    Text(String),
    /// A tool call, streamed as `input_json_delta`s. `name` is the CLI's tool name (`Write`,
    /// `Bash`, `Edit`, `Read`, ...); `input` is the tool's argument object.
    ToolUse { name: String, input: Value },
}

impl Block {
    pub fn text(text: impl Into<String>) -> Self {
        Block::Text(text.into())
    }

    pub fn tool_use(name: impl Into<String>, input: Value) -> Self {
        Block::ToolUse {
            name: name.into(),
            input,
        }
    }

    /// `Write {file_path, content}`. The CLI's Write tool wants an absolute path.
    pub fn write_file(path: impl Into<String>, content: impl Into<String>) -> Self {
        Block::tool_use(
            "Write",
            json!({"file_path": path.into(), "content": content.into()}),
        )
    }

    /// `Bash {command, description}`. Runs in the CLI's working directory. The CLI refuses
    /// commands that begin with `sleep N`.
    pub fn bash(command: impl Into<String>) -> Self {
        let command = command.into();
        Block::tool_use(
            "Bash",
            json!({"command": command, "description": "scripted command"}),
        )
    }
}

/// Why the scripted message stops. `ToolUse` makes the CLI run the tools and send the next
/// request with their `tool_result`s; `EndTurn` ends the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::ToolUse => "tool_use",
            StopReason::MaxTokens => "max_tokens",
        }
    }
}

/// An API failure instead of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// An HTTP error status with the API's JSON error body
    /// `{"type":"error","error":{"type":error_type,"message":message}}`.
    Http {
        status: u16,
        error_type: String,
        message: String,
    },
    /// HTTP 200 and `message_start`, then an SSE `event: error` (how the API reports
    /// `overloaded_error` mid-stream), and the stream ends.
    StreamError { error_type: String, message: String },
}

/// What the server does for one request of the agent loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Reply {
        blocks: Vec<Block>,
        stop: StopReason,
    },
    Fault(Fault),
    /// Accept the request and never answer it (until the server is dropped): for timeout
    /// and cancellation tests.
    Hang,
}

/// One scripted turn: an [`Action`], optionally after a delay.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub action: Action,
    /// How long the server waits before answering.
    pub delay: Duration,
}

impl Turn {
    pub fn reply(blocks: Vec<Block>, stop: StopReason) -> Self {
        Turn {
            action: Action::Reply { blocks, stop },
            delay: Duration::ZERO,
        }
    }

    /// The given tool calls (optionally preceded by text blocks), stopping with `tool_use`.
    pub fn tools(blocks: Vec<Block>) -> Self {
        Turn::reply(blocks, StopReason::ToolUse)
    }

    /// A single tool call, stopping with `tool_use`.
    pub fn tool(block: Block) -> Self {
        Turn::tools(vec![block])
    }

    /// "Write file `path` with `content`" via the Write tool (`path` must be absolute).
    pub fn write_file(path: impl Into<String>, content: impl Into<String>) -> Self {
        Turn::tool(Block::write_file(path, content))
    }

    /// "Run `command`" via the Bash tool.
    pub fn bash(command: impl Into<String>) -> Self {
        Turn::tool(Block::bash(command))
    }

    /// Write hyperloop's result file `.hyperloop/result.md` (relative to the working
    /// directory, so the script needs no absolute path) with the given front matter and
    /// body, via the Bash tool.
    pub fn write_result(front: &ResultFront, body: &str) -> Self {
        Turn::bash(write_result_command(&front.render(body)))
    }

    /// Say `text` and end the session.
    pub fn done(text: impl Into<String>) -> Self {
        Turn::reply(vec![Block::Text(text.into())], StopReason::EndTurn)
    }

    pub fn fault(fault: Fault) -> Self {
        Turn {
            action: Action::Fault(fault),
            delay: Duration::ZERO,
        }
    }

    /// HTTP 500 with an `api_error` body.
    pub fn http_500() -> Self {
        Turn::fault(Fault::Http {
            status: 500,
            error_type: "api_error".into(),
            message: "scripted internal server error".into(),
        })
    }

    /// HTTP 529 with an `overloaded_error` body (what the API sends when overloaded).
    pub fn overloaded() -> Self {
        Turn::fault(Fault::Http {
            status: 529,
            error_type: "overloaded_error".into(),
            message: "Overloaded".into(),
        })
    }

    /// HTTP 200, then an `overloaded_error` SSE `error` event mid-stream.
    pub fn overloaded_in_stream() -> Self {
        Turn::fault(Fault::StreamError {
            error_type: "overloaded_error".into(),
            message: "Overloaded".into(),
        })
    }

    pub fn hang() -> Self {
        Turn {
            action: Action::Hang,
            delay: Duration::ZERO,
        }
    }

    /// Answer only after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// The front matter of a hyperloop result file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultFront {
    /// `task-007`, `intake` or `process-improvement`.
    pub task_id: String,
    pub round: u32,
    pub role: String,
    /// `pass` or `fail`.
    pub verdict: String,
}

impl ResultFront {
    pub fn new(
        task_id: impl Into<String>,
        round: u32,
        role: impl Into<String>,
        verdict: impl Into<String>,
    ) -> Self {
        ResultFront {
            task_id: task_id.into(),
            round,
            role: role.into(),
            verdict: verdict.into(),
        }
    }

    /// The whole file: front matter, then `body`.
    pub fn render(&self, body: &str) -> String {
        let mut s = format!(
            "---\ntask_id: {}\nround: {}\nrole: {}\nverdict: {}\n---\n{body}",
            self.task_id, self.round, self.role, self.verdict
        );
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    }
}

/// A shell command writing `content` to `.hyperloop/result.md` byte for byte (a quoted
/// heredoc with a delimiter that does not occur in `content`).
pub fn write_result_command(content: &str) -> String {
    let mut delimiter = String::from("HYPERLOOP_RESULT_EOF");
    while content.contains(&delimiter) {
        delimiter.push('_');
    }
    let content = content.strip_suffix('\n').unwrap_or(content);
    format!(
        "mkdir -p .hyperloop && cat > .hyperloop/result.md <<'{delimiter}'\n{content}\n{delimiter}"
    )
}

/// The turns of one agent session, answered in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    pub turns: Vec<Turn>,
}

impl Script {
    pub fn new() -> Self {
        Script::default()
    }

    pub fn turn(mut self, turn: Turn) -> Self {
        self.turns.push(turn);
        self
    }

    pub fn write_file(self, path: impl Into<String>, content: impl Into<String>) -> Self {
        self.turn(Turn::write_file(path, content))
    }

    pub fn bash(self, command: impl Into<String>) -> Self {
        self.turn(Turn::bash(command))
    }

    /// `git add -A && git commit` with `message` (trailers included, e.g.
    /// `"Add x\n\nSpec-Ref: specs/a.md@abc\nTask-Ref: task-007"`), via the Bash tool.
    pub fn commit_all(self, message: &str) -> Self {
        self.bash(format!(
            "git add -A && git commit -q -F - <<'HYPERLOOP_MSG_EOF'\n{message}\nHYPERLOOP_MSG_EOF"
        ))
    }

    pub fn write_result(self, front: &ResultFront, body: &str) -> Self {
        self.turn(Turn::write_result(front, body))
    }

    pub fn done(self, text: impl Into<String>) -> Self {
        self.turn(Turn::done(text))
    }
}
