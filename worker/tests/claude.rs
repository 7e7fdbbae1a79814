//! The `claude` runtime against a fake `claude` executable that replays recorded
//! stream-json lines (shapes as printed by Claude Code 2.x with `-p --output-format
//! stream-json --verbose`).

mod common;

use common::{Fixture, write_result};
use hyperloop_proto::v1::{FailureCause, RuntimeKind};
use hyperloop_shared::model::Verdict;
use hyperloop_worker::progress::progress_channel;
use hyperloop_worker::run_step;

const INIT: &str = r#"{"type":"system","subtype":"init","cwd":"/w","session_id":"5f3c","tools":["Bash","Edit","Read","Write"],"mcp_servers":[],"model":"claude-sonnet-4-5","permissionMode":"bypassPermissions","apiKeySource":"ANTHROPIC_API_KEY"}"#;
const SAY: &str = r#"{"type":"assistant","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Writing the greeting."}],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":6}},"parent_tool_use_id":null,"session_id":"5f3c"}"#;
const TOOL: &str = r#"{"type":"assistant","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"tool_use","id":"toolu_1","name":"Write","input":{"file_path":"/w/hello.txt","content":"hello\n"}}],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":30}},"parent_tool_use_id":null,"session_id":"5f3c"}"#;
const TOOL_RESULT: &str = r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_1","type":"tool_result","content":"File created successfully at: /w/hello.txt"}]},"parent_tool_use_id":null,"session_id":"5f3c"}"#;
const DONE: &str = r#"{"type":"assistant","message":{"id":"msg_02","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Done."}],"stop_reason":"end_turn","usage":{"input_tokens":40,"output_tokens":3}},"parent_tool_use_id":null,"session_id":"5f3c"}"#;

fn result_line(is_error: bool, subtype: &str, turns: u32, cost: f64) -> String {
    format!(
        r#"{{"type":"result","subtype":"{subtype}","is_error":{is_error},"duration_ms":1042,"duration_api_ms":980,"num_turns":{turns},"result":"Done.","session_id":"5f3c","total_cost_usd":{cost},"usage":{{"input_tokens":52,"output_tokens":39}}}}"#
    )
}

/// A fake `claude` that records its argv and stdin, prints `lines`, optionally writes a
/// passing result file, and exits with `code`.
fn fake_claude(fx: &Fixture, lines: &[&str], result_file: bool, code: i32) -> std::path::PathBuf {
    let mut body = format!(
        "printf '%s\\n' \"$@\" > '{argv}'\ncat > '{stdin}'\n",
        argv = fx.path("argv").display(),
        stdin = fx.path("stdin").display()
    );
    for line in lines {
        body.push_str(&format!("cat <<'EOL'\n{line}\nEOL\n"));
    }
    if result_file {
        body.push_str(&write_result("pass", "greeting written"));
    }
    body.push_str(&format!("exit {code}\n"));
    fx.script("claude", &body)
}

fn claude_assign(fx: &Fixture, attempt: u64) -> hyperloop_proto::v1::Assign {
    let mut assign = fx.assign(attempt, &fx.path("unused"));
    let settings = assign.runtime.as_mut().unwrap();
    settings.kind = RuntimeKind::Claude.into();
    settings.command.clear();
    settings.model = "claude-sonnet-4-5".into();
    settings.max_turns = Some(8);
    settings.budget_usd = Some(0.5);
    assign
}

#[tokio::test]
async fn a_successful_session_reports_turns_cost_and_the_result_file_verdict() {
    let fx = Fixture::new();
    let ok = result_line(false, "success", 3, 0.0123);
    let bin = fake_claude(&fx, &[INIT, SAY, TOOL, TOOL_RESULT, DONE, &ok], true, 0);
    let (sink, mut stream) = progress_channel();
    let mut ctx = fx.ctx();
    ctx.claude_bin = bin;
    ctx.progress = Some(sink);

    let report = run_step(&claude_assign(&fx, 1), &ctx).await;

    assert_eq!(report.verdict, Verdict::Pass, "{}", report.detail);
    assert_eq!(report.failure_cause, FailureCause::Unspecified);
    assert_eq!(report.detail, "greeting written");
    assert_eq!(report.usage.turns, 3);
    assert!(
        (report.usage.cost_usd - 0.0123).abs() < 1e-9,
        "{}",
        report.usage.cost_usd
    );
    assert_eq!(report.usage.tokens.output, 39, "the session's own total");

    let argv = std::fs::read_to_string(fx.path("argv")).unwrap();
    assert_eq!(
        argv.lines().collect::<Vec<_>>(),
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "bypassPermissions",
            "--model",
            "claude-sonnet-4-5",
            "--max-turns",
            "8",
            "--max-budget-usd",
            "0.5"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(fx.path("stdin")).unwrap(),
        "Implement specs/hello.md"
    );

    let mut texts = Vec::new();
    while let Ok(line) = stream.lines.try_recv() {
        texts.push(line.text);
    }
    assert!(
        texts.iter().any(|t| t == "Writing the greeting."),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.starts_with("tool Write: ")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("claude finished: success")),
        "{texts:?}"
    );
    assert_eq!(
        *stream.usage.borrow(),
        hyperloop_worker::progress::Usage {
            turns: 3,
            cost_usd: 0.0123,
            tokens: hyperloop_shared::step::Tokens {
                input: 52,
                output: 39,
                ..Default::default()
            }
        }
    );
}

#[tokio::test]
async fn is_error_fails_the_step_even_with_exit_zero_and_a_passing_file() {
    let fx = Fixture::new();
    let api_error = result_line(true, "success", 1, 0.0);
    let mut ctx = fx.ctx();
    ctx.claude_bin = fake_claude(&fx, &[INIT, &api_error], true, 0);
    let report = run_step(&claude_assign(&fx, 1), &ctx).await;
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(report.failure_cause, FailureCause::RuntimeUnavailable);
    assert!(
        report.detail.contains("ended with an error"),
        "{}",
        report.detail
    );
}

#[tokio::test]
async fn the_turn_limit_is_reported_as_turns_exhausted() {
    let fx = Fixture::new();
    let limit = result_line(true, "error_max_turns", 8, 0.2);
    let mut ctx = fx.ctx();
    ctx.claude_bin = fake_claude(&fx, &[INIT, SAY, &limit], false, 1);
    let report = run_step(&claude_assign(&fx, 1), &ctx).await;
    assert_eq!(report.failure_cause, FailureCause::TurnsExhausted);
    assert!(report.detail.contains("max_turns 8"), "{}", report.detail);
    assert_eq!(report.usage.turns, 8);
}

#[tokio::test]
async fn the_budget_limit_is_reported_as_budget_exhausted() {
    let fx = Fixture::new();
    let limit = result_line(true, "error_max_budget_usd", 4, 0.51);
    let mut ctx = fx.ctx();
    ctx.claude_bin = fake_claude(&fx, &[INIT, SAY, &limit], false, 1);
    let report = run_step(&claude_assign(&fx, 1), &ctx).await;
    assert_eq!(report.failure_cause, FailureCause::BudgetExhausted);
    assert!(
        report.detail.contains("budget_usd 0.5"),
        "{}",
        report.detail
    );
    assert!((report.usage.cost_usd - 0.51).abs() < 1e-9);
}

#[tokio::test]
async fn a_session_without_its_result_line_fails() {
    let fx = Fixture::new();
    let mut ctx = fx.ctx();
    // What SIGTERM leaves behind: exit 143 and no `result` line.
    ctx.claude_bin = fake_claude(&fx, &[INIT, SAY], true, 143);
    let report = run_step(&claude_assign(&fx, 1), &ctx).await;
    assert_eq!(report.failure_cause, FailureCause::NonzeroExit);
    assert!(
        report.detail.contains("without its final `result` line"),
        "{}",
        report.detail
    );
}

#[tokio::test]
async fn a_missing_claude_binary_names_the_setting_to_fix() {
    let fx = Fixture::new();
    let mut ctx = fx.ctx();
    ctx.claude_bin = fx.path("no-such-claude");
    let report = run_step(&claude_assign(&fx, 1), &ctx).await;
    assert_eq!(report.failure_cause, FailureCause::RuntimeUnavailable);
    assert!(
        report.detail.contains("HYPERLOOP_CLAUDE_BIN"),
        "{}",
        report.detail
    );
}
