//! The `StateStore` contract and git-specific guarantees of the embedded store, on real
//! repositories in temp dirs.

mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use git2::{Oid, Repository};
use hyperloop_coordinator::adapters::git_store::{GitStore, STALE_REF_LOCK_AGE, STATE_REF};
use hyperloop_coordinator::ports::state_store::contract::{self, Corruption, Harness};
use hyperloop_coordinator::ports::state_store::{Change, Revision, StateStore};
use hyperloop_shared::model::TaskId;
use tempfile::TempDir;

struct Repo {
    dir: TempDir,
    journal_limit: usize,
}

/// Untrimmed: some assertions compare whole listings, final newline included.
fn git(dir: &Path, args: &[&str]) -> String {
    support::git_as("t", dir, args)
}

/// A repository with one commit on `main` and an uncommitted file, like a user's checkout.
fn repo(journal_limit: usize) -> Repo {
    let dir = support::init_repo();
    std::fs::write(dir.path().join("README.md"), "hello\n").unwrap();
    git(dir.path(), &["add", "README.md"]);
    git(dir.path(), &["commit", "-q", "-m", "first"]);
    std::fs::write(dir.path().join("scratch.txt"), "not committed\n").unwrap();
    Repo { dir, journal_limit }
}

/// Rewrites the blob at `path` in the state commit behind the store's back.
fn replace_in_state(repo_dir: &Path, path: &str, content: &[u8]) {
    let repo = Repository::open(repo_dir).unwrap();
    let head = repo
        .find_reference(STATE_REF)
        .unwrap()
        .peel_to_commit()
        .unwrap();
    let blob = repo.blob(content).unwrap();
    let tree = put_path(&repo, Some(head.tree().unwrap().id()), path, blob);
    let tree = repo.find_tree(tree).unwrap();
    let sig = git2::Signature::now("vandal", "v@example.invalid").unwrap();
    let commit = repo
        .commit(None, &sig, &sig, head.message().unwrap(), &tree, &[&head])
        .unwrap();
    repo.reference(STATE_REF, commit, true, "corrupt").unwrap();
}

fn put_path(repo: &Repository, base: Option<Oid>, path: &str, blob: Oid) -> Oid {
    let base = base.map(|id| repo.find_tree(id).unwrap());
    let mut builder = repo.treebuilder(base.as_ref()).unwrap();
    match path.split_once('/') {
        None => builder.insert(path, blob, 0o100644).unwrap(),
        Some((dir, rest)) => {
            let sub = builder.get(dir).unwrap().map(|e| e.id());
            let sub = put_path(repo, sub, rest, blob);
            builder.insert(dir, sub, 0o040000).unwrap()
        }
    };
    builder.write().unwrap()
}

impl Harness for Repo {
    type Store = GitStore;

    fn open(&self) -> GitStore {
        GitStore::open(self.dir.path(), self.journal_limit).unwrap()
    }

    fn corrupt(&self, how: Corruption) -> Option<String> {
        let (key, content) = match how {
            Corruption::UnreadableTask(id) => {
                (format!("tasks/{:02}/{id}.json", id.0 % 100), "{not json")
            }
            Corruption::UnknownKey => ("tasks/01/notes.txt".to_owned(), "hello"),
        };
        replace_in_state(self.dir.path(), &key, content.as_bytes());
        // Damage to what the store itself wrote, not a foreign write it would undo: no record
        // of a better state is left.
        let _ = std::fs::remove_file(self.dir.path().join(".git/hyperloop/state-known"));
        Some(key)
    }
}

hyperloop_coordinator::state_store_contract_tests!(repo);

fn loose_objects(repo_dir: &Path) -> usize {
    let out = git(repo_dir, &["count-objects"]);
    out.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_store_never_touches_the_checkout_head_index_or_branches() {
    let r = repo(10);
    let before = (
        git(r.dir.path(), &["status", "--porcelain"]),
        git(r.dir.path(), &["for-each-ref", "refs/heads"]),
        git(r.dir.path(), &["rev-parse", "HEAD"]),
        std::fs::read(r.dir.path().join(".git/index")).unwrap(),
    );
    let store = r.open();
    let changes = vec![
        Change::PutTask(contract::task(1)),
        Change::AppendEvent(contract::event(1)),
    ];
    store.apply(Revision(0), changes).await.unwrap();
    let after = (
        git(r.dir.path(), &["status", "--porcelain"]),
        git(r.dir.path(), &["for-each-ref", "refs/heads"]),
        git(r.dir.path(), &["rev-parse", "HEAD"]),
        std::fs::read(r.dir.path().join(".git/index")).unwrap(),
    );
    assert_eq!(before, after);
    git(r.dir.path(), &["fsck", "--strict", "--no-progress"]);
    let log = git(r.dir.path(), &["log", "--format=%B", STATE_REF]);
    assert!(log.contains("Hyperloop-Revision: 1"), "{log}");
    assert!(
        log.starts_with("hyperloop state revision 1: 1 task put, 1 event"),
        "{log}"
    );
}

#[tokio::test]
async fn a_small_batch_writes_only_the_trees_on_its_path() {
    let r = repo(10);
    let store = r.open();
    let changes = (1..=300)
        .map(|n| Change::PutTask(contract::task(n)))
        .collect();
    store.apply(Revision(0), changes).await.unwrap();
    let before = loose_objects(r.dir.path());
    store
        .apply(Revision(1), vec![Change::PutTask(contract::task(301))])
        .await
        .unwrap();
    // blob + shard tree + `tasks` tree + root tree + commit
    assert_eq!(loose_objects(r.dir.path()) - before, 5);
}

#[tokio::test]
async fn a_ref_lock_left_by_a_crashed_writer_is_cleared_and_a_fresh_one_is_waited_for() {
    let r = repo(10);
    let store = r.open();
    store.apply(Revision(0), vec![]).await.unwrap();
    let lock = r.dir.path().join(".git").join(format!("{STATE_REF}.lock"));

    std::fs::write(&lock, "").unwrap();
    let old = SystemTime::now() - STALE_REF_LOCK_AGE - Duration::from_secs(1);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(old)
        .unwrap();
    store.apply(Revision(1), vec![]).await.unwrap();
    assert!(!lock.exists());

    // A fresh lock may belong to a running git command: wait, then treat it as abandoned.
    std::fs::write(&lock, "").unwrap();
    let started = Instant::now();
    store.apply(Revision(2), vec![]).await.unwrap();
    assert!(started.elapsed() >= STALE_REF_LOCK_AGE - Duration::from_millis(100));
    assert_eq!(store.load().await.unwrap().revision, Revision(3));
}

#[tokio::test]
async fn a_state_ref_moved_or_deleted_by_another_program_is_put_back_and_the_foreign_commit_kept() {
    let r = repo(10);
    let store = r.open();
    store
        .apply(Revision(0), vec![Change::PutTask(contract::task(1))])
        .await
        .unwrap();
    let good = git(r.dir.path(), &["rev-parse", STATE_REF]);
    // An agent with the user's rights forges a state with a task of its own.
    replace_in_state(
        r.dir.path(),
        "tasks/02/task-002.json",
        &serde_json::to_vec(&contract::task(2)).unwrap(),
    );
    let forged = git(r.dir.path(), &["rev-parse", STATE_REF]);
    assert_ne!(good, forged);
    let state = store.load().await.unwrap();
    assert!(
        !state.tasks.contains_key(&TaskId(2)),
        "the forged task is not read"
    );
    assert!(state.tasks.contains_key(&TaskId(1)));
    assert_eq!(git(r.dir.path(), &["rev-parse", STATE_REF]), good);
    let kept = format!("refs/hyperloop/quarantine/{}", forged.trim());
    assert_eq!(
        git(r.dir.path(), &["rev-parse", &kept]),
        forged,
        "kept for inspection"
    );

    // Deleting the ref loses nothing either; the next write builds on the last good state.
    git(r.dir.path(), &["update-ref", "-d", STATE_REF]);
    let (revision, _) = store
        .apply(Revision(1), vec![Change::PutTask(contract::task(3))])
        .await
        .unwrap();
    assert_eq!(revision, Revision(2));
    let state = r.open().load().await.unwrap();
    assert!(state.tasks.contains_key(&TaskId(1)) && state.tasks.contains_key(&TaskId(3)));
}

#[tokio::test]
async fn a_state_ref_replaced_while_no_coordinator_ran_is_put_back_on_the_next_start() {
    let r = repo(10);
    let store = r.open();
    store
        .apply(Revision(0), vec![Change::PutTask(contract::task(1))])
        .await
        .unwrap();
    drop(store);
    // While nothing runs, something force-pushes an unrelated commit over the state.
    let tree = git(r.dir.path(), &["mktree"]);
    let orphan = git(
        r.dir.path(),
        &["commit-tree", tree.trim(), "-m", "not a state"],
    );
    git(r.dir.path(), &["update-ref", STATE_REF, orphan.trim()]);
    let state = r
        .open()
        .load()
        .await
        .expect("the last good state, not an error");
    assert!(state.tasks.contains_key(&TaskId(1)), "nothing lost");
    let kept = format!("refs/hyperloop/quarantine/{}", orphan.trim());
    assert_eq!(git(r.dir.path(), &["rev-parse", &kept]), orphan);
}

#[tokio::test]
async fn opening_outside_a_repository_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let err = GitStore::open(dir.path(), 10).err().unwrap().to_string();
    assert!(err.contains("not a usable git repository"), "{err}");
}

#[tokio::test]
async fn trimming_the_journal_drops_whole_directories_of_old_events() {
    let r = repo(1_200);
    let store = r.open();
    for (revision, range) in [(0, 1..=1_000u64), (1, 1_001..=2_000), (2, 2_001..=2_500)] {
        let changes = range
            .map(|n| Change::AppendEvent(contract::event(n)))
            .collect();
        store.apply(Revision(revision), changes).await.unwrap();
    }
    let events = store.events(0, usize::MAX).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1_301..=2_500).collect::<Vec<_>>());
    let dirs = git(
        r.dir.path(),
        &["ls-tree", "--name-only", &format!("{STATE_REF}:events")],
    );
    assert_eq!(dirs, "1\n2\n");
    assert_eq!(store.events(1_999, 2).await.unwrap()[0].seq, 2_000);
}
