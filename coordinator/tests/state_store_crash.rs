//! `kill -9` at random moments while a writer applies batches: after every kill the store
//! opens, its revision is the number of committed batches, and every batch is all or nothing.
//! The test binary re-executes itself as the writer.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hyperloop_coordinator::adapters::git_store::GitStore;
use hyperloop_coordinator::ports::state_store::contract::{event, review, task};
use hyperloop_coordinator::ports::state_store::{Change, Meta, Revision, State, StateStore};
use hyperloop_shared::model::{TaskId, Verdict};

const WRITER_ENV: &str = "HYPERLOOP_TEST_CRASH_WRITER";
/// Tasks every batch rewrites, all carrying the batch number.
const TASKS_PER_BATCH: u64 = 4;
const KILLS: usize = 30;
/// Journal limit small enough that trimming happens during the run.
const JOURNAL_LIMIT: usize = 25;

/// Batch `k` (which becomes revision `k`): the same records, all stamped with `k`.
fn batch(k: u64) -> Vec<Change> {
    let mut changes: Vec<Change> = (1..=TASKS_PER_BATCH)
        .map(|id| {
            let mut t = task(id);
            t.round = k as u32;
            Change::PutTask(t)
        })
        // A task of its own per batch, so trees grow while we kill.
        .chain([Change::PutTask(task(1_000 + k))])
        .collect();
    changes.push(Change::AddReview(review(1, k as u32, Verdict::Fail)));
    changes.push(Change::AppendEvent(event(k)));
    changes.push(Change::PutMeta(Meta {
        cycle: k,
        ..Meta::default()
    }));
    changes
}

/// In the child: applies batches until killed (or a bound passes), printing each commit.
#[test]
fn crash_writer_child() {
    let Ok(repo) = std::env::var(WRITER_ENV) else {
        return; // a normal run: nothing to do
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = GitStore::open(&repo, JOURNAL_LIMIT).unwrap();
        let mut revision = store.load().await.unwrap().revision;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let (next, _) = store.apply(revision, batch(revision.0 + 1)).await.unwrap();
            revision = next;
            println!("committed {}", revision.0);
        }
    });
}

/// Checks that `state` is exactly the result of batches 1..=revision.
fn check_whole(state: &State) {
    let k = state.revision.0;
    assert_eq!(state.meta.cycle, k, "meta is from the last batch");
    for id in 1..=TASKS_PER_BATCH {
        let round = state
            .tasks
            .get(&TaskId(id))
            .map_or(0, |t| u64::from(t.round));
        assert_eq!(round, k, "task {id} is from the last batch");
    }
    assert_eq!(
        state.tasks.len() as u64,
        if k == 0 { 0 } else { TASKS_PER_BATCH + k }
    );
    let rounds: Vec<u64> = state
        .reviews
        .get(&TaskId(1))
        .map(|r| r.iter().map(|r| u64::from(r.round)).collect())
        .unwrap_or_default();
    assert_eq!(
        rounds,
        (1..=k).collect::<Vec<_>>(),
        "one review per batch, in order"
    );
}

fn next_random(seed: &mut u64) -> u64 {
    // xorshift64: enough to spread kill times, no dependency.
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn git_fsck(repo: &Path) {
    let out = Command::new("git")
        .args(["-C"])
        .arg(repo)
        .args(["fsck", "--no-progress", "--no-dangling"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn kill_9_at_any_moment_leaves_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("git")
        .args(["init", "-q"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut committed_before = 0;
    for kill in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_ENV, dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let last_printed = Arc::new(AtomicU64::new(0));
        let reader = {
            let stdout = BufReader::new(child.stdout.take().unwrap());
            let last_printed = Arc::clone(&last_printed);
            std::thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    if let Some(n) = line
                        .rsplit("committed ")
                        .next()
                        .and_then(|n| n.trim().parse().ok())
                    {
                        last_printed.store(n, Ordering::SeqCst);
                    }
                }
            })
        };
        // Let it commit at least once, then kill it somewhere in the next 0-20 ms.
        let started = Instant::now();
        while last_printed.load(Ordering::SeqCst) <= committed_before {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "writer made no progress"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(next_random(&mut seed) % 20_000));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();

        let printed = last_printed.load(Ordering::SeqCst);
        let store = GitStore::open(dir.path(), JOURNAL_LIMIT).unwrap();
        let state = store.load().await.unwrap();
        let revision = state.revision.0;
        // Killed between committing and printing: one more than printed.
        assert!(
            revision == printed || revision == printed + 1,
            "kill {kill}: revision {revision}, last printed {printed}"
        );
        check_whole(&state);
        let events = store.events(0, usize::MAX).await.unwrap();
        assert_eq!(events.last().map(|e| e.seq), Some(revision), "kill {kill}");
        assert!(events.len() <= JOURNAL_LIMIT);
        committed_before = revision;
    }
    eprintln!("{KILLS} kills, {committed_before} batches committed");
    git_fsck(dir.path());
    // The store still takes writes after all that.
    let store = GitStore::open(dir.path(), JOURNAL_LIMIT).unwrap();
    let state = store.load().await.unwrap();
    store
        .apply(state.revision, batch(state.revision.0 + 1))
        .await
        .unwrap();
    assert!(
        matches!(store.load().await.unwrap().revision, Revision(r) if r == committed_before + 1)
    );
}
