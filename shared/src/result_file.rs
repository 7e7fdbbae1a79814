//! Parsing and validation of the agent result file, `.hyperloop/result.md`.
//!
//! The result file is the only channel from an agent into hyperloop's state. It is markdown
//! with YAML front matter:
//!
//! ```text
//! ---
//! task_id: task-007        # `intake` for the PM, `process-improvement` for the improver
//! round: 3
//! role: verifier
//! verdict: fail            # exactly `pass` or `fail`
//! tasks: []                # PM only: the proposals (title, spec, deps, optional key)
//! ---
//! The body: findings, one actionable item per bullet.
//! ```
//!
//! [`evaluate`] never lets a problem pass silently: a missing, oversized, malformed, stale or
//! otherwise invalid file yields a **fail** whose detail lists every problem found and shows the
//! front matter the agent should have written. The front matter is checked against the step
//! that is being reaped ([`Expected`]), so a file left over from an earlier round or another
//! role (the original tool misread those as the current verdict) is rejected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_yaml::{Mapping, Value};

use crate::model::{ModelError, Proposal, SpecPath, TaskId, Verdict, WorkerResult};

/// Where the agent writes its result, relative to the worktree root. Workers also export the
/// absolute path as `HYPERLOOP_RESULT_FILE`. The file is git-ignored and never committed.
pub const RESULT_FILE_PATH: &str = ".hyperloop/result.md";

/// Largest result file accepted, in bytes. A verdict plus findings fits in a few KiB; anything
/// near this size is a runaway agent (pasted logs, a dumped file) and would bloat every later
/// prompt that carries the findings. Readers should read at most `MAX_RESULT_BYTES + 1` bytes.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

/// Most proposals accepted from one intake run. Tasks are meant to be small, but a PM that
/// proposes hundreds at once has misread the specs; a fail makes it try again.
pub const MAX_PROPOSALS: usize = 100;

/// Longest accepted proposal title, in characters: titles are one-line summaries shown in
/// tables, branch listings and notifications.
pub const MAX_TITLE_CHARS: usize = 200;

/// Longest accepted proposal `key`, in characters.
pub const MAX_KEY_CHARS: usize = 64;

/// How much of a rejected file's body is quoted back in the finding, in bytes.
const QUOTED_BODY_BYTES: usize = 16 * 1024;

/// What a result file is about: a task step, an intake run or a process-improvement run.
/// Rendered into the `task_id` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    Task(TaskId),
    /// A PM intake run; the only subject whose result may carry `tasks:`.
    Intake,
    /// A process-improver run.
    Improvement,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Task(id) => id.fmt(f),
            Subject::Intake => f.write_str("intake"),
            Subject::Improvement => f.write_str("process-improvement"),
        }
    }
}

/// The step whose result is being read. Every field must match the file's front matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub subject: Subject,
    /// The task's round; for intake and improvement runs, the coordinator's run counter, so a
    /// file left behind by an earlier run is caught the same way.
    pub round: u32,
    pub role: String,
}

impl Expected {
    pub fn new(subject: Subject, round: u32, role: impl Into<String>) -> Self {
        Self {
            subject,
            round,
            role: role.into(),
        }
    }

    /// Whether this step may (and on `pass` must) carry a `tasks:` list.
    pub fn takes_proposals(&self) -> bool {
        self.subject == Subject::Intake
    }

    /// The exact front matter this step must write (with `verdict: pass` as the example),
    /// including the delimiting `---` lines.
    pub fn front_matter(&self) -> String {
        let mut s = format!(
            "---\ntask_id: {}\nround: {}\nrole: {}\nverdict: pass\n",
            self.subject, self.round, self.role
        );
        if self.takes_proposals() {
            s.push_str("tasks: []\n");
        }
        s.push_str("---\n");
        s
    }
}

/// The contract as taught to an agent: where the file goes and exactly what it contains.
/// Prompt assembly embeds this verbatim, so the text the agent reads and the rules
/// [`evaluate`] applies come from one place.
pub fn contract(expected: &Expected) -> String {
    let mut s = format!(
        "When you are done, write the result file `{RESULT_FILE_PATH}` in the root of your \
         working tree (its absolute path is in the environment variable \
         `HYPERLOOP_RESULT_FILE`). The file is git-ignored: never commit it. Write it last, \
         after everything else is finished; it replaces any earlier file. It must begin with \
         exactly this front matter, with `verdict` set to `pass` or `fail` (lowercase):\n\n\
         ```\n{}```\n\n",
        expected.front_matter()
    );
    if expected.takes_proposals() {
        s.push_str(
            "`tasks` lists the tasks you propose, one entry per task:\n\n\
             ```\n\
             tasks:\n\
             \x20 - key: login-endpoint      # optional, unique in this list\n\
             \x20   title: \"Add POST /auth/login returning a JWT\"\n\
             \x20   spec: specs/auth.md       # repository-relative, no `@commit`\n\
             \x20   deps: []\n\
             \x20 - title: \"Reject expired JWTs on GET /auth/me\"\n\
             \x20   spec: specs/auth.md\n\
             \x20   deps: [login-endpoint, task-004]\n\
             ```\n\n\
             `title` is a one-line summary (quote it if it contains `: ` or `#`). `deps` holds \
             the `key` of another task in this list, or the id of an existing task \
             (`task-` and digits). A `key` is letters, digits, `.`, `_` and `-`, and must not \
             look like a task id. Dependencies must not form a cycle. Write `tasks: []` when \
             no work is needed. Do not write task ids for new tasks: the coordinator assigns \
             them.\n\n",
        );
    }
    s.push_str(
        "Below the front matter, write your findings in markdown. With `fail`, list every \
         concrete problem as its own bullet: what is wrong, where (file and line, test or \
         command), and what must change. A missing, malformed or mismatched result file \
         counts as `fail`. Report your verdict only through this file: task status belongs to \
         the coordinator, never try to change it yourself.",
    );
    s
}

/// The outcome of reading a result file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The verdict and detail to record. A rejected file is always a fail.
    pub result: WorkerResult,
    /// Validated PM proposals; empty unless the step is an intake run that passed.
    pub proposals: Vec<Proposal>,
    /// Everything wrong with the file; empty when it was accepted as written.
    pub violations: Vec<Violation>,
}

impl Outcome {
    /// Whether the file was accepted as written (its verdict may still be `fail`).
    pub fn is_accepted(&self) -> bool {
        self.violations.is_empty()
    }
}

/// A problem with a result file. `Display` renders the sentence that goes into the finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    Missing,
    NotUtf8,
    TooLarge {
        bytes: usize,
    },
    /// The file is wrapped in a markdown code fence instead of starting with `---`.
    Fenced,
    NoFrontMatter,
    UnterminatedFrontMatter,
    MalformedYaml {
        /// Line in the result file, when the parser reports one.
        line: Option<usize>,
        message: String,
    },
    FrontMatterNotMapping,
    MissingField(&'static str),
    UnknownField {
        field: String,
        suggestion: Option<&'static str>,
    },
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    BadVerdict(String),
    TaskIdMismatch {
        found: String,
        expected: Subject,
    },
    RoundMismatch {
        found: u64,
        expected: u32,
    },
    RoleMismatch {
        found: String,
        expected: String,
    },
    TasksNotAllowed {
        role: String,
    },
    TasksMissing,
    TooManyProposals {
        count: usize,
    },
    Proposal {
        index: usize,
        problem: ProposalProblem,
    },
    DependencyCycle(Vec<String>),
}

/// A problem with one entry of `tasks:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalProblem {
    NotMapping,
    MissingField(&'static str),
    UnknownField {
        field: String,
        suggestion: Option<&'static str>,
    },
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    EmptyTitle,
    MultilineTitle,
    TitleTooLong {
        chars: usize,
    },
    BadSpec(ModelError),
    BadKey {
        key: String,
        reason: &'static str,
    },
    DuplicateKey(String),
    DuplicateProposal,
    SelfDependency(String),
    UnknownDependency(String),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Missing => write!(
                f,
                "No result file: `{RESULT_FILE_PATH}` (the path in `$HYPERLOOP_RESULT_FILE`) \
                 does not exist. Every step must end by writing it."
            ),
            Violation::NotUtf8 => f.write_str("The result file is not valid UTF-8 text."),
            Violation::TooLarge { bytes } => write!(
                f,
                "The result file is {bytes} bytes; the limit is {MAX_RESULT_BYTES} bytes \
                 (256 KiB). Keep findings short and point at files or logs instead of pasting \
                 them."
            ),
            Violation::Fenced => f.write_str(
                "The result file starts with a ``` code fence. Write the file itself: its first \
                 line must be `---`.",
            ),
            Violation::NoFrontMatter => f.write_str(
                "The result file has no front matter: its first line must be `---`, followed by \
                 the YAML fields and a closing `---` line.",
            ),
            Violation::UnterminatedFrontMatter => f.write_str(
                "The front matter is not closed: add a line containing only `---` after the \
                 YAML fields.",
            ),
            Violation::MalformedYaml { line, message } => {
                f.write_str("The front matter is not valid YAML")?;
                if let Some(line) = line {
                    write!(f, " (line {line} of the file)")?;
                }
                write!(
                    f,
                    ": {message}. Quote string values that contain `: `, `#` or start with a \
                     special character."
                )
            }
            Violation::FrontMatterNotMapping => {
                f.write_str("The front matter must be a YAML mapping of `field: value` lines.")
            }
            Violation::MissingField(field) => write!(f, "The field `{field}` is missing."),
            Violation::UnknownField { field, suggestion } => {
                write!(f, "Unknown field `{field}`")?;
                match suggestion {
                    Some(s) => write!(f, "; did you mean `{s}`?"),
                    None => f.write_str(
                        "; the allowed fields are task_id, round, role, verdict and (for the \
                         PM) tasks.",
                    ),
                }
            }
            Violation::WrongType {
                field,
                expected,
                found,
            } => write!(
                f,
                "The field `{field}` must be {expected}, but it is {found}."
            ),
            Violation::BadVerdict(found) => {
                write!(
                    f,
                    "`verdict` is {found}; it must be exactly `pass` or `fail`"
                )?;
                if matches!(
                    found.trim_matches('`').to_ascii_lowercase().as_str(),
                    "pass" | "fail"
                ) {
                    f.write_str(", in lowercase")?;
                }
                f.write_str(".")
            }
            Violation::TaskIdMismatch { found, expected } => write!(
                f,
                "`task_id` is `{found}` but this step is for `{expected}`: the file is stale or \
                 meant for another task. Write `task_id: {expected}`."
            ),
            Violation::RoundMismatch { found, expected } => write!(
                f,
                "`round` is {found} but this step is round {expected}: the file is stale, left \
                 over from an earlier round. Write `round: {expected}`."
            ),
            Violation::RoleMismatch { found, expected } => write!(
                f,
                "`role` is `{found}` but this step is run by `{expected}`: the file was written \
                 for another step. Write `role: {expected}`."
            ),
            Violation::TasksNotAllowed { role } => write!(
                f,
                "The field `tasks` is only for intake (the PM); remove it. The `{role}` role \
                 reports only a verdict and findings."
            ),
            Violation::TasksMissing => f.write_str(
                "The field `tasks` is missing. List the proposed tasks, or write `tasks: []` if \
                 the specs are already satisfied.",
            ),
            Violation::TooManyProposals { count } => write!(
                f,
                "`tasks` has {count} entries; at most {MAX_PROPOSALS} are accepted per intake. \
                 Propose the most important work first; the rest can follow in a later intake."
            ),
            Violation::Proposal { index, problem } => write!(f, "`tasks[{index}]`: {problem}"),
            Violation::DependencyCycle(keys) => write!(
                f,
                "The `deps` of the proposed tasks form a cycle ({}); a task cannot depend on \
                 itself, directly or through others. Remove one of these dependencies.",
                keys.join(" -> ")
            ),
        }
    }
}

impl fmt::Display for ProposalProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposalProblem::NotMapping => f.write_str(
                "each entry must be a mapping with `title`, `spec`, `deps` and optionally `key`.",
            ),
            ProposalProblem::MissingField(field) => write!(f, "the field `{field}` is missing."),
            ProposalProblem::UnknownField { field, suggestion } => {
                write!(f, "unknown field `{field}`")?;
                match suggestion {
                    Some(s) => write!(f, "; did you mean `{s}`?"),
                    None => f.write_str("; the allowed fields are key, title, spec and deps."),
                }
            }
            ProposalProblem::WrongType {
                field,
                expected,
                found,
            } => write!(f, "`{field}` must be {expected}, but it is {found}."),
            ProposalProblem::EmptyTitle => {
                f.write_str("`title` is empty; write a one-line summary.")
            }
            ProposalProblem::MultilineTitle => {
                f.write_str("`title` spans several lines; write a one-line summary.")
            }
            ProposalProblem::TitleTooLong { chars } => write!(
                f,
                "`title` is {chars} characters; keep it under {MAX_TITLE_CHARS} and put details \
                 in the spec."
            ),
            ProposalProblem::BadSpec(e) => write!(
                f,
                "`spec`: {e}. Write the spec's repository-relative path, e.g. `specs/auth.md`."
            ),
            ProposalProblem::BadKey { key, reason } => write!(f, "`key` {key:?} {reason}."),
            ProposalProblem::DuplicateKey(key) => write!(
                f,
                "`key` {key:?} is used by an earlier entry; keys must be unique in the list."
            ),
            ProposalProblem::DuplicateProposal => f.write_str(
                "repeats an earlier entry (same title and spec); propose each task once.",
            ),
            ProposalProblem::SelfDependency(key) => {
                write!(
                    f,
                    "`deps` contains its own key {key:?}; a task cannot depend on itself."
                )
            }
            ProposalProblem::UnknownDependency(dep) => write!(
                f,
                "`deps` entry {dep:?} is neither the `key` of a task in this list nor a task id \
                 such as `task-004`."
            ),
        }
    }
}

/// Reads raw bytes as the worker found them (`None` when there was no file). Checks the size
/// before decoding, so a huge binary file is reported as too large, not as bad UTF-8.
pub fn evaluate_bytes(bytes: Option<&[u8]>, expected: &Expected) -> Outcome {
    match bytes {
        Some(b) if b.len() > MAX_RESULT_BYTES => {
            reject(expected, vec![Violation::TooLarge { bytes: b.len() }], None)
        }
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => evaluate(Some(text), expected),
            Err(_) => reject(expected, vec![Violation::NotUtf8], None),
        },
        None => evaluate(None, expected),
    }
}

/// Validates a result file against the step it should belong to and turns it into the
/// step's result. Never fails: every problem becomes a fail [`WorkerResult`] whose detail
/// lists all problems and the front matter the agent should have written.
pub fn evaluate(text: Option<&str>, expected: &Expected) -> Outcome {
    let Some(text) = text else {
        return reject(expected, vec![Violation::Missing], None);
    };
    if text.len() > MAX_RESULT_BYTES {
        return reject(
            expected,
            vec![Violation::TooLarge { bytes: text.len() }],
            None,
        );
    }
    let split = match split_front_matter(text) {
        Ok(split) => split,
        Err(v) => return reject(expected, vec![v], None),
    };
    let value: Value = match serde_yaml::from_str(split.yaml) {
        Ok(v) => v,
        Err(e) => {
            let line = e.location().map(|l| l.line() + split.yaml_first_line - 1);
            let message = yaml_message(&e);
            return reject(
                expected,
                vec![Violation::MalformedYaml { line, message }],
                None,
            );
        }
    };
    let map = match value {
        Value::Mapping(map) => map,
        // `---\n---` is an empty mapping: report each missing field rather than the shape.
        Value::Null => Mapping::new(),
        _ => return reject(expected, vec![Violation::FrontMatterNotMapping], None),
    };

    let mut fields = Fields::default();
    let mut violations = check_fields(&map, expected, &mut fields);
    let body = split.body.trim();

    let proposals = match (fields.verdict, fields.tasks) {
        // A failed intake proposes nothing; its `tasks` are not worth validating.
        (Some(Verdict::Pass), Some(tasks)) if expected.takes_proposals() => {
            let (proposals, problems) = check_proposals(tasks);
            violations.extend(problems);
            proposals
        }
        (Some(Verdict::Pass), None) if expected.takes_proposals() && fields.tasks_absent => {
            violations.push(Violation::TasksMissing);
            Vec::new()
        }
        _ => Vec::new(),
    };

    if !violations.is_empty() {
        // Quote the agent's own findings only when the file was written for this step: a
        // stale file's body describes some other attempt and would mislead.
        let quoted = fields.identity_matches.then_some(body);
        return reject(expected, violations, quoted);
    }
    let verdict = fields.verdict.unwrap_or(Verdict::Fail);
    let detail = match verdict {
        Verdict::Fail if body.is_empty() => {
            "The agent reported `fail` but wrote no findings in the result file.".to_owned()
        }
        _ => body.to_owned(),
    };
    Outcome {
        result: WorkerResult { verdict, detail },
        proposals,
        violations,
    }
}

fn reject(expected: &Expected, violations: Vec<Violation>, body: Option<&str>) -> Outcome {
    let mut detail = format!(
        "The result file `{RESULT_FILE_PATH}` was rejected, so this step counts as a fail:\n\n"
    );
    for v in &violations {
        detail.push_str(&format!("- {v}\n"));
    }
    detail.push_str(&format!(
        "\nThe file must begin with this front matter (`verdict` is `pass` or `fail`), \
         followed by the findings in markdown:\n\n```\n{}```\n",
        expected.front_matter()
    ));
    if let Some(body) = body.filter(|b| !b.is_empty()) {
        detail.push_str("\nThe rejected file's findings were:\n\n");
        detail.push_str(truncate(body, QUOTED_BODY_BYTES));
        if body.len() > QUOTED_BODY_BYTES {
            detail.push_str("\n[… truncated]");
        }
        detail.push('\n');
    }
    Outcome {
        result: WorkerResult::fail(detail),
        proposals: Vec::new(),
        violations,
    }
}

struct Split<'a> {
    yaml: &'a str,
    /// 1-based line of the file on which `yaml` starts, to translate parser positions.
    yaml_first_line: usize,
    body: &'a str,
}

/// Splits `---`-delimited front matter from the body. Tolerates a byte-order mark, leading
/// blank lines, CRLF line ends and trailing spaces on the delimiters: none of these change
/// what the agent meant.
fn split_front_matter(text: &str) -> Result<Split<'_>, Violation> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut offset = 0;
    let mut line_no = 0;
    let mut yaml_start = None;
    for line in text.split_inclusive('\n') {
        line_no += 1;
        let content = line.trim_end();
        let start = offset;
        offset += line.len();
        match yaml_start {
            None if content.is_empty() => continue,
            None if content == "---" => yaml_start = Some((offset, line_no + 1)),
            None if content.starts_with("```") || content.starts_with("~~~") => {
                return Err(Violation::Fenced);
            }
            None => return Err(Violation::NoFrontMatter),
            Some((yaml_offset, yaml_first_line)) if content == "---" => {
                return Ok(Split {
                    yaml: &text[yaml_offset..start],
                    yaml_first_line,
                    body: &text[offset..],
                });
            }
            Some(_) => {}
        }
    }
    Err(match yaml_start {
        None => Violation::NoFrontMatter,
        Some(_) => Violation::UnterminatedFrontMatter,
    })
}

/// The parser's message without its own position, which counts from the start of the front
/// matter rather than the file.
fn yaml_message(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg,
    }
}

#[derive(Default)]
struct Fields<'a> {
    verdict: Option<Verdict>,
    tasks: Option<&'a [Value]>,
    /// `tasks` not written at all (as opposed to written with the wrong type).
    tasks_absent: bool,
    /// `task_id`, `round` and `role` are present and match the step.
    identity_matches: bool,
}

const TOP_FIELDS: &[&str] = &["task_id", "round", "role", "verdict", "tasks"];
const TOP_ALIASES: &[(&str, &str)] = &[
    ("task", "task_id"),
    ("id", "task_id"),
    ("taskid", "task_id"),
    ("status", "verdict"),
    ("result", "verdict"),
    ("outcome", "verdict"),
    ("proposals", "tasks"),
    ("iteration", "round"),
    ("agent", "role"),
];

fn check_fields<'a>(map: &'a Mapping, expected: &Expected, out: &mut Fields<'a>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for key in map.keys() {
        let known = key.as_str().is_some_and(|k| TOP_FIELDS.contains(&k));
        if !known {
            let field = render_key(key);
            let suggestion = suggest(&field, TOP_FIELDS, TOP_ALIASES);
            violations.push(Violation::UnknownField { field, suggestion });
        }
    }

    // All three are checked, so every problem is reported at once.
    let task_id = check_identity(
        map,
        "task_id",
        "a string such as `task-007`",
        plain_string,
        |found| {
            (!subject_matches(found, expected.subject)).then(|| Violation::TaskIdMismatch {
                found: found.to_owned(),
                expected: expected.subject,
            })
        },
        &mut violations,
    );
    let round = check_identity(
        map,
        "round",
        "a whole number such as `3`",
        plain_u64,
        |found| {
            (found != u64::from(expected.round)).then_some(Violation::RoundMismatch {
                found,
                expected: expected.round,
            })
        },
        &mut violations,
    );
    let role = check_identity(
        map,
        "role",
        "a string such as `verifier`",
        plain_string,
        |found| {
            (found != expected.role).then(|| Violation::RoleMismatch {
                found: found.to_owned(),
                expected: expected.role.clone(),
            })
        },
        &mut violations,
    );
    out.identity_matches = task_id && round && role;

    match map.get("verdict") {
        None => violations.push(Violation::MissingField("verdict")),
        Some(Value::String(s)) if s == "pass" => out.verdict = Some(Verdict::Pass),
        Some(Value::String(s)) if s == "fail" => out.verdict = Some(Verdict::Fail),
        Some(Value::String(s)) => violations.push(Violation::BadVerdict(format!("`{s}`"))),
        Some(other) => violations.push(Violation::BadVerdict(describe(other))),
    }

    match map.get("tasks") {
        None => out.tasks_absent = true,
        Some(_) if !expected.takes_proposals() => violations.push(Violation::TasksNotAllowed {
            role: expected.role.clone(),
        }),
        Some(Value::Sequence(items)) => out.tasks = Some(items),
        Some(other) => violations.push(wrong_type(
            "tasks",
            "a list of tasks (write `tasks: []` for none)",
            other,
        )),
    }
    violations
}

/// Checks one identity field: present, of the type `read` accepts, and holding what the step
/// expects (`mismatch` returns the violation when it does not). Returns whether it matches.
fn check_identity<'a, T>(
    map: &'a Mapping,
    field: &'static str,
    example: &'static str,
    read: impl FnOnce(&'a Value) -> Option<T>,
    mismatch: impl FnOnce(T) -> Option<Violation>,
    violations: &mut Vec<Violation>,
) -> bool {
    let Some(value) = map.get(field) else {
        violations.push(Violation::MissingField(field));
        return false;
    };
    let Some(found) = read(value) else {
        violations.push(wrong_type(field, example, value));
        return false;
    };
    match mismatch(found) {
        Some(violation) => {
            violations.push(violation);
            false
        }
        None => true,
    }
}

/// The string itself, not looking through a YAML tag (unlike `Value::as_str`).
fn plain_string(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// The whole number itself, not looking through a YAML tag (unlike `Value::as_u64`).
fn plain_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Task ids compare numerically, so `task-7` matches `task-007`.
fn subject_matches(found: &str, expected: Subject) -> bool {
    match expected {
        Subject::Task(id) => found.parse::<TaskId>() == Ok(id),
        other => found == other.to_string(),
    }
}

const PROPOSAL_FIELDS: &[&str] = &["key", "title", "spec", "deps"];
const PROPOSAL_ALIASES: &[(&str, &str)] = &[
    ("id", "key"),
    ("name", "title"),
    ("summary", "title"),
    ("description", "title"),
    ("spec_ref", "spec"),
    ("spec_path", "spec"),
    ("path", "spec"),
    ("depends_on", "deps"),
    ("dependencies", "deps"),
    ("needs", "deps"),
];

/// Validates `tasks:` entries. Returns the proposals only when every entry is valid: a batch
/// is accepted or rejected as a whole, so the PM never has half its plan silently dropped.
fn check_proposals(items: &[Value]) -> (Vec<Proposal>, Vec<Violation>) {
    if items.len() > MAX_PROPOSALS {
        return (
            Vec::new(),
            vec![Violation::TooManyProposals { count: items.len() }],
        );
    }
    let mut violations = Vec::new();
    let mut problem = |index, problem| violations.push(Violation::Proposal { index, problem });

    // First pass: shape, title, spec and key, so that deps can refer to any key in the list.
    let mut drafts: Vec<Option<Proposal>> = Vec::with_capacity(items.len());
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for (index, item) in items.iter().enumerate() {
        let Value::Mapping(map) = item else {
            problem(index, ProposalProblem::NotMapping);
            drafts.push(None);
            continue;
        };
        let mut ok = true;
        for key in map.keys() {
            if !key.as_str().is_some_and(|k| PROPOSAL_FIELDS.contains(&k)) {
                let field = render_key(key);
                let suggestion = suggest(&field, PROPOSAL_FIELDS, PROPOSAL_ALIASES);
                problem(index, ProposalProblem::UnknownField { field, suggestion });
                ok = false;
            }
        }
        let title = match map.get("title") {
            None => {
                problem(index, ProposalProblem::MissingField("title"));
                None
            }
            Some(Value::String(t)) => {
                let t = t.trim();
                let issue = if t.is_empty() {
                    Some(ProposalProblem::EmptyTitle)
                } else if t.contains(['\n', '\r']) {
                    Some(ProposalProblem::MultilineTitle)
                } else if t.chars().count() > MAX_TITLE_CHARS {
                    Some(ProposalProblem::TitleTooLong {
                        chars: t.chars().count(),
                    })
                } else {
                    None
                };
                match issue {
                    Some(i) => {
                        problem(index, i);
                        None
                    }
                    None => Some(t.to_owned()),
                }
            }
            Some(other) => {
                problem(index, proposal_wrong_type("title", "a string", other));
                None
            }
        };
        let spec = match map.get("spec") {
            None => {
                problem(index, ProposalProblem::MissingField("spec"));
                None
            }
            Some(Value::String(s)) => match SpecPath::parse(s.trim()) {
                Ok(p) => Some(p.as_str().to_owned()),
                Err(e) => {
                    problem(index, ProposalProblem::BadSpec(e));
                    None
                }
            },
            Some(other) => {
                problem(
                    index,
                    proposal_wrong_type("spec", "a path such as `specs/auth.md`", other),
                );
                None
            }
        };
        let key = match map.get("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => {
                let k = k.trim();
                match key_problem(k) {
                    Some(reason) => {
                        problem(
                            index,
                            ProposalProblem::BadKey {
                                key: k.to_owned(),
                                reason,
                            },
                        );
                        ok = false;
                        None
                    }
                    None if keys.contains_key(k) => {
                        problem(index, ProposalProblem::DuplicateKey(k.to_owned()));
                        ok = false;
                        None
                    }
                    None => {
                        keys.insert(k.to_owned(), index);
                        Some(k.to_owned())
                    }
                }
            }
            Some(other) => {
                problem(
                    index,
                    proposal_wrong_type("key", "a string such as `login-endpoint`", other),
                );
                ok = false;
                None
            }
        };
        let raw_deps: Vec<String> = match map.get("deps") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(deps)) => {
                let mut out = Vec::new();
                for dep in deps {
                    match dep {
                        Value::String(d) => out.push(d.trim().to_owned()),
                        other => {
                            problem(
                                index,
                                proposal_wrong_type(
                                    "deps",
                                    "a list of keys or task ids (strings)",
                                    other,
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                out
            }
            Some(other) => {
                problem(
                    index,
                    proposal_wrong_type("deps", "a list such as `[task-004]`", other),
                );
                ok = false;
                Vec::new()
            }
        };
        match (title, spec) {
            (Some(title), Some(spec)) if ok => {
                if !seen.insert((title.clone(), spec.clone())) {
                    problem(index, ProposalProblem::DuplicateProposal);
                }
                drafts.push(Some(Proposal {
                    key,
                    title,
                    spec,
                    deps: raw_deps,
                }));
            }
            _ => drafts.push(None),
        }
    }

    // Second pass: deps, now that every key is known. Task ids are normalised (`task-7` ->
    // `task-007`) so the coordinator can compare them as strings.
    for (index, draft) in drafts.iter_mut().enumerate() {
        let Some(p) = draft else { continue };
        let mut deps = Vec::with_capacity(p.deps.len());
        for dep in &p.deps {
            let resolved = if let Ok(id) = dep.parse::<TaskId>() {
                id.to_string()
            } else if p.key.as_deref() == Some(dep.as_str()) {
                problem(index, ProposalProblem::SelfDependency(dep.clone()));
                continue;
            } else if keys.contains_key(dep) {
                dep.clone()
            } else {
                problem(index, ProposalProblem::UnknownDependency(dep.clone()));
                continue;
            };
            if !deps.contains(&resolved) {
                deps.push(resolved);
            }
        }
        p.deps = deps;
    }

    if violations.is_empty() {
        let proposals: Vec<Proposal> = drafts.into_iter().flatten().collect();
        if let Some(cycle) = find_cycle(&proposals) {
            violations.push(Violation::DependencyCycle(cycle));
        } else {
            return (proposals, violations);
        }
    }
    (Vec::new(), violations)
}

/// Why `key` is not an acceptable key, if it is not.
fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("is empty; leave `key` out or give it a name")
    } else if key.chars().count() > MAX_KEY_CHARS {
        Some("is longer than 64 characters")
    } else if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("may contain only letters, digits, `.`, `_` and `-`")
    } else if key.parse::<TaskId>().is_ok() {
        Some("looks like a task id; task ids are assigned by the coordinator, so pick another name")
    } else {
        None
    }
}

/// A dependency cycle among the batch's keys, as the keys along it (first repeated at the
/// end). Only keys can form cycles: existing tasks never depend on proposals.
fn find_cycle(proposals: &[Proposal]) -> Option<Vec<String>> {
    let graph: BTreeMap<&str, Vec<&str>> = proposals
        .iter()
        .filter_map(|p| {
            let key = p.key.as_deref()?;
            let deps = p.deps.iter().map(String::as_str).collect();
            Some((key, deps))
        })
        .collect();

    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node, Mark::Visiting);
        path.push(node);
        for dep in graph.get(node).into_iter().flatten() {
            if graph.contains_key(dep)
                && let Some(cycle) = visit(dep, graph, marks, path)
            {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }

    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn wrong_type(field: &'static str, expected: &'static str, found: &Value) -> Violation {
    Violation::WrongType {
        field,
        expected,
        found: describe(found),
    }
}

fn proposal_wrong_type(
    field: &'static str,
    expected: &'static str,
    found: &Value,
) -> ProposalProblem {
    ProposalProblem::WrongType {
        field,
        expected,
        found: describe(found),
    }
}

/// A short description of a YAML value for messages: its type, and the value when short.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "empty (null)".to_owned(),
        Value::Bool(b) => format!("the boolean `{b}`"),
        Value::Number(n) => format!("the number `{n}`"),
        Value::String(s) if s.chars().count() <= 40 => format!("the string {s:?}"),
        Value::String(_) => "a long string".to_owned(),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged `{}`", t.tag),
    }
}

fn render_key(key: &Value) -> String {
    match key {
        Value::String(s) => s.chars().take(60).collect(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        other => describe(other),
    }
}

/// The known field an unknown one was probably meant to be: an alias agents commonly use, or
/// a known field within two edits (typos such as `verdit`).
fn suggest(
    field: &str,
    known: &[&'static str],
    aliases: &[(&str, &'static str)],
) -> Option<&'static str> {
    let lower = field.to_ascii_lowercase().replace('-', "_");
    if let Some(k) = known.iter().find(|k| **k == lower) {
        return Some(k);
    }
    if let Some((_, k)) = aliases.iter().find(|(a, _)| *a == lower) {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
