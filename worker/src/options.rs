//! [`WorkerOptions`]: validated worker settings (flags, environment, defaults in one place).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::WorkerError;
use crate::claude;
use crate::fence::DEFAULT_PUSH_ANSWER_TIMEOUT;
use crate::shim::Confinement;
use crate::step::DEFAULT_STEP_TIMEOUT;

/// How often an unacknowledged StepResult is sent again. Well below the coordinator's
/// lease grace period, so a result lost in a reconnect is redelivered before the step is
/// given away; far above a round trip, so a healthy coordinator acks first.
pub const DEFAULT_RESULT_RESEND_INTERVAL: Duration = Duration::from_secs(5);

/// How long to wait for `Registered` after Hello. A coordinator answers in milliseconds;
/// this only bounds a peer that accepted the stream but never speaks.
pub const DEFAULT_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Used when `Registered.heartbeat_interval` is unset; the coordinator normally sets it.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// Floor for the heartbeat interval, so a bogus tiny value cannot flood the stream.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// How long shutdown waits for cancelled steps to stop and clean up: the kill ladder takes at
/// most ~2 s (SIGINT 0.5 s, SIGTERM 0.5 s, SIGKILL 1 s) plus worktree removal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Validated worker settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Stable worker name (`--name`, default the host name).
    pub name: String,
    /// Concurrent steps (`--capacity`), at least 1.
    pub capacity: u32,
    /// `--labels k=v,...`.
    pub labels: BTreeMap<String, String>,
    /// Mirror and worktrees live here (`--work-dir`).
    pub work_dir: PathBuf,
    /// Join token, sent once in Hello.
    pub token: String,
    /// Worker-host variables every agent gets, secrets included (`--pass-env`): the
    /// operator's decision, which the repository's `env_passthrough` cannot make.
    pub pass_env: Vec<String>,
    /// Program for the `claude` runtime.
    pub claude_bin: PathBuf,
    /// How agents are started (shim, Landlock, extra writable paths).
    pub confinement: Confinement,
    /// Step timeout when an assignment carries none.
    pub default_step_timeout: Duration,
    /// Also the pace at which an unanswered push request is sent again.
    pub result_resend_interval: Duration,
    /// How long a step waits for a usable push answer before giving up without pushing.
    pub push_answer_timeout: Duration,
    pub registration_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl WorkerOptions {
    /// Options with defaults for everything but the name and work dir.
    pub fn new(name: impl Into<String>, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            capacity: 1,
            labels: BTreeMap::new(),
            work_dir: work_dir.into(),
            token: String::new(),
            pass_env: Vec::new(),
            claude_bin: claude::bin_from_env(),
            confinement: Confinement::default(),
            default_step_timeout: DEFAULT_STEP_TIMEOUT,
            result_resend_interval: DEFAULT_RESULT_RESEND_INTERVAL,
            push_answer_timeout: DEFAULT_PUSH_ANSWER_TIMEOUT,
            registration_timeout: DEFAULT_REGISTRATION_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }

    /// Checks the options.
    ///
    /// # Errors
    ///
    /// [`WorkerError::InvalidOption`] naming the flag to fix.
    pub fn validate(&self) -> Result<(), WorkerError> {
        if self.name.trim().is_empty() {
            return Err(invalid("--name", "is empty; give the worker a name"));
        }
        if self.capacity == 0 {
            return Err(invalid("--capacity", "must be at least 1"));
        }
        if self.work_dir.as_os_str().is_empty() {
            return Err(invalid("--work-dir", "is empty"));
        }
        for interval in [
            ("result_resend_interval", self.result_resend_interval),
            ("registration_timeout", self.registration_timeout),
            ("push_answer_timeout", self.push_answer_timeout),
        ] {
            if interval.1.is_zero() {
                return Err(invalid(interval.0, "must be greater than zero"));
            }
        }
        Ok(())
    }
}

fn invalid(option: &'static str, problem: impl Into<String>) -> WorkerError {
    WorkerError::InvalidOption {
        option,
        problem: problem.into(),
    }
}

/// Parses `--labels k=v,k2=v2` (empty string: no labels).
///
/// # Errors
///
/// [`WorkerError::InvalidOption`] for an entry without `=`, an empty key or a repeated key.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, WorkerError> {
    let mut labels = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(invalid(
                "--labels",
                format!(
                    "entry {entry:?} is not `key=value`; write e.g. `--labels os=linux,gpu=a100`"
                ),
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(invalid(
                "--labels",
                format!("entry {entry:?} has an empty key"),
            ));
        }
        if labels
            .insert(key.to_owned(), value.trim().to_owned())
            .is_some()
        {
            return Err(invalid("--labels", format!("key {key:?} is given twice")));
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_errors_name_the_flag() {
        let labels = parse_labels("os=linux, gpu=a100,").unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["gpu"], "a100");
        assert!(parse_labels("").unwrap().is_empty());
        for bad in ["os", "=x", "a=1,a=2"] {
            let err = parse_labels(bad).unwrap_err().to_string();
            assert!(err.contains("--labels"), "{err}");
        }
    }

    #[test]
    fn zero_capacity_is_refused() {
        let mut o = WorkerOptions::new("w", "/tmp/w");
        o.validate().unwrap();
        o.capacity = 0;
        assert!(o.validate().unwrap_err().to_string().contains("--capacity"));
    }
}
