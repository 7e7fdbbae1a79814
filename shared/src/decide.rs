//! `decide()`: the pure choice of which tasks get a worker now, and for every task left
//! waiting, why.
//!
//! Rules (PRODUCT.md §4–§5):
//! - in-progress tasks at an agent step without a worker resume first, then not-started tasks
//!   whose dependencies are all complete start; each group in numeric [`TaskId`] order;
//! - only agent steps take a worker slot: tasks at gates or actions hold none, and a task
//!   whose pipeline starts with a gate or an action starts without one;
//! - a not-started task does not start while a dependency is unknown, failed, blocked for
//!   good, or not complete, nor while it sits on a dependency cycle; the reason is reported.
//!
//! Cost: O(n + e) for n tasks and e dependency edges (one Tarjan pass for cycles and
//! blocked-forever propagation), plus an O(n log n) sort only when the input is not already in
//! id order.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use crate::model::{Task, TaskId, TaskStatus};
use crate::pipeline::{Pipeline, StepError, StepKind};

/// Anything with an id and dependencies: the input of the graph functions.
pub trait DepNode {
    fn id(&self) -> TaskId;
    fn deps(&self) -> &[TaskId];
}

impl DepNode for Task {
    fn id(&self) -> TaskId {
        self.id
    }

    fn deps(&self) -> &[TaskId] {
        &self.deps
    }
}

/// What `decide` needs to know about one task. Borrowed, so building a snapshot of 100k
/// tasks allocates only the vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSnapshot<'a> {
    pub id: TaskId,
    pub deps: &'a [TaskId],
    pub stage: Stage<'a>,
}

impl DepNode for TaskSnapshot<'_> {
    fn id(&self) -> TaskId {
        self.id
    }

    fn deps(&self) -> &[TaskId] {
        self.deps
    }
}

/// Where a task is, as far as dispatching is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage<'a> {
    /// Not started; `first_step` says whether starting needs a worker.
    NotStarted {
        first_step: StepKind,
    },
    /// In progress at an agent step with no worker on it (new round, restart, lost worker).
    AgentReady {
        role: &'a str,
    },
    /// A worker is running its current step.
    OnWorker {
        role: &'a str,
    },
    /// Waiting at a gate; holds no slot.
    AtGate {
        gate: &'a str,
    },
    /// An action is due; the coordinator performs it, no worker slot.
    ActionPending {
        action: &'a str,
    },
    Complete,
    Failed,
}

impl<'a> TaskSnapshot<'a> {
    /// Builds the snapshot of a persisted task. `on_worker` says whether a worker currently
    /// holds an assignment for it (assignments are separate records).
    ///
    /// # Errors
    /// An in-progress task without a position, or whose position does not belong to
    /// `pipeline` (relocate it first, see [`Pipeline::relocate`]).
    pub fn of(task: &'a Task, pipeline: &Pipeline, on_worker: bool) -> Result<Self, StepError> {
        let stage = match task.status {
            TaskStatus::Complete => Stage::Complete,
            TaskStatus::Failed => Stage::Failed,
            TaskStatus::NotStarted => Stage::NotStarted {
                first_step: pipeline.first_step_kind(),
            },
            TaskStatus::InProgress => {
                let position = task.position.as_ref().ok_or(StepError::MissingPosition {
                    task: task.id.to_string(),
                    status: task.status,
                })?;
                pipeline.check(position)?;
                let name = position.step().name.as_str();
                match position.step().kind {
                    StepKind::Agent if on_worker => Stage::OnWorker { role: name },
                    StepKind::Agent => Stage::AgentReady { role: name },
                    StepKind::Gate => Stage::AtGate { gate: name },
                    StepKind::Action => Stage::ActionPending { action: name },
                }
            }
        };
        Ok(TaskSnapshot {
            id: task.id,
            deps: &task.deps,
            stage,
        })
    }
}

/// One dispatch decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch<'a> {
    /// Send the task's current agent step to a worker.
    Resume { task: TaskId, role: &'a str },
    /// Start the task ([`Pipeline::start`]); it takes a worker slot when `needs_worker`
    /// (its first step is an agent).
    Start { task: TaskId, needs_worker: bool },
}

impl Dispatch<'_> {
    pub fn task(&self) -> TaskId {
        match self {
            Dispatch::Resume { task, .. } | Dispatch::Start { task, .. } => *task,
        }
    }
}

/// Why a non-terminal task without a worker is not being dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idle<'a> {
    /// Dependencies that are not complete yet (but can still complete).
    WaitingOnDeps(Vec<TaskId>),
    /// Dependencies that failed; the task cannot start until the plan changes.
    DependencyFailed(Vec<TaskId>),
    /// Dependencies that can never complete because of their own dependencies.
    DependencyBlocked(Vec<TaskId>),
    /// Dependencies that name no known task.
    UnknownDeps(Vec<TaskId>),
    /// The task is on a dependency cycle with these tasks (its strongly connected component).
    OnCycle(Vec<TaskId>),
    /// Runnable, but every worker slot is taken.
    NoCapacity,
    AtGate(&'a str),
    ActionPending(&'a str),
}

fn ids(list: &[TaskId]) -> String {
    let v: Vec<String> = list.iter().map(ToString::to_string).collect();
    v.join(", ")
}

impl fmt::Display for Idle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Idle::WaitingOnDeps(d) => write!(f, "waiting on dependencies {}", ids(d)),
            Idle::DependencyFailed(d) => write!(f, "dependency failed: {}", ids(d)),
            Idle::DependencyBlocked(d) => {
                write!(
                    f,
                    "dependency can never complete (blocked itself): {}",
                    ids(d)
                )
            }
            Idle::UnknownDeps(d) => write!(f, "depends on unknown tasks: {}", ids(d)),
            Idle::OnCycle(c) => write!(f, "on a dependency cycle with {}", ids(c)),
            Idle::NoCapacity => f.write_str("runnable, waiting for a free worker slot"),
            Idle::AtGate(g) => write!(f, "waiting at gate `{g}`"),
            Idle::ActionPending(a) => write!(f, "action `{a}` pending"),
        }
    }
}

/// The output of [`decide`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions<'a> {
    /// Resumes (by id), then starts (by id).
    pub dispatch: Vec<Dispatch<'a>>,
    /// Every non-terminal task that is neither dispatched nor on a worker, by id.
    pub idle: Vec<(TaskId, Idle<'a>)>,
}

/// Picks what to dispatch with `free_slots` idle worker slots. Deterministic: the same
/// snapshot gives the same decisions whatever the input order. Task ids must be unique.
pub fn decide<'a>(tasks: &[TaskSnapshot<'a>], free_slots: usize) -> Decisions<'a> {
    let order = id_order(tasks);
    let index = IdIndex::new(tasks);
    let analysis = analyse(tasks, &index);

    let resumable = tasks
        .iter()
        .filter(|t| matches!(t.stage, Stage::AgentReady { .. }))
        .count();
    let mut resume_slots = free_slots;
    let mut start_slots = free_slots.saturating_sub(resumable);

    let mut resumes = Vec::new();
    let mut starts = Vec::new();
    let mut idle = Vec::new();
    for &i in &order {
        let t = &tasks[i as usize];
        match t.stage {
            Stage::Complete | Stage::Failed | Stage::OnWorker { .. } => {}
            Stage::AtGate { gate } => idle.push((t.id, Idle::AtGate(gate))),
            Stage::ActionPending { action } => idle.push((t.id, Idle::ActionPending(action))),
            Stage::AgentReady { role } => {
                if resume_slots > 0 {
                    resume_slots -= 1;
                    resumes.push(Dispatch::Resume { task: t.id, role });
                } else {
                    idle.push((t.id, Idle::NoCapacity));
                }
            }
            Stage::NotStarted { first_step } => {
                if let Some(why) = analysis.not_ready(tasks, &index, i) {
                    idle.push((t.id, why));
                    continue;
                }
                let needs_worker = first_step == StepKind::Agent;
                if !needs_worker {
                    starts.push(Dispatch::Start {
                        task: t.id,
                        needs_worker,
                    });
                } else if start_slots > 0 {
                    start_slots -= 1;
                    starts.push(Dispatch::Start {
                        task: t.id,
                        needs_worker,
                    });
                } else {
                    idle.push((t.id, Idle::NoCapacity));
                }
            }
        }
    }
    resumes.append(&mut starts);
    Decisions {
        dispatch: resumes,
        idle,
    }
}

/// A dependency cycle: the tasks of one strongly connected component, and one concrete
/// cycle through them starting and ending at the smallest id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyCycle {
    /// Every task on the component, sorted.
    pub members: Vec<TaskId>,
    /// e.g. `[task-001, task-003, task-001]`: task-001 depends on task-003, which depends on
    /// task-001.
    pub path: Vec<TaskId>,
}

impl fmt::Display for DependencyCycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<String> = self.path.iter().map(ToString::to_string).collect();
        f.write_str(&v.join(" -> "))
    }
}

/// Every dependency cycle, as one entry per strongly connected component (listing every
/// elementary cycle could be exponential; one component holds all cycles among its tasks).
/// Sorted by smallest member. Unknown dependencies are ignored here.
pub fn dependency_cycles<T: DepNode>(tasks: &[T]) -> Vec<DependencyCycle> {
    let index = IdIndex::new(tasks);
    let mut cycles = Vec::new();
    tarjan(tasks, &index, |component| {
        let self_loop = component.len() == 1 && {
            let t = &tasks[component[0] as usize];
            t.deps().contains(&t.id())
        };
        if component.len() > 1 || self_loop {
            cycles.push(cycle_in(tasks, &index, component));
        }
    });
    cycles.sort_by_key(|c| c.members[0]);
    cycles
}

/// A shortest cycle from the component's smallest member back to itself (BFS inside the
/// component).
fn cycle_in<T: DepNode>(tasks: &[T], index: &IdIndex, component: &[u32]) -> DependencyCycle {
    let mut members: Vec<TaskId> = component.iter().map(|&i| tasks[i as usize].id()).collect();
    members.sort_unstable();
    let start = component
        .iter()
        .copied()
        .min_by_key(|&i| tasks[i as usize].id())
        .unwrap_or(0);
    let inside: HashMap<u32, ()> = component.iter().map(|&i| (i, ())).collect();
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    let mut last = None;
    'bfs: while let Some(v) = queue.pop_front() {
        for dep in tasks[v as usize].deps() {
            let Some(w) = index.get(*dep) else { continue };
            if !inside.contains_key(&w) {
                continue;
            }
            if w == start {
                last = Some(v);
                break 'bfs;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    // Walk back from the node that closes the cycle.
    let mut back = vec![start];
    let mut v = last.unwrap_or(start);
    while v != start {
        back.push(v);
        v = parent.get(&v).copied().unwrap_or(start);
    }
    back.push(start);
    back.reverse();
    let path = back.iter().map(|&i| tasks[i as usize].id()).collect();
    DependencyCycle { members, path }
}

/// Task positions in ascending id order; O(n) when the input is already sorted (the usual
/// case: stores list tasks by id).
fn id_order(tasks: &[TaskSnapshot<'_>]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..len_u32(tasks.len())).collect();
    if !tasks.windows(2).all(|w| w[0].id <= w[1].id) {
        order.sort_unstable_by_key(|&i| tasks[i as usize].id);
    }
    order
}

fn len_u32(n: usize) -> u32 {
    // More than 4 billion tasks in one snapshot is far outside any supported scale.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Task id → position in the snapshot. Ids are coordinator-assigned and monotonic, so they
/// are nearly dense: a direct table then, a hash map otherwise.
enum IdIndex {
    Dense { min: u64, slots: Vec<u32> },
    Sparse(HashMap<u64, u32>),
}

const ABSENT: u32 = u32::MAX;

impl IdIndex {
    fn new<T: DepNode>(tasks: &[T]) -> Self {
        let (min, max) = tasks.iter().fold((u64::MAX, 0), |(lo, hi), t| {
            (lo.min(t.id().0), hi.max(t.id().0))
        });
        let span = max.saturating_sub(min);
        // Up to 4 table slots per task keeps memory linear in n.
        let dense_limit = (tasks.len() as u64).saturating_mul(4).saturating_add(64);
        if tasks.is_empty() || span < dense_limit {
            let mut slots = vec![
                ABSENT;
                if tasks.is_empty() {
                    0
                } else {
                    span as usize + 1
                }
            ];
            for (i, t) in tasks.iter().enumerate() {
                let slot = &mut slots[(t.id().0 - min) as usize];
                if *slot == ABSENT {
                    *slot = len_u32(i);
                }
            }
            IdIndex::Dense { min, slots }
        } else {
            let mut map = HashMap::with_capacity(tasks.len());
            for (i, t) in tasks.iter().enumerate() {
                map.entry(t.id().0).or_insert(len_u32(i));
            }
            IdIndex::Sparse(map)
        }
    }

    fn get(&self, id: TaskId) -> Option<u32> {
        match self {
            IdIndex::Dense { min, slots } => {
                let off = id.0.checked_sub(*min)?;
                let i = *slots.get(usize::try_from(off).ok()?)?;
                (i != ABSENT).then_some(i)
            }
            IdIndex::Sparse(map) => map.get(&id.0).copied(),
        }
    }
}

/// Iterative Tarjan SCC over "task → its dependencies". Components are reported in reverse
/// topological order: every component a task depends on is reported before the task's own.
fn tarjan<T: DepNode>(tasks: &[T], index: &IdIndex, mut on_component: impl FnMut(&[u32])) {
    let n = tasks.len();
    let mut order = vec![ABSENT; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut calls: Vec<(u32, u32)> = Vec::new();
    let mut next = 0u32;
    for root in 0..len_u32(n) {
        if order[root as usize] != ABSENT {
            continue;
        }
        order[root as usize] = next;
        low[root as usize] = next;
        next += 1;
        stack.push(root);
        on_stack[root as usize] = true;
        calls.push((root, 0));
        while let Some(&mut (v, ref mut edge)) = calls.last_mut() {
            let deps = tasks[v as usize].deps();
            if let Some(dep) = deps.get(*edge as usize) {
                *edge += 1;
                let Some(w) = index.get(*dep) else { continue };
                let wu = w as usize;
                if order[wu] == ABSENT {
                    order[wu] = next;
                    low[wu] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[wu] = true;
                    calls.push((w, 0));
                } else if on_stack[wu] {
                    low[v as usize] = low[v as usize].min(order[wu]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent as usize] = low[parent as usize].min(low[v as usize]);
            }
            if low[v as usize] == order[v as usize] {
                let start = stack.iter().rposition(|&x| x == v).unwrap_or(stack.len());
                for &x in &stack[start..] {
                    on_stack[x as usize] = false;
                }
                on_component(&stack[start..]);
                stack.truncate(start);
            }
        }
    }
}

/// Per-task facts computed in one pass: which tasks sit on a cycle (and with whom), and
/// which can never complete.
struct Analysis {
    /// For tasks on a cycle: index into `components`.
    cycle_of: Vec<u32>,
    components: Vec<Vec<TaskId>>,
    /// Not complete and never will be without a plan change: failed, or not started and
    /// blocked by a cycle, an unknown dependency or a dependency that is itself stuck.
    stuck: Vec<bool>,
}

fn analyse(tasks: &[TaskSnapshot<'_>], index: &IdIndex) -> Analysis {
    let n = tasks.len();
    let mut a = Analysis {
        cycle_of: vec![ABSENT; n],
        components: Vec::new(),
        stuck: vec![false; n],
    };
    tarjan(tasks, index, |component| {
        let cyclic = component.len() > 1 || {
            let t = &tasks[component[0] as usize];
            t.deps.contains(&t.id)
        };
        if cyclic {
            let slot = len_u32(a.components.len());
            let mut members: Vec<TaskId> =
                component.iter().map(|&i| tasks[i as usize].id).collect();
            members.sort_unstable();
            a.components.push(members);
            for &i in component {
                a.cycle_of[i as usize] = slot;
            }
        }
        // Dependencies outside the component are final by now (reverse topological order).
        for &i in component {
            let t = &tasks[i as usize];
            a.stuck[i as usize] = match t.stage {
                Stage::Failed => true,
                Stage::NotStarted { .. } => {
                    cyclic
                        || t.deps.iter().any(|d| match index.get(*d) {
                            None => true,
                            Some(j) => a.stuck[j as usize],
                        })
                }
                _ => false,
            };
        }
    });
    a
}

impl Analysis {
    /// Why the not-started task at `i` cannot start, most fundamental reason first.
    fn not_ready<'a>(
        &self,
        tasks: &[TaskSnapshot<'_>],
        index: &IdIndex,
        i: u32,
    ) -> Option<Idle<'a>> {
        let c = self.cycle_of[i as usize];
        if c != ABSENT {
            return Some(Idle::OnCycle(self.components[c as usize].clone()));
        }
        let t = &tasks[i as usize];
        let mut ready = true;
        for d in t.deps {
            match index.get(*d) {
                Some(j) if matches!(tasks[j as usize].stage, Stage::Complete) => {}
                _ => {
                    ready = false;
                    break;
                }
            }
        }
        if ready {
            return None;
        }
        // Slow path only for tasks that wait: collect the deps of the most severe kind.
        let select = |keep: &dyn Fn(Option<u32>) -> bool| -> Vec<TaskId> {
            let mut v: Vec<TaskId> = t
                .deps
                .iter()
                .copied()
                .filter(|d| keep(index.get(*d)))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let unknown = select(&|j| j.is_none());
        if !unknown.is_empty() {
            return Some(Idle::UnknownDeps(unknown));
        }
        let failed =
            select(&|j| j.is_some_and(|j| matches!(tasks[j as usize].stage, Stage::Failed)));
        if !failed.is_empty() {
            return Some(Idle::DependencyFailed(failed));
        }
        let blocked = select(&|j| j.is_some_and(|j| self.stuck[j as usize]));
        if !blocked.is_empty() {
            return Some(Idle::DependencyBlocked(blocked));
        }
        let waiting =
            select(&|j| j.is_some_and(|j| !matches!(tasks[j as usize].stage, Stage::Complete)));
        Some(Idle::WaitingOnDeps(waiting))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Step;

    /// A row of the task table: id, stage word, deps. Stage words: `new` (first step agent),
    /// `new-gate` (first step a gate), `ready` (agent step, no worker), `running`, `gate`,
    /// `action`, `done`, `failed`.
    type Row = (u64, &'static str, &'static [u64]);

    fn snapshots(rows: &[Row], deps: &mut Vec<Vec<TaskId>>) -> Vec<(TaskId, Stage<'static>)> {
        deps.clear();
        rows.iter()
            .map(|&(id, stage, d)| {
                deps.push(d.iter().copied().map(TaskId).collect());
                let stage = match stage {
                    "new" => Stage::NotStarted {
                        first_step: StepKind::Agent,
                    },
                    "new-gate" => Stage::NotStarted {
                        first_step: StepKind::Gate,
                    },
                    "ready" => Stage::AgentReady { role: "impl" },
                    "running" => Stage::OnWorker { role: "impl" },
                    "gate" => Stage::AtGate { gate: "lgtm" },
                    "action" => Stage::ActionPending { action: "merge-pr" },
                    "done" => Stage::Complete,
                    "failed" => Stage::Failed,
                    other => panic!("unknown stage word {other}"),
                };
                (TaskId(id), stage)
            })
            .collect()
    }

    fn render(d: &Decisions<'_>) -> Vec<String> {
        let mut out: Vec<String> = d
            .dispatch
            .iter()
            .map(|x| match x {
                Dispatch::Resume { task, role } => format!("resume {task} {role}"),
                Dispatch::Start { task, needs_worker } => {
                    format!(
                        "start {task}{}",
                        if *needs_worker { "" } else { " (no slot)" }
                    )
                }
            })
            .collect();
        out.extend(d.idle.iter().map(|(id, why)| format!("{id}: {why}")));
        out
    }

    /// Runs `decide` on the table (and on the table reversed, which must not matter) and
    /// compares dispatches then idle reasons.
    fn check(rows: &[Row], free_slots: usize, expected: &[&str]) {
        let mut deps = Vec::new();
        let table = snapshots(rows, &mut deps);
        let tasks: Vec<TaskSnapshot<'_>> = table
            .iter()
            .zip(&deps)
            .map(|(&(id, stage), deps)| TaskSnapshot { id, deps, stage })
            .collect();
        let got = render(&decide(&tasks, free_slots));
        assert_eq!(got, expected);
        let reversed: Vec<TaskSnapshot<'_>> = tasks.iter().rev().copied().collect();
        assert_eq!(
            render(&decide(&reversed, free_slots)),
            expected,
            "input order must not matter"
        );
    }

    #[test]
    fn resuming_tasks_go_first_then_ready_tasks_in_numeric_id_order() {
        check(
            &[
                (10, "new", &[]),
                (9, "new", &[]),
                (2, "ready", &[]),
                (1, "new", &[]),
                (3, "running", &[]),
            ],
            3,
            &[
                "resume task-002 impl",
                "start task-001",
                "start task-009",
                "task-010: runnable, waiting for a free worker slot",
            ],
        );
    }

    #[test]
    fn resumes_take_precedence_over_starts_for_the_last_slots() {
        check(
            &[(1, "new", &[]), (5, "ready", &[]), (6, "ready", &[])],
            1,
            &[
                "resume task-005 impl",
                "task-001: runnable, waiting for a free worker slot",
                "task-006: runnable, waiting for a free worker slot",
            ],
        );
    }

    #[test]
    fn tasks_waiting_at_gates_or_actions_hold_no_worker_slot() {
        // The original's bug: N gate-parked tasks with N slots starved all new work.
        check(
            &[
                (1, "gate", &[]),
                (2, "gate", &[]),
                (3, "action", &[]),
                (4, "new", &[]),
            ],
            2,
            &[
                "start task-004",
                "task-001: waiting at gate `lgtm`",
                "task-002: waiting at gate `lgtm`",
                "task-003: action `merge-pr` pending",
            ],
        );
    }

    #[test]
    fn a_pipeline_starting_with_a_gate_starts_tasks_without_a_slot() {
        check(
            &[(1, "new-gate", &[]), (2, "new", &[])],
            0,
            &[
                "start task-001 (no slot)",
                "task-002: runnable, waiting for a free worker slot",
            ],
        );
    }

    #[test]
    fn dependencies_gate_starting_and_the_reason_is_reported() {
        check(
            &[
                (1, "done", &[]),
                (2, "running", &[]),
                (3, "failed", &[]),
                (4, "new", &[1]),
                (5, "new", &[1, 2]),
                (6, "new", &[2, 3]),
                (7, "new", &[6]),
                (8, "new", &[99, 3]),
                (9, "new", &[7, 5]),
            ],
            10,
            &[
                "start task-004",
                "task-005: waiting on dependencies task-002",
                "task-006: dependency failed: task-003",
                "task-007: dependency can never complete (blocked itself): task-006",
                "task-008: depends on unknown tasks: task-099",
                "task-009: dependency can never complete (blocked itself): task-007",
            ],
        );
    }

    #[test]
    fn tasks_on_a_dependency_cycle_are_never_dispatched() {
        check(
            &[
                (1, "done", &[2]),
                (2, "new", &[1]),
                (3, "new", &[4]),
                (4, "new", &[3]),
                (5, "new", &[5]),
                (6, "new", &[3]),
                (7, "new", &[]),
            ],
            10,
            &[
                "start task-007",
                "task-002: on a dependency cycle with task-001, task-002",
                "task-003: on a dependency cycle with task-003, task-004",
                "task-004: on a dependency cycle with task-003, task-004",
                "task-005: on a dependency cycle with task-005",
                "task-006: dependency can never complete (blocked itself): task-003",
            ],
        );
    }

    #[test]
    fn in_progress_tasks_resume_whatever_their_dependencies_say() {
        // Deps gate the start only; a running task is never stopped by a later dep failure.
        check(
            &[(1, "failed", &[]), (2, "ready", &[1])],
            1,
            &["resume task-002 impl"],
        );
    }

    #[test]
    fn an_empty_snapshot_decides_nothing() {
        check(&[], 5, &[]);
    }

    #[test]
    fn sparse_ids_use_the_hash_index_and_decide_the_same() {
        check(
            &[
                (1, "done", &[]),
                (1_000_000_000, "new", &[1]),
                (u64::MAX, "new", &[1_000_000_000]),
            ],
            5,
            &[
                "start task-1000000000",
                "task-18446744073709551615: waiting on dependencies task-1000000000",
            ],
        );
    }

    #[test]
    fn every_cycle_is_returned_with_its_members_and_a_concrete_path() {
        let t = |id: u64, deps: &[u64]| {
            (
                TaskId(id),
                deps.iter().copied().map(TaskId).collect::<Vec<_>>(),
            )
        };
        struct N(TaskId, Vec<TaskId>);
        impl DepNode for N {
            fn id(&self) -> TaskId {
                self.0
            }
            fn deps(&self) -> &[TaskId] {
                &self.1
            }
        }
        let nodes: Vec<N> = [
            t(1, &[2]),
            t(2, &[3]),
            t(3, &[1, 4]),
            t(4, &[]),
            t(5, &[5]),
            t(6, &[7, 42]),
            t(7, &[6]),
            t(8, &[1]),
        ]
        .into_iter()
        .map(|(id, deps)| N(id, deps))
        .collect();
        let cycles = dependency_cycles(&nodes);
        let shown: Vec<String> = cycles.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "task-001 -> task-002 -> task-003 -> task-001",
                "task-005 -> task-005",
                "task-006 -> task-007 -> task-006",
            ]
        );
        assert_eq!(cycles[0].members, vec![TaskId(1), TaskId(2), TaskId(3)]);
        assert!(dependency_cycles::<N>(&[]).is_empty());
    }

    #[test]
    fn snapshots_of_tasks_reflect_their_pipeline_step() {
        let pipeline = Pipeline::new(vec![
            Step::Loop(vec![Step::agent("impl"), Step::agent("verif")]),
            Step::gate("lgtm"),
            Step::action("merge-pr"),
        ])
        .unwrap();
        let mut task = Task {
            id: TaskId(4),
            title: "t".into(),
            spec_ref: "specs/a.md@abcd".parse().unwrap(),
            status: TaskStatus::NotStarted,
            deps: vec![TaskId(1)],
            round: 0,
            branch: None,
            pr: None,
            position: None,
            action_attempts: 0,
            failure: None,
        };
        fn stage<'a>(
            task: &'a Task,
            p: &Pipeline,
            on_worker: bool,
        ) -> Result<Stage<'a>, StepError> {
            TaskSnapshot::of(task, p, on_worker).map(|s| s.stage)
        }
        assert_eq!(
            stage(&task, &pipeline, false),
            Ok(Stage::NotStarted {
                first_step: StepKind::Agent
            })
        );
        assert!(
            stage(
                &{
                    let mut t = task.clone();
                    t.status = TaskStatus::InProgress;
                    t
                },
                &pipeline,
                false
            )
            .is_err()
        );
        pipeline.start().apply_to(&mut task);
        assert_eq!(
            stage(&task, &pipeline, false),
            Ok(Stage::AgentReady { role: "impl" })
        );
        assert_eq!(
            stage(&task, &pipeline, true),
            Ok(Stage::OnWorker { role: "impl" })
        );
        // Park the task at the gate (pipeline[1]).
        task.position = Some(pipeline.descend(vec![1]));
        assert_eq!(
            stage(&task, &pipeline, false),
            Ok(Stage::AtGate { gate: "lgtm" })
        );
        let other = Pipeline::new(vec![Step::agent("impl")]).unwrap();
        assert!(
            TaskSnapshot::of(&task, &other, false).is_err(),
            "a stale position must be relocated first"
        );
        assert_eq!(
            TaskSnapshot::of(&task, &pipeline, false).unwrap().deps,
            &[TaskId(1)]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn stage() -> impl Strategy<Value = Stage<'static>> {
            prop_oneof![
                Just(Stage::NotStarted {
                    first_step: StepKind::Agent
                }),
                Just(Stage::NotStarted {
                    first_step: StepKind::Action
                }),
                Just(Stage::AgentReady { role: "impl" }),
                Just(Stage::OnWorker { role: "impl" }),
                Just(Stage::AtGate { gate: "g" }),
                Just(Stage::ActionPending { action: "x" }),
                Just(Stage::Complete),
                Just(Stage::Failed),
            ]
        }

        fn table() -> impl Strategy<Value = Vec<(u64, Stage<'static>, Vec<TaskId>)>> {
            prop::collection::vec((stage(), prop::collection::vec(0u64..30, 0..3)), 0..30)
                .prop_map(|rows| {
                    rows.into_iter()
                        .enumerate()
                        .map(|(i, (s, d))| (i as u64, s, d.into_iter().map(TaskId).collect()))
                        .collect()
                })
                .prop_shuffle()
        }

        proptest! {
            #[test]
            fn decisions_respect_capacity_dependencies_and_cycles(rows in table(), free in 0usize..8) {
                let tasks: Vec<TaskSnapshot<'_>> = rows
                    .iter()
                    .map(|(id, stage, deps)| TaskSnapshot { id: TaskId(*id), deps, stage: *stage })
                    .collect();
                let d = decide(&tasks, free);
                let by_id: HashMap<TaskId, &TaskSnapshot<'_>> = tasks.iter().map(|t| (t.id, t)).collect();
                let on_cycle: Vec<TaskId> = dependency_cycles(&tasks).into_iter().flat_map(|c| c.members).collect();

                let slots_used = d.dispatch.iter().filter(|x| !matches!(x, Dispatch::Start { needs_worker: false, .. })).count();
                prop_assert!(slots_used <= free);
                for x in &d.dispatch {
                    let t = by_id[&x.task()];
                    match x {
                        Dispatch::Resume { .. } => {
                            let resumable = matches!(t.stage, Stage::AgentReady { .. });
                            prop_assert!(resumable);
                        }
                        Dispatch::Start { needs_worker, .. } => {
                            let startable = matches!(
                                t.stage,
                                Stage::NotStarted { first_step } if (first_step == StepKind::Agent) == *needs_worker
                            );
                            prop_assert!(startable);
                            prop_assert!(!on_cycle.contains(&t.id));
                            for dep in t.deps {
                                prop_assert!(by_id.get(dep).is_some_and(|d| d.stage == Stage::Complete));
                            }
                        }
                    }
                }
                // Every non-terminal task without a worker is accounted for exactly once.
                let mut seen: Vec<TaskId> = d.dispatch.iter().map(Dispatch::task).chain(d.idle.iter().map(|(id, _)| *id)).collect();
                seen.sort_unstable();
                let mut expected: Vec<TaskId> = tasks
                    .iter()
                    .filter(|t| !matches!(t.stage, Stage::Complete | Stage::Failed | Stage::OnWorker { .. }))
                    .map(|t| t.id)
                    .collect();
                expected.sort_unstable();
                prop_assert_eq!(seen, expected);
                // Idle reasons are listed by id, and capacity is only blamed when it is used up.
                prop_assert!(d.idle.windows(2).all(|w| w[0].0 < w[1].0));
                if d.idle.iter().any(|(_, why)| *why == Idle::NoCapacity) {
                    prop_assert_eq!(slots_used, free);
                }
                // Deterministic regardless of input order.
                let mut reversed = tasks.clone();
                reversed.reverse();
                prop_assert_eq!(decide(&reversed, free), d);
            }
        }
    }
}
