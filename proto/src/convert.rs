//! Conversions between `hyperloop.v1` messages and [`hyperloop_shared::model`] types.
//!
//! Domain → wire is `From` and cannot fail. Wire → domain is `TryFrom` (or a `parse_*`
//! function where both types are foreign, e.g. a task id carried as a plain string) and
//! validates everything: unset required fields, `*_UNSPECIFIED` enums, unknown enum
//! numbers, malformed task ids and spec refs all become a [`ConversionError`] naming the
//! field. Fields of the wire messages that the domain type does not have (a task's pipeline
//! position, for instance) are left at their defaults by `From` for the caller to fill in.

use hyperloop_shared::model::{
    Proposal, Review, SpecPath, SpecRef, Task, TaskId, TaskStatus, Verdict, WorkerResult,
};

use crate::ConversionError;
use crate::v1;

/// Parses a task id carried as a string (`"task-007"`) in `field`.
///
/// # Errors
///
/// `MissingField` when empty, `InvalidField` when not of the form `task-<digits>`.
pub fn parse_task_id(field: &str, value: &str) -> Result<TaskId, ConversionError> {
    if value.is_empty() {
        return Err(ConversionError::missing(field));
    }
    value
        .parse()
        .map_err(|source| ConversionError::InvalidField {
            field: field.to_owned(),
            source,
        })
}

/// Parses a repeated task-id field; an error names the element (`deps[2]`).
///
/// # Errors
///
/// As [`parse_task_id`] for the first bad element.
pub fn parse_task_ids(field: &str, values: &[String]) -> Result<Vec<TaskId>, ConversionError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| parse_task_id(&format!("{field}[{i}]"), v))
        .collect()
}

/// Reads a required `Verdict` enum field carried as its raw number.
///
/// # Errors
///
/// `MissingField` for `VERDICT_UNSPECIFIED`, `UnknownEnumValue` for a number this build
/// does not know.
pub fn parse_verdict(field: &str, value: i32) -> Result<Verdict, ConversionError> {
    let wire = v1::Verdict::try_from(value).map_err(|_| ConversionError::UnknownEnumValue {
        field: field.to_owned(),
        value,
    })?;
    Verdict::try_from(wire).map_err(|_| ConversionError::missing(field))
}

/// Reads a required `TaskStatus` enum field carried as its raw number.
///
/// # Errors
///
/// `MissingField` for `TASK_STATUS_UNSPECIFIED`, `UnknownEnumValue` for a number this
/// build does not know.
pub fn parse_task_status(field: &str, value: i32) -> Result<TaskStatus, ConversionError> {
    let wire = v1::TaskStatus::try_from(value).map_err(|_| ConversionError::UnknownEnumValue {
        field: field.to_owned(),
        value,
    })?;
    TaskStatus::try_from(wire).map_err(|_| ConversionError::missing(field))
}

/// Unwraps a required sub-message, converting it and prefixing any error with `field`.
///
/// # Errors
///
/// `MissingField` when unset; the nested conversion's error otherwise.
pub fn require<W, D>(field: &str, value: Option<W>) -> Result<D, ConversionError>
where
    D: TryFrom<W, Error = ConversionError>,
{
    let wire = value.ok_or_else(|| ConversionError::missing(field))?;
    D::try_from(wire).map_err(|e| e.within(field))
}

fn require_text(field: &str, value: String) -> Result<String, ConversionError> {
    if value.is_empty() {
        Err(ConversionError::missing(field))
    } else {
        Ok(value)
    }
}

// --- Verdict -----------------------------------------------------------------------------

impl From<Verdict> for v1::Verdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Pass => v1::Verdict::Pass,
            Verdict::Fail => v1::Verdict::Fail,
        }
    }
}

impl TryFrom<v1::Verdict> for Verdict {
    type Error = ConversionError;

    fn try_from(v: v1::Verdict) -> Result<Self, Self::Error> {
        match v {
            v1::Verdict::Unspecified => Err(ConversionError::missing("verdict")),
            v1::Verdict::Pass => Ok(Verdict::Pass),
            v1::Verdict::Fail => Ok(Verdict::Fail),
        }
    }
}

// --- TaskStatus --------------------------------------------------------------------------

impl From<TaskStatus> for v1::TaskStatus {
    fn from(s: TaskStatus) -> Self {
        match s {
            TaskStatus::NotStarted => v1::TaskStatus::NotStarted,
            TaskStatus::InProgress => v1::TaskStatus::InProgress,
            TaskStatus::Complete => v1::TaskStatus::Complete,
            TaskStatus::Failed => v1::TaskStatus::Failed,
        }
    }
}

impl TryFrom<v1::TaskStatus> for TaskStatus {
    type Error = ConversionError;

    fn try_from(s: v1::TaskStatus) -> Result<Self, Self::Error> {
        match s {
            v1::TaskStatus::Unspecified => Err(ConversionError::missing("status")),
            v1::TaskStatus::NotStarted => Ok(TaskStatus::NotStarted),
            v1::TaskStatus::InProgress => Ok(TaskStatus::InProgress),
            v1::TaskStatus::Complete => Ok(TaskStatus::Complete),
            v1::TaskStatus::Failed => Ok(TaskStatus::Failed),
        }
    }
}

// --- SpecRef -----------------------------------------------------------------------------

impl From<SpecRef> for v1::SpecRef {
    fn from(r: SpecRef) -> Self {
        v1::SpecRef {
            path: r.path.as_str().to_owned(),
            commit: r.commit,
        }
    }
}

impl TryFrom<v1::SpecRef> for SpecRef {
    type Error = ConversionError;

    /// Validates with the same rules as parsing `path@commit` (no path escapes, hex commit).
    fn try_from(r: v1::SpecRef) -> Result<Self, Self::Error> {
        let path = require_text("path", r.path)?;
        let commit = require_text("commit", r.commit)?;
        let path = SpecPath::parse(&path).map_err(|source| ConversionError::InvalidField {
            field: "path".to_owned(),
            source,
        })?;
        // Reuse the model's commit validation through its one parser rather than copying it.
        let spec_ref: SpecRef =
            format!("{path}@{commit}")
                .parse()
                .map_err(|source| ConversionError::InvalidField {
                    field: "commit".to_owned(),
                    source,
                })?;
        Ok(spec_ref)
    }
}

// --- WorkerResult ------------------------------------------------------------------------

impl From<WorkerResult> for v1::WorkerResult {
    fn from(r: WorkerResult) -> Self {
        v1::WorkerResult {
            verdict: v1::Verdict::from(r.verdict).into(),
            detail: r.detail,
        }
    }
}

impl TryFrom<v1::WorkerResult> for WorkerResult {
    type Error = ConversionError;

    fn try_from(r: v1::WorkerResult) -> Result<Self, Self::Error> {
        Ok(WorkerResult {
            verdict: parse_verdict("verdict", r.verdict)?,
            detail: r.detail,
        })
    }
}

// --- Review ------------------------------------------------------------------------------

impl From<Review> for v1::Review {
    fn from(r: Review) -> Self {
        v1::Review {
            task_id: r.task_id.to_string(),
            round: r.round,
            role: r.role,
            verdict: v1::Verdict::from(r.verdict).into(),
            detail: r.detail,
        }
    }
}

impl TryFrom<v1::Review> for Review {
    type Error = ConversionError;

    fn try_from(r: v1::Review) -> Result<Self, Self::Error> {
        Ok(Review {
            task_id: parse_task_id("task_id", &r.task_id)?,
            round: r.round,
            role: require_text("role", r.role)?,
            verdict: parse_verdict("verdict", r.verdict)?,
            detail: r.detail,
        })
    }
}

// --- Proposal ----------------------------------------------------------------------------

impl From<Proposal> for v1::Proposal {
    fn from(p: Proposal) -> Self {
        v1::Proposal {
            key: p.key,
            title: p.title,
            spec: p.spec,
            deps: p.deps,
        }
    }
}

impl TryFrom<v1::Proposal> for Proposal {
    type Error = ConversionError;

    /// Checks only shape (title and spec present). Whether the spec exists and the deps
    /// resolve is intake's job: a bad proposal is a finding there, not a transport error.
    fn try_from(p: v1::Proposal) -> Result<Self, Self::Error> {
        Ok(Proposal {
            key: p.key.filter(|k| !k.is_empty()),
            title: require_text("title", p.title)?,
            spec: require_text("spec", p.spec)?,
            deps: p.deps,
        })
    }
}

// --- Task --------------------------------------------------------------------------------

impl From<Task> for v1::Task {
    /// Leaves `step_path` and `step_name` empty: the pipeline position is not part of the
    /// domain task; the admin API fills it in.
    fn from(t: Task) -> Self {
        v1::Task {
            id: t.id.to_string(),
            title: t.title,
            spec_ref: Some(t.spec_ref.into()),
            status: v1::TaskStatus::from(t.status).into(),
            deps: t.deps.iter().map(ToString::to_string).collect(),
            round: t.round,
            branch: t.branch,
            pr: t.pr,
            step_path: String::new(),
            step_name: String::new(),
        }
    }
}

impl TryFrom<v1::Task> for Task {
    type Error = ConversionError;

    fn try_from(t: v1::Task) -> Result<Self, Self::Error> {
        Ok(Task {
            id: parse_task_id("id", &t.id)?,
            title: require_text("title", t.title)?,
            spec_ref: require("spec_ref", t.spec_ref)?,
            status: parse_task_status("status", t.status)?,
            deps: parse_task_ids("deps", &t.deps)?,
            round: t.round,
            branch: t.branch.filter(|b| !b.is_empty()),
            pr: t.pr.filter(|p| !p.is_empty()),
        })
    }
}
