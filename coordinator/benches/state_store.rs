//! The embedded state store at 100,000 tasks (PERFORMANCE.md P5, P7): bulk fill, cold load,
//! cached load, small-batch apply, each next to a reference measured in the same run.
//! `cargo bench -p hyperloop-coordinator --bench state_store` (TASKS=… to change the size).

use std::process::Command;
use std::time::{Duration, Instant};

use git2::Repository;
use hyperloop_coordinator::adapters::git_store::GitStore;
use hyperloop_coordinator::ports::state_store::contract::{event, task};
use hyperloop_coordinator::ports::state_store::{Change, Meta, StateStore};

const FILL_BATCH: u64 = 10_000;
const SMALL_BATCHES: u32 = 50;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn rss_mb() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or("?".into(), |kb| format!("{} MB", kb / 1024))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tasks: u64 = std::env::var("TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let ok = Command::new("git")
        .args(["init", "-q"])
        .arg(dir.path())
        .status()
        .expect("git runs");
    assert!(ok.success());

    let store = GitStore::open(dir.path(), 10_000).expect("open");
    let started = Instant::now();
    let mut revision = store.load().await.expect("load").revision;
    let mut id = 1;
    while id <= tasks {
        let end = (id + FILL_BATCH).min(tasks + 1);
        let changes = (id..end).map(|n| Change::PutTask(task(n))).collect();
        revision = store.apply(revision, changes).await.expect("fill").0;
        id = end;
    }
    let fill = started.elapsed();
    println!(
        "fill {tasks} tasks in batches of {FILL_BATCH}: {}   RSS (writer's cached state): {}",
        ms(fill),
        rss_mb()
    );

    // Small batches: what a reconcile cycle writes.
    let mut applies = Vec::new();
    for k in 0..SMALL_BATCHES {
        let n = u64::from(k);
        let mut t = task(1 + n * 997 % tasks);
        t.round = k + 2;
        let changes = vec![
            Change::PutTask(t),
            Change::AppendEvent(event(n)),
            Change::PutMeta(Meta {
                cycle: n,
                ..Meta::default()
            }),
        ];
        let started = Instant::now();
        revision = store.apply(revision, changes).await.expect("apply").0;
        applies.push(started.elapsed());
    }

    // Reference: git2 writing one task-sized blob, the floor of any git write.
    let repo = Repository::open(dir.path()).expect("repo");
    let record = serde_json::to_vec(&task(424_242)).expect("json");
    let mut blob_writes = Vec::new();
    for k in 0..SMALL_BATCHES {
        let mut bytes = record.clone();
        bytes.extend_from_slice(k.to_string().as_bytes());
        let started = Instant::now();
        repo.blob(&bytes).expect("blob");
        blob_writes.push(started.elapsed());
    }
    println!(
        "apply (1 task + 1 event + meta), median of {SMALL_BATCHES}: {}   reference: git2 writes one blob: {}",
        ms(median(applies)),
        ms(median(blob_writes))
    );

    // Cold load: a new instance reads every record.
    let fresh = GitStore::open(dir.path(), 10_000).expect("open");
    let started = Instant::now();
    let state = fresh.load().await.expect("load");
    let cold = started.elapsed();
    println!(
        "RSS after a cold load (+ cache and returned copy): {}",
        rss_mb()
    );
    assert_eq!(state.tasks.len() as u64, tasks);
    // Reference: reading the same blobs without parsing them.
    let tree = repo
        .find_reference("refs/hyperloop/state")
        .and_then(|r| r.peel_to_tree())
        .expect("state tree");
    let started = Instant::now();
    let mut bytes = 0usize;
    tree.walk(git2::TreeWalkMode::PreOrder, |_, entry| {
        if entry.kind() == Some(git2::ObjectType::Blob) {
            bytes += repo.find_blob(entry.id()).map_or(0, |b| b.content().len());
        }
        git2::TreeWalkResult::Ok
    })
    .expect("walk");
    let raw = started.elapsed();
    println!(
        "cold load (loose objects): {}   reference: read the same blobs raw: {} ({} KB)",
        ms(cold),
        ms(raw),
        bytes / 1024
    );

    // Cached load: same commit, so a clone of the cached state.
    let mut loads = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let again = fresh.load().await.expect("load");
        loads.push(started.elapsed());
        assert_eq!(again.revision, state.revision);
    }
    let started = Instant::now();
    let cloned = state.clone();
    let clone = started.elapsed();
    println!(
        "cached load, median of 10: {}   reference: clone of the State: {}",
        ms(median(loads)),
        ms(clone)
    );
    drop(cloned);

    // Packed: what a repository looks like after `git gc`.
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir.path())
        .args(["gc", "-q"])
        .status()
        .expect("git gc");
    assert!(ok.success());
    let packed = GitStore::open(dir.path(), 10_000).expect("open");
    let started = Instant::now();
    packed.load().await.expect("load");
    println!("cold load after git gc (packed): {}", ms(started.elapsed()));
    println!("RSS with two cached states and a loaded copy: {}", rss_mb());
}
