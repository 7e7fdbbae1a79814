//! The contract every [`AgentRuntime`] keeps. Each check below runs against each runtime as
//! its own test (`runtime::contract::<runtime>::<check>`); a new runtime joins the list in the
//! `contract!` call at the bottom and gets the whole suite.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;

use hyperloop_proto::v1::FailureCause;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use super::AgentRuntime;
use super::claude::{ClaudeLimits, ClaudeRuntime};
use super::command::CommandRuntime;
use crate::env::agent_env;
use crate::process::MAX_OUTPUT_LINE_BYTES;
use crate::progress::{Usage, progress_channel};

fn claude() -> ClaudeRuntime {
    ClaudeRuntime {
        bin: "/opt/claude-code/bin/claude".into(),
        limits: ClaudeLimits {
            model: Some("claude-sonnet-4-5".into()),
            max_turns: Some(8),
            budget_usd: Some(0.5),
        },
    }
}

fn command() -> CommandRuntime {
    CommandRuntime {
        argv: vec!["./agent.sh".into(), "--fast".into()],
    }
}

/// Output lines no runtime may choke on: blank, truncated or mistyped JSON, JSON nested past
/// serde_json's recursion limit, control characters, and lines as long as the reader passes
/// (`MAX_OUTPUT_LINE_BYTES`) made of two-byte characters, so a cut at an odd offset falls
/// inside one.
fn garbage() -> Vec<String> {
    let long_text = "é".repeat(MAX_OUTPUT_LINE_BYTES / 2 - 64);
    let mut lines: Vec<String> = [
        "",
        " ",
        "\r",
        "{",
        "}",
        "null",
        "[]",
        "42",
        r#""type""#,
        r#"{"type":null}"#,
        r#"{"type":"system","subtype":{"nested":true}}"#,
        r#"{"type":"assistant"}"#,
        r#"{"type":"assistant","message":{"content":"not a list"}}"#,
        r#"{"type":"assistant","message":{"id":7,"content":[{"type":"text"},{"type":"tool_use","input":null},{}]}}"#,
        r#"{"type":"user","message":null}"#,
        r#"{"type":"result"}"#,
        r#"{"type":"result","is_error":"no","num_turns":-1,"total_cost_usd":"free"}"#,
        r#"{"type":"result","is_error":false,"num_turns":18446744073709551615,"total_cost_usd":1e308}"#,
        "\u{0}\u{1b}[31m\u{fffd}",
    ]
    .map(str::to_owned)
    .into();
    lines.extend([
        "[".repeat(100_000),
        "é".repeat(MAX_OUTPUT_LINE_BYTES / 2),
        format!(
            r#"{{"type":"assistant","message":{{"id":"m","content":[{{"type":"text","text":"{long_text}"}},{{"type":"tool_use","name":"Write","input":{{"content":"{long_text}"}}}}]}}}}"#
        ),
    ]);
    lines
}

/// Feeds `lines` to a fresh parser as stdout, then as the stderr tail, and judges exits:
/// exit 0 may fail on what the output said but never as a non-zero exit, and every other
/// status fails with a cause and a finding.
fn feed_and_judge(runtime: &dyn AgentRuntime, lines: &[String]) {
    let (sink, _stream) = progress_channel();
    let mut parser = runtime.parser();
    for line in lines {
        parser.stdout_line(line, &sink);
    }
    for line in lines {
        parser.stderr_line(line);
    }
    let _ = parser.usage();
    if let Some((cause, _)) = parser.exit_failure(0) {
        assert_ne!(cause, FailureCause::NonzeroExit);
    }
    for code in [1, 2, 143, -1, i32::MAX, i32::MIN] {
        let (cause, finding) = parser
            .exit_failure(code)
            .unwrap_or_else(|| panic!("exit {code} after {lines:?} passed"));
        assert_ne!(cause, FailureCause::Unspecified);
        assert!(!finding.is_empty());
    }
}

fn starts_a_named_program(runtime: &dyn AgentRuntime) {
    assert!(!runtime.program().is_empty());
}

fn passes_the_base_environment_but_no_git_variable_or_unrelated_secret(runtime: &dyn AgentRuntime) {
    let base = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TERM"];
    // No `AWS_*` here: Bedrock credentials are model-provider settings that both runtimes
    // pass on purpose (`claude::PROVIDER_ENV`).
    let refused = [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_CONFIG_PARAMETERS",
        "GIT_ASKPASS",
        "GIT_SSH_COMMAND",
        "GITHUB_TOKEN",
        "GH_TOKEN",
        "NPM_TOKEN",
        "SSH_AUTH_SOCK",
        "DATABASE_URL",
        "HYPERLOOP_TOKEN",
        "HYPERLOOP_CLAUDE_BIN",
        "USER",
    ];
    let host = base
        .iter()
        .chain(&refused)
        .map(|name| (OsString::from(name), OsString::from("value")));
    let env = agent_env(host, &runtime.env(), &[], &[], &HashMap::new(), &[]);
    let names: BTreeSet<_> = env
        .keys()
        .map(|k| k.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, base.map(str::to_owned).into());
}

fn cannot_let_a_git_variable_through_its_allow_list(runtime: &dyn AgentRuntime) {
    let allowed = runtime.env();
    for name in allowed.names {
        assert!(!name.starts_with("GIT_"), "{name}");
    }
    // A prefix admits some `GIT_*` name if it starts with `GIT_` or is a prefix of it ("", "G").
    for prefix in allowed.prefixes {
        assert!(
            !prefix.starts_with("GIT_") && !"GIT_".starts_with(prefix),
            "{prefix:?}"
        );
    }
}

fn survives_garbage_and_overlong_output_lines(runtime: &dyn AgentRuntime) {
    feed_and_judge(runtime, &garbage());
}

fn survives_arbitrary_output_and_never_passes_a_nonzero_exit(runtime: &dyn AgentRuntime) {
    let event = r#"\{"type":"(system|assistant|user|result)"(,"(subtype|is_error|num_turns|total_cost_usd|message|result)":(-?[0-9]{1,20}(\.[0-9]+)?|"[a-z_ ]{0,12}"|true|false|null|\[\]|\{"id":"m","content":\[\{"type":"(text|tool_use)"\}\]\}))*\}"#;
    let line = prop_oneof![any::<String>(), event];
    let lines = proptest::collection::vec(line, 0..12);
    TestRunner::default()
        .run(&lines, |lines| {
            feed_and_judge(runtime, &lines);
            Ok(())
        })
        .unwrap();
}

fn reports_no_usage_and_the_exit_status_of_a_silent_session(runtime: &dyn AgentRuntime) {
    let parser = runtime.parser();
    assert_eq!(parser.usage(), Usage::default());
    let (cause, finding) = parser.exit_failure(3).expect("exit 3 is a failure");
    assert_eq!(cause, FailureCause::NonzeroExit);
    assert!(finding.contains("status 3"), "{finding}");
}

fn names_the_program_and_the_error_when_it_cannot_start(runtime: &dyn AgentRuntime) {
    let error = std::io::Error::from(std::io::ErrorKind::NotFound);
    let finding = runtime.spawn_failure(&error);
    assert!(
        finding.contains(&*runtime.program().to_string_lossy()),
        "{finding}"
    );
    assert!(finding.contains(&error.to_string()), "{finding}");
}

/// One test module per runtime, one test per check in it.
macro_rules! contract {
    (runtimes: [$($runtime:ident),+ $(,)?], checks: $checks:tt $(,)?) => {
        $(contract!(@runtime $runtime $checks);)+
    };
    (@runtime $runtime:ident [$($check:ident),+ $(,)?]) => {
        mod $runtime {
            $(
                #[test]
                fn $check() {
                    super::$check(&super::$runtime());
                }
            )+
        }
    };
}

contract! {
    runtimes: [claude, command],
    checks: [
        starts_a_named_program,
        passes_the_base_environment_but_no_git_variable_or_unrelated_secret,
        cannot_let_a_git_variable_through_its_allow_list,
        survives_garbage_and_overlong_output_lines,
        survives_arbitrary_output_and_never_passes_a_nonzero_exit,
        reports_no_usage_and_the_exit_status_of_a_silent_session,
        names_the_program_and_the_error_when_it_cannot_start,
    ],
}
