//! Assembly of the prompt an agent receives at spawn time.
//!
//! A prompt is a list of [`Section`]s, each with a provenance label, rendered into one
//! markdown text: the agent template's `prompt` (placeholders filled), its `guidelines`, then
//! what the coordinator knows about the step (the spec at its pinned version, every earlier
//! finding, the commit trailers, the result-file contract). There are three kinds:
//! [`task_prompt`] for pipeline agents (implementer, verifier, rebase-resolver, ...),
//! [`intake_prompt`] for the PM and [`improvement_prompt`] for the process-improver.
//!
//! # Secrets
//!
//! A prompt contains exactly what the caller passes in, and prompts are recorded in events
//! and shown on the dashboard. Callers must never pass environment values, tokens or other
//! credentials in any context field (spec text, findings, titles). Agents receive their
//! credentials through their process environment, never through the prompt.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use serde_yaml::Value;

use crate::model::{Review, SpecPath, SpecRef, Task, TaskId};
use crate::result_file::{self, Expected, RESULT_FILE_PATH, Subject};

/// Annotation naming the layer an agent's `prompt` came from (shown as the section's
/// source); `base` when absent.
pub const SOURCE_ANNOTATION: &str = "hyperloop.io/source";

/// Annotations whose text is the agent's persona (seed 001's `ambient.io/persona`, and
/// hyperloop's own name for it): rendered as a "Persona" section after the prompt. The
/// first one set wins.
pub const PERSONA_ANNOTATIONS: [&str; 2] = ["ambient.io/persona", "hyperloop.io/persona"];

/// Annotation naming the layer an agent's `guidelines` came from; `overlay` when absent,
/// since base agents ship with empty guidelines.
pub const GUIDELINES_SOURCE_ANNOTATION: &str = "hyperloop.io/guidelines-source";

/// Where the process-improver writes its kustomize Component, relative to the repository.
pub const PROCESS_OVERLAY_DIR: &str = ".hyperloop/agents/process/";

/// Where check scripts live; the verifier runs every executable in it.
pub const CHECKS_DIR: &str = ".hyperloop/checks/";

/// Largest single finding quoted into a prompt, in bytes. A task that looped many times
/// carries every round's findings; the cap keeps one runaway finding from crowding out the
/// rest (result files are already capped at 256 KiB).
pub const MAX_FINDING_BYTES: usize = 16 * 1024;

/// An agent definition from a composed `kind: Agent` resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentTemplate {
    /// `metadata.name`; also the role the agent plays in the pipeline.
    pub name: String,
    pub prompt: String,
    /// Project rules layered on by overlays, trimmed; empty when there are none.
    pub guidelines: String,
    pub annotations: BTreeMap<String, String>,
}

/// A `kind: Agent` resource that cannot be used. Each message names the resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("resource {resource} is not an Agent: expected `kind: Agent`, found {found}")]
    NotAnAgent { resource: String, found: String },
    #[error("an Agent resource has no `metadata.name`; add `metadata: {{name: <role>}}`")]
    MissingName,
    #[error("Agent `{name}` has no `prompt`; every agent needs the instructions it runs with")]
    MissingPrompt { name: String },
    #[error("Agent `{name}` has an empty `prompt`")]
    EmptyPrompt { name: String },
    #[error("Agent `{name}`: `{field}` must be {expected}")]
    WrongType {
        name: String,
        field: &'static str,
        expected: &'static str,
    },
    #[error("Agent `{name}` is defined more than once in the composed resources")]
    Duplicate { name: String },
}

impl AgentTemplate {
    /// Reads a composed `kind: Agent` resource.
    ///
    /// # Errors
    /// When the resource is not an Agent or lacks a name or a string `prompt`, or when
    /// `guidelines` or `annotations` have the wrong shape.
    pub fn from_resource(resource: &Value) -> Result<Self, TemplateError> {
        let kind = resource.get("kind").and_then(Value::as_str);
        // The top-level `name` is a legacy spelling of `metadata.name`.
        let name = resource
            .get("metadata")
            .and_then(|m| m.get("name"))
            .or_else(|| resource.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if kind != Some("Agent") {
            return Err(TemplateError::NotAnAgent {
                resource: name.unwrap_or_else(|| "without a name".to_owned()),
                found: kind.map_or_else(|| "no kind".to_owned(), |k| format!("`{k}`")),
            });
        }
        let name = name.ok_or(TemplateError::MissingName)?;
        let wrong = |field, expected| TemplateError::WrongType {
            name: name.clone(),
            field,
            expected,
        };
        let prompt = match resource.get("prompt") {
            None | Some(Value::Null) => return Err(TemplateError::MissingPrompt { name }),
            Some(Value::String(p)) if p.trim().is_empty() => {
                return Err(TemplateError::EmptyPrompt { name });
            }
            Some(Value::String(p)) => p.trim_end().to_owned(),
            Some(_) => return Err(wrong("prompt", "a string")),
        };
        let guidelines = match resource.get("guidelines") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(g)) => g.trim().to_owned(),
            Some(_) => return Err(wrong("guidelines", "a string")),
        };
        let mut annotations = BTreeMap::new();
        // Legacy top-level annotations first, so `metadata.annotations` wins on conflict.
        for (field, source) in [
            ("annotations", resource.get("annotations")),
            (
                "metadata.annotations",
                resource.get("metadata").and_then(|m| m.get("annotations")),
            ),
        ] {
            match source {
                None | Some(Value::Null) => {}
                Some(Value::Mapping(map)) => {
                    for (k, v) in map {
                        let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                            return Err(wrong(field, "a mapping of strings to strings"));
                        };
                        annotations.insert(k.to_owned(), v.to_owned());
                    }
                }
                Some(_) => return Err(wrong(field, "a mapping of strings to strings")),
            }
        }
        Ok(Self {
            name,
            prompt,
            guidelines,
            annotations,
        })
    }

    fn prompt_source(&self) -> String {
        self.annotations
            .get(SOURCE_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| "base".to_owned())
    }

    /// The persona annotation's text, if one is set and not blank.
    pub fn persona(&self) -> Option<&str> {
        PERSONA_ANNOTATIONS
            .iter()
            .find_map(|a| self.annotations.get(*a))
            .map(String::as_str)
            .filter(|p| !p.trim().is_empty())
    }

    fn guidelines_source(&self) -> String {
        self.annotations
            .get(GUIDELINES_SOURCE_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| "overlay".to_owned())
    }
}

/// Every `kind: Agent` among composed resources, by name. Other kinds (the Process) are
/// skipped.
///
/// # Errors
/// The first unusable Agent, or a name defined twice.
pub fn agent_templates(
    resources: &[Value],
) -> Result<BTreeMap<String, AgentTemplate>, TemplateError> {
    let mut out = BTreeMap::new();
    for resource in resources {
        if resource.get("kind").and_then(Value::as_str) != Some("Agent") {
            continue;
        }
        let template = AgentTemplate::from_resource(resource)?;
        if out.contains_key(&template.name) {
            return Err(TemplateError::Duplicate {
                name: template.name,
            });
        }
        out.insert(template.name.clone(), template);
    }
    Ok(out)
}

/// An assembled prompt: the text sent to the agent and its parts, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Prompt {
    pub text: String,
    pub sections: Vec<Section>,
}

/// One part of a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Section {
    pub kind: SectionKind,
    /// The `## ` heading; `None` for the agent's own prompt, which opens the text.
    pub heading: Option<String>,
    /// Provenance: the template layer (`base`, an overlay name from the annotations), `spec`,
    /// `findings`, `state` (task data) or `coordinator` (contracts hyperloop generates).
    pub source: String,
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SectionKind {
    Prompt,
    Persona,
    Guidelines,
    Task,
    Spec,
    Findings,
    Trailers,
    ResultFile,
    SpecChanges,
    DeletedSpecs,
    FailureHistory,
    CurrentTasks,
    Rejections,
    FailedResults,
    CurrentGuidelines,
    Destinations,
}

/// Everything a pipeline agent's prompt is built from. The template's name is the role.
#[derive(Debug, Clone, Copy)]
pub struct TaskContext<'a> {
    pub task_id: TaskId,
    pub title: &'a str,
    pub round: u32,
    pub spec_ref: &'a SpecRef,
    /// The spec's text at `spec_ref`'s commit, not the working tree's.
    pub spec_text: &'a str,
    pub branch: &'a str,
    pub base_branch: &'a str,
    /// Reviews of this task from earlier rounds, in any order; all of them are shown, sorted
    /// by round. Reviews of other tasks are ignored.
    pub reviews: &'a [Review],
    /// Reviews of earlier tasks for the same spec that failed (a rejected pull request's
    /// comments among them): why those approaches did not land.
    pub earlier: &'a [Review],
}

/// The prompt for a pipeline agent working on a task.
pub fn task_prompt(template: &AgentTemplate, ctx: &TaskContext<'_>) -> Prompt {
    let task_id = ctx.task_id.to_string();
    let round = ctx.round.to_string();
    let spec_ref = ctx.spec_ref.to_string();
    let title = one_line(ctx.title);
    let values = [
        ("task_id", task_id.as_str()),
        ("title", title.as_str()),
        ("spec_ref", spec_ref.as_str()),
        ("spec_path", ctx.spec_ref.path.as_str()),
        ("round", round.as_str()),
        ("branch", ctx.branch),
        ("base_branch", ctx.base_branch),
        ("role", template.name.as_str()),
        ("result_file", RESULT_FILE_PATH),
    ];
    let mut b = Builder::new(template, &values);

    b.push(
        SectionKind::Task,
        "Task",
        "coordinator",
        format!(
            "- Task: {task_id}: {title}\n- Role: {}\n- Round: {round}\n- Spec: {spec_ref}\n\
             - Branch: {} (based on {})",
            template.name, ctx.branch, ctx.base_branch
        ),
    );
    b.push(
        SectionKind::Spec,
        "Spec",
        "spec",
        format!(
            "`{}` as of commit `{}` (`{spec_ref}`). This is the version the task was created \
             from; work against it even if the file has changed since.\n\n{}",
            ctx.spec_ref.path,
            ctx.spec_ref.commit,
            fenced(ctx.spec_text, "markdown")
        ),
    );

    let mut reviews: Vec<&Review> = ctx
        .reviews
        .iter()
        .filter(|r| r.task_id == ctx.task_id)
        .collect();
    // Numeric and stable: round 10 follows round 9, and two reviews of one round keep the
    // order they were recorded in.
    reviews.sort_by_key(|r| r.round);
    if !reviews.is_empty() {
        let mut body = String::from(
            "Earlier attempts at this task were reviewed as below, oldest first. Address every \
             open finding; do not repeat an approach that already failed.",
        );
        for r in reviews {
            write_review(&mut body, "###", r);
        }
        b.push(
            SectionKind::Findings,
            "Findings from earlier rounds",
            "findings",
            body,
        );
    }

    if !ctx.earlier.is_empty() {
        let mut body = String::from(
            "Earlier tasks for this spec failed; this is what their reviewers said. Take a \
             different approach where they rejected one.",
        );
        for r in ctx.earlier {
            let _ = write!(body, "\n\n### {}", r.task_id);
            write_review(&mut body, "####", r);
        }
        b.push(
            SectionKind::FailureHistory,
            "Earlier tasks for this spec",
            "findings",
            body,
        );
    }

    b.push_trailers(&format!("Spec-Ref: {spec_ref}\nTask-Ref: {task_id}\n"));
    b.finish(&Expected::new(
        Subject::Task(ctx.task_id),
        ctx.round,
        &template.name,
    ))
}

/// A spec that is new or has changed since the last intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecChange {
    /// The spec pinned at the commit intake reads it at.
    pub spec_ref: SpecRef,
    /// The full text at `spec_ref`.
    pub text: String,
    pub kind: SpecChangeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecChangeKind {
    New,
    /// Changed since the version intake last processed; `diff` is a unified diff from that
    /// version when the caller has one.
    Changed {
        diff: Option<String>,
    },
}

/// A failed task and its review history, for intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedTask {
    pub task: Task,
    pub reviews: Vec<Review>,
}

/// Everything the PM's intake prompt is built from.
#[derive(Debug, Clone, Copy)]
pub struct IntakeContext<'a> {
    /// The coordinator's intake counter; it becomes the result file's `round`.
    pub run: u32,
    pub base_branch: &'a str,
    pub specs: &'a [SpecChange],
    pub deleted: &'a [SpecPath],
    pub failures: &'a [FailedTask],
    /// All current tasks, so the PM does not propose work that already exists.
    pub tasks: &'a [Task],
    /// Findings from the previous intake whose proposals the coordinator rejected.
    pub rejections: &'a [String],
}

/// The prompt for a PM intake run.
pub fn intake_prompt(template: &AgentTemplate, ctx: &IntakeContext<'_>) -> Prompt {
    let run = ctx.run.to_string();
    let values = [
        ("task_id", "intake"),
        ("round", run.as_str()),
        ("base_branch", ctx.base_branch),
        ("role", template.name.as_str()),
        ("result_file", RESULT_FILE_PATH),
    ];
    let mut b = Builder::new(template, &values);

    let mut body = String::new();
    if ctx.specs.is_empty() {
        body.push_str("(none)");
    }
    for spec in ctx.specs {
        if !body.is_empty() {
            body.push_str("\n\n");
        }
        let label = match spec.kind {
            SpecChangeKind::New => "new",
            SpecChangeKind::Changed { .. } => "changed",
        };
        let _ = write!(body, "### `{}` ({label})\n\n", spec.spec_ref);
        if let SpecChangeKind::Changed { diff: Some(diff) } = &spec.kind {
            let _ = write!(
                body,
                "Changes since the last intake:\n\n{}\n\nFull text:\n\n",
                fenced(diff, "diff")
            );
        }
        body.push_str(&fenced(&spec.text, "markdown"));
    }
    b.push(SectionKind::SpecChanges, "Specs to process", "spec", body);

    if !ctx.deleted.is_empty() {
        let mut body = String::from(
            "These specs were deleted. The coordinator cancels their open tasks; propose \
             nothing for them.\n",
        );
        for path in ctx.deleted {
            let _ = write!(body, "\n- `{path}`");
        }
        b.push(SectionKind::DeletedSpecs, "Deleted specs", "spec", body);
    }

    if !ctx.failures.is_empty() {
        let mut body = String::from(
            "These tasks failed. Their gaps are still open: propose new tasks that take a \
             different approach or split the work smaller, informed by the findings.",
        );
        for failed in ctx.failures {
            let t = &failed.task;
            let _ = write!(
                body,
                "\n\n### {}: {} (`{}`, {} rounds)",
                t.id,
                one_line(&t.title),
                t.spec_ref,
                t.round
            );
            let mut reviews: Vec<&Review> = failed.reviews.iter().collect();
            reviews.sort_by_key(|r| r.round);
            for r in reviews {
                write_review(&mut body, "####", r);
            }
        }
        b.push(SectionKind::FailureHistory, "Failed tasks", "state", body);
    }

    let mut body = String::new();
    if ctx.tasks.is_empty() {
        body.push_str("(none)");
    } else {
        body.push_str(
            "Work that already exists. Do not propose it again; depend on it by id instead.\n",
        );
        let mut tasks: Vec<&Task> = ctx.tasks.iter().collect();
        tasks.sort_by_key(|t| t.id);
        for t in tasks {
            let _ = write!(
                body,
                "\n- {} [{}] {} (`{}`)",
                t.id,
                t.status,
                one_line(&t.title),
                t.spec_ref
            );
            if !t.deps.is_empty() {
                let deps: Vec<String> = t.deps.iter().map(TaskId::to_string).collect();
                let _ = write!(body, ", deps: {}", deps.join(", "));
            }
        }
    }
    b.push(SectionKind::CurrentTasks, "Current tasks", "state", body);

    if !ctx.rejections.is_empty() {
        let mut body = String::from(
            "The coordinator rejected the previous intake's proposals for these reasons. Do \
             not repeat these mistakes.",
        );
        for r in ctx.rejections {
            let _ = write!(body, "\n\n{}", capped(r).trim_end());
        }
        b.push(
            SectionKind::Rejections,
            "Rejected proposals from the last intake",
            "state",
            body,
        );
    }

    b.finish(&Expected::new(Subject::Intake, ctx.run, &template.name))
}

/// A failed result the process-improver should learn from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedResult {
    pub spec_ref: SpecRef,
    pub review: Review,
}

/// Everything the process-improver's prompt is built from.
#[derive(Debug, Clone, Copy)]
pub struct ImprovementContext<'a> {
    /// The coordinator's improvement counter; it becomes the result file's `round`.
    pub run: u32,
    pub branch: &'a str,
    pub base_branch: &'a str,
    /// The failed results reaped since the last improvement run.
    pub failures: &'a [FailedResult],
    /// The composed agents, so rules are added to the guidelines they already have.
    pub agents: &'a [AgentTemplate],
}

/// The prompt for a process-improver run.
pub fn improvement_prompt(template: &AgentTemplate, ctx: &ImprovementContext<'_>) -> Prompt {
    let run = ctx.run.to_string();
    let values = [
        ("task_id", "process-improvement"),
        ("round", run.as_str()),
        ("branch", ctx.branch),
        ("base_branch", ctx.base_branch),
        ("role", template.name.as_str()),
        ("result_file", RESULT_FILE_PATH),
    ];
    let mut b = Builder::new(template, &values);

    let mut body = String::from("The results that failed since the last improvement run:");
    if ctx.failures.is_empty() {
        body.push_str("\n\n(none)");
    }
    for f in ctx.failures {
        let r = &f.review;
        let _ = write!(
            body,
            "\n\n### {} · round {} · {} (`{}`)\n\n{}",
            r.task_id,
            r.round,
            r.role,
            f.spec_ref,
            capped(&r.detail)
        );
    }
    b.push(
        SectionKind::FailedResults,
        "Failed results",
        "findings",
        body,
    );

    let mut body = String::from(
        "The guidelines each agent runs with now, from every layer. A patch replaces an \
         agent's `guidelines` as a whole, so copy these and add your rules below them.",
    );
    for agent in ctx.agents {
        let current = if agent.guidelines.is_empty() {
            "(none)"
        } else {
            agent.guidelines.as_str()
        };
        let _ = write!(body, "\n\n### {}\n\n{current}", agent.name);
    }
    b.push(
        SectionKind::CurrentGuidelines,
        "Current guidelines",
        "overlay",
        body,
    );

    b.push(
        SectionKind::Destinations,
        "Where to write",
        "coordinator",
        destinations(),
    );

    let tasks: BTreeSet<String> = ctx
        .failures
        .iter()
        .map(|f| f.review.task_id.to_string())
        .collect();
    let specs: BTreeSet<String> = ctx
        .failures
        .iter()
        .map(|f| f.spec_ref.to_string())
        .collect();
    let mut trailers = String::new();
    for s in &specs {
        let _ = writeln!(trailers, "Spec-Ref: {s}");
    }
    trailers.push_str("Task-Ref: process-improvement\n");
    for t in &tasks {
        let _ = writeln!(trailers, "Task-Ref: {t}");
    }
    b.push_trailers(&trailers);

    b.finish(&Expected::new(
        Subject::Improvement,
        ctx.run,
        &template.name,
    ))
}

fn destinations() -> String {
    format!(
        "`{PROCESS_OVERLAY_DIR}` is a kustomize Component applied on top of every other layer. \
         For each agent you improve, write one patch file `{PROCESS_OVERLAY_DIR}<agent>-guidelines.yaml`:\n\n\
         ```yaml\n\
         apiVersion: hyperloop.io/v1\n\
         kind: Agent\n\
         metadata:\n\
         \x20 name: implementer\n\
         guidelines: |\n\
         \x20 - (the rules the agent already has, copied unchanged)\n\
         \x20 - Run the formatter before every commit; the verifier rejects unformatted code.\n\
         ```\n\n\
         and list it once in `{PROCESS_OVERLAY_DIR}kustomization.yaml` (keep the entries \
         already there):\n\n\
         ```yaml\n\
         apiVersion: kustomize.config.k8s.io/v1alpha1\n\
         kind: Component\n\
         patches:\n\
         \x20 - path: implementer-guidelines.yaml\n\
         \x20   target:\n\
         \x20     kind: Agent\n\
         \x20     name: implementer\n\
         ```\n\n\
         A mechanical rule (formatting, a forbidden pattern, a required file) is better \
         enforced by a check: an executable script in `{CHECKS_DIR}` that runs from the \
         repository root, exits 0 when the rule holds, and otherwise prints what is wrong and \
         how to fix it and exits non-zero. hyperloop runs every check after each implementer \
         and verifier pass; a failing check fails that round with its output.\n\n\
         Change only these two places: not the `prompt` of any agent, not the pipeline, not \
         the code or the specs."
    )
}

/// Accumulates sections and renders them.
struct Builder {
    sections: Vec<Section>,
}

impl Builder {
    /// Starts with the template's prompt and guidelines, placeholders filled in both.
    fn new(template: &AgentTemplate, values: &[(&str, &str)]) -> Self {
        let mut b = Self {
            sections: Vec::new(),
        };
        b.sections.push(Section {
            kind: SectionKind::Prompt,
            heading: None,
            source: template.prompt_source(),
            body: fill_placeholders(&template.prompt, values)
                .trim_end()
                .to_owned(),
        });
        if let Some(persona) = template.persona() {
            b.push(
                SectionKind::Persona,
                "Persona",
                &template.guidelines_source(),
                fill_placeholders(persona, values),
            );
        }
        if !template.guidelines.is_empty() {
            b.push(
                SectionKind::Guidelines,
                "Guidelines",
                &template.guidelines_source(),
                fill_placeholders(&template.guidelines, values),
            );
        }
        b
    }

    fn push(&mut self, kind: SectionKind, heading: &str, source: &str, body: String) {
        self.sections.push(Section {
            kind,
            heading: Some(heading.to_owned()),
            source: source.to_owned(),
            body: body.trim_end().to_owned(),
        });
    }

    /// Ends with the result-file contract for `expected` and renders the sections.
    /// The commit trailers section; `lines` ends with a newline.
    fn push_trailers(&mut self, lines: &str) {
        self.push(
            SectionKind::Trailers,
            "Commit trailers",
            "coordinator",
            format!(
                "End every commit message with these trailer lines, after a blank line, exactly \
                 as written:\n\n```\n{lines}```"
            ),
        );
    }

    fn finish(mut self, expected: &Expected) -> Prompt {
        self.push(
            SectionKind::ResultFile,
            "Result file",
            "coordinator",
            result_file::contract(expected),
        );
        let mut text = String::new();
        for s in &self.sections {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            if let Some(h) = &s.heading {
                let _ = write!(text, "## {h}\n\n");
            }
            text.push_str(&s.body);
        }
        text.push('\n');
        Prompt {
            text,
            sections: self.sections,
        }
    }
}

/// Replaces `{name}` for each known `name` in one left-to-right pass, so substituted values
/// are never expanded again. Anything else in braces (code, JSON, unknown names) stays as
/// written: prompts routinely contain code.
pub fn fill_placeholders(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (close, *v))
        });
        match value {
            Some((close, v)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Wraps `text` in a code fence longer than any backtick run inside it, so a spec's own code
/// blocks cannot close the fence early.
fn fenced(text: &str, lang: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}{lang}\n{}\n{fence}", text.trim_end())
}

/// Appends one review as a section under a `heading` of that level (`###`).
fn write_review(body: &mut String, heading: &str, r: &Review) {
    let _ = write!(
        body,
        "\n\n{heading} Round {} · {} · {}\n\n{}",
        r.round,
        r.role,
        r.verdict,
        capped(&r.detail)
    );
}

fn capped(detail: &str) -> String {
    let detail = detail.trim();
    if detail.is_empty() {
        return "(no detail recorded)".to_owned();
    }
    let kept = result_file::truncate(detail, MAX_FINDING_BYTES);
    if kept.len() < detail.len() {
        format!(
            "{kept}\n[… {} more bytes truncated]",
            detail.len() - kept.len()
        )
    } else {
        kept.to_owned()
    }
}

/// Titles come from agents; keep each on one line so it cannot inject headings.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
