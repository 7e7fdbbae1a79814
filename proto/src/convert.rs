//! Conversions between `hyperloop.v1` messages and [`hyperloop_shared::model`] types.
//!
//! Domain → wire is `From` and cannot fail. Wire → domain is `TryFrom` (or a `parse_*`
//! function where both types are foreign, e.g. a task id carried as a plain string) and
//! validates everything: unset required fields, `*_UNSPECIFIED` enums, unknown enum
//! numbers, malformed task ids and spec refs all become a [`ConversionError`] naming the
//! field. Fields of the wire messages that the domain type does not have (a task's pipeline
//! position, for instance) are left at their defaults by `From` for the caller to fill in.

use hyperloop_shared::model::{
    AttemptId, Proposal, Review, SpecPath, SpecRef, Task, TaskId, TaskStatus, Verdict, WorkerResult,
};

use crate::ConversionError;
use crate::v1;
use hyperloop_shared::pipeline::{ParsePositionError, Position};

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

/// Reads a required attempt id (lease id); 0 means unset.
///
/// # Errors
///
/// `MissingField` when 0.
pub fn parse_attempt_id(field: &str, value: u64) -> Result<u64, ConversionError> {
    if value == 0 {
        Err(ConversionError::missing(field))
    } else {
        Ok(value)
    }
}

/// Reads a required, non-negative `google.protobuf.Duration` (heartbeat interval, step
/// timeout, step duration).
///
/// # Errors
///
/// `MissingField` when unset, `OutOfRange` when negative or not normalized.
pub fn parse_duration(
    field: &str,
    value: Option<prost_types::Duration>,
) -> Result<std::time::Duration, ConversionError> {
    let wire = value.ok_or_else(|| ConversionError::missing(field))?;
    std::time::Duration::try_from(wire).map_err(|e| ConversionError::OutOfRange {
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

/// Encodes a duration for the wire, saturating at the largest representable value.
pub fn duration_to_wire(value: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(value).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

fn require_text(field: &str, value: String) -> Result<String, ConversionError> {
    if value.is_empty() {
        Err(ConversionError::missing(field))
    } else {
        Ok(value)
    }
}

// --- Verdict, TaskStatus ----------------------------------------------------------------

/// Both directions between a domain enum and the wire enum of the same name, whose variants
/// are the domain's plus `Unspecified`, which reads as the missing `field`.
macro_rules! wire_enum {
    ($name:ident, $field:literal, [$($variant:ident),+ $(,)?]) => {
        impl From<$name> for v1::$name {
            fn from(v: $name) -> Self {
                match v {
                    $($name::$variant => v1::$name::$variant,)+
                }
            }
        }

        impl TryFrom<v1::$name> for $name {
            type Error = ConversionError;

            fn try_from(v: v1::$name) -> Result<Self, Self::Error> {
                match v {
                    v1::$name::Unspecified => Err(ConversionError::missing($field)),
                    $(v1::$name::$variant => Ok($name::$variant),)+
                }
            }
        }
    };
}

wire_enum!(Verdict, "verdict", [Pass, Fail]);
wire_enum!(
    TaskStatus,
    "status",
    [NotStarted, InProgress, Complete, Failed]
);

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

/// An empty position means "none" (not started, or terminal).
fn parse_position(field: &str, value: &str) -> Result<Option<Position>, ConversionError> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e: ParsePositionError| ConversionError::InvalidPosition {
            field: field.to_owned(),
            reason: e.to_string(),
        })
}

// --- Task --------------------------------------------------------------------------------

impl From<Task> for v1::Task {
    fn from(t: Task) -> Self {
        let (step_path, step_name) = t
            .position
            .as_ref()
            .map(|p| (p.to_string(), p.step().to_string()))
            .unwrap_or_default();
        v1::Task {
            id: t.id.to_string(),
            title: t.title,
            spec_ref: Some(t.spec_ref.into()),
            status: v1::TaskStatus::from(t.status).into(),
            deps: t.deps.iter().map(ToString::to_string).collect(),
            round: t.round,
            branch: t.branch,
            pr: t.pr,
            step_path,
            step_name,
            action_attempts: t.action_attempts,
            failure: t.failure,
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
            position: parse_position("step_path", &t.step_path)?,
            action_attempts: t.action_attempts,
            failure: t.failure.filter(|f| !f.is_empty()),
            // Retry timing is the coordinator's bookkeeping; the wire does not carry it.
            retry: None,
        })
    }
}

impl From<hyperloop_shared::step::StepOrder> for v1::Assign {
    fn from(order: hyperloop_shared::step::StepOrder) -> Self {
        use hyperloop_shared::config::AgentProgram;
        let runtime = order.runtime;
        let (kind, command) = match runtime.program {
            AgentProgram::Claude => (v1::RuntimeKind::Claude, Vec::new()),
            AgentProgram::Command(argv) => (v1::RuntimeKind::Command, argv),
        };
        let deadline = std::time::UNIX_EPOCH + std::time::Duration::from_millis(order.deadline_ms);
        v1::Assign {
            attempt_id: order.attempt.0,
            task_id: order.subject,
            step_path: order.step,
            role: order.role,
            round: order.round,
            prompt: order.prompt,
            spec_ref: order.spec_ref.map(v1::SpecRef::from),
            repo_url: order.repo_url,
            base_branch: order.base_branch,
            base_commit: order.base_commit,
            branch: order.branch,
            runtime: Some(v1::RuntimeSettings {
                kind: kind.into(),
                command,
                model: runtime.model.unwrap_or_default(),
                max_turns: runtime.max_turns,
                timeout: Some(duration_to_wire(runtime.timeout)),
                budget_usd: runtime.budget_usd,
                env_passthrough: runtime.env_passthrough,
                extra_env: Default::default(),
                git_identity: Some(v1::GitIdentity {
                    name: runtime.git_identity.name,
                    email: runtime.git_identity.email,
                }),
            }),
            deadline: Some(prost_types::Timestamp::from(deadline)),
            trace_context: order.trace_context.into_iter().collect(),
            checks: order.checks.map(|names| v1::CheckList { names }),
        }
    }
}

/// A worker's report never fails to convert: what cannot be read (no verdict, an unknown
/// verdict, a malformed proposal) becomes a failed step whose detail says so, because the
/// attempt must still end and be acknowledged.
impl From<v1::StepResult> for hyperloop_shared::step::StepReport {
    fn from(result: v1::StepResult) -> Self {
        let (verdict, detail) = match result.result {
            Some(r) => match parse_verdict("result.verdict", r.verdict) {
                Ok(v) => (v, r.detail),
                Err(e) => (
                    Verdict::Fail,
                    format!("the worker sent an unusable result: {e}"),
                ),
            },
            None => (
                Verdict::Fail,
                "the worker sent a result without a verdict".to_owned(),
            ),
        };
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        hyperloop_shared::step::StepReport {
            attempt: hyperloop_shared::model::AttemptId(result.attempt_id),
            subject: result.task_id,
            step: result.step_path,
            verdict,
            detail,
            branch: nonempty(result.branch),
            head_commit: nonempty(result.head_commit),
            new_commits: result.new_commits,
            usage: hyperloop_shared::step::Usage {
                turns: result.turns,
                cost_usd: result.cost_usd,
                tokens: result.tokens.map(Into::into).unwrap_or_default(),
            }
            .sanitized(),
            duration: result
                .duration
                .and_then(|d| std::time::Duration::try_from(d).ok())
                .unwrap_or_default(),
            proposals: result
                .proposals
                .into_iter()
                .filter_map(|p| Proposal::try_from(p).ok())
                .collect(),
        }
    }
}

// --- Push fence --------------------------------------------------------------------------

impl From<hyperloop_shared::step::PushRequest> for v1::PushRequest {
    fn from(request: hyperloop_shared::step::PushRequest) -> Self {
        v1::PushRequest {
            attempt_id: request.attempt.0,
            head_commit: request.head_commit,
        }
    }
}

impl TryFrom<v1::PushRequest> for hyperloop_shared::step::PushRequest {
    type Error = ConversionError;

    fn try_from(wire: v1::PushRequest) -> Result<Self, Self::Error> {
        Ok(hyperloop_shared::step::PushRequest {
            attempt: AttemptId(parse_attempt_id(
                "push_request.attempt_id",
                wire.attempt_id,
            )?),
            head_commit: require_text("push_request.head_commit", wire.head_commit)?,
        })
    }
}

impl From<hyperloop_shared::step::PushAnswer> for v1::PushAnswer {
    fn from(answer: hyperloop_shared::step::PushAnswer) -> Self {
        use hyperloop_shared::step::PushGrant;
        let (granted, valid_for, reason) = match answer.grant {
            PushGrant::Granted { valid_for } => (true, valid_for, String::new()),
            PushGrant::Refused { reason } => (false, std::time::Duration::ZERO, reason),
        };
        v1::PushAnswer {
            attempt_id: answer.attempt.0,
            granted,
            valid_for: Some(duration_to_wire(valid_for)),
            reason,
        }
    }
}

/// A grant must say how long it holds: without `valid_for` there is no safe time to push.
impl TryFrom<v1::PushAnswer> for hyperloop_shared::step::PushAnswer {
    type Error = ConversionError;

    fn try_from(wire: v1::PushAnswer) -> Result<Self, Self::Error> {
        use hyperloop_shared::step::PushGrant;
        let attempt = AttemptId(parse_attempt_id("push_answer.attempt_id", wire.attempt_id)?);
        let grant = if wire.granted {
            PushGrant::Granted {
                valid_for: parse_duration("push_answer.valid_for", wire.valid_for)?,
            }
        } else {
            PushGrant::Refused {
                reason: wire.reason,
            }
        };
        Ok(hyperloop_shared::step::PushAnswer { attempt, grant })
    }
}

impl From<hyperloop_shared::step::Tokens> for v1::TokenUsage {
    fn from(t: hyperloop_shared::step::Tokens) -> Self {
        v1::TokenUsage {
            input: t.input,
            output: t.output,
            cache_read: t.cache_read,
            cache_write: t.cache_write,
        }
    }
}

impl From<v1::TokenUsage> for hyperloop_shared::step::Tokens {
    fn from(t: v1::TokenUsage) -> Self {
        hyperloop_shared::step::Tokens {
            input: t.input,
            output: t.output,
            cache_read: t.cache_read,
            cache_write: t.cache_write,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_ref() -> SpecRef {
        "specs/auth.md@0123abcd".parse().unwrap()
    }

    fn task() -> Task {
        Task {
            id: TaskId(7),
            title: "Add login".into(),
            spec_ref: spec_ref(),
            status: TaskStatus::InProgress,
            deps: vec![TaskId(3), TaskId(12)],
            round: 2,
            branch: Some("hyperloop/task-007".into()),
            pr: None,
            position: Some(
                "0.1/agent:verifier@0123456789abcdef"
                    .parse()
                    .expect("a valid position"),
            ),
            action_attempts: 1,
            failure: None,
            retry: None,
        }
    }

    fn review() -> Review {
        Review {
            task_id: TaskId(7),
            round: 1,
            role: "verifier".into(),
            verdict: Verdict::Fail,
            detail: "tests missing".into(),
        }
    }

    /// Asserts that converting `wire` fails with a missing-field error naming `field`, and
    /// that it reaches a gRPC peer as INVALID_ARGUMENT naming the field too.
    fn check_missing<W, D>(wire: W, field: &str)
    where
        D: TryFrom<W, Error = ConversionError> + std::fmt::Debug,
    {
        let err = D::try_from(wire).expect_err(field);
        assert_eq!(err, ConversionError::missing(field), "{field}");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains(&format!("`{field}`")),
            "{}",
            status.message()
        );
    }

    #[test]
    fn domain_values_round_trip_through_the_wire() {
        for v in [Verdict::Pass, Verdict::Fail] {
            assert_eq!(Verdict::try_from(v1::Verdict::from(v)), Ok(v));
        }
        for s in [
            TaskStatus::NotStarted,
            TaskStatus::InProgress,
            TaskStatus::Complete,
            TaskStatus::Failed,
        ] {
            assert_eq!(TaskStatus::try_from(v1::TaskStatus::from(s)), Ok(s));
            assert_eq!(
                parse_task_status("status", v1::TaskStatus::from(s).into()),
                Ok(s)
            );
        }
        assert_eq!(
            SpecRef::try_from(v1::SpecRef::from(spec_ref())),
            Ok(spec_ref())
        );
        let result = WorkerResult::fail("no tests");
        assert_eq!(
            WorkerResult::try_from(v1::WorkerResult::from(result.clone())),
            Ok(result)
        );
        assert_eq!(Review::try_from(v1::Review::from(review())), Ok(review()));
        assert_eq!(Task::try_from(v1::Task::from(task())), Ok(task()));
        let proposal = Proposal {
            key: Some("a".into()),
            title: "Do it".into(),
            spec: "specs/x.md".into(),
            deps: vec!["b".into(), "task-001".into()],
        };
        assert_eq!(
            Proposal::try_from(v1::Proposal::from(proposal.clone())),
            Ok(proposal)
        );
    }

    #[test]
    fn domain_values_survive_protobuf_encoding() {
        use prost::Message as _;
        let wire = v1::Task::from(task());
        let decoded = v1::Task::decode(wire.encode_to_vec().as_slice()).unwrap();
        assert_eq!(Task::try_from(decoded), Ok(task()));
    }

    #[test]
    fn every_missing_required_field_is_invalid_argument_naming_it() {
        let spec = v1::SpecRef::from(spec_ref());
        check_missing::<_, SpecRef>(
            v1::SpecRef {
                path: String::new(),
                ..spec.clone()
            },
            "path",
        );
        check_missing::<_, SpecRef>(
            v1::SpecRef {
                commit: String::new(),
                ..spec
            },
            "commit",
        );

        check_missing::<_, WorkerResult>(v1::WorkerResult::default(), "verdict");

        let r = v1::Review::from(review());
        check_missing::<_, Review>(
            v1::Review {
                task_id: String::new(),
                ..r.clone()
            },
            "task_id",
        );
        check_missing::<_, Review>(
            v1::Review {
                role: String::new(),
                ..r.clone()
            },
            "role",
        );
        check_missing::<_, Review>(v1::Review { verdict: 0, ..r }, "verdict");

        let p = v1::Proposal {
            key: None,
            title: "t".into(),
            spec: "specs/x.md".into(),
            deps: vec![],
        };
        check_missing::<_, Proposal>(
            v1::Proposal {
                title: String::new(),
                ..p.clone()
            },
            "title",
        );
        check_missing::<_, Proposal>(
            v1::Proposal {
                spec: String::new(),
                ..p
            },
            "spec",
        );

        let t = v1::Task::from(task());
        check_missing::<_, Task>(
            v1::Task {
                id: String::new(),
                ..t.clone()
            },
            "id",
        );
        check_missing::<_, Task>(
            v1::Task {
                title: String::new(),
                ..t.clone()
            },
            "title",
        );
        check_missing::<_, Task>(
            v1::Task {
                spec_ref: None,
                ..t.clone()
            },
            "spec_ref",
        );
        check_missing::<_, Task>(
            v1::Task {
                status: 0,
                ..t.clone()
            },
            "status",
        );
        // Nested messages report the full path.
        let nested = v1::Task {
            spec_ref: Some(v1::SpecRef {
                commit: String::new(),
                path: "specs/a.md".into(),
            }),
            ..t.clone()
        };
        check_missing::<_, Task>(nested, "spec_ref.commit");
        check_missing::<_, Task>(
            v1::Task {
                deps: vec![String::new()],
                ..t
            },
            "deps[0]",
        );
    }

    #[test]
    fn a_task_keeps_its_pipeline_position_across_the_wire() {
        let wire = v1::Task::from(task());
        assert_eq!(wire.step_path, "0.1/agent:verifier@0123456789abcdef");
        assert_eq!(wire.step_name, "agent: verifier");
        assert_eq!(Task::try_from(wire.clone()).unwrap(), task());
        let err = Task::try_from(v1::Task {
            step_path: "0.x/agent:verifier@00".into(),
            ..wire
        })
        .unwrap_err();
        assert_eq!(err.field(), "step_path");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn unknown_enum_numbers_are_rejected_naming_the_field() {
        let err = WorkerResult::try_from(v1::WorkerResult {
            verdict: 42,
            detail: String::new(),
        })
        .unwrap_err();
        assert_eq!(
            err,
            ConversionError::UnknownEnumValue {
                field: "verdict".into(),
                value: 42
            }
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
        let t = v1::Task {
            status: -1,
            ..v1::Task::from(task())
        };
        assert_eq!(Task::try_from(t).unwrap_err().field(), "status");
    }

    #[test]
    fn bad_task_ids_are_rejected() {
        for bad in ["7", "task-", "task-../1", "TASK-1", "task-1a", "task-1/.."] {
            let err = parse_task_id("task_id", bad).unwrap_err();
            assert!(
                matches!(err, ConversionError::InvalidField { .. }),
                "{bad:?}: {err}"
            );
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains("`task_id`"),
                "{}",
                status.message()
            );
        }
        let t = v1::Task {
            deps: vec!["task-001".into(), "nope".into()],
            ..v1::Task::from(task())
        };
        assert_eq!(Task::try_from(t).unwrap_err().field(), "deps[1]");
        let r = v1::Review {
            task_id: "task-x".into(),
            ..v1::Review::from(review())
        };
        assert_eq!(Review::try_from(r).unwrap_err().field(), "task_id");
    }

    #[test]
    fn bad_spec_refs_are_rejected() {
        let cases = [
            ("/etc/passwd", "0123abcd", "path"),
            ("../x.md", "0123abcd", "path"),
            ("specs/../../x.md", "0123abcd", "path"),
            ("specs/x@y.md", "0123abcd", "path"),
            ("specs/x.md", "zz", "commit"),
            ("specs/x.md", "abc", "commit"),
            ("specs/x.md", "0123@abcd", "commit"),
        ];
        for (path, commit, field) in cases {
            let wire = v1::SpecRef {
                path: path.into(),
                commit: commit.into(),
            };
            let err = SpecRef::try_from(wire).unwrap_err();
            assert!(
                matches!(err, ConversionError::InvalidField { .. }),
                "{path}@{commit}"
            );
            assert_eq!(err.field(), field, "{path}@{commit}");
        }
        let t = v1::Task {
            spec_ref: Some(v1::SpecRef {
                path: "/abs.md".into(),
                commit: "0123abcd".into(),
            }),
            ..v1::Task::from(task())
        };
        let status = tonic::Status::from(Task::try_from(t).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("`spec_ref.path`"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn attempt_ids_and_durations_are_checked() {
        assert_eq!(parse_attempt_id("assign.attempt_id", 9), Ok(9));
        assert_eq!(
            parse_attempt_id("assign.attempt_id", 0)
                .unwrap_err()
                .field(),
            "assign.attempt_id"
        );

        let five = std::time::Duration::from_millis(5_250);
        assert_eq!(
            parse_duration("timeout", Some(duration_to_wire(five))),
            Ok(five)
        );
        assert_eq!(
            parse_duration("timeout", None),
            Err(ConversionError::missing("timeout"))
        );
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        let err = parse_duration("heartbeat_interval", Some(negative)).unwrap_err();
        assert!(matches!(err, ConversionError::OutOfRange { .. }), "{err}");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn empty_optional_strings_become_none() {
        let t = v1::Task {
            branch: Some(String::new()),
            pr: Some(String::new()),
            ..v1::Task::from(task())
        };
        let t = Task::try_from(t).unwrap();
        assert_eq!((t.branch, t.pr), (None, None));
        let p = v1::Proposal {
            key: Some(String::new()),
            title: "t".into(),
            spec: "s".into(),
            deps: vec![],
        };
        assert_eq!(Proposal::try_from(p).unwrap().key, None);
    }

    #[test]
    fn push_requests_and_answers_round_trip_and_a_grant_without_valid_for_is_refused() {
        use hyperloop_shared::step::{PushAnswer, PushGrant, PushRequest};
        let request = PushRequest {
            attempt: AttemptId(7),
            head_commit: "abc123".into(),
        };
        assert_eq!(
            PushRequest::try_from(v1::PushRequest::from(request.clone())),
            Ok(request)
        );
        check_missing::<_, PushRequest>(
            v1::PushRequest {
                attempt_id: 7,
                head_commit: String::new(),
            },
            "push_request.head_commit",
        );
        for grant in [
            PushGrant::Granted {
                valid_for: std::time::Duration::from_millis(1_500),
            },
            PushGrant::Refused {
                reason: "attempt 7 was revoked".into(),
            },
        ] {
            let answer = PushAnswer {
                attempt: AttemptId(7),
                grant,
            };
            assert_eq!(
                PushAnswer::try_from(v1::PushAnswer::from(answer.clone())),
                Ok(answer)
            );
        }
        let refused = v1::PushAnswer::from(PushAnswer {
            attempt: AttemptId(7),
            grant: PushGrant::Refused {
                reason: "no".into(),
            },
        });
        assert_eq!(
            refused.valid_for,
            Some(duration_to_wire(std::time::Duration::ZERO)),
            "a refusal grants no time"
        );
        check_missing::<_, PushAnswer>(
            v1::PushAnswer {
                attempt_id: 7,
                granted: true,
                valid_for: None,
                reason: String::new(),
            },
            "push_answer.valid_for",
        );
    }
}
