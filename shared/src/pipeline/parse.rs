//! Reading a composed `kind: Process` resource into a [`Process`]. Every problem is collected
//! (not just the first), located by key or step path, and worded with its fix.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::position::{MAX_STEP_NAME_LEN, is_valid_step_name};
use super::{
    ActionKind, BUILTIN_ACTIONS, DEFAULT_COMMAND_TIMEOUT, DEFAULT_GATE_LABEL, GateDef, GateKind,
    HookKind, Hooks, Pipeline, Process, Step, StepKind,
};
use crate::config::{format_duration, parse_duration};

/// The API version this crate reads.
pub const API_VERSION: &str = "hyperloop.io/v1";

const TOP_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "pipeline",
    "gates",
    "actions",
    "hooks",
    "checks",
];
const STEP_KEYS: &[&str] = &["agent", "role", "gate", "action", "loop"];
const GATE_KEYS: &[&str] = &["type", "label", "require", "reviewers", "run", "timeout"];
const GATE_TYPES: &[&str] = &[
    "label",
    "pr-approval",
    "ci-status",
    "all",
    "manual",
    "command",
];
/// `timeout` bounds of a command gate: under a second nothing can run; over a day is almost
/// certainly a unit mistake (`30` meant as minutes).
const COMMAND_TIMEOUT_MIN: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);
const ACTION_KEYS: &[&str] = &["type"];
const ACTION_TYPES: &[&str] = &["pr-merge", "mark-pr-ready"];
const HOOK_SECTIONS: &[&str] = &["after_reap"];
const HOOK_KEYS: &[&str] = &["type"];
const HOOK_TYPES: &[&str] = &["process-improver"];

/// A rejected process definition: the source label and every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessError {
    pub source: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid process definition in {} ({n} problem{}):",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProcessError {}

/// One problem: where (`pipeline[0].loop[1]`, `gates.review.type`, …) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: String,
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.kind)
    }
}

fn did_you_mean(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!("did you mean `{s}`? "))
        .unwrap_or_default()
}

/// What is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    #[error("expected {expected}")]
    WrongType { expected: &'static str },
    #[error("this resource is `kind: {found}`; a process definition needs `kind: Process`")]
    NotAProcess { found: String },
    #[error("unsupported apiVersion `{found}`; use `apiVersion: {API_VERSION}`")]
    UnsupportedApiVersion { found: String },
    #[error("the process has no name; set `metadata: {{name: default}}`")]
    MissingName,
    #[error("unknown key `{key}`; {}allowed keys here: {}", did_you_mean(.suggestion), .expected.join(", "))]
    UnknownKey {
        key: String,
        expected: &'static [&'static str],
        suggestion: Option<String>,
    },
    #[error(
        "the pipeline has no steps; add at least one, e.g. `pipeline: [{{loop: [{{agent: implementer}}, {{agent: verifier}}]}}, {{action: merge-pr}}]`"
    )]
    EmptyPipeline,
    #[error(
        "unknown step primitive `{key}`; {}a step is one of `agent: ROLE` (alias `role:`), `gate: NAME`, `action: NAME`, `loop: [STEPS]`",
        did_you_mean(.suggestion)
    )]
    UnknownPrimitive {
        key: String,
        suggestion: Option<String>,
    },
    #[error(
        "the step has no primitive; write exactly one of `agent:`, `gate:`, `action:`, `loop:`"
    )]
    MissingPrimitive,
    #[error(
        "the step has several primitives ({}); a step has exactly one, so split it into consecutive steps",
        .keys.join(", ")
    )]
    SeveralPrimitives { keys: Vec<String> },
    #[error("the loop has no steps; add steps to it or remove the loop")]
    EmptyLoop,
    #[error(
        "invalid {kind} name {name:?}; use 1 to {MAX_STEP_NAME_LEN} letters, digits, `-`, `_` or `.`"
    )]
    InvalidName { kind: &'static str, name: String },
    #[error(
        "gate `{name}` is not defined; {}define it under `gates:`, e.g. `gates: {{{name}: {{type: label}}}}`",
        did_you_mean(.suggestion)
    )]
    UndefinedGate {
        name: String,
        suggestion: Option<String>,
    },
    #[error(
        "action `{name}` is not defined; {}define it under `actions:` (`type: pr-merge` or `type: mark-pr-ready`) or use a built-in action: merge-pr, mark-pr-ready",
        did_you_mean(.suggestion)
    )]
    UndefinedAction {
        name: String,
        suggestion: Option<String>,
    },
    #[error(
        "no agent template for role `{role}`; {}add a `kind: Agent` resource named `{role}` to the agents overlay (known roles: {})",
        did_you_mean(.suggestion),
        .known.join(", ")
    )]
    MissingAgent {
        role: String,
        suggestion: Option<String>,
        known: Vec<String>,
    },
    #[error("missing `type`; set one of: {}", .expected.join(", "))]
    MissingType { expected: &'static [&'static str] },
    #[error(
        "no agent step of the pipeline has role `{role}`; {}name checks for a role the \
         pipeline runs ({})",
        did_you_mean(.suggestion),
        .roles.join(", ")
    )]
    ChecksForUnknownRole {
        role: String,
        suggestion: Option<String>,
        roles: Vec<String>,
    },
    #[error(
        "`{name}` is not a check name; name an executable file directly in \
         .hyperloop/checks/ (no `/`, not starting with `.`), e.g. `lint`"
    )]
    InvalidCheckName { name: String },
    #[error("unknown gate type `{found}`; {}use one of: {}", did_you_mean(.suggestion), GATE_TYPES.join(", "))]
    UnknownGateType {
        found: String,
        suggestion: Option<String>,
    },
    #[error("unknown action type `{found}`; {}use one of: {}", did_you_mean(.suggestion), ACTION_TYPES.join(", "))]
    UnknownActionType {
        found: String,
        suggestion: Option<String>,
    },
    #[error("unknown hook type `{found}`; {}use one of: {}", did_you_mean(.suggestion), HOOK_TYPES.join(", "))]
    UnknownHookType {
        found: String,
        suggestion: Option<String>,
    },
    #[error("`{field}` does not apply to gates of type `{gate_type}`; remove it")]
    FieldNotForType {
        field: &'static str,
        gate_type: &'static str,
    },
    #[error("an `all` gate needs `require: [GATE, ...]` with at least one gate name")]
    RequireEmpty,
    #[error(
        "required gate `{name}` is not defined; {}define it under `gates:` or remove it from `require`",
        did_you_mean(.suggestion)
    )]
    RequireUnknown {
        name: String,
        suggestion: Option<String>,
    },
    #[error(
        "`all` gates require each other in a cycle ({}); it could never clear, so remove one requirement",
        .cycle.join(" -> ")
    )]
    RequireCycle { cycle: Vec<String> },
    #[error(
        "a `command` gate needs `run:` as a list of strings, the program first, e.g. `run: [make, e2e]` (a shell line: `run: [sh, -c, \"make e2e && make lint\"]`)"
    )]
    CommandRun,
    #[error(
        "expected a duration from {} to {}, like 90s, 10m or 1h30m; set one or remove `timeout` for the default {}",
        format_duration(COMMAND_TIMEOUT_MIN),
        format_duration(COMMAND_TIMEOUT_MAX),
        format_duration(DEFAULT_COMMAND_TIMEOUT)
    )]
    CommandTimeout,
}

impl Process {
    /// Parses and validates one composed `kind: Process` document. `source` names the file in
    /// messages; `agents` are the roles that have a `kind: Agent` template in the composition.
    ///
    /// # Errors
    /// A [`ProcessError`] listing every problem found, each with its location and fix.
    pub fn parse<S: AsRef<str>>(
        doc: &Value,
        source: &str,
        agents: &[S],
    ) -> Result<Process, ProcessError> {
        let mut p = Problems::default();
        let process = parse_process(doc, agents, &mut p);
        match process {
            Some(process) if p.0.is_empty() => Ok(Process {
                source: source.to_owned(),
                ..process
            }),
            _ => Err(ProcessError {
                source: source.to_owned(),
                problems: p.0,
            }),
        }
    }

    /// Parses the first `kind: Process` document of a multi-document YAML text (e.g. the
    /// output of composition). Convenience over [`Process::parse`].
    ///
    /// # Errors
    /// A YAML syntax error or no Process document is reported as a single problem.
    pub fn parse_str<S: AsRef<str>>(
        yaml: &str,
        source: &str,
        agents: &[S],
    ) -> Result<Process, ProcessError> {
        use serde::Deserialize;
        let fail = |kind| ProcessError {
            source: source.to_owned(),
            problems: vec![Problem {
                at: "(document)".to_owned(),
                kind,
            }],
        };
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = Value::deserialize(doc).map_err(|_| {
                fail(ProblemKind::WrongType {
                    expected: "valid YAML (the file does not parse)",
                })
            })?;
            if value.get("kind").and_then(Value::as_str) == Some("Process") {
                return Process::parse(&value, source, agents);
            }
        }
        Err(fail(ProblemKind::NotAProcess {
            found: "(no document with kind: Process)".to_owned(),
        }))
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, at: impl Into<String>, kind: ProblemKind) {
        self.0.push(Problem {
            at: at.into(),
            kind,
        });
    }

    fn unknown_keys(&mut self, map: &Mapping, at: &str, expected: &'static [&'static str]) {
        for key in map.keys() {
            let key = key_text(key);
            if !expected.contains(&key.as_str()) {
                let suggestion = closest(&key, expected.iter().copied());
                self.push(
                    join(at, &key),
                    ProblemKind::UnknownKey {
                        key,
                        expected,
                        suggestion,
                    },
                );
            }
        }
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned()),
    }
}

fn parse_process<S: AsRef<str>>(doc: &Value, agents: &[S], p: &mut Problems) -> Option<Process> {
    let Some(map) = doc.as_mapping() else {
        p.push(
            "(document)",
            ProblemKind::WrongType {
                expected: "a mapping with `kind: Process`",
            },
        );
        return None;
    };
    match map.get("kind").and_then(Value::as_str) {
        Some("Process") => {}
        found => p.push(
            "kind",
            ProblemKind::NotAProcess {
                found: found.unwrap_or("(missing)").to_owned(),
            },
        ),
    }
    if let Some(v) = map.get("apiVersion")
        && v.as_str() != Some(API_VERSION)
    {
        p.push(
            "apiVersion",
            ProblemKind::UnsupportedApiVersion { found: key_text(v) },
        );
    }
    p.unknown_keys(map, "", TOP_KEYS);
    // `metadata.name` is the composed form; a top-level `name` is the seed's legacy form.
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .or_else(|| map.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if name.is_none() {
        p.push("metadata.name", ProblemKind::MissingName);
    }

    let gates = parse_gates(map.get("gates"), p);
    let actions = parse_actions(map.get("actions"), p);
    let hooks = parse_hooks(map.get("hooks"), p);
    let steps = match map.get("pipeline") {
        None | Some(Value::Null) => {
            p.push("pipeline", ProblemKind::EmptyPipeline);
            Vec::new()
        }
        Some(v) => parse_step_list(v, "pipeline", true, p),
    };

    let agents: BTreeSet<&str> = agents.iter().map(AsRef::as_ref).collect();
    check_references(&steps, &mut Vec::new(), &gates, &actions, &agents, p);
    let checks = parse_checks(map.get("checks"), &steps, p);

    Some(Process {
        name: name?,
        source: String::new(),
        pipeline: Pipeline::from_checked(steps),
        gates,
        actions,
        hooks,
        checks,
    })
}

/// Parses a step list at `at` (`pipeline` or `pipeline[0].loop`). Broken steps are reported
/// and left out; the result is only used when no problem was reported.
fn parse_step_list(v: &Value, at: &str, top: bool, p: &mut Problems) -> Vec<Step> {
    let Some(seq) = v.as_sequence() else {
        p.push(
            at,
            ProblemKind::WrongType {
                expected: "a list of steps, e.g. `- agent: implementer`",
            },
        );
        return Vec::new();
    };
    if seq.is_empty() {
        p.push(
            at,
            if top {
                ProblemKind::EmptyPipeline
            } else {
                ProblemKind::EmptyLoop
            },
        );
    }
    seq.iter()
        .enumerate()
        .filter_map(|(i, s)| parse_step(s, &format!("{at}[{i}]"), p))
        .collect()
}

fn parse_step(v: &Value, at: &str, p: &mut Problems) -> Option<Step> {
    let Some(map) = v.as_mapping() else {
        p.push(
            at,
            ProblemKind::WrongType {
                expected: "a step mapping such as `agent: implementer` or `loop: [...]`",
            },
        );
        return None;
    };
    let mut primitives = Vec::new();
    let mut unknown = false;
    for (k, val) in map {
        let key = key_text(k);
        if STEP_KEYS.contains(&key.as_str()) {
            primitives.push((key, val));
        } else {
            unknown = true;
            let suggestion = closest(&key, STEP_KEYS.iter().copied());
            p.push(at, ProblemKind::UnknownPrimitive { key, suggestion });
        }
    }
    match primitives.as_slice() {
        [] => {
            if !unknown {
                p.push(at, ProblemKind::MissingPrimitive);
            }
            None
        }
        [(key, val)] => {
            let step = match key.as_str() {
                "loop" => Step::Loop(parse_step_list(val, &format!("{at}.loop"), false, p)),
                kind => {
                    let (label, make): (&'static str, fn(String) -> Step) = match kind {
                        "gate" => ("gate", Step::Gate),
                        "action" => ("action", Step::Action),
                        _ => ("agent", Step::Agent),
                    };
                    let Some(name) = val.as_str() else {
                        p.push(
                            format!("{at}.{key}"),
                            ProblemKind::WrongType {
                                expected: "a name (a string)",
                            },
                        );
                        return None;
                    };
                    if !is_valid_step_name(name) {
                        p.push(
                            format!("{at}.{key}"),
                            ProblemKind::InvalidName {
                                kind: label,
                                name: name.to_owned(),
                            },
                        );
                    }
                    make(name.to_owned())
                }
            };
            (!unknown).then_some(step)
        }
        several => {
            p.push(
                at,
                ProblemKind::SeveralPrimitives {
                    keys: several.iter().map(|(k, _)| k.clone()).collect(),
                },
            );
            None
        }
    }
}

/// Structural rules for programmatically built pipelines ([`Pipeline::new`]); the parser
/// checks the same rules while reading.
pub(super) fn structural_problems(steps: &[Step], p: &mut Vec<Problem>) {
    fn walk(steps: &[Step], at: &str, top: bool, p: &mut Vec<Problem>) {
        if steps.is_empty() {
            let kind = if top {
                ProblemKind::EmptyPipeline
            } else {
                ProblemKind::EmptyLoop
            };
            p.push(Problem {
                at: at.to_owned(),
                kind,
            });
        }
        for (i, step) in steps.iter().enumerate() {
            let here = format!("{at}[{i}]");
            match step {
                Step::Loop(children) => walk(children, &format!("{here}.loop"), false, p),
                leaf => {
                    if let Some((kind, name)) = leaf.leaf()
                        && !is_valid_step_name(name)
                    {
                        p.push(Problem {
                            at: format!("{here}.{kind}"),
                            kind: ProblemKind::InvalidName {
                                kind: kind.as_str(),
                                name: name.to_owned(),
                            },
                        });
                    }
                }
            }
        }
    }
    walk(steps, "pipeline", true, p);
}

fn check_references(
    steps: &[Step],
    path: &mut Vec<usize>,
    gates: &BTreeMap<String, GateDef>,
    actions: &BTreeMap<String, ActionKind>,
    agents: &BTreeSet<&str>,
    p: &mut Problems,
) {
    for (i, step) in steps.iter().enumerate() {
        path.push(i);
        let at = || {
            let mut s = String::from("pipeline");
            for (d, i) in path.iter().enumerate() {
                if d > 0 {
                    s.push_str(".loop");
                }
                s.push_str(&format!("[{i}]"));
            }
            s
        };
        match step {
            Step::Loop(children) => check_references(children, path, gates, actions, agents, p),
            Step::Gate(name) if !gates.contains_key(name) => p.push(
                at(),
                ProblemKind::UndefinedGate {
                    name: name.clone(),
                    suggestion: closest(name, gates.keys().map(String::as_str)),
                },
            ),
            Step::Action(name) if !actions.contains_key(name) => p.push(
                at(),
                ProblemKind::UndefinedAction {
                    name: name.clone(),
                    suggestion: closest(name, actions.keys().map(String::as_str)),
                },
            ),
            Step::Agent(role) if !agents.contains(role.as_str()) => p.push(
                at(),
                ProblemKind::MissingAgent {
                    role: role.clone(),
                    suggestion: closest(role, agents.iter().copied()),
                    known: agents.iter().map(|s| (*s).to_owned()).collect(),
                },
            ),
            _ => {}
        }
        path.pop();
    }
}

/// Reads `section.NAME` mappings, reporting a non-mapping section, invalid names and
/// non-mapping entries.
fn named_entries<'v>(
    v: Option<&'v Value>,
    section: &str,
    kind: &'static str,
    p: &mut Problems,
) -> Vec<(String, &'v Mapping)> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Vec::new();
    };
    let Some(map) = v.as_mapping() else {
        p.push(
            section,
            ProblemKind::WrongType {
                expected: "a mapping of names to definitions",
            },
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, def) in map {
        let name = key_text(k);
        let at = join(section, &name);
        if !is_valid_step_name(&name) {
            p.push(
                &at,
                ProblemKind::InvalidName {
                    kind,
                    name: name.clone(),
                },
            );
        }
        match def.as_mapping() {
            Some(def) => out.push((name, def)),
            None => p.push(
                at,
                ProblemKind::WrongType {
                    expected: "a mapping with a `type`",
                },
            ),
        }
    }
    out
}

fn type_of<'v>(
    def: &'v Mapping,
    at: &str,
    expected: &'static [&'static str],
    p: &mut Problems,
) -> Option<&'v str> {
    match def.get("type") {
        None => {
            p.push(at, ProblemKind::MissingType { expected });
            None
        }
        Some(t) => {
            let s = t.as_str();
            if s.is_none() {
                p.push(
                    join(at, "type"),
                    ProblemKind::WrongType {
                        expected: "a type name (a string)",
                    },
                );
            }
            s
        }
    }
}

fn string_list(v: &Value, at: &str, p: &mut Problems) -> Vec<String> {
    match v.as_sequence() {
        Some(seq) if seq.iter().all(Value::is_string) => seq
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => {
            p.push(
                at,
                ProblemKind::WrongType {
                    expected: "a list of names",
                },
            );
            Vec::new()
        }
    }
}

fn parse_gates(v: Option<&Value>, p: &mut Problems) -> BTreeMap<String, GateDef> {
    let mut gates = BTreeMap::new();
    for (name, def) in named_entries(v, "gates", "gate", p) {
        let at = join("gates", &name);
        p.unknown_keys(def, &at, GATE_KEYS);
        let reviewers = def
            .get("reviewers")
            .map(|r| string_list(r, &join(&at, "reviewers"), p))
            .unwrap_or_default();
        let Some(ty) = type_of(def, &at, GATE_TYPES, p) else {
            continue;
        };
        let kind = match ty {
            "label" => {
                let label = match def.get("label") {
                    None => DEFAULT_GATE_LABEL.to_owned(),
                    Some(l) => match l.as_str().filter(|l| !l.is_empty()) {
                        Some(l) => l.to_owned(),
                        None => {
                            p.push(
                                join(&at, "label"),
                                ProblemKind::WrongType {
                                    expected: "a non-empty label name",
                                },
                            );
                            continue;
                        }
                    },
                };
                GateKind::Label { label }
            }
            "pr-approval" => GateKind::PrApproval,
            "ci-status" => GateKind::CiStatus,
            "manual" => GateKind::Manual,
            "command" => command_gate(def, &at, p),
            "all" => {
                let require = match def.get("require") {
                    Some(r) => string_list(r, &join(&at, "require"), p),
                    None => Vec::new(),
                };
                if require.is_empty() {
                    p.push(join(&at, "require"), ProblemKind::RequireEmpty);
                }
                GateKind::All { require }
            }
            other => {
                p.push(
                    join(&at, "type"),
                    ProblemKind::UnknownGateType {
                        found: other.to_owned(),
                        suggestion: closest(other, GATE_TYPES.iter().copied()),
                    },
                );
                continue;
            }
        };
        for field in ["label", "require", "run", "timeout"] {
            let applies = matches!(
                (field, &kind),
                ("label", GateKind::Label { .. })
                    | ("require", GateKind::All { .. })
                    | ("run" | "timeout", GateKind::Command { .. })
            );
            if def.contains_key(field) && !applies {
                p.push(
                    join(&at, field),
                    ProblemKind::FieldNotForType {
                        field,
                        gate_type: kind.type_name(),
                    },
                );
            }
        }
        gates.insert(name, GateDef { kind, reviewers });
    }
    check_all_gates(&gates, p);
    gates
}

/// A `type: command` gate's `run` and `timeout`; problems are reported and the gate is kept
/// (the process is only used when nothing was reported).
fn command_gate(def: &Mapping, at: &str, p: &mut Problems) -> GateKind {
    let run: Vec<String> = def
        .get("run")
        .and_then(Value::as_sequence)
        .and_then(|seq| seq.iter().map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if run.first().is_none_or(String::is_empty) {
        p.push(join(at, "run"), ProblemKind::CommandRun);
    }
    let timeout = match def.get("timeout") {
        None => DEFAULT_COMMAND_TIMEOUT,
        Some(v) => {
            let parsed = match v {
                Value::Number(n) => n.as_u64().map(Duration::from_secs),
                Value::String(s) => parse_duration(s),
                _ => None,
            };
            match parsed {
                Some(t) if (COMMAND_TIMEOUT_MIN..=COMMAND_TIMEOUT_MAX).contains(&t) => t,
                _ => {
                    p.push(join(at, "timeout"), ProblemKind::CommandTimeout);
                    DEFAULT_COMMAND_TIMEOUT
                }
            }
        }
    };
    GateKind::Command { run, timeout }
}

/// `all` gates: every required gate exists, and no gate requires itself directly or through
/// other `all` gates (it could never clear).
fn check_all_gates(gates: &BTreeMap<String, GateDef>, p: &mut Problems) {
    for (name, gate) in gates {
        let GateKind::All { require } = &gate.kind else {
            continue;
        };
        for (i, r) in require.iter().enumerate() {
            if !gates.contains_key(r) {
                p.push(
                    format!("gates.{name}.require[{i}]"),
                    ProblemKind::RequireUnknown {
                        name: r.clone(),
                        suggestion: closest(r, gates.keys().map(String::as_str)),
                    },
                );
            }
        }
    }
    // Report each cycle once, starting from its smallest member (BTreeMap order).
    fn cycle_back_to(
        start: &str,
        node: &str,
        gates: &BTreeMap<String, GateDef>,
        path: &mut Vec<String>,
        visited: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        let requires = match gates.get(node).map(|g| &g.kind) {
            Some(GateKind::All { require }) => require.as_slice(),
            _ => &[],
        };
        for child in requires {
            if child == start {
                let mut cycle = path.clone();
                cycle.push(child.clone());
                return Some(cycle);
            }
            if visited.insert(child.clone()) {
                path.push(child.clone());
                if let Some(c) = cycle_back_to(start, child, gates, path, visited) {
                    return Some(c);
                }
                path.pop();
            }
        }
        None
    }
    let mut reported: BTreeSet<String> = BTreeSet::new();
    for start in gates.keys() {
        if reported.contains(start) {
            continue;
        }
        let mut path = vec![start.clone()];
        let mut visited = BTreeSet::from([start.clone()]);
        if let Some(cycle) = cycle_back_to(start, start, gates, &mut path, &mut visited) {
            reported.extend(cycle.iter().cloned());
            p.push(
                format!("gates.{start}.require"),
                ProblemKind::RequireCycle { cycle },
            );
        }
    }
}

fn parse_actions(v: Option<&Value>, p: &mut Problems) -> BTreeMap<String, ActionKind> {
    let mut actions: BTreeMap<String, ActionKind> = BUILTIN_ACTIONS
        .iter()
        .map(|(n, k)| ((*n).to_owned(), *k))
        .collect();
    for (name, def) in named_entries(v, "actions", "action", p) {
        let at = join("actions", &name);
        p.unknown_keys(def, &at, ACTION_KEYS);
        let kind = match type_of(def, &at, ACTION_TYPES, p) {
            Some("pr-merge") => ActionKind::PrMerge,
            Some("mark-pr-ready") => ActionKind::MarkPrReady,
            Some(other) => {
                p.push(
                    join(&at, "type"),
                    ProblemKind::UnknownActionType {
                        found: other.to_owned(),
                        suggestion: closest(other, ACTION_TYPES.iter().copied()),
                    },
                );
                continue;
            }
            None => continue,
        };
        actions.insert(name, kind);
    }
    actions
}

fn parse_hooks(v: Option<&Value>, p: &mut Problems) -> Hooks {
    let mut hooks = Hooks::default();
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return hooks;
    };
    let Some(map) = v.as_mapping() else {
        p.push(
            "hooks",
            ProblemKind::WrongType {
                expected: "a mapping such as `after_reap: [{type: process-improver}]`",
            },
        );
        return hooks;
    };
    p.unknown_keys(map, "hooks", HOOK_SECTIONS);
    let Some(list) = map.get("after_reap").filter(|v| !v.is_null()) else {
        return hooks;
    };
    let Some(seq) = list.as_sequence() else {
        p.push(
            "hooks.after_reap",
            ProblemKind::WrongType {
                expected: "a list of hooks, e.g. `- type: process-improver`",
            },
        );
        return hooks;
    };
    for (i, hook) in seq.iter().enumerate() {
        let at = format!("hooks.after_reap[{i}]");
        let Some(def) = hook.as_mapping() else {
            p.push(
                at,
                ProblemKind::WrongType {
                    expected: "a hook mapping such as `type: process-improver`",
                },
            );
            continue;
        };
        p.unknown_keys(def, &at, HOOK_KEYS);
        match type_of(def, &at, HOOK_TYPES, p) {
            Some("process-improver") => hooks.after_reap.push(HookKind::ProcessImprover),
            Some(other) => p.push(
                join(&at, "type"),
                ProblemKind::UnknownHookType {
                    found: other.to_owned(),
                    suggestion: closest(other, HOOK_TYPES.iter().copied()),
                },
            ),
            None => {}
        }
    }
    hooks
}

/// `checks: {ROLE: [NAME, ...]}`: the checks run after an agent of that role reports pass,
/// in order, instead of the default (every executable in `.hyperloop/checks/` after an
/// implementer or verifier). Roles must be agent steps of the pipeline.
fn parse_checks(
    v: Option<&Value>,
    steps: &[Step],
    p: &mut Problems,
) -> BTreeMap<String, Vec<String>> {
    let mut checks = BTreeMap::new();
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return checks;
    };
    let Some(map) = v.as_mapping() else {
        p.push(
            "checks",
            ProblemKind::WrongType {
                expected: "a mapping from agent role to check names, e.g. `implementer: [lint]`",
            },
        );
        return checks;
    };
    let mut roles = BTreeSet::new();
    for_each_agent(steps, &mut |role| {
        roles.insert(role.to_owned());
    });
    for (role, names) in map {
        let role = key_text(role);
        let at = join("checks", &role);
        if !roles.contains(&role) {
            p.push(
                at.clone(),
                ProblemKind::ChecksForUnknownRole {
                    suggestion: closest(&role, roles.iter().map(String::as_str)),
                    role: role.clone(),
                    roles: roles.iter().cloned().collect(),
                },
            );
        }
        let listed = names.as_sequence().map(|seq| {
            seq.iter()
                .map(|n| n.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
        });
        let Some(Some(listed)) = listed else {
            p.push(
                at,
                ProblemKind::WrongType {
                    expected: "a list of check names, e.g. `[lint, unit-tests]` (`[]` for none)",
                },
            );
            continue;
        };
        for name in &listed {
            if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
                p.push(
                    at.clone(),
                    ProblemKind::InvalidCheckName { name: name.clone() },
                );
            }
        }
        checks.insert(role, listed);
    }
    checks
}

fn for_each_agent<'a>(steps: &'a [Step], f: &mut impl FnMut(&'a str)) {
    for step in steps {
        match step {
            Step::Agent(role) => f(role),
            Step::Loop(children) => for_each_agent(children, f),
            Step::Gate(_) | Step::Action(_) => {}
        }
    }
}

/// The candidate closest to `word` by edit distance (with transpositions), if it is close
/// enough to be a plausible typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c.to_owned())
}

/// Optimal-string-alignment distance: Levenshtein plus adjacent transpositions, so `agnet`
/// is one edit from `agent`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// For messages: `agent: implementer`.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Loop(children) => write!(f, "loop ({} steps)", children.len()),
            leaf => {
                let (kind, name) = leaf.leaf().unwrap_or((StepKind::Agent, ""));
                write!(f, "{kind}: {name}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENTS: &[&str] = &["implementer", "verifier", "security-reviewer", "pm"];
    const SOURCE: &str = ".hyperloop/agents/process/process.yaml";

    fn parse(body: &str) -> Result<Process, ProcessError> {
        let yaml = format!(
            "apiVersion: hyperloop.io/v1\nkind: Process\nmetadata: {{name: default}}\n{body}"
        );
        let doc: Value = serde_yaml::from_str(&yaml).unwrap();
        Process::parse(&doc, SOURCE, AGENTS)
    }

    /// Parses `body` (below a standard header) and compares the problems, one `at: message`
    /// per entry, in report order.
    fn check_err(body: &str, expected: &[&str]) {
        let err = parse(body).expect_err("the process should be rejected");
        assert_eq!(err.source, SOURCE);
        let got: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(got, expected, "for:\n{body}");
    }

    #[test]
    fn the_seed_process_with_gates_actions_and_hooks_parses() {
        let p = parse(
            "pipeline:
  - loop:
      - loop:
          - role: implementer
          - agent: verifier
      - role: security-reviewer
  - gate: human-pr-approval
  - action: merge-pr
gates:
  human-pr-approval: {type: label}
  ci: {type: ci-status}
  review: {type: pr-approval, reviewers: [alice]}
  both: {type: all, require: [ci, review]}
  local: {type: manual}
  custom: {type: label, label: ship-it}
  e2e: {type: command, run: [make, e2e]}
  quick: {type: command, run: [sh, -c, 'make lint && make test'], timeout: 1h30m}
  secs: {type: command, run: [./check], timeout: 90}
  green: {type: all, require: [ci, e2e]}
hooks:
  after_reap:
    - type: process-improver
",
        )
        .unwrap();
        assert_eq!(p.name, "default");
        assert_eq!(p.source, SOURCE);
        assert_eq!(
            p.pipeline.steps(),
            &[
                Step::Loop(vec![
                    Step::Loop(vec![Step::agent("implementer"), Step::agent("verifier")]),
                    Step::agent("security-reviewer"),
                ]),
                Step::gate("human-pr-approval"),
                Step::action("merge-pr"),
            ]
        );
        assert_eq!(
            p.gates["human-pr-approval"].kind,
            GateKind::Label {
                label: "lgtm".into()
            }
        );
        assert_eq!(
            p.gates["custom"].kind,
            GateKind::Label {
                label: "ship-it".into()
            }
        );
        assert_eq!(p.gates["review"].reviewers, vec!["alice".to_owned()]);
        assert_eq!(
            p.gates["both"].kind,
            GateKind::All {
                require: vec!["ci".into(), "review".into()]
            }
        );
        assert_eq!(p.gates["local"].kind, GateKind::Manual);
        let command = |run: &[&str], secs| GateKind::Command {
            run: run.iter().map(|s| (*s).to_owned()).collect(),
            timeout: Duration::from_secs(secs),
        };
        assert_eq!(p.gates["e2e"].kind, command(&["make", "e2e"], 600));
        assert_eq!(
            p.gates["quick"].kind,
            command(&["sh", "-c", "make lint && make test"], 5400)
        );
        assert_eq!(p.gates["secs"].kind, command(&["./check"], 90));
        assert_eq!(p.gates["e2e"].kind.type_name(), "command");
        assert_eq!(p.actions["merge-pr"], ActionKind::PrMerge);
        assert_eq!(p.actions["mark-pr-ready"], ActionKind::MarkPrReady);
        assert_eq!(p.hooks.after_reap, vec![HookKind::ProcessImprover]);
    }

    #[test]
    fn builtin_actions_need_no_definition_and_can_be_overridden() {
        let p = parse("pipeline: [{action: mark-pr-ready}, {action: merge-pr}, {action: ship}]\nactions:\n  ship: {type: pr-merge}\n  merge-pr: {type: mark-pr-ready}\n").unwrap();
        assert_eq!(p.actions["ship"], ActionKind::PrMerge);
        assert_eq!(p.actions["merge-pr"], ActionKind::MarkPrReady);
    }

    #[test]
    fn the_legacy_top_level_name_without_api_version_is_accepted() {
        let doc: Value = serde_yaml::from_str(
            "kind: Process\nname: default\npipeline: [{agent: implementer}]\n",
        )
        .unwrap();
        assert_eq!(
            Process::parse(&doc, SOURCE, AGENTS).unwrap().name,
            "default"
        );
    }

    #[test]
    fn the_first_process_document_of_a_multi_document_stream_is_used() {
        let yaml = "kind: Agent\nmetadata: {name: implementer}\nprompt: x\n---\napiVersion: hyperloop.io/v1\nkind: Process\nmetadata: {name: p}\npipeline: [{agent: implementer}]\n";
        assert_eq!(Process::parse_str(yaml, SOURCE, AGENTS).unwrap().name, "p");
        let err = Process::parse_str("kind: Agent\n", SOURCE, AGENTS).unwrap_err();
        assert_eq!(
            err.problems[0].kind,
            ProblemKind::NotAProcess {
                found: "(no document with kind: Process)".into()
            }
        );
        assert!(Process::parse_str("a: [", SOURCE, AGENTS).is_err());
    }

    #[test]
    fn step_problems_are_located_by_path_and_suggest_the_fix() {
        let cases: &[(&str, &[&str])] = &[
            (
                "pipeline: [{loop: [{agent: implementer}, {agnet: verifier}]}]",
                &[
                    "pipeline[0].loop[1]: unknown step primitive `agnet`; did you mean `agent`? a step is one of `agent: ROLE` (alias `role:`), `gate: NAME`, `action: NAME`, `loop: [STEPS]`",
                ],
            ),
            (
                "pipeline: [{agent: implementer, gate: lgtm}]",
                &[
                    "pipeline[0]: the step has several primitives (agent, gate); a step has exactly one, so split it into consecutive steps",
                ],
            ),
            (
                "pipeline: [{agent: implementer}, {loop: []}]",
                &["pipeline[1].loop: the loop has no steps; add steps to it or remove the loop"],
            ),
            (
                "pipeline: []",
                &[
                    "pipeline: the pipeline has no steps; add at least one, e.g. `pipeline: [{loop: [{agent: implementer}, {agent: verifier}]}, {action: merge-pr}]`",
                ],
            ),
            (
                "gates: {}",
                &[
                    "pipeline: the pipeline has no steps; add at least one, e.g. `pipeline: [{loop: [{agent: implementer}, {agent: verifier}]}, {action: merge-pr}]`",
                ],
            ),
            (
                "pipeline: [{}]",
                &[
                    "pipeline[0]: the step has no primitive; write exactly one of `agent:`, `gate:`, `action:`, `loop:`",
                ],
            ),
            (
                "pipeline: [implementer]",
                &[
                    "pipeline[0]: expected a step mapping such as `agent: implementer` or `loop: [...]`",
                ],
            ),
            (
                "pipeline: {agent: implementer}",
                &["pipeline: expected a list of steps, e.g. `- agent: implementer`"],
            ),
            (
                "pipeline: [{loop: {agent: implementer}}]",
                &["pipeline[0].loop: expected a list of steps, e.g. `- agent: implementer`"],
            ),
            (
                "pipeline: [{agent: [implementer]}]",
                &["pipeline[0].agent: expected a name (a string)"],
            ),
            (
                "pipeline: [{gate: 'needs review'}]\ngates: {}",
                &[
                    "pipeline[0].gate: invalid gate name \"needs review\"; use 1 to 100 letters, digits, `-`, `_` or `.`",
                    "pipeline[0]: gate `needs review` is not defined; define it under `gates:`, e.g. `gates: {needs review: {type: label}}`",
                ],
            ),
            (
                "pipeline: [{agent: implementer, on_fail: implementer}]",
                &[
                    "pipeline[0]: unknown step primitive `on_fail`; a step is one of `agent: ROLE` (alias `role:`), `gate: NAME`, `action: NAME`, `loop: [STEPS]`",
                ],
            ),
        ];
        for (body, expected) in cases {
            check_err(body, expected);
        }
    }

    #[test]
    fn checks_name_per_role_the_checks_to_run_and_bad_ones_name_the_fix() {
        let p = parse(
            "pipeline:\n  - loop: [{agent: implementer}, {agent: security-reviewer}]\n\
             checks:\n  implementer: [lint, unit-tests]\n  security-reviewer: []\n",
        )
        .expect("valid");
        assert_eq!(
            p.checks,
            BTreeMap::from([
                (
                    "implementer".to_owned(),
                    vec!["lint".to_owned(), "unit-tests".to_owned()]
                ),
                ("security-reviewer".to_owned(), Vec::new()),
            ])
        );
        check_err(
            "pipeline: [{agent: implementer}]\n\
             checks: {implementor: [lint], implementer: [../x, .hidden], verifier: lint}\n",
            &[
                "checks.implementor: no agent step of the pipeline has role `implementor`; did you mean `implementer`? name checks for a role the pipeline runs (implementer)",
                "checks.implementer: `../x` is not a check name; name an executable file directly in .hyperloop/checks/ (no `/`, not starting with `.`), e.g. `lint`",
                "checks.implementer: `.hidden` is not a check name; name an executable file directly in .hyperloop/checks/ (no `/`, not starting with `.`), e.g. `lint`",
                "checks.verifier: no agent step of the pipeline has role `verifier`; name checks for a role the pipeline runs (implementer)",
                "checks.verifier: expected a list of check names, e.g. `[lint, unit-tests]` (`[]` for none)",
            ],
        );
    }

    #[test]
    fn undefined_references_and_missing_agents_name_the_fix() {
        check_err(
            "pipeline:\n  - agent: implementor\n  - gate: lgtm\n  - action: merge\ngates:\n  lgtn: {type: label}\n",
            &[
                "pipeline[0]: no agent template for role `implementor`; did you mean `implementer`? add a `kind: Agent` resource named `implementor` to the agents overlay (known roles: implementer, pm, security-reviewer, verifier)",
                "pipeline[1]: gate `lgtm` is not defined; did you mean `lgtn`? define it under `gates:`, e.g. `gates: {lgtm: {type: label}}`",
                "pipeline[2]: action `merge` is not defined; define it under `actions:` (`type: pr-merge` or `type: mark-pr-ready`) or use a built-in action: merge-pr, mark-pr-ready",
            ],
        );
    }

    #[test]
    fn gate_action_and_hook_definitions_are_validated() {
        let cases: &[(&str, &[&str])] = &[
            (
                "gates: {g: {type: lable}}",
                &[
                    "gates.g.type: unknown gate type `lable`; did you mean `label`? use one of: label, pr-approval, ci-status, all, manual, command",
                ],
            ),
            (
                "gates: {g: {label: x}}",
                &[
                    "gates.g: missing `type`; set one of: label, pr-approval, ci-status, all, manual, command",
                ],
            ),
            (
                "gates: {g: {type: ci-status, label: x}}",
                &["gates.g.label: `label` does not apply to gates of type `ci-status`; remove it"],
            ),
            (
                "gates: {g: {type: label, requires: [x]}}",
                &[
                    "gates.g.requires: unknown key `requires`; did you mean `require`? allowed keys here: type, label, require, reviewers, run, timeout",
                ],
            ),
            (
                "gates: {g: {type: all}}",
                &[
                    "gates.g.require: an `all` gate needs `require: [GATE, ...]` with at least one gate name",
                ],
            ),
            (
                "gates: {g: {type: all, require: [ci]}, cj: {type: ci-status}}",
                &[
                    "gates.g.require[0]: required gate `ci` is not defined; did you mean `cj`? define it under `gates:` or remove it from `require`",
                ],
            ),
            (
                "gates: {g: {type: all, require: [g]}}",
                &[
                    "gates.g.require: `all` gates require each other in a cycle (g -> g); it could never clear, so remove one requirement",
                ],
            ),
            (
                "gates: {a: {type: all, require: [b]}, b: {type: all, require: [c, a]}, c: {type: manual}}",
                &[
                    "gates.a.require: `all` gates require each other in a cycle (a -> b -> a); it could never clear, so remove one requirement",
                ],
            ),
            (
                "gates: {g: {type: command}}",
                &[
                    "gates.g.run: a `command` gate needs `run:` as a list of strings, the program first, e.g. `run: [make, e2e]` (a shell line: `run: [sh, -c, \"make e2e && make lint\"]`)",
                ],
            ),
            (
                "gates: {g: {type: command, run: 'make e2e'}, h: {type: command, run: []}, i: {type: command, run: ['', x]}, j: {type: command, run: [make, 3]}}",
                &[
                    "gates.g.run: a `command` gate needs `run:` as a list of strings, the program first, e.g. `run: [make, e2e]` (a shell line: `run: [sh, -c, \"make e2e && make lint\"]`)",
                    "gates.h.run: a `command` gate needs `run:` as a list of strings, the program first, e.g. `run: [make, e2e]` (a shell line: `run: [sh, -c, \"make e2e && make lint\"]`)",
                    "gates.i.run: a `command` gate needs `run:` as a list of strings, the program first, e.g. `run: [make, e2e]` (a shell line: `run: [sh, -c, \"make e2e && make lint\"]`)",
                    "gates.j.run: a `command` gate needs `run:` as a list of strings, the program first, e.g. `run: [make, e2e]` (a shell line: `run: [sh, -c, \"make e2e && make lint\"]`)",
                ],
            ),
            (
                "gates: {g: {type: command, run: [make], timeout: 10 minutes}, h: {type: command, run: [make], timeout: 0s}, i: {type: command, run: [make], timeout: 25h}}",
                &[
                    "gates.g.timeout: expected a duration from 1s to 24h, like 90s, 10m or 1h30m; set one or remove `timeout` for the default 10m",
                    "gates.h.timeout: expected a duration from 1s to 24h, like 90s, 10m or 1h30m; set one or remove `timeout` for the default 10m",
                    "gates.i.timeout: expected a duration from 1s to 24h, like 90s, 10m or 1h30m; set one or remove `timeout` for the default 10m",
                ],
            ),
            (
                "gates: {g: {type: label, run: [make], timeout: 5m}, h: {type: command, run: [make], label: x}}",
                &[
                    "gates.g.run: `run` does not apply to gates of type `label`; remove it",
                    "gates.g.timeout: `timeout` does not apply to gates of type `label`; remove it",
                    "gates.h.label: `label` does not apply to gates of type `command`; remove it",
                ],
            ),
            (
                "gates: {g: {type: label, label: ''}}",
                &["gates.g.label: expected a non-empty label name"],
            ),
            (
                "gates: [g]",
                &["gates: expected a mapping of names to definitions"],
            ),
            (
                "actions: {ship: {type: pr-marge}}",
                &[
                    "actions.ship.type: unknown action type `pr-marge`; did you mean `pr-merge`? use one of: pr-merge, mark-pr-ready",
                ],
            ),
            (
                "actions: {ship: {type: pr-merge, strategy: squash}}",
                &["actions.ship.strategy: unknown key `strategy`; allowed keys here: type"],
            ),
            (
                "hooks: {after_reap: [{type: process-improver}, {type: improver}]}",
                &[
                    "hooks.after_reap[1].type: unknown hook type `improver`; use one of: process-improver",
                ],
            ),
            (
                "hooks: {before_reap: []}",
                &["hooks.before_reap: unknown key `before_reap`; allowed keys here: after_reap"],
            ),
        ];
        for (defs, expected) in cases {
            check_err(
                &format!("pipeline: [{{agent: implementer}}]\n{defs}"),
                expected,
            );
        }
    }

    #[test]
    fn resource_level_problems_are_reported() {
        let doc: Value =
            serde_yaml::from_str("apiVersion: hyperloop.io/v2\nkind: Agent\npipline: []\n")
                .unwrap();
        let err = Process::parse(&doc, SOURCE, AGENTS).unwrap_err();
        let got: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "kind: this resource is `kind: Agent`; a process definition needs `kind: Process`",
                "apiVersion: unsupported apiVersion `hyperloop.io/v2`; use `apiVersion: hyperloop.io/v1`",
                "pipline: unknown key `pipline`; did you mean `pipeline`? allowed keys here: apiVersion, kind, metadata, name, pipeline, gates, actions, hooks, checks",
                "metadata.name: the process has no name; set `metadata: {name: default}`",
                "pipeline: the pipeline has no steps; add at least one, e.g. `pipeline: [{loop: [{agent: implementer}, {agent: verifier}]}, {action: merge-pr}]`",
            ]
        );
    }

    #[test]
    fn all_problems_are_reported_at_once_under_the_file_name() {
        let err = parse(
            "pipeline:\n  - loop: []\n  - gate: nope\n  - agent: ghost\n  - action: merge-pr\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid process definition in .hyperloop/agents/process/process.yaml (3 problems):
  pipeline[0].loop: the loop has no steps; add steps to it or remove the loop
  pipeline[1]: gate `nope` is not defined; define it under `gates:`, e.g. `gates: {nope: {type: label}}`
  pipeline[2]: no agent template for role `ghost`; add a `kind: Agent` resource named `ghost` to the agents overlay (known roles: implementer, pm, security-reviewer, verifier)"
        );
    }

    #[test]
    fn programmatic_pipelines_get_the_same_structural_checks() {
        let err = Pipeline::new(vec![Step::Loop(vec![]), Step::agent("a b")]).unwrap_err();
        let got: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "pipeline[0].loop: the loop has no steps; add steps to it or remove the loop",
                "pipeline[1].agent: invalid agent name \"a b\"; use 1 to 100 letters, digits, `-`, `_` or `.`",
            ]
        );
        assert!(Pipeline::new(vec![]).is_err());
    }

    #[test]
    fn suggestions_only_cover_plausible_typos() {
        assert_eq!(
            closest("agnet", STEP_KEYS.iter().copied()).as_deref(),
            Some("agent")
        );
        assert_eq!(
            closest("rol", STEP_KEYS.iter().copied()).as_deref(),
            Some("role")
        );
        assert_eq!(closest("zzzzzz", STEP_KEYS.iter().copied()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
