//! The `command` runtime: any program (`agent.command` in .hyperloop.yaml, an argv list)
//! that reads the prompt on stdin and prints plain text. Its exit status and the result file
//! are all hyperloop learns from it.

use std::ffi::{OsStr, OsString};

use hyperloop_proto::v1::{FailureCause, LogSource};

use super::claude::PROVIDER_ENV;
use super::{AgentRuntime, OutputParser};
use crate::env::AllowList;
use crate::progress::ProgressSink;

/// Runs `argv` as given.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CommandRuntime {
    /// Never empty, and `argv[0]` is not empty: the step plan refuses such a command.
    pub argv: Vec<String>,
}

impl AgentRuntime for CommandRuntime {
    fn program(&self) -> &OsStr {
        OsStr::new(&self.argv[0])
    }

    fn args(&self) -> Vec<OsString> {
        self.argv[1..].iter().map(OsString::from).collect()
    }

    fn env(&self) -> AllowList {
        // A command agent is typically a script around a model CLI (Claude Code among them),
        // so it gets the same model-provider settings; `env_passthrough` adds anything else.
        PROVIDER_ENV
    }

    fn parser(&self) -> Box<dyn OutputParser> {
        Box::new(PlainLines)
    }

    fn install_hint(&self) -> String {
        "install it on this worker or fix `agent.command` in .hyperloop.yaml".to_owned()
    }
}

/// Plain output: every stdout line is a progress line; only the exit status counts.
struct PlainLines;

impl OutputParser for PlainLines {
    fn stdout_line(&mut self, line: &str, sink: &ProgressSink) {
        sink.line(LogSource::Stdout, line);
    }

    fn exit_failure(&self, code: i32) -> Option<(FailureCause, String)> {
        (code != 0).then(|| {
            (
                FailureCause::NonzeroExit,
                format!("The agent exited with status {code}."),
            )
        })
    }
}
