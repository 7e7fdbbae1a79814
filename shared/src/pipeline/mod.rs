//! The pipeline DSL (`kind: Process`), its validation and the pure executor.
//!
//! - [`Process::parse`] reads a composed `kind: Process` resource and reports every problem
//!   at once, each with the file, the step path (`pipeline[0].loop[1]`) and the fix.
//! - [`Pipeline`] is the validated step tree. Its methods are the executor:
//!   [`Pipeline::start`], [`Pipeline::apply`] (an outcome at the current step → a
//!   [`Transition`]), [`Pipeline::next_at`] and [`Pipeline::relocate`] (the policy for a
//!   pipeline that changed under a running task).
//! - [`Position`] is the persisted place of a task: index path + step identity + pipeline
//!   fingerprint, so duplicate step names are unambiguous and edits are detected.
//!
//! Built-in actions: `merge-pr` (type `pr-merge`) and `mark-pr-ready` (type `mark-pr-ready`)
//! exist without being declared under `actions:`; declaring them overrides the built-in.
//! Gates are never implicit, but every gate, whatever its type, can be cleared by a human with
//! `hyperloopctl approve <task>`; type `manual` is a gate that only that clears, which is what
//! a local (GitHub-less) setup uses for human sign-off. Type `command` runs a program on a
//! checkout of the task's work, on the coordinator's host (only when its operator allows it:
//! [`crate::gates::refuse_command_gates`]).

mod exec;
mod parse;
mod position;

use std::collections::BTreeMap;
use std::time::Duration;

pub use exec::{
    ActionOutcome, Change, FailReason, GateCheck, Limits, LoopCause, Next, Outcome, Progress,
    Relocation, RelocationKind, RestartReason, StepError, Transition,
};
pub use parse::{Problem, ProblemKind, ProcessError};
pub use position::{
    Fingerprint, MAX_STEP_NAME_LEN, ParsePositionError, Position, StepKind, StepRef,
};

use position::Fnv1a;

/// One step of a pipeline. Leaves are agents, gates and actions; loops contain steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `agent: ROLE` (alias `role: ROLE`): run an agent session with that role's prompt.
    Agent(String),
    /// `gate: NAME`: wait for an external signal configured under `gates:`.
    Gate(String),
    /// `action: NAME`: perform an operation configured under `actions:` (or a built-in).
    Action(String),
    /// `loop: [STEPS]`: a failure inside restarts the loop at its first step.
    Loop(Vec<Step>),
}

impl Step {
    pub fn agent(role: &str) -> Self {
        Step::Agent(role.to_owned())
    }

    pub fn gate(name: &str) -> Self {
        Step::Gate(name.to_owned())
    }

    pub fn action(name: &str) -> Self {
        Step::Action(name.to_owned())
    }

    /// The identity of a leaf; `None` for a loop.
    pub fn leaf(&self) -> Option<(StepKind, &str)> {
        match self {
            Step::Agent(n) => Some((StepKind::Agent, n)),
            Step::Gate(n) => Some((StepKind::Gate, n)),
            Step::Action(n) => Some((StepKind::Action, n)),
            Step::Loop(_) => None,
        }
    }
}

/// A structurally valid pipeline: non-empty, no empty loops, valid step names. The executor
/// relies on these invariants (every path descends to a leaf), so the fields are private.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    steps: Vec<Step>,
    fingerprint: Fingerprint,
    leaves: usize,
    /// Cached: `decide` asks for every not-started task.
    first_kind: StepKind,
}

impl Pipeline {
    /// Builds a pipeline from steps, checking the structural rules that [`Process::parse`]
    /// checks (gate, action and agent definitions are the Process's business, not checked).
    ///
    /// # Errors
    /// Every structural problem, located by step path, under the source label `<pipeline>`.
    pub fn new(steps: Vec<Step>) -> Result<Self, ProcessError> {
        let mut problems = Vec::new();
        parse::structural_problems(&steps, &mut problems);
        if problems.is_empty() {
            Ok(Self::from_checked(steps))
        } else {
            Err(ProcessError {
                source: "<pipeline>".to_owned(),
                problems,
            })
        }
    }

    fn from_checked(steps: Vec<Step>) -> Self {
        let mut h = Fnv1a::new();
        encode(&steps, &mut h);
        let mut leaves = 0;
        for_each_leaf(&steps, &mut Vec::new(), &mut |_, _| leaves += 1);
        let mut first_kind = StepKind::Agent;
        let mut step = steps.first();
        while let Some(s) = step {
            match s {
                Step::Loop(children) => step = children.first(),
                leaf => {
                    first_kind = leaf.leaf().map_or(StepKind::Agent, |(k, _)| k);
                    break;
                }
            }
        }
        Self {
            steps,
            fingerprint: h.finish(),
            leaves,
            first_kind,
        }
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Stable hash of the structure; positions carry it to detect edits.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Number of leaf steps (agents, gates, actions) at any depth.
    pub fn leaf_count(&self) -> usize {
        self.leaves
    }

    /// The kind of the first leaf: decides whether starting a task needs a worker slot.
    pub fn first_step_kind(&self) -> StepKind {
        self.first_kind
    }

    /// Every leaf with its path, in execution order.
    pub fn leaves(&self) -> Vec<(Vec<u32>, StepRef)> {
        let mut out = Vec::with_capacity(self.leaves);
        for_each_leaf(&self.steps, &mut Vec::new(), &mut |path, (kind, name)| {
            out.push((path.to_vec(), StepRef::new(kind, name)));
        });
        out
    }

    /// The step at an index path, if the path exists.
    pub(crate) fn node(&self, path: &[u32]) -> Option<&Step> {
        let (&first, rest) = path.split_first()?;
        let mut step = self.steps.get(first as usize)?;
        for &i in rest {
            match step {
                Step::Loop(children) => step = children.get(i as usize)?,
                _ => return None,
            }
        }
        Some(step)
    }

    /// Descends from the step at `path` (which must exist) to its first leaf.
    pub(crate) fn descend(&self, mut path: Vec<u32>) -> Position {
        loop {
            match self.node(&path) {
                Some(Step::Loop(_)) => path.push(0),
                Some(leaf) => {
                    let (kind, name) = leaf.leaf().unwrap_or((StepKind::Agent, ""));
                    return Position {
                        path,
                        step: StepRef::new(kind, name),
                        pipeline: self.fingerprint,
                    };
                }
                // Unreachable for a checked pipeline (loops are non-empty); fall back to the
                // pipeline's first step rather than panicking on a broken invariant.
                None => {
                    debug_assert!(false, "descend from a missing path {path:?}");
                    path = vec![0];
                }
            }
        }
    }

    /// Position of the first leaf.
    pub fn first_position(&self) -> Position {
        self.descend(vec![0])
    }
}

fn for_each_leaf<'a>(
    steps: &'a [Step],
    path: &mut Vec<u32>,
    f: &mut impl FnMut(&[u32], (StepKind, &'a str)),
) {
    for (i, step) in steps.iter().enumerate() {
        path.push(u32::try_from(i).unwrap_or(u32::MAX));
        match step {
            Step::Loop(children) => for_each_leaf(children, path, f),
            leaf => {
                if let Some(id) = leaf.leaf() {
                    f(path, id);
                }
            }
        }
        path.pop();
    }
}

/// Canonical encoding for the fingerprint: a tag per step, length-prefixed names, loops
/// bracketed with their child count. Changing this changes every fingerprint, which makes
/// every running task relocate once: treat it as a persisted format.
fn encode(steps: &[Step], h: &mut Fnv1a) {
    h.bytes(b"[");
    h.bytes(&u64::try_from(steps.len()).unwrap_or(u64::MAX).to_le_bytes());
    for step in steps {
        match step {
            Step::Agent(n) => {
                h.bytes(b"A");
                h.str(n);
            }
            Step::Gate(n) => {
                h.bytes(b"G");
                h.str(n);
            }
            Step::Action(n) => {
                h.bytes(b"X");
                h.str(n);
            }
            Step::Loop(children) => {
                h.bytes(b"L");
                encode(children, h);
            }
        }
    }
    h.bytes(b"]");
}

/// A validated `kind: Process` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// `metadata.name`.
    pub name: String,
    /// Where it came from (a file name), for messages.
    pub source: String,
    pub pipeline: Pipeline,
    /// Every gate definition (used or not).
    pub gates: BTreeMap<String, GateDef>,
    /// Declared actions plus the built-ins `merge-pr` and `mark-pr-ready`.
    pub actions: BTreeMap<String, ActionKind>,
    pub hooks: Hooks,
    /// `checks:`: for an agent role, exactly the checks (`.hyperloop/checks/<name>`) run
    /// after it reports pass, in order; roles not listed get the default.
    pub checks: BTreeMap<String, Vec<String>>,
}

/// A gate definition from `gates:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateDef {
    pub kind: GateKind,
    /// People to request a review from / notify when a task reaches the gate.
    pub reviewers: Vec<String>,
}

/// Default label of a `type: label` gate.
pub const DEFAULT_GATE_LABEL: &str = "lgtm";

/// Default `timeout` of a `type: command` gate.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateKind {
    /// Cleared when the task's PR carries `label` (default [`DEFAULT_GATE_LABEL`]).
    Label { label: String },
    /// Cleared when the PR has an approving review.
    PrApproval,
    /// Cleared when the PR head's combined CI status is success.
    CiStatus,
    /// Cleared when every required gate is cleared.
    All { require: Vec<String> },
    /// Cleared only by `hyperloopctl approve`.
    Manual,
    /// Cleared when `run` (program and arguments) exits 0 in a checkout of the task's head
    /// within `timeout` (default [`DEFAULT_COMMAND_TIMEOUT`]).
    Command { run: Vec<String>, timeout: Duration },
}

impl GateKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            GateKind::Label { .. } => "label",
            GateKind::PrApproval => "pr-approval",
            GateKind::CiStatus => "ci-status",
            GateKind::All { .. } => "all",
            GateKind::Manual => "manual",
            GateKind::Command { .. } => "command",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// Merge the task's work into the base branch (a PR merge with GitHub, a local merge
    /// without).
    PrMerge,
    /// Mark the task's draft PR ready for review (a no-op without GitHub).
    MarkPrReady,
}

impl ActionKind {
    pub fn type_name(self) -> &'static str {
        match self {
            ActionKind::PrMerge => "pr-merge",
            ActionKind::MarkPrReady => "mark-pr-ready",
        }
    }
}

/// Actions that exist without an `actions:` entry.
pub const BUILTIN_ACTIONS: [(&str, ActionKind); 2] = [
    ("merge-pr", ActionKind::PrMerge),
    ("mark-pr-ready", ActionKind::MarkPrReady),
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Run after results are reaped, in order.
    pub after_reap: Vec<HookKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Reads the round's findings and writes process-overlay patches.
    ProcessImprover,
}
