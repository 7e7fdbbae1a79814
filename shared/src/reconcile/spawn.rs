//! SPAWN: which steps go to which workers this cycle. Intake first (new work cannot be
//! planned without it), then the process-improver, then conflicted landings' rebase-resolvers,
//! then [`decide`] over the pipeline. Assignments are recorded here; the driver sends the
//! orders only after they are stored.

use std::collections::{BTreeMap, HashMap};

use crate::decide::{Dispatch, Idle, TaskSnapshot, decide};
use crate::event::EventKind;
use crate::model::{AttemptId, SpecPath, Task, TaskId};
use crate::pipeline::Next;
use crate::state::{Assignment, Change};

use super::{Core, Job, Lease, Offer, Order, PM, PROCESS_IMPROVER, REBASE_RESOLVER, Work};

/// Whether `labels` carry every `required` label with the same value.
pub fn satisfies(labels: &HashMap<String, String>, required: &BTreeMap<String, String>) -> bool {
    required.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Free slots per worker for one cycle's planning.
struct Slots<'a> {
    offers: &'a [Offer],
    free: HashMap<&'a str, usize>,
}

impl<'a> Slots<'a> {
    fn new(offers: &'a [Offer], leases: &BTreeMap<AttemptId, Lease>) -> Self {
        let mut used: HashMap<&str, usize> = HashMap::new();
        for l in leases.values() {
            *used.entry(l.worker.as_str()).or_default() += 1;
        }
        let free = offers
            .iter()
            .filter(|o| !o.draining)
            .map(|o| {
                let cap = o.capacity.max(1) as usize;
                let taken = used.get(o.name.as_str()).copied().unwrap_or(0);
                (o.name.as_str(), cap.saturating_sub(taken))
            })
            .collect();
        Slots { offers, free }
    }

    fn total(&self) -> usize {
        self.free.values().sum()
    }

    /// Takes a slot on the worker carrying `required` labels with the most free slots (ties
    /// by name, for determinism).
    fn take(&mut self, required: &BTreeMap<String, String>) -> Option<String> {
        let name = self
            .offers
            .iter()
            .filter(|o| self.free.get(o.name.as_str()).is_some_and(|f| *f > 0))
            .filter(|o| satisfies(&o.labels, required))
            .max_by(|a, b| {
                self.free[a.name.as_str()]
                    .cmp(&self.free[b.name.as_str()])
                    .then_with(|| b.name.cmp(&a.name))
            })?
            .name
            .as_str();
        if let Some(f) = self.free.get_mut(name) {
            *f -= 1;
        }
        Some(name.to_owned())
    }
}

impl Core {
    pub(super) fn spawn(&mut self, offers: &[Offer]) -> Vec<Order> {
        let mut slots = Slots::new(offers, &self.leases);
        let mut orders: Vec<Order> = Vec::new();

        if slots.total() > 0
            && let Some(changed) = self.intake_wanted()
            && let Some(worker) = slots.take(&self.labels_for(PM))
        {
            let commit = self.view.commit().to_owned();
            let changed: Vec<_> = changed
                .iter()
                .filter_map(|p| self.view.specs.get(p).map(|b| (p.clone(), b.clone())))
                .collect();
            let failures = self.state.meta.failed_since_intake.clone();
            let job = Job::Intake {
                commit: commit.clone(),
                changed: changed.clone(),
                known: self.view.specs.keys().cloned().collect(),
                failures: failures.clone(),
            };
            let work = Work::Intake {
                run: self.state.meta.intake_round,
                commit,
                changed,
                failures,
            };
            self.intake_not_before = None;
            orders.push(self.order_job(worker, job, work));
        }
        // The after-reap hook: failed results since the last run feed the process-improver.
        if !self.improvement_findings.is_empty()
            && !self.project.process.hooks.after_reap.is_empty()
            && !self.jobs.values().any(|j| matches!(j, Job::Improvement))
            && let Some(worker) = slots.take(&self.labels_for(PROCESS_IMPROVER))
        {
            let work = Work::Improvement {
                run: self.state.meta.improvement_round,
                findings: std::mem::take(&mut self.improvement_findings),
            };
            orders.push(self.order_job(worker, Job::Improvement, work));
        }

        // Conflicted landings get a rebase-resolver before new work.
        let rebase: Vec<TaskId> = self.needs_rebase.iter().copied().collect();
        for id in rebase {
            let Some(task) = self.state.tasks.get(&id).cloned() else {
                self.needs_rebase.remove(&id);
                continue;
            };
            let Some(worker) = slots.take(&self.labels_for(REBASE_RESOLVER)) else {
                break;
            };
            self.needs_rebase.remove(&id);
            orders.push(self.order_step(worker, &task, REBASE_RESOLVER));
        }

        let free = slots.total();
        let (starts, waiting) = self.decide(free);
        self.queued = waiting;
        for id in starts {
            let Some(mut task) = self.state.tasks.get(&id).cloned() else {
                continue;
            };
            if task.position.is_none() {
                let start = self.project.process.pipeline.start();
                self.settle(task, &start, super::Stop::Pipeline);
                let Some(started) = self.state.tasks.get(&id).cloned() else {
                    continue;
                };
                task = started;
            }
            let Some(Next::RunAgent { role, .. }) = task
                .position
                .as_ref()
                .and_then(|p| self.project.process.pipeline.next_at(p).ok())
            else {
                continue; // a gate or an action: ADVANCE handles it, no worker needed
            };
            // No free worker carries the labels this role needs: it waits, others may go.
            let Some(worker) = slots.take(&self.labels_for(&role)) else {
                self.queued += 1;
                continue;
            };
            orders.push(self.order_step(worker, &task, &role));
        }
        if !orders.is_empty() {
            self.put_meta();
        }
        orders
    }

    /// The tasks [`decide`] starts or resumes with `free` slots, and how many more wait for
    /// a free slot.
    fn decide(&self, free: usize) -> (Vec<TaskId>, usize) {
        let pipeline = &self.project.process.pipeline;
        let tasks: Vec<&Task> = self.state.tasks.values().collect();
        let snapshots: Vec<TaskSnapshot<'_>> = tasks
            .iter()
            .filter_map(|t| {
                let busy =
                    self.state.assignments.contains_key(&t.id) || self.needs_rebase.contains(&t.id);
                TaskSnapshot::of(t, pipeline, busy).ok()
            })
            .collect();
        let decisions = decide(&snapshots, free);
        let waiting = decisions
            .idle
            .iter()
            .filter(|(_, why)| matches!(why, Idle::NoCapacity))
            .count();
        let starts = decisions
            .dispatch
            .into_iter()
            .map(|d| match d {
                Dispatch::Resume { task, .. } | Dispatch::Start { task, .. } => task,
            })
            .collect();
        (starts, waiting)
    }

    /// The specs intake should look at now, if intake is due: new or changed specs, or tasks
    /// that failed since the last intake.
    fn intake_wanted(&self) -> Option<Vec<SpecPath>> {
        if self.jobs.values().any(|j| matches!(j, Job::Intake { .. }))
            || self.intake_not_before.is_some_and(|at| self.now < at)
        {
            return None;
        }
        let changed = self.open_specs(self.settings.config.max_specs_per_intake as usize);
        (!changed.is_empty() || !self.state.meta.failed_since_intake.is_empty()).then_some(changed)
    }

    fn labels_for(&self, role: &str) -> BTreeMap<String, String> {
        self.settings.config.agent_for(role).labels
    }

    fn next_attempt(&mut self) -> AttemptId {
        self.state.meta.next_attempt = self.state.meta.next_attempt.max(1);
        let attempt = AttemptId(self.state.meta.next_attempt);
        self.state.meta.next_attempt += 1;
        attempt
    }

    fn order_job(&mut self, worker: String, job: Job, work: Work) -> Order {
        let attempt = self.next_attempt();
        let subject = match &job {
            Job::Intake { .. } => "intake",
            Job::Improvement => "process-improvement",
        };
        self.jobs.insert(attempt, job);
        self.dispatch(worker, attempt, None, subject.to_owned(), work)
    }

    /// Records the assignment of a task step to `worker`.
    fn order_step(&mut self, worker: String, task: &Task, role: &str) -> Order {
        let attempt = self.next_attempt();
        let step = task
            .position
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let assignment = Assignment {
            task: task.id,
            attempt,
            step: step.clone(),
            role: role.to_owned(),
            round: task.round,
            worker: worker.clone(),
            dispatched_at_ms: self.now,
        };
        self.record(Change::PutAssignment(assignment));
        let work = Work::Step {
            task: task.id,
            role: role.to_owned(),
            step,
            round: task.round,
        };
        self.dispatch(worker, attempt, Some(task.id), task.id.to_string(), work)
    }

    fn dispatch(
        &mut self,
        worker: String,
        attempt: AttemptId,
        task: Option<TaskId>,
        subject: String,
        work: Work,
    ) -> Order {
        let (step, round) = match &work {
            Work::Step { step, round, .. } => (step.clone(), *round),
            Work::Intake { run, .. } | Work::Improvement { run, .. } => (String::new(), *run),
        };
        self.event(
            task,
            EventKind::StepDispatched {
                step: step.clone(),
                role: work.role().to_owned(),
                round,
                attempt: attempt.0,
                worker: worker.clone(),
            },
        );
        self.leases.insert(
            attempt,
            Lease {
                worker: worker.clone(),
                task,
                subject,
                step,
                role: work.role().to_owned(),
                round,
                started_at_ms: self.now,
                orphaned_until: None,
            },
        );
        Order {
            worker,
            attempt,
            work,
        }
    }
}
