//! The `claude` runtime: Claude Code CLI invocation and its `stream-json` output.
//!
//! The CLI prints one JSON object per line: `system` (subtype `init`, later `api_retry`),
//! `assistant` (one line per content block; blocks of one model turn share `message.id`),
//! `user` (tool results) and a final `result` with `is_error`, `subtype`, `num_turns`,
//! `total_cost_usd`, the session's `usage` (tokens) and the closing text. Success is exit 0 AND a `result` line with
//! `is_error == false`: `subtype` can say "success" after an API error, and SIGTERM ends the
//! CLI (exit 143) without any `result` line.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use hyperloop_proto::v1::{FailureCause, LogSource};
use serde_json::Value;

use super::{AgentRuntime, OutputParser};
use crate::env::AllowList;
use crate::progress::{ProgressSink, Usage, truncate};
use hyperloop_shared::step::Tokens;

/// Program run for the `claude` runtime when neither the worker options nor
/// `HYPERLOOP_CLAUDE_BIN` name one.
pub const DEFAULT_CLAUDE_BIN: &str = "claude";

/// Environment variable naming the Claude Code CLI executable on the worker host.
pub const CLAUDE_BIN_ENV: &str = "HYPERLOOP_CLAUDE_BIN";

/// The Claude Code CLI to run: `HYPERLOOP_CLAUDE_BIN` when set, else `claude` from `PATH`.
pub fn bin_from_env() -> PathBuf {
    std::env::var_os(CLAUDE_BIN_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CLAUDE_BIN), PathBuf::from)
}

/// The model-provider settings Claude Code reads from its environment: its config dir, the
/// Anthropic API and Claude Code settings (`ANTHROPIC_*` includes `ANTHROPIC_VERTEX_PROJECT_ID`
/// and the Bedrock/Vertex base URLs; `CLAUDE_CODE_*` includes `CLAUDE_CODE_USE_BEDROCK`/
/// `_USE_VERTEX`), Bedrock credentials and region (`AWS_*`), and Vertex AI's region, Google
/// credentials file and per-model regions (`VERTEX_REGION_*`).
pub const PROVIDER_ENV: AllowList = AllowList {
    names: &[
        "CLAUDE_CONFIG_DIR",
        "CLOUD_ML_REGION",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ],
    prefixes: &["ANTHROPIC_", "CLAUDE_CODE_", "AWS_", "VERTEX_REGION_"],
};

/// How much of a tool call's input or of a text block goes into one progress line.
const RENDERED_BYTES: usize = 1024;

/// Claude Code's per-step limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaudeLimits {
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub budget_usd: Option<f64>,
}

/// The CLI arguments (after the program) for one headless session; the prompt goes on stdin.
pub fn args(limits: &ClaudeLimits) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "bypassPermissions",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if let Some(model) = limits.model.as_deref().filter(|m| !m.is_empty()) {
        args.extend(["--model".into(), model.into()]);
    }
    if let Some(turns) = limits.max_turns {
        args.extend(["--max-turns".into(), turns.to_string().into()]);
    }
    if let Some(budget) = limits.budget_usd {
        args.extend(["--max-budget-usd".into(), budget.to_string().into()]);
    }
    args
}

/// The final `result` line.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalResult {
    pub is_error: bool,
    pub subtype: String,
    pub num_turns: u32,
    pub total_cost_usd: f64,
    /// The session's tokens (`usage`), when the line has them.
    pub tokens: Option<Tokens>,
    /// The session's closing text (or error message).
    pub text: String,
}

/// Running state of one session's stream.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Each model turn's tokens by message id (its content blocks repeat the same usage).
    turn_ids: HashMap<String, Tokens>,
    anonymous_turns: u32,
    /// The final `result` line, once seen.
    pub result: Option<FinalResult>,
    /// The CLI said on stderr that the budget ran out (it may stop without a `result` line).
    pub budget_exceeded: bool,
}

impl StreamState {
    /// Turns so far: the final count once known, else distinct assistant messages seen.
    pub fn turns(&self) -> u32 {
        match &self.result {
            Some(r) => r.num_turns,
            None => u32::try_from(self.turn_ids.len())
                .unwrap_or(u32::MAX)
                .saturating_add(self.anonymous_turns),
        }
    }

    /// Cost so far (Claude Code reports it only at the end).
    pub fn cost_usd(&self) -> f64 {
        self.result.as_ref().map_or(0.0, |r| r.total_cost_usd)
    }

    /// Tokens so far: the session's own total once known, else the sum over turns seen.
    pub fn tokens(&self) -> Tokens {
        if let Some(tokens) = self.result.as_ref().and_then(|r| r.tokens) {
            return tokens;
        }
        self.turn_ids
            .values()
            .fold(Tokens::default(), |sum, t| Tokens {
                input: sum.input.saturating_add(t.input),
                output: sum.output.saturating_add(t.output),
                cache_read: sum.cache_read.saturating_add(t.cache_read),
                cache_write: sum.cache_write.saturating_add(t.cache_write),
            })
    }

    /// Parses one stdout line; returns the progress lines it renders to.
    pub fn parse_line(&mut self, line: &str) -> Vec<String> {
        let line = line.trim();
        if line.is_empty() {
            return Vec::new();
        }
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            // Not stream-json (a warning printed by a wrapper script): keep it as text.
            return vec![line.to_owned()];
        };
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "system" => {
                let subtype = str_field(&value, "subtype");
                if subtype == "init" {
                    vec![format!(
                        "claude session {} started (model {})",
                        str_field(&value, "session_id"),
                        str_field(&value, "model")
                    )]
                } else {
                    vec![format!("claude: {subtype}")]
                }
            }
            "assistant" => {
                let message = value.get("message");
                match message.and_then(|m| m.get("id")).and_then(Value::as_str) {
                    Some(id) => {
                        let tokens = message.and_then(|m| m.get("usage")).map(tokens_of);
                        self.turn_ids
                            .insert(id.to_owned(), tokens.unwrap_or_default());
                    }
                    None => self.anonymous_turns = self.anonymous_turns.saturating_add(1),
                }
                let blocks = message
                    .and_then(|m| m.get("content"))
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                blocks.iter().filter_map(render_block).collect()
            }
            "user" => Vec::new(),
            "result" => {
                let result = FinalResult {
                    is_error: value
                        .get("is_error")
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                    subtype: str_field(&value, "subtype").to_owned(),
                    num_turns: value
                        .get("num_turns")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or_else(|| self.turns()),
                    total_cost_usd: value
                        .get("total_cost_usd")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0),
                    tokens: value.get("usage").map(tokens_of),
                    text: str_field(&value, "result").to_owned(),
                };
                let line = format!(
                    "claude finished: {} (is_error {}, {} turns, ${:.4})",
                    result.subtype, result.is_error, result.num_turns, result.total_cost_usd
                );
                self.result = Some(result);
                vec![line]
            }
            other => vec![format!("claude: {other} event")],
        }
    }

    /// Notes stderr lines that explain a missing `result` line.
    pub fn parse_stderr(&mut self, line: &str) {
        if line.contains("Exceeded USD budget") {
            self.budget_exceeded = true;
        }
    }

    /// Why the session failed, if it did, judged from the CLI's exit code and the stream.
    /// `None` means the CLI reports success; the result file decides the verdict then.
    pub(crate) fn failure(
        &self,
        code: i32,
        limits: &ClaudeLimits,
    ) -> Option<(FailureCause, String)> {
        let limit_hit = |r: Option<&FinalResult>| -> Option<(FailureCause, String)> {
            let subtype = r.map_or("", |r| r.subtype.as_str());
            if subtype == "error_max_turns" {
                let limit = limits
                    .max_turns
                    .map_or_else(|| "its turn limit".to_owned(), |n| format!("max_turns {n}"));
                return Some((
                    FailureCause::TurnsExhausted,
                    format!(
                        "The claude session stopped after {} turns: it reached {limit}.",
                        self.turns()
                    ),
                ));
            }
            if subtype.contains("budget") || self.budget_exceeded {
                let limit = limits
                    .budget_usd
                    .map_or_else(|| "its budget".to_owned(), |b| format!("budget_usd {b}"));
                return Some((
                    FailureCause::BudgetExhausted,
                    format!(
                        "The claude session stopped after spending ${:.4}: it reached {limit}.",
                        self.cost_usd()
                    ),
                ));
            }
            None
        };
        match &self.result {
            Some(r) if !r.is_error && code == 0 => None,
            Some(r) => limit_hit(Some(r)).or_else(|| {
                let text = truncate(r.text.trim(), RENDERED_BYTES);
                Some(if code != 0 {
                    (
                        FailureCause::NonzeroExit,
                        format!(
                            "Claude exited with status {code} (result subtype `{}`): {text}.",
                            r.subtype
                        ),
                    )
                } else {
                    // is_error with exit 0: the session could not do its work (API error,
                    // authentication, model unavailable).
                    (
                        FailureCause::RuntimeUnavailable,
                        format!(
                            "The claude session ended with an error (result subtype `{}`): {text}.",
                            r.subtype
                        ),
                    )
                })
            }),
            None => limit_hit(None).or_else(|| {
                Some(if code != 0 {
                    (
                        FailureCause::NonzeroExit,
                        format!(
                            "Claude exited with status {code} without its final `result` line."
                        ),
                    )
                } else {
                    (
                        FailureCause::RuntimeUnavailable,
                        "Claude exited 0 without printing a final stream-json `result` line; \
                         check that HYPERLOOP_CLAUDE_BIN points at the Claude Code CLI and that \
                         it supports `--output-format stream-json`."
                            .to_owned(),
                    )
                })
            }),
        }
    }
}

/// A Messages API `usage` object as tokens; missing or malformed counts are 0.
fn tokens_of(usage: &Value) -> Tokens {
    let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    Tokens {
        input: count("input_tokens"),
        output: count("output_tokens"),
        cache_read: count("cache_read_input_tokens"),
        cache_write: count("cache_creation_input_tokens"),
    }
}

fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

fn render_block(block: &Value) -> Option<String> {
    match block.get("type").and_then(Value::as_str)? {
        "text" => {
            let text = block.get("text").and_then(Value::as_str)?.trim();
            (!text.is_empty()).then(|| truncate(text, RENDERED_BYTES).to_owned())
        }
        "tool_use" => {
            let name = block.get("name").and_then(Value::as_str).unwrap_or("?");
            let input = block.get("input").map(Value::to_string).unwrap_or_default();
            Some(format!("tool {name}: {}", truncate(&input, RENDERED_BYTES)))
        }
        _ => None,
    }
}

/// Runs the Claude Code CLI headless with the step's limits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClaudeRuntime {
    pub bin: PathBuf,
    pub limits: ClaudeLimits,
}

impl AgentRuntime for ClaudeRuntime {
    fn program(&self) -> &OsStr {
        self.bin.as_os_str()
    }

    fn args(&self) -> Vec<OsString> {
        args(&self.limits)
    }

    fn env(&self) -> AllowList {
        PROVIDER_ENV
    }

    fn state_paths(&self, home: Option<&Path>, env: &BTreeMap<OsString, OsString>) -> Vec<PathBuf> {
        // Claude Code keeps sessions and settings in its config dir (`CLAUDE_CONFIG_DIR`,
        // else `~/.claude`) and its global state in `~/.claude.json` beside it.
        let config = env
            .get(&OsString::from("CLAUDE_CONFIG_DIR"))
            .map(PathBuf::from)
            .or_else(|| home.map(|h| h.join(".claude")));
        let mut paths: Vec<PathBuf> = config.into_iter().collect();
        paths.extend(home.map(|h| h.join(".claude.json")));
        // Its own temp dir, when the host names one instead of TMPDIR.
        paths.extend(
            env.get(&OsString::from("CLAUDE_CODE_TMPDIR"))
                .map(PathBuf::from),
        );
        paths
    }

    fn parser(&self) -> Box<dyn OutputParser> {
        Box::new(StreamParser {
            state: StreamState::default(),
            limits: self.limits.clone(),
        })
    }

    fn install_hint(&self) -> String {
        format!("install the Claude Code CLI on this worker or set {CLAUDE_BIN_ENV} to its path")
    }
}

/// Parses stream-json into progress and usage; the limits name what a stopped session hit.
struct StreamParser {
    state: StreamState,
    limits: ClaudeLimits,
}

impl OutputParser for StreamParser {
    fn stdout_line(&mut self, line: &str, sink: &ProgressSink) {
        for text in self.state.parse_line(line) {
            sink.line(LogSource::Stdout, &text);
        }
        sink.usage(self.usage());
    }

    fn stderr_line(&mut self, line: &str) {
        self.state.parse_stderr(line);
    }

    fn usage(&self) -> Usage {
        Usage {
            turns: self.state.turns(),
            cost_usd: self.state.cost_usd(),
            tokens: self.state.tokens(),
        }
        .sanitized()
    }

    fn exit_failure(&self, code: i32) -> Option<(FailureCause, String)> {
        self.state.failure(code, &self.limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT: &str = r#"{"type":"system","subtype":"init","cwd":"/w","session_id":"s-1","tools":["Bash","Write"],"model":"claude-sonnet-4-5","permissionMode":"bypassPermissions"}"#;
    const TEXT: &str = r#"{"type":"assistant","message":{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"I will write the file."}]},"session_id":"s-1"}"#;
    const TOOL: &str = r#"{"type":"assistant","message":{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Write","input":{"file_path":"a.txt","content":"hi"}}]},"session_id":"s-1"}"#;
    const TOOL_RESULT: &str = r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"ok"}]},"session_id":"s-1"}"#;
    const TURN2: &str = r#"{"type":"assistant","message":{"id":"msg_2","type":"message","role":"assistant","content":[{"type":"text","text":"Done."}]},"session_id":"s-1"}"#;

    fn result(is_error: bool, subtype: &str) -> String {
        format!(
            r#"{{"type":"result","subtype":"{subtype}","is_error":{is_error},"duration_ms":812,"num_turns":3,"result":"All done","session_id":"s-1","total_cost_usd":0.0123,"usage":{{"input_tokens":10,"output_tokens":5}}}}"#
        )
    }

    fn feed(lines: &[&str]) -> StreamState {
        let mut state = StreamState::default();
        for line in lines {
            state.parse_line(line);
        }
        state
    }

    #[test]
    fn turns_count_distinct_assistant_messages_until_the_result_says() {
        let state = feed(&[INIT, TEXT, TOOL, TOOL_RESULT, TURN2]);
        assert_eq!(state.turns(), 2);
        assert_eq!(state.cost_usd(), 0.0);
        let ok = result(false, "success");
        let state = feed(&[INIT, TEXT, TOOL, TOOL_RESULT, TURN2, &ok]);
        assert_eq!(state.turns(), 3);
        assert!((state.cost_usd() - 0.0123).abs() < 1e-12);
    }

    #[test]
    fn tokens_add_up_over_turns_once_each_until_the_result_gives_the_total() {
        let block = |id: &str, output: u64| {
            format!(
                r#"{{"type":"assistant","message":{{"id":"{id}","content":[],"usage":{{"input_tokens":100,"output_tokens":{output},"cache_read_input_tokens":40,"cache_creation_input_tokens":7}}}}}}"#
            )
        };
        // Two blocks of one turn repeat its usage; the later one counts, once.
        let state = feed(&[&block("m1", 3), &block("m1", 9), &block("m2", 1)]);
        assert_eq!(
            state.tokens(),
            Tokens {
                input: 200,
                output: 10,
                cache_read: 80,
                cache_write: 14,
            }
        );
        let ok = result(false, "success");
        let state = feed(&[&block("m1", 3), &ok]);
        assert_eq!(state.tokens().input, 10, "the result's total wins");
        assert_eq!(state.tokens().cache_read, 0);
    }

    #[test]
    fn progress_renders_text_and_tool_calls() {
        let mut state = StreamState::default();
        assert_eq!(
            state.parse_line(INIT),
            ["claude session s-1 started (model claude-sonnet-4-5)"]
        );
        assert_eq!(state.parse_line(TEXT), ["I will write the file."]);
        assert_eq!(
            state.parse_line(TOOL),
            [r#"tool Write: {"content":"hi","file_path":"a.txt"}"#]
        );
        assert!(state.parse_line(TOOL_RESULT).is_empty());
        assert_eq!(state.parse_line("not json"), ["not json"]);
    }

    #[test]
    fn success_needs_exit_zero_and_a_result_without_error() {
        let limits = ClaudeLimits::default();
        let ok = result(false, "success");
        assert_eq!(feed(&[INIT, &ok]).failure(0, &limits), None);

        let (cause, detail) = feed(&[INIT, &ok]).failure(1, &limits).unwrap();
        assert_eq!(cause, FailureCause::NonzeroExit);
        assert!(detail.contains("status 1"), "{detail}");

        // `subtype: success` after an API error: is_error decides.
        let api_error = result(true, "success");
        let (cause, _) = feed(&[INIT, &api_error]).failure(0, &limits).unwrap();
        assert_eq!(cause, FailureCause::RuntimeUnavailable);

        let (cause, detail) = feed(&[INIT, TEXT]).failure(143, &limits).unwrap();
        assert_eq!(cause, FailureCause::NonzeroExit);
        assert!(
            detail.contains("without its final `result` line"),
            "{detail}"
        );

        let (cause, _) = feed(&[INIT, TEXT]).failure(0, &limits).unwrap();
        assert_eq!(cause, FailureCause::RuntimeUnavailable);
    }

    #[test]
    fn turn_and_budget_limits_are_named() {
        let limits = ClaudeLimits {
            model: None,
            max_turns: Some(3),
            budget_usd: Some(0.01),
        };
        let turns = result(true, "error_max_turns");
        let (cause, detail) = feed(&[INIT, &turns]).failure(1, &limits).unwrap();
        assert_eq!(cause, FailureCause::TurnsExhausted);
        assert!(detail.contains("max_turns 3"), "{detail}");

        let budget = result(true, "error_max_budget_usd");
        let (cause, detail) = feed(&[INIT, &budget]).failure(1, &limits).unwrap();
        assert_eq!(cause, FailureCause::BudgetExhausted);
        assert!(detail.contains("budget_usd 0.01"), "{detail}");

        let mut state = feed(&[INIT, TEXT]);
        state.parse_stderr("Error: Exceeded USD budget (0.01)");
        let (cause, _) = state.failure(1, &limits).unwrap();
        assert_eq!(cause, FailureCause::BudgetExhausted);
    }

    #[test]
    fn argv_carries_the_limits() {
        let argv = args(&ClaudeLimits {
            model: Some("opus".into()),
            max_turns: Some(7),
            budget_usd: Some(1.5),
        });
        let argv: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            argv.join(" "),
            "-p --output-format stream-json --verbose --permission-mode bypassPermissions \
             --model opus --max-turns 7 --max-budget-usd 1.5"
        );
    }
}
