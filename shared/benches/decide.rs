//! decide() and one executor step per task over 100,000 tasks (PERFORMANCE.md P5: a
//! reconcile with nothing changed must stay under 20 ms at this scale).
//!
//! Run: `cargo bench -p hyperloop-shared --bench decide`. Figures are printed next to
//! references measured in the same run (a linear pass, a sort, a clone of the task vector),
//! so the ratios stay meaningful on a noisy machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hyperloop_shared::decide::{TaskSnapshot, decide};
use hyperloop_shared::model::{Task, TaskId, TaskStatus, Verdict};
use hyperloop_shared::pipeline::{
    ActionOutcome, GateCheck, Limits, Next, Outcome, Pipeline, Step, StepKind,
};

const TASKS: u64 = 100_000;
const FREE_SLOTS: usize = 64;
const ITERATIONS: usize = 101;
const LIMITS: Limits = Limits {
    max_task_rounds: 50,
    max_action_attempts: 3,
};

/// xorshift64*: deterministic, dependency-free, good enough to shuffle a workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pipeline() -> Pipeline {
    // The seed's custom process: nested loops, a gate, an action.
    Pipeline::new(vec![
        Step::Loop(vec![
            Step::Loop(vec![Step::agent("implementer"), Step::agent("verifier")]),
            Step::agent("security-reviewer"),
        ]),
        Step::gate("human-approval"),
        Step::action("merge-pr"),
    ])
    .expect("valid pipeline")
}

/// A realistic mix: 40% complete, 2% failed, 10% on a worker, 10% ready at an agent step,
/// 8% at the gate, 3% at the action, 27% not started with 0–3 deps on recent tasks (1% of
/// them on a later task, 0.5% on an unknown one).
fn workload(p: &Pipeline) -> (Vec<Task>, Vec<bool>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let leaves = p.leaves();
    let mut tasks = Vec::with_capacity(TASKS as usize);
    let mut on_worker = Vec::with_capacity(TASKS as usize);
    for id in 1..=TASKS {
        let roll = rng.below(100);
        let mut task = Task::new(
            TaskId(id),
            format!("task {id}"),
            format!("specs/area-{}/spec-{}.md@0123abcd", id % 97, id % 1000)
                .parse()
                .expect("valid spec ref"),
        );
        let mut running = false;
        let mut place = |task: &mut Task, kind: StepKind| {
            let candidates: Vec<_> = leaves.iter().filter(|(_, s)| s.kind == kind).collect();
            let (path, _) = candidates[rng.below(candidates.len() as u64) as usize];
            // Walk the pipeline to that leaf to get a real persisted position.
            let mut t = p.start();
            while t.next.position().map(|pos| pos.path()) != Some(path.as_slice()) {
                let pos = t.progress().expect("in flight");
                let outcome = match pos.position.step().kind {
                    StepKind::Agent => Outcome::Agent(Verdict::Pass),
                    StepKind::Gate => Outcome::Gate(GateCheck::Cleared),
                    StepKind::Action => Outcome::Action(ActionOutcome::Success),
                };
                t = p.apply(&pos, outcome, LIMITS).expect("valid step");
            }
            t.apply_to(task);
            task.round = (rng.below(4)) as u32;
        };
        match roll {
            0..40 => task.status = TaskStatus::Complete,
            40..42 => task.status = TaskStatus::Failed,
            42..52 => {
                place(&mut task, StepKind::Agent);
                running = true;
            }
            52..62 => place(&mut task, StepKind::Agent),
            62..70 => place(&mut task, StepKind::Gate),
            70..73 => place(&mut task, StepKind::Action),
            _ => {
                for _ in 0..rng.below(4) {
                    let dep = match rng.below(200) {
                        0 => id + 1 + rng.below(50),
                        1 => TASKS + 1_000 + rng.below(1_000),
                        _ => id.saturating_sub(1 + rng.below(1_000)).max(1),
                    };
                    if dep != id {
                        task.deps.push(TaskId(dep));
                    }
                }
            }
        }
        tasks.push(task);
        on_worker.push(running);
    }
    (tasks, on_worker)
}

struct Stats {
    min: Duration,
    median: Duration,
    p99: Duration,
}

fn measure(mut f: impl FnMut()) -> Stats {
    f(); // warm-up
    let mut samples: Vec<Duration> = (0..ITERATIONS)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        min: samples[0],
        median: at(0.5),
        p99: at(0.99),
    }
}

fn report(name: &str, s: &Stats, reference: &Stats) {
    println!(
        "{name:<44} min {:>9.3} ms  median {:>9.3} ms  p99 {:>9.3} ms  ({:>5.1}x linear pass)",
        s.min.as_secs_f64() * 1e3,
        s.median.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3,
        s.median.as_secs_f64() / reference.median.as_secs_f64(),
    );
}

/// One executor step for every non-terminal task: start the not-started, feed the others an
/// outcome of their step's kind (a fail for every seventh agent, to exercise loop-backs).
fn step_all(p: &Pipeline, tasks: &[Task]) -> usize {
    let mut moved = 0;
    for t in tasks {
        let transition = match t.status {
            TaskStatus::NotStarted => p.start(),
            TaskStatus::InProgress => {
                let progress = t
                    .progress()
                    .ok()
                    .flatten()
                    .expect("in-progress tasks have a position");
                let outcome = match progress.position.step().kind {
                    StepKind::Agent if t.id.0 % 7 == 0 => Outcome::Agent(Verdict::Fail),
                    StepKind::Agent => Outcome::Agent(Verdict::Pass),
                    StepKind::Gate => Outcome::Gate(GateCheck::Cleared),
                    StepKind::Action => Outcome::Action(ActionOutcome::Error),
                };
                p.apply(&progress, outcome, LIMITS).expect("valid step")
            }
            _ => continue,
        };
        moved += usize::from(!matches!(transition.next, Next::Complete));
        black_box(&transition);
    }
    moved
}

fn main() {
    let p = pipeline();
    let (tasks, on_worker) = workload(&p);
    let snapshots: Vec<TaskSnapshot<'_>> = tasks
        .iter()
        .zip(&on_worker)
        .map(|(t, &w)| TaskSnapshot::of(t, &p, w).expect("consistent snapshot"))
        .collect();
    let d = decide(&snapshots, FREE_SLOTS);
    println!(
        "{} tasks; decide dispatches {}, explains {} idle; {} cycles",
        tasks.len(),
        d.dispatch.len(),
        d.idle.len(),
        hyperloop_shared::decide::dependency_cycles(&snapshots).len()
    );

    // References.
    let linear = measure(|| {
        let sum: u64 = tasks
            .iter()
            .map(|t| t.id.0 ^ t.deps.len() as u64 ^ t.round as u64)
            .sum();
        black_box(sum);
    });
    // Shuffled, so the sort does real work (a reversed input is a single run for pdqsort).
    let mut rng = Rng(42);
    let mut keys: Vec<(TaskId, u32)> = tasks.iter().map(|t| (t.id, t.round)).collect();
    for i in (1..keys.len()).rev() {
        keys.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let sort = measure(|| {
        let mut k = keys.clone();
        k.sort_unstable();
        black_box(k);
    });
    let clone = measure(|| {
        black_box(tasks.clone());
    });

    // Subjects.
    let build = measure(|| {
        let s: Vec<TaskSnapshot<'_>> = tasks
            .iter()
            .zip(&on_worker)
            .map(|(t, &w)| TaskSnapshot::of(t, &p, w).expect("consistent snapshot"))
            .collect();
        black_box(s);
    });
    let decide_sorted = measure(|| {
        black_box(decide(black_box(&snapshots), FREE_SLOTS));
    });
    let mut shuffled = snapshots.clone();
    shuffled.reverse();
    let decide_unsorted = measure(|| {
        black_box(decide(black_box(&shuffled), FREE_SLOTS));
    });
    let step = measure(|| {
        black_box(step_all(&p, black_box(&tasks)));
    });

    println!("references (same run):");
    report("  linear pass over 100k tasks", &linear, &linear);
    report("  sort 100k shuffled (id, round) pairs", &sort, &linear);
    report("  clone the 100k-task vector", &clone, &linear);
    println!("subjects:");
    report(
        "  decide() over 100k snapshots (id order)",
        &decide_sorted,
        &linear,
    );
    report(
        "  decide() over 100k snapshots (reversed)",
        &decide_unsorted,
        &linear,
    );
    report("  build 100k snapshots from tasks", &build, &linear);
    report("  one executor step per non-terminal task", &step, &linear);
    println!(
        "decide vs sort reference: {:.2}x; target: decide well under 20 ms",
        decide_sorted.median.as_secs_f64() / sort.median.as_secs_f64()
    );
}
