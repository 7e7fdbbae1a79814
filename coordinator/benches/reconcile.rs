//! PERFORMANCE P5: the cost of a reconcile cycle when nothing changed, with 10,000 specs in a
//! real repository and 100,000 tasks in the state. Reported next to references measured in
//! the same run: the spec source's own "unchanged" check and one linear pass over the tasks
//! (what any design that rescans everything pays at least).
//!
//! `cargo bench -p hyperloop-coordinator --bench reconcile`

#[path = "support/spec_repo.rs"]
mod spec_repo;

use std::time::{Duration, Instant};

use git2::{FileMode, Repository, Signature};
use hyperloop_coordinator::adapters::git::{GitLander, GitSpecSource};
use hyperloop_coordinator::adapters::memory_store::MemoryStore;
use hyperloop_coordinator::ports::spec_source::{SpecChange, SpecSource};
use hyperloop_coordinator::ports::state_store::{Change, Revision, SpecRecord, StateStore};
use hyperloop_coordinator::reconcile::{Context, Links, Mode, Reconciler};
use hyperloop_shared::config::Config;
use hyperloop_shared::model::{SpecRef, Task, TaskId, TaskStatus};
use hyperloop_shared::project::Project;
use spec_repo::SPECS;

const TASKS: u64 = 100_000;
const ROUNDS: usize = 200;
/// P5's budget for a cycle with nothing changed.
const TARGET: Duration = Duration::from_millis(20);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let repo = Repository::init(tmp.path())?;
    let sig = Signature::now("bench", "bench@example.invalid")?;
    let (specs, _) = spec_repo::write_specs_tree(&repo)?;
    let mut root = repo.treebuilder(None)?;
    root.insert("specs", specs, i32::from(FileMode::Tree))?;
    let tree = repo.find_tree(root.write()?)?;
    let commit = repo.commit(None, &sig, &sig, "specs", &tree, &[])?;
    repo.reference("refs/heads/main", commit, true, "bench")?;
    repo.set_head("refs/heads/main")?;

    // State: every spec already through intake, 100,000 finished tasks.
    let source = GitSpecSource::open(tmp.path(), "main", "specs")?;
    let listing = source.changes(None)?;
    let commit_id = listing.version.commit.0.clone();
    let mut changes = Vec::new();
    let mut paths = Vec::new();
    for change in &listing.changes {
        if let SpecChange::Added { path, blob } = change {
            paths.push(path.clone());
            changes.push(Change::PutSpec(SpecRecord {
                path: path.clone(),
                blob: blob.0.clone(),
                commit: commit_id.clone(),
            }));
        }
    }
    for i in 1..=TASKS {
        let spec_ref = SpecRef {
            path: paths[(i as usize) % paths.len()].clone(),
            commit: commit_id.clone(),
        };
        let mut task = Task::new(TaskId(i), format!("Task {i}"), spec_ref);
        task.status = TaskStatus::Complete;
        changes.push(Change::PutTask(task));
    }
    let store = MemoryStore::new(1000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(store.apply(Revision(0), changes))?;

    let config = Config::default();
    let ctx = Context {
        config,
        root: tmp.path().to_path_buf(),
        repo_url: tmp.path().display().to_string(),
        mode: Mode::Watch,
        distributed: false,
        coordinator_id: "bench".to_owned(),
        clock: hyperloop_coordinator::reconcile::Clock::start(),
        term: 1,
    };
    let lander = GitLander::open(tmp.path(), "main")?;
    let compose = || -> Result<Project, hyperloop_coordinator::compose::ProjectLoadError> {
        let composition = hyperloop_coordinator::compose::compose_project(
            std::path::Path::new("/nonexistent"),
            ".hyperloop/agents/",
            None,
            &hyperloop_coordinator::compose::CacheDir::new(std::env::temp_dir()),
        )?
        .0;
        Ok(Project::from_composition(&composition)?)
    };
    let (_tx, inbox) = tokio::sync::mpsc::channel(16);
    let dispatcher = hyperloop_coordinator::dispatch::Registry::new(inbox, ctx.clock);
    let source_for_loop = GitSpecSource::open(tmp.path(), "main", "specs")?;
    let mut reconciler = runtime.block_on(Reconciler::new(
        ctx,
        store.clone(),
        source_for_loop,
        lander,
        compose,
        dispatcher,
        Links::detached(),
    ))?;
    // The first cycle after start looks at everything once; the ones after are the subject.
    runtime.block_on(reconciler.tick())?;

    let cycle = measure(|| {
        let worked = runtime.block_on(reconciler.tick()).expect("cycle");
        assert!(!worked, "nothing changed, so nothing may happen");
    });
    let version = listing.version.clone();
    let check = measure(|| {
        let c = source.changes(Some(&version)).expect("check");
        assert!(c.is_unchanged());
    });
    let state = runtime.block_on(store.load())?;
    let pass = measure(|| {
        let open = state
            .tasks
            .values()
            .filter(|t| !t.status.is_terminal())
            .count();
        assert_eq!(open, 0);
    });

    println!(
        "P5: reconcile cycle with nothing changed ({SPECS} specs, {TASKS} tasks, {ROUNDS} rounds)"
    );
    report("reference: spec source unchanged check", &check);
    report("reference: one pass over 100k tasks", &pass);
    report("cycle with nothing changed", &cycle);
    let p99 = cycle[cycle.len() * 99 / 100];
    assert!(p99 < TARGET, "p99 {p99:?} exceeds the {TARGET:?} budget");
    Ok(())
}

fn measure(mut f: impl FnMut()) -> Vec<Duration> {
    let mut samples: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    samples.sort();
    samples
}

fn report(what: &str, samples: &[Duration]) {
    println!(
        "  {what:<42} min {:>10.3?}  p50 {:>10.3?}  p99 {:>10.3?}",
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100]
    );
}
