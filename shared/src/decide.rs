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

/// A short, sorted list of task ids. Up to three are stored inline (the usual number of
/// dependencies), so explaining tens of thousands of idle tasks does not allocate per task.
#[derive(Clone)]
pub struct TaskIds(IdsRepr);

#[derive(Clone)]
enum IdsRepr {
    Inline(u8, [TaskId; INLINE_IDS]),
    Heap(Vec<TaskId>),
}

const INLINE_IDS: usize = 3;

impl TaskIds {
    fn new() -> Self {
        TaskIds(IdsRepr::Inline(0, [TaskId(0); INLINE_IDS]))
    }

    fn push(&mut self, id: TaskId) {
        match &mut self.0 {
            IdsRepr::Inline(len, ids) if (*len as usize) < INLINE_IDS => {
                ids[*len as usize] = id;
                *len += 1;
            }
            IdsRepr::Inline(_, ids) => {
                let mut v = ids.to_vec();
                v.push(id);
                self.0 = IdsRepr::Heap(v);
            }
            IdsRepr::Heap(v) => v.push(id),
        }
    }

    fn sort_dedup(mut self) -> Self {
        let mut out = TaskIds::new();
        let ids: &mut [TaskId] = match &mut self.0 {
            IdsRepr::Inline(len, ids) => &mut ids[..*len as usize],
            IdsRepr::Heap(v) => v,
        };
        ids.sort_unstable();
        for &id in ids.iter() {
            if out.last() != Some(&id) {
                out.push(id);
            }
        }
        out
    }
}

impl std::ops::Deref for TaskIds {
    type Target = [TaskId];

    fn deref(&self) -> &[TaskId] {
        match &self.0 {
            IdsRepr::Inline(len, ids) => &ids[..*len as usize],
            IdsRepr::Heap(v) => v,
        }
    }
}

impl PartialEq for TaskIds {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for TaskIds {}

impl fmt::Debug for TaskIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl FromIterator<TaskId> for TaskIds {
    fn from_iter<I: IntoIterator<Item = TaskId>>(iter: I) -> Self {
        let mut out = TaskIds::new();
        for id in iter {
            out.push(id);
        }
        out
    }
}

/// Why a non-terminal task without a worker is not being dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idle<'a> {
    /// Dependencies that are not complete yet (but can still complete).
    WaitingOnDeps(TaskIds),
    /// Dependencies that failed; the task cannot start until the plan changes.
    DependencyFailed(TaskIds),
    /// Dependencies that can never complete because of their own dependencies.
    DependencyBlocked(TaskIds),
    /// Dependencies that name no known task.
    UnknownDeps(TaskIds),
    /// The task is on a dependency cycle with these tasks (its strongly connected component).
    OnCycle(TaskIds),
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
    let mut facts = Facts::new(tasks.len());
    facts.find_cycles(tasks, &index);

    let (mut resumable, mut waiting) = (0, 0);
    for t in tasks {
        match t.stage {
            Stage::AgentReady { .. } => resumable += 1,
            Stage::Complete | Stage::Failed | Stage::OnWorker { .. } => {}
            _ => waiting += 1,
        }
    }
    let mut resume_slots = free_slots;
    let mut start_slots = free_slots.saturating_sub(resumable);

    let mut resumes = Vec::with_capacity(resumable.min(free_slots));
    let mut starts = Vec::new();
    // Sized up front: most of these tasks end up idle, and regrowing a vector of ~50k
    // reasons costs more than the decisions themselves.
    let mut idle = Vec::with_capacity(waiting + resumable);
    for &i in &order {
        let t = &tasks[i as usize];
        // In id order every dependency of a task not reached by the cycle search has a smaller
        // id, so its facts are final here.
        let readiness = facts.settle(tasks, &index, i);
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
                if let Some(why) = facts.explain(tasks, &index, i, readiness) {
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
    tarjan(tasks, &index, forward_roots(tasks, &index), |component| {
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
fn tarjan<T: DepNode>(
    tasks: &[T],
    index: &IdIndex,
    roots: impl IntoIterator<Item = u32>,
    mut on_component: impl FnMut(&[u32]),
) {
    // `order[v]`: DFS discovery number, ABSENT until visited. `low[v]`: lowest discovery
    // number reachable, or DONE once v's component has been reported; a visited node that is
    // not DONE is on the stack (saves a separate on-stack array).
    const DONE: u32 = u32::MAX;
    let n = tasks.len();
    let mut order = vec![ABSENT; n];
    let mut low = vec![0u32; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut calls: Vec<(u32, u32)> = Vec::new();
    let mut next = 0u32;
    for root in roots {
        let r = root as usize;
        if order[r] != ABSENT {
            continue;
        }
        order[r] = next;
        next += 1;
        // A task without dependencies is its own component: skip the DFS bookkeeping (the
        // common case for roots of the plan).
        if tasks[r].deps().is_empty() {
            low[r] = DONE;
            on_component(std::slice::from_ref(&root));
            continue;
        }
        low[r] = order[r];
        stack.push(root);
        calls.push((root, 0));
        while let Some(&mut (v, ref mut edge)) = calls.last_mut() {
            let vu = v as usize;
            if let Some(dep) = tasks[vu].deps().get(*edge as usize) {
                *edge += 1;
                let Some(w) = index.get(*dep) else { continue };
                let wu = w as usize;
                if order[wu] == ABSENT {
                    order[wu] = next;
                    next += 1;
                    if tasks[wu].deps().is_empty() {
                        low[wu] = DONE;
                        on_component(std::slice::from_ref(&w));
                    } else {
                        low[wu] = order[wu];
                        stack.push(w);
                        calls.push((w, 0));
                    }
                } else if low[wu] != DONE {
                    low[vu] = low[vu].min(order[wu]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent as usize] = low[parent as usize].min(low[vu]);
            }
            if low[vu] == order[vu] {
                let start = stack.iter().rposition(|&x| x == v).unwrap_or(stack.len());
                for &x in &stack[start..] {
                    low[x as usize] = DONE;
                }
                on_component(&stack[start..]);
                stack.truncate(start);
            }
        }
    }
}

/// The most fundamental reason a not-started task cannot start yet; `Ready` if none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Readiness {
    Ready,
    Waiting,
    Blocked,
    DepFailed,
    Unknown,
    OnCycle,
}

/// Per-task graph facts: which tasks sit on a cycle (and with whom), and which can never
/// complete without a plan change ("stuck": failed, or not started and blocked by a cycle,
/// an unknown dependency or a stuck dependency).
struct Facts {
    /// Index into `components` for tasks on a cycle.
    cycle_of: Vec<u32>,
    components: Vec<TaskIds>,
    flags: Vec<u8>,
}

const SETTLED: u8 = 1;
const STUCK: u8 = 2;

impl Facts {
    fn new(n: usize) -> Self {
        Facts {
            cycle_of: vec![ABSENT; n],
            components: Vec::new(),
            flags: vec![0; n],
        }
    }

    fn stuck(&self, i: u32) -> bool {
        self.flags[i as usize] & STUCK != 0
    }

    /// Every cycle contains a "forward" edge (a dependency on a task with a larger or equal
    /// id): follow the cycle to its largest id, whose predecessor depends forward on it. Ids
    /// are assigned in creation order and tasks mostly depend on older ones, so searching from
    /// the few tasks with forward edges finds every cycle while touching a small subgraph.
    /// Tasks reached by the search are settled here, in reverse topological order.
    fn find_cycles(&mut self, tasks: &[TaskSnapshot<'_>], index: &IdIndex) {
        let roots = forward_roots(tasks, index);
        if roots.is_empty() {
            return;
        }
        tarjan(tasks, index, roots, |component| {
            let cyclic = component.len() > 1 || {
                let t = &tasks[component[0] as usize];
                t.deps.contains(&t.id)
            };
            if cyclic {
                let slot = len_u32(self.components.len());
                let members: TaskIds = component.iter().map(|&i| tasks[i as usize].id).collect();
                self.components.push(members.sort_dedup());
                for &i in component {
                    self.cycle_of[i as usize] = slot;
                }
            }
            for &i in component {
                self.settle(tasks, index, i);
            }
        });
    }

    /// Computes (once) whether task `i` is stuck, from its dependencies' final facts, and
    /// returns its readiness.
    fn settle(&mut self, tasks: &[TaskSnapshot<'_>], index: &IdIndex, i: u32) -> Readiness {
        let t = &tasks[i as usize];
        let readiness = match t.stage {
            Stage::NotStarted { .. } if self.cycle_of[i as usize] != ABSENT => Readiness::OnCycle,
            Stage::NotStarted { .. } => {
                let mut worst = Readiness::Ready;
                for d in t.deps {
                    let r = match index.get(*d) {
                        None => Readiness::Unknown,
                        Some(j) => match tasks[j as usize].stage {
                            Stage::Complete => Readiness::Ready,
                            Stage::Failed => Readiness::DepFailed,
                            _ if self.stuck(j) => Readiness::Blocked,
                            _ => Readiness::Waiting,
                        },
                    };
                    worst = worst.max(r);
                }
                worst
            }
            _ => Readiness::Ready,
        };
        let flags = &mut self.flags[i as usize];
        if *flags & SETTLED == 0 {
            let stuck = match t.stage {
                Stage::Failed => true,
                Stage::NotStarted { .. } => readiness > Readiness::Waiting,
                _ => false,
            };
            *flags = SETTLED | if stuck { STUCK } else { 0 };
        }
        readiness
    }

    /// The idle reason for a not-started task, listing the dependencies of that kind.
    fn explain<'a>(
        &self,
        tasks: &[TaskSnapshot<'_>],
        index: &IdIndex,
        i: u32,
        readiness: Readiness,
    ) -> Option<Idle<'a>> {
        let t = &tasks[i as usize];
        let select = |keep: &dyn Fn(Option<u32>) -> bool| -> TaskIds {
            let v: TaskIds = t
                .deps
                .iter()
                .copied()
                .filter(|d| keep(index.get(*d)))
                .collect();
            v.sort_dedup()
        };
        let stage = |j: u32| tasks[j as usize].stage;
        Some(match readiness {
            Readiness::Ready => return None,
            Readiness::OnCycle => {
                Idle::OnCycle(self.components[self.cycle_of[i as usize] as usize].clone())
            }
            Readiness::Unknown => Idle::UnknownDeps(select(&|j| j.is_none())),
            Readiness::DepFailed => {
                Idle::DependencyFailed(select(&|j| j.is_some_and(|j| stage(j) == Stage::Failed)))
            }
            Readiness::Blocked => Idle::DependencyBlocked(select(&|j| {
                j.is_some_and(|j| stage(j) != Stage::Failed && self.stuck(j))
            })),
            Readiness::Waiting => {
                Idle::WaitingOnDeps(select(&|j| j.is_some_and(|j| stage(j) != Stage::Complete)))
            }
        })
    }
}

/// Tasks with at least one dependency on a known task with an id at least their own.
fn forward_roots<T: DepNode>(tasks: &[T], index: &IdIndex) -> Vec<u32> {
    (0..len_u32(tasks.len()))
        .filter(|&i| {
            let t = &tasks[i as usize];
            t.deps()
                .iter()
                .any(|d| *d >= t.id() && index.get(*d).is_some())
        })
        .collect()
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
            deps: vec![TaskId(1)],
            ..Task::new(TaskId(4), "t", "specs/a.md@abcd".parse().unwrap())
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
                // Oracle independent of the Tarjan code: a task is on a cycle iff it can reach
                // itself through dependencies.
                let reaches_itself = |start: TaskId| {
                    let mut seen = std::collections::HashSet::new();
                    let mut todo: Vec<TaskId> = by_id[&start].deps.to_vec();
                    while let Some(id) = todo.pop() {
                        if id == start {
                            return true;
                        }
                        if let Some(t) = by_id.get(&id).filter(|_| seen.insert(id)) {
                            todo.extend_from_slice(t.deps);
                        }
                    }
                    false
                };
                let mut on_cycle: Vec<TaskId> = tasks.iter().map(|t| t.id).filter(|id| reaches_itself(*id)).collect();
                on_cycle.sort_unstable();
                let mut reported: Vec<TaskId> = dependency_cycles(&tasks).into_iter().flat_map(|c| c.members).collect();
                reported.sort_unstable();
                prop_assert_eq!(&reported, &on_cycle);
                for (id, why) in &d.idle {
                    let t = by_id[id];
                    let startable = matches!(t.stage, Stage::NotStarted { .. })
                        && !on_cycle.contains(id)
                        && t.deps.iter().all(|d| by_id.get(d).is_some_and(|d| d.stage == Stage::Complete));
                    if startable {
                        prop_assert_eq!(why, &Idle::NoCapacity, "a startable task may only wait for capacity");
                    }
                    prop_assert_eq!(matches!(why, Idle::OnCycle(_)), on_cycle.contains(id) && matches!(by_id[id].stage, Stage::NotStarted { .. }));
                }

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
