//! The domain vocabulary shared by every other module: identifiers, spec refs, tasks,
//! verdicts, reviews and PM proposals.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::pipeline::Position;

/// Errors from parsing identifiers and references that arrive from outside (agents, files,
/// operators). Each message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid task id {0:?}: expected `task-` followed by digits, e.g. task-007")]
    TaskId(String),
    #[error("invalid spec path {path:?}: {reason}")]
    SpecPath { path: String, reason: &'static str },
    #[error("invalid spec ref {0:?}: expected `<path>@<commit>`, e.g. specs/auth.md@3f2a9c1")]
    SpecRef(String),
}

/// A coordinator-assigned task identifier. Numeric so ordering is numeric (`task-10` sorts
/// after `task-9`), rendered zero-padded to three digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task-{:03}", self.0)
    }
}

impl FromStr for TaskId {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix("task-")
            .filter(|d| !d.is_empty() && d.len() <= 19 && d.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| ModelError::TaskId(s.to_owned()))?;
        digits
            .parse()
            .map(TaskId)
            .map_err(|_| ModelError::TaskId(s.to_owned()))
    }
}

impl Serialize for TaskId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Identifies one dispatch of one step. Results are accepted only for the task's current
/// attempt, so a late result from a lost worker cannot complete a step twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AttemptId(pub u64);

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt-{}", self.0)
    }
}

/// A repository-relative path to a spec file. Construction rejects anything that could escape
/// the repository or confuse git: absolute paths, `..`, empty segments, backslashes, control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpecPath(String);

impl SpecPath {
    pub fn parse(path: &str) -> Result<Self, ModelError> {
        let reject = |reason| {
            Err(ModelError::SpecPath {
                path: path.to_owned(),
                reason,
            })
        };
        if path.is_empty() {
            return reject("the path is empty");
        }
        if path.starts_with('/') {
            return reject(
                "absolute paths are not allowed; use a path relative to the repository root",
            );
        }
        if path.contains('\\') {
            return reject("backslashes are not allowed; use `/` as the separator");
        }
        if path.chars().any(char::is_control) {
            return reject("control characters are not allowed");
        }
        if path.contains('@') {
            return reject("`@` is reserved for pinning a spec to a commit");
        }
        for segment in path.split('/') {
            match segment {
                "" => {
                    return reject("empty path segments (`//` or a trailing `/`) are not allowed");
                }
                "." | ".." => return reject("`.` and `..` segments are not allowed"),
                ".git" => return reject("paths inside `.git` are not allowed"),
                _ => {}
            }
        }
        Ok(Self(path.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpecPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SpecPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SpecPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpecPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A spec pinned to the commit at which a task was created: `specs/auth.md@<commit>`.
/// Agents see the spec text at exactly this version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpecRef {
    pub path: SpecPath,
    /// Hex object id of the commit the spec was read at.
    pub commit: String,
}

impl fmt::Display for SpecRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.path, self.commit)
    }
}

impl FromStr for SpecRef {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ModelError::SpecRef(s.to_owned());
        let (path, commit) = s.rsplit_once('@').ok_or_else(bad)?;
        let hex = (4..=64).contains(&commit.len()) && commit.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            return Err(bad());
        }
        Ok(SpecRef {
            path: SpecPath::parse(path)?,
            commit: commit.to_owned(),
        })
    }
}

impl Serialize for SpecRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpecRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Lifecycle of a task. Only the coordinator changes it; agents report verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskStatus {
    NotStarted,
    InProgress,
    Complete,
    Failed,
}

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Complete | TaskStatus::Failed)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskStatus::NotStarted => "not-started",
            TaskStatus::InProgress => "in-progress",
            TaskStatus::Complete => "complete",
            TaskStatus::Failed => "failed",
        })
    }
}

/// An agent's verdict on its step. Nothing else flows from an agent into task state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
        })
    }
}

/// What a finished step reports: a verdict and free-text detail (the findings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerResult {
    pub verdict: Verdict,
    pub detail: String,
}

impl WorkerResult {
    pub fn pass(detail: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Pass,
            detail: detail.into(),
        }
    }

    pub fn fail(detail: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Fail,
            detail: detail.into(),
        }
    }
}

/// A review (finding) recorded for a round of a task. Kept forever as history and fed into
/// later prompts of the task and into intake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub task_id: TaskId,
    pub round: u32,
    /// The agent role, or `coordinator` / `human` for findings not produced by an agent.
    pub role: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// A task proposed by the PM agent during intake. The coordinator validates it and assigns
/// the id; `key` lets proposals in one batch depend on each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub title: String,
    /// Repository-relative spec path, validated against the known specs at intake.
    pub spec: String,
    /// Keys of other proposals in the same batch or ids of existing tasks.
    #[serde(default)]
    pub deps: Vec<String>,
}

/// A unit of work derived from a spec gap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub title: String,
    pub spec_ref: SpecRef,
    pub status: TaskStatus,
    #[serde(default)]
    pub deps: Vec<TaskId>,
    #[serde(default)]
    pub round: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr: Option<String>,
    /// Where the task is in its pipeline: set while in progress, `None` before it starts and
    /// once it is terminal. Written by [`crate::pipeline::Transition::apply_to`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// Consecutive errors of the action at `position`. Persisted so the budget survives a
    /// restart or leader change.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub action_attempts: u32,
    /// Why the task failed, in words, for `hyperloopctl status` and intake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Set while the action at `position` waits to be retried after a transient failure
    /// (a landing whose push raced, a remote that did not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::retry::Retry>,
}

impl Task {
    /// A task that has not started: no deps, round 0, no branch, PR, position or failure.
    pub fn new(id: TaskId, title: impl Into<String>, spec_ref: SpecRef) -> Self {
        Self {
            id,
            title: title.into(),
            spec_ref,
            status: TaskStatus::NotStarted,
            deps: Vec::new(),
            round: 0,
            branch: None,
            pr: None,
            position: None,
            action_attempts: 0,
            failure: None,
            retry: None,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_render_padded_and_order_numerically() {
        assert_eq!(TaskId(7).to_string(), "task-007");
        assert_eq!(TaskId(1234).to_string(), "task-1234");
        assert!(TaskId(10) > TaskId(9));
        assert_eq!("task-010".parse::<TaskId>(), Ok(TaskId(10)));
    }

    #[test]
    fn task_ids_reject_path_tricks_and_garbage() {
        for bad in [
            "",
            "task-",
            "task-../1",
            "task-1/..",
            "TASK-1",
            "task--1",
            "task-1a",
            "7",
        ] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn spec_paths_reject_escapes() {
        for bad in [
            "",
            "/etc/passwd",
            "../x.md",
            "specs/../../x.md",
            "specs//x.md",
            "specs/x.md/",
            "specs\\x.md",
            "specs/./x.md",
            ".git/config",
            "specs/a\nb.md",
            "specs/x@y.md",
        ] {
            assert!(SpecPath::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            SpecPath::parse("specs/api/auth.md").unwrap().as_str(),
            "specs/api/auth.md"
        );
    }

    #[test]
    fn spec_refs_round_trip() {
        let r: SpecRef = "specs/auth.md@0123abcd".parse().unwrap();
        assert_eq!(r.path.as_str(), "specs/auth.md");
        assert_eq!(r.commit, "0123abcd");
        assert_eq!(r.to_string(), "specs/auth.md@0123abcd");
        assert!("specs/auth.md".parse::<SpecRef>().is_err());
        assert!("specs/auth.md@zz".parse::<SpecRef>().is_err());
    }

    #[test]
    fn tasks_round_trip_through_yaml_and_json_with_pipeline_state() {
        let mut task = Task {
            id: TaskId(7),
            title: "Add login".into(),
            spec_ref: "specs/auth.md@0123abcd".parse().unwrap(),
            status: TaskStatus::InProgress,
            deps: vec![TaskId(3), TaskId(5)],
            round: 2,
            branch: Some("hyperloop/task-007".into()),
            pr: None,
            position: Some("0.1/agent:verifier@9f2c04e1a3b5d786".parse().unwrap()),
            action_attempts: 1,
            failure: None,
            retry: Some(crate::retry::Retry {
                failures: 2,
                not_before_ms: 1_700_000_002_000,
                reason: "push rejected".into(),
            }),
        };
        let yaml = serde_yaml::to_string(&task).unwrap();
        assert!(
            yaml.contains("position: 0.1/agent:verifier@9f2c04e1a3b5d786"),
            "{yaml}"
        );
        assert_eq!(serde_yaml::from_str::<Task>(&yaml).unwrap(), task);
        let json = serde_json::to_string(&task).unwrap();
        assert_eq!(serde_json::from_str::<Task>(&json).unwrap(), task);

        task.status = TaskStatus::Failed;
        task.position = None;
        task.action_attempts = 0;
        task.failure = Some("agent `verifier` failed".into());
        let yaml = serde_yaml::to_string(&task).unwrap();
        assert!(
            !yaml.contains("action_attempts"),
            "zero counters are omitted: {yaml}"
        );
        assert_eq!(serde_yaml::from_str::<Task>(&yaml).unwrap(), task);
    }

    #[test]
    fn tasks_written_before_pipeline_state_existed_still_load() {
        let yaml = "id: task-001\ntitle: t\nspec_ref: specs/a.md@abcd\nstatus: not-started\n";
        let task: Task = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(task.position, None);
        assert_eq!(task.action_attempts, 0);
        assert_eq!(task.failure, None);
    }

    #[test]
    fn statuses_serialize_kebab_case() {
        let yaml = serde_yaml::to_string(&TaskStatus::NotStarted).unwrap();
        assert_eq!(yaml.trim(), "not-started");
        assert!(TaskStatus::Failed.is_terminal());
        assert!(!TaskStatus::InProgress.is_terminal());
    }
}
