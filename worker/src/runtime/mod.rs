//! Agent runtimes: the one seam between the step runner and the program that runs an agent.
//!
//! Everything specific to one runtime lives in its own file: [`claude`] (the Claude Code CLI
//! and its stream-json output) and [`command`] (any program printing plain text). The step
//! runner only talks to [`AgentRuntime`] and [`OutputParser`]; what all runtimes share (the
//! process group, time limit and cancel, the stderr tail, how timeouts, cancels and signals
//! are reported) stays in `process` and `step`. `contract` holds the tests every runtime
//! passes.

pub mod claude;
pub(crate) mod command;
#[cfg(test)]
mod contract;

use std::ffi::{OsStr, OsString};

use hyperloop_proto::v1::FailureCause;

use crate::env::AllowList;
use crate::progress::{ProgressSink, Usage};

/// How one kind of agent is started and judged. Built per step from the step's runtime
/// settings.
pub(crate) trait AgentRuntime: Send + Sync {
    /// The executable to start.
    fn program(&self) -> &OsStr;

    /// Its arguments. The prompt is never one of them: it goes on stdin.
    fn args(&self) -> Vec<OsString>;

    /// Host variables the agent receives on top of [`env::BASE`](crate::env::BASE).
    fn env(&self) -> AllowList;

    /// Where the runtime keeps its own state (sessions, settings), which a confined agent
    /// must be able to write. `home` is the agent's `HOME`, `env` its environment.
    fn state_paths(
        &self,
        _home: Option<&std::path::Path>,
        _env: &std::collections::BTreeMap<OsString, OsString>,
    ) -> Vec<std::path::PathBuf> {
        Vec::new()
    }

    /// A parser for one session's output.
    fn parser(&self) -> Box<dyn OutputParser>;

    /// How to make [`program`](Self::program) startable; ends the finding of a failed start.
    fn install_hint(&self) -> String;

    /// The finding when [`program`](Self::program) could not be started.
    fn spawn_failure(&self, error: &std::io::Error) -> String {
        format!(
            "The agent program `{}` could not be started: {error}; {}.",
            self.program().to_string_lossy(),
            self.install_hint()
        )
    }
}

/// Reads one session's output while it runs and judges how it ended.
pub(crate) trait OutputParser: Send {
    /// One stdout line (without its newline, lossily decoded, cut at
    /// `process::MAX_OUTPUT_LINE_BYTES`): sends progress lines and usage to `sink`.
    fn stdout_line(&mut self, line: &str, sink: &ProgressSink);

    /// One of the last stderr lines, given after the process ended. Stderr already went to
    /// the progress log as it came; this is only for what explains a failure.
    fn stderr_line(&mut self, _line: &str) {}

    /// Turns and cost so far; zero for runtimes that do not report them.
    fn usage(&self) -> Usage {
        Usage::default()
    }

    /// Why an agent that exited with `code` failed, as a finding; `None` leaves the verdict
    /// to its result file. Timeouts, cancels and signals are judged by the step runner, the
    /// same for every runtime.
    fn exit_failure(&self, code: i32) -> Option<(FailureCause, String)>;
}
