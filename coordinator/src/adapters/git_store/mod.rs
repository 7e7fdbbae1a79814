//! [`GitStore`]: the embedded [`StateStore`]. Small JSON records in a tree on the ref
//! `refs/hyperloop/state` of the repository itself (layout in [`layout`]), written with git
//! plumbing; one commit per batch.
//!
//! Architecture Invariant: the store never touches the working tree, the index, `HEAD` or any
//! branch, so state cannot conflict with code or leak into a worker's branch.
//!
//! Guarantees:
//! - Atomic across `kill -9`: a batch's objects (blobs, trees, commit) are written first, each
//!   by temp file + rename; the ref then moves by lock file + rename. A crash before the rename
//!   leaves the old state plus unreachable objects (`git gc` prunes them); after it, the new.
//! - Conditional: writers of this store serialize on an advisory lock
//!   (`<git dir>/hyperloop/state-writer.lock`), compare the ref's revision with `expected`,
//!   and move the ref only if it still points at the commit they built on.
//!
//! - Tamper-evident: the store remembers the state commit it last read or wrote (in memory,
//!   and in `<git dir>/hyperloop/state-known` so a restart remembers it too).
//!   When the ref points anywhere else (an agent with the user's rights force-pushed or
//!   deleted it), the foreign commit is kept under `refs/hyperloop/quarantine/<id>` and the
//!   ref is put back on the last good state before anything is read or written.
//!
//! Assumptions: nothing but this store writes `refs/hyperloop/state` while it runs
//! (`git gc`/`pack-refs` may pack it; that is fine). A ref lock file left by a crashed writer is removed once it is
//! [`STALE_REF_LOCK_AGE`] old, because only a crash leaves one that long.
//!
//! Revision scheme: each state commit carries `Hyperloop-Revision: <n>` and
//! `Hyperloop-Next-Event: <seq>` trailers; no ref means revision 0. `git log
//! refs/hyperloop/state` is the state's history.

mod layout;
mod tree_edit;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::Display;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use git2::{Commit, ErrorCode, ObjectType, Oid, Repository, Signature, Tree};
use hyperloop_shared::event::Event;
use hyperloop_shared::model::{Review, Task, TaskId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use self::layout::*;
use self::tree_edit::TreeEdits;
use crate::ports::state_store::{
    Assignment, Change, Meta, Revision, SpecRecord, State, StateStore, StoreError,
};

/// The ref holding the state. Outside `refs/heads`, so no branch listing, checkout or push of
/// branches includes it, and git keeps no reflog for it (which would grow without bound).
pub const STATE_REF: &str = "refs/hyperloop/state";

/// Layout version in every state commit; a store refuses a layout it does not know.
const FORMAT: u64 = 1;
const FORMAT_TRAILER: &str = "Hyperloop-State-Format";
const REVISION_TRAILER: &str = "Hyperloop-Revision";
const NEXT_EVENT_TRAILER: &str = "Hyperloop-Next-Event";

/// Age after which a leftover `refs/hyperloop/state.lock` counts as abandoned by a crashed
/// writer. Git and libgit2 hold ref locks for milliseconds (git retries for 100 ms,
/// `core.filesRefLockTimeout`), so 2 s is far past any live holder yet short enough that a
/// restarted coordinator barely waits.
pub const STALE_REF_LOCK_AGE: Duration = Duration::from_secs(2);
/// How often a writer looks again at a young ref lock.
const REF_LOCK_POLL: Duration = Duration::from_millis(20);

/// The embedded state store. Cheap to clone; clones share the repository handle and cache.
#[derive(Clone)]
pub struct GitStore {
    inner: Arc<Inner>,
}

struct Inner {
    // std Mutexes: held only on blocking threads, never across an await.
    repo: Mutex<Repository>,
    /// The last state read or written, keyed by its commit, so repeated loads and loads after
    /// this instance's own writes cost a clone instead of a tree walk.
    cache: Mutex<Option<Cached>>,
    /// The shared git directory (the main one for a linked worktree): where refs live.
    common_dir: PathBuf,
    /// The state commit this store last read or wrote, and its revision: the ref must still
    /// point there, or at a later revision written on top of it.
    known: Mutex<Option<(Oid, Revision)>>,
    journal_limit: usize,
}

struct Cached {
    commit: Oid,
    state: Arc<State>,
}

/// The state commit the ref points at, with what its trailers say.
struct Head<'r> {
    commit: Commit<'r>,
    revision: Revision,
    next_seq: u64,
}

impl GitStore {
    /// Opens the state of the repository at (or above) `repo_path`; the journal keeps the
    /// newest `journal_limit` events.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if `repo_path` is not in a git repository.
    pub fn open(repo_path: impl AsRef<Path>, journal_limit: usize) -> Result<Self, StoreError> {
        let path = repo_path.as_ref();
        let repo = Repository::open(path).map_err(|e| StoreError::Backend {
            operation: "open",
            reason: format!(
                "{} is not a usable git repository ({}); run hyperloop inside the repository \
                 it reconciles",
                path.display(),
                e.message()
            ),
            transient: false,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                common_dir: repo.commondir().to_path_buf(),
                repo: Mutex::new(repo),
                cache: Mutex::new(None),
                known: Mutex::new(None),
                journal_limit,
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        // git2 calls block on disk I/O; keep them off the async workers.
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| backend(operation, format!("the store thread failed: {e}")))?
    }
}

impl StateStore for GitStore {
    async fn load(&self) -> Result<State, StoreError> {
        self.blocking("load", Inner::load).await
    }

    async fn apply(
        &self,
        expected: Revision,
        changes: Vec<Change>,
    ) -> Result<(Revision, Vec<Event>), StoreError> {
        self.blocking("apply", move |inner| inner.apply(expected, changes))
            .await
    }

    async fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.blocking("events", move |inner| inner.events(after, limit))
            .await
    }
}

impl Inner {
    fn repo(&self) -> MutexGuard<'_, Repository> {
        // Nothing under this lock leaves the repository handle half-changed.
        self.repo.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> MutexGuard<'_, Option<Cached>> {
        // The cache is replaced whole, never left half-written.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn known(&self) -> MutexGuard<'_, Option<(Oid, Revision)>> {
        // An Oid is written whole; a poisoned lock still holds a valid one.
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.is_none() {
            *known = self.remembered();
        }
        known
    }

    fn known_file(&self) -> PathBuf {
        self.common_dir.join("hyperloop").join("state-known")
    }

    /// The last good state a previous run of this store recorded (`<commit> <revision>`).
    fn remembered(&self) -> Option<(Oid, Revision)> {
        let text = fs::read_to_string(self.known_file()).ok()?;
        let (commit, revision) = text.trim().split_once(' ')?;
        Some((
            Oid::from_str(commit).ok()?,
            Revision(revision.parse().ok()?),
        ))
    }

    /// Records the last good state for the next run; best effort (the ref stays the truth,
    /// this only lets a restart notice a foreign write made while it was down).
    fn remember(&self, commit: Oid, revision: Revision) {
        *self.known() = Some((commit, revision));
        let path = self.known_file();
        let temp = path.with_extension("tmp");
        let written = fs::write(&temp, format!("{commit} {}\n", revision.0))
            .and_then(|()| fs::rename(&temp, &path));
        if let Err(e) = written {
            tracing::debug!(error = %e, path = %path.display(), "could not record the last good state");
        }
    }

    /// Puts the ref back on the last good state if something else moved it, keeping what it
    /// found for inspection. Another instance of this store writing on top (a descendant
    /// with a higher revision) is not foreign. A store that has not read yet trusts what is
    /// there.
    fn restore_if_foreign(&self, repo: &Repository) -> Result<(), StoreError> {
        let Some((known, known_revision)) = *self.known() else {
            return Ok(());
        };
        let current = repo.find_reference(STATE_REF).ok().and_then(|r| r.target());
        // A remembered commit that is gone (the state was pruned on purpose) is no evidence.
        if current == Some(known) || repo.find_commit(known).is_err() {
            return Ok(());
        }
        if let Some(id) = current
            && repo.graph_descendant_of(id, known).unwrap_or(false)
            && read_head(repo)
                .ok()
                .flatten()
                .is_some_and(|h| h.revision > known_revision)
        {
            return Ok(());
        }
        if let Some(foreign) = current {
            let kept = format!("refs/hyperloop/quarantine/{foreign}");
            repo.reference(
                &kept,
                foreign,
                true,
                "hyperloop: a foreign state write, kept",
            )
            .map_err(|e| git_err("restore", e))?;
        }
        repo.reference(
            STATE_REF,
            known,
            true,
            "hyperloop: restore the last good state",
        )
        .map_err(|e| git_err("restore", e))?;
        tracing::warn!(
            restored = %known,
            foreign = ?current.map(|c| c.to_string()),
            "{STATE_REF} was changed outside hyperloop; the last good state is back (the \
             foreign commit is kept under refs/hyperloop/quarantine/)"
        );
        Ok(())
    }

    fn load(&self) -> Result<State, StoreError> {
        let repo = self.repo();
        self.restore_if_foreign(&repo)?;
        let Some(head) = read_head(&repo)? else {
            return Ok(State::default());
        };
        if *self.known() != Some((head.commit.id(), head.revision)) {
            self.remember(head.commit.id(), head.revision);
        }
        if let Some(cached) = self
            .cache()
            .as_ref()
            .filter(|c| c.commit == head.commit.id())
        {
            return Ok(State::clone(&cached.state));
        }
        let state = read_state(&repo, &head)?;
        *self.cache() = Some(Cached {
            commit: head.commit.id(),
            state: Arc::new(state.clone()),
        });
        Ok(state)
    }

    fn apply(
        &self,
        expected: Revision,
        changes: Vec<Change>,
    ) -> Result<(Revision, Vec<Event>), StoreError> {
        let _writer = self.writer_lock()?;
        let repo = self.repo();
        self.restore_if_foreign(&repo)?;
        let head = read_head(&repo)?;
        let found = head.as_ref().map_or(Revision(0), |h| h.revision);
        if found != expected {
            return Err(StoreError::Conflict { expected, found });
        }
        let base = match &head {
            Some(h) => Some(h.commit.tree().map_err(|e| git_err("apply", e))?),
            None => None,
        };
        let mut next_seq = head.as_ref().map_or(1, |h| h.next_seq);
        let (edits, journaled) = self.edits_for(&repo, base.as_ref(), &changes, &mut next_seq)?;
        let tree_id = edits
            .write_root(&repo, base.as_ref())
            .map_err(|e| git_err("apply", e))?;
        let tree = repo.find_tree(tree_id).map_err(|e| git_err("apply", e))?;

        let revision = Revision(found.0 + 1);
        let message = format!(
            "{}\n\n{FORMAT_TRAILER}: {FORMAT}\n{REVISION_TRAILER}: {}\n{NEXT_EVENT_TRAILER}: {next_seq}\n",
            summary(revision, &changes),
            revision.0
        );
        // A fixed identity: the store must work without user.name/user.email configured.
        let signature =
            Signature::now("hyperloop", "hyperloop@localhost").map_err(|e| git_err("apply", e))?;
        let parents: Vec<&Commit<'_>> = head.iter().map(|h| &h.commit).collect();
        let commit = repo
            .commit(None, &signature, &signature, &message, &tree, &parents)
            .map_err(|e| git_err("apply", e))?;

        self.clear_stale_ref_lock()?;
        let log = format!("hyperloop: revision {}", revision.0);
        let moved = match &head {
            Some(h) => repo.reference_matching(STATE_REF, commit, true, h.commit.id(), &log),
            None => repo.reference(STATE_REF, commit, false, &log),
        };
        match moved {
            Ok(_) => self.remember(commit, revision),
            // Someone outside this store's writer lock moved the ref since we read it.
            Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::Exists) => {
                let found = read_head(&repo)?.map_or(Revision(0), |h| h.revision);
                return Err(StoreError::Conflict { expected, found });
            }
            Err(e) => return Err(git_err("apply", e)),
        }

        let old = head.as_ref().map(|h| h.commit.id());
        let mut cache = self.cache();
        let previous = match cache.take() {
            Some(c) if Some(c.commit) == old => Some(c.state),
            None if old.is_none() => Some(Arc::new(State::default())),
            _ => None,
        };
        *cache = previous.map(|mut state| {
            let s = Arc::make_mut(&mut state);
            for change in &changes {
                s.apply(change);
            }
            s.revision = revision;
            Cached { commit, state }
        });
        Ok((revision, journaled))
    }

    /// Blobs for every change and the tree edits placing them; numbers the journaled events.
    fn edits_for(
        &self,
        repo: &Repository,
        base: Option<&Tree<'_>>,
        changes: &[Change],
        next_seq: &mut u64,
    ) -> Result<(TreeEdits, Vec<Event>), StoreError> {
        let mut edits = TreeEdits::default();
        let mut journaled = Vec::new();
        let mut review_counts: HashMap<TaskId, u64> = HashMap::new();
        for change in changes {
            match change {
                Change::PutTask(task) => edits.put(&task_key(task.id), blob(repo, task)?),
                Change::AddReview(review) => {
                    let order = match review_counts.entry(review.task_id) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => e.insert(review_count(repo, base, review.task_id)?),
                    };
                    let key = format!("{}/{}", review_dir(review.task_id), review_file(*order));
                    edits.put(&key, blob(repo, review)?);
                    *order += 1;
                }
                Change::PutSpec(spec) => edits.put(&spec_key(&spec.path), blob(repo, spec)?),
                Change::DeleteSpec(path) => edits.delete(&spec_key(path)),
                Change::PutAssignment(a) => edits.put(&assignment_key(a.task), blob(repo, a)?),
                Change::DeleteAssignment(task) => edits.delete(&assignment_key(*task)),
                Change::PutMeta(meta) => edits.put(META, blob(repo, meta)?),
                Change::AppendEvent(event) => {
                    let mut event = event.clone();
                    event.seq = *next_seq;
                    *next_seq += 1;
                    journaled.push(event);
                }
            }
        }
        if !journaled.is_empty() {
            // Keep seq >= keep_from: the newest `journal_limit` of all events so far.
            let keep_from = next_seq.saturating_sub(self.journal_limit as u64).max(1);
            for event in journaled.iter().filter(|e| e.seq >= keep_from) {
                edits.put(&event_key(event.seq), blob(repo, event)?);
            }
            trim_journal(repo, base, keep_from, &mut edits)?;
        }
        Ok((edits, journaled))
    }

    fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let repo = self.repo();
        let Some(head) = read_head(&repo)? else {
            return Ok(Vec::new());
        };
        let root = head.commit.tree().map_err(|e| git_err("events", e))?;
        let Some(dir) = root.get_name(EVENTS) else {
            return Ok(Vec::new());
        };
        let mut dirs = numbered(&as_tree(&repo, &dir, EVENTS)?, EVENTS)?;
        dirs.retain(|(n, _)| (n + 1) * EVENTS_PER_DIR > after + 1);
        let mut events = Vec::new();
        for (n, entry) in dirs {
            let dir_key = format!("{EVENTS}/{n}");
            for (seq, file) in numbered(&child_tree(&repo, &entry, &dir_key)?, &dir_key)? {
                if seq <= after {
                    continue;
                }
                if events.len() == limit {
                    return Ok(events);
                }
                let key = format!("{dir_key}/{}", file.name);
                let event: Event = record(&repo, &file, &key)?;
                if event.seq != seq {
                    return Err(corrupt(key, format!("holds event {}", event.seq)));
                }
                events.push(event);
            }
        }
        Ok(events)
    }

    /// Serializes this store's writers, across processes too. Released when the returned
    /// file closes, including when the process dies.
    fn writer_lock(&self) -> Result<File, StoreError> {
        let dir = self.common_dir.join("hyperloop");
        let path = dir.join("state-writer.lock");
        let io_err = |e: io::Error| {
            backend(
                "apply",
                format!(
                    "cannot lock {}: {e}; check the permissions of {}",
                    path.display(),
                    dir.display()
                ),
            )
        };
        fs::create_dir_all(&dir).map_err(io_err)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        file.lock().map_err(io_err)?;
        Ok(file)
    }

    /// Removes a ref lock abandoned by a crashed writer, or waits for a live holder (a git
    /// command) to finish. Runs under the writer lock, so no writer of this store holds it.
    fn clear_stale_ref_lock(&self) -> Result<(), StoreError> {
        let path = self.common_dir.join(format!("{STATE_REF}.lock"));
        loop {
            let age = match fs::metadata(&path).and_then(|m| m.modified()) {
                Ok(modified) => modified.elapsed().unwrap_or_default(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(backend("apply", format!("{}: {e}", path.display()))),
            };
            if age < STALE_REF_LOCK_AGE {
                std::thread::sleep(REF_LOCK_POLL);
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    return Err(backend(
                        "apply",
                        format!(
                            "{} was left by a crashed writer and cannot be removed ({e}); \
                             remove it by hand",
                            path.display()
                        ),
                    ));
                }
            }
        }
    }
}

fn read_head(repo: &Repository) -> Result<Option<Head<'_>>, StoreError> {
    let reference = match repo.find_reference(STATE_REF) {
        Ok(r) => r,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(git_err("read", e)),
    };
    let Some(id) = reference.target() else {
        return Err(corrupt(
            STATE_REF,
            "is a symbolic ref; it must point at a state commit",
        ));
    };
    let commit = repo.find_commit(id).map_err(|e| {
        corrupt(
            STATE_REF,
            format!("points at {id}, not a readable commit: {}", e.message()),
        )
    })?;
    let trailer = |name: &str| -> Result<u64, StoreError> {
        let message = commit.message().unwrap_or_default();
        message
            .lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .next_back()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                corrupt(
                    STATE_REF,
                    format!("commit {id} lacks a `{name}: <number>` trailer"),
                )
            })
    };
    let format = trailer(FORMAT_TRAILER)?;
    if format != FORMAT {
        return Err(corrupt(
            STATE_REF,
            format!(
                "commit {id} is in state format {format}, this hyperloop reads format {FORMAT}; upgrade hyperloop"
            ),
        ));
    }
    Ok(Some(Head {
        revision: Revision(trailer(REVISION_TRAILER)?),
        next_seq: trailer(NEXT_EVENT_TRAILER)?,
        commit,
    }))
}

/// An entry of a tree being read, with its full key for error messages.
struct Child {
    name: String,
    id: Oid,
    kind: Option<ObjectType>,
}

fn children(tree: &Tree<'_>, dir_key: &str) -> Result<Vec<Child>, StoreError> {
    tree.iter()
        .map(|entry| {
            let name = entry.name().map_err(|_| {
                corrupt(
                    format!("{dir_key}/{}", String::from_utf8_lossy(entry.name_bytes())),
                    "the name is not UTF-8",
                )
            })?;
            Ok(Child {
                name: name.to_owned(),
                id: entry.id(),
                kind: entry.kind(),
            })
        })
        .collect()
}

fn as_tree<'r>(
    repo: &'r Repository,
    entry: &git2::TreeEntry<'_>,
    key: &str,
) -> Result<Tree<'r>, StoreError> {
    if entry.kind() != Some(ObjectType::Tree) {
        return Err(corrupt(key, "expected a directory"));
    }
    repo.find_tree(entry.id())
        .map_err(|e| corrupt(key, format!("unreadable directory: {}", e.message())))
}

fn child_tree<'r>(repo: &'r Repository, child: &Child, key: &str) -> Result<Tree<'r>, StoreError> {
    if child.kind != Some(ObjectType::Tree) {
        return Err(corrupt(key, "expected a directory"));
    }
    repo.find_tree(child.id)
        .map_err(|e| corrupt(key, format!("unreadable directory: {}", e.message())))
}

fn record<T: DeserializeOwned>(
    repo: &Repository,
    child: &Child,
    key: &str,
) -> Result<T, StoreError> {
    if child.kind != Some(ObjectType::Blob) {
        return Err(corrupt(key, "expected a file"));
    }
    let blob = repo.find_blob(child.id).map_err(|e| {
        corrupt(
            key,
            format!("unreadable object {}: {}", child.id, e.message()),
        )
    })?;
    serde_json::from_slice(blob.content()).map_err(|e| corrupt(key, e))
}

/// Entries named `<n>` or `<n>.json`, in numeric order.
fn numbered(tree: &Tree<'_>, dir_key: &str) -> Result<Vec<(u64, Child)>, StoreError> {
    let mut out = children(tree, dir_key)?
        .into_iter()
        .map(|c| match parse_number(&c.name) {
            Some(n) => Ok((n, c)),
            None => Err(unknown(format!("{dir_key}/{}", c.name))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

fn read_state(repo: &Repository, head: &Head<'_>) -> Result<State, StoreError> {
    let mut state = State {
        revision: head.revision,
        ..State::default()
    };
    let root = head.commit.tree().map_err(|e| git_err("load", e))?;
    for top in children(&root, "")? {
        let key = top.name.clone();
        match top.name.as_str() {
            META => state.meta = record::<Meta>(repo, &top, META)?,
            TASKS => {
                for_each_file(repo, &top, TASKS, |shard, file, key| {
                    let id = parse_task_name(&file.name)
                        .filter(|id| task_shard(*id) == shard)
                        .ok_or_else(|| unknown(key))?;
                    let task: Task = record(repo, file, key)?;
                    if task.id != id {
                        return Err(corrupt(key, format!("holds {}", task.id)));
                    }
                    state.tasks.insert(id, task);
                    Ok(())
                })?;
            }
            REVIEWS => {
                for shard in children(&child_tree(repo, &top, &key)?, &key)? {
                    let shard_key = format!("{key}/{}", shard.name);
                    for dir in children(&child_tree(repo, &shard, &shard_key)?, &shard_key)? {
                        let dir_key = format!("{shard_key}/{}", dir.name);
                        let id = parse_task_name(&dir.name)
                            .filter(|id| task_shard(*id) == shard.name)
                            .ok_or_else(|| unknown(&dir_key))?;
                        let tree = child_tree(repo, &dir, &dir_key)?;
                        let mut reviews = Vec::new();
                        for (_, file) in numbered(&tree, &dir_key)? {
                            let file_key = format!("{dir_key}/{}", file.name);
                            let review: Review = record(repo, &file, &file_key)?;
                            if review.task_id != id {
                                return Err(corrupt(
                                    file_key,
                                    format!("is about {}", review.task_id),
                                ));
                            }
                            reviews.push(review);
                        }
                        state.reviews.insert(id, reviews);
                    }
                }
            }
            SPECS => {
                for_each_file(repo, &top, SPECS, |shard, file, key| {
                    let path = parse_spec_name(&file.name)
                        .filter(|p| spec_shard(p) == shard)
                        .ok_or_else(|| unknown(key))?;
                    let spec: SpecRecord = record(repo, file, key)?;
                    if spec.path != path {
                        return Err(corrupt(key, format!("holds {}", spec.path)));
                    }
                    state.specs.insert(path, spec);
                    Ok(())
                })?;
            }
            ASSIGNMENTS => {
                for file in children(&child_tree(repo, &top, &key)?, &key)? {
                    let file_key = format!("{key}/{}", file.name);
                    let id = parse_task_name(&file.name).ok_or_else(|| unknown(&file_key))?;
                    let assignment: Assignment = record(repo, &file, &file_key)?;
                    if assignment.task != id {
                        return Err(corrupt(file_key, format!("holds {}", assignment.task)));
                    }
                    state.assignments.insert(id, assignment);
                }
            }
            EVENTS => {} // read by `events`
            _ => return Err(unknown(key)),
        }
    }
    Ok(state)
}

/// Calls `f(shard name, file, key)` for every file in `<top>/<shard>/`.
fn for_each_file(
    repo: &Repository,
    top: &Child,
    top_key: &str,
    mut f: impl FnMut(&str, &Child, &str) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for shard in children(&child_tree(repo, top, top_key)?, top_key)? {
        let shard_key = format!("{top_key}/{}", shard.name);
        for file in children(&child_tree(repo, &shard, &shard_key)?, &shard_key)? {
            let key = format!("{shard_key}/{}", file.name);
            f(&shard.name, &file, &key)?;
        }
    }
    Ok(())
}

/// How many reviews `task` already has: the order number of the next one.
fn review_count(
    repo: &Repository,
    base: Option<&Tree<'_>>,
    task: TaskId,
) -> Result<u64, StoreError> {
    let dir_key = review_dir(task);
    let Some(entry) = base.and_then(|b| b.get_path(Path::new(&dir_key)).ok()) else {
        return Ok(0);
    };
    let tree = as_tree(repo, &entry, &dir_key)?;
    Ok(numbered(&tree, &dir_key)?.last().map_or(0, |(n, _)| n + 1))
}

/// Drops journal files older than `keep_from`: whole directories where possible.
fn trim_journal(
    repo: &Repository,
    base: Option<&Tree<'_>>,
    keep_from: u64,
    edits: &mut TreeEdits,
) -> Result<(), StoreError> {
    let Some(dir) = base.and_then(|b| b.get_name(EVENTS)) else {
        return Ok(());
    };
    for (n, sub) in numbered(&as_tree(repo, &dir, EVENTS)?, EVENTS)? {
        let first = n * EVENTS_PER_DIR;
        if first + EVENTS_PER_DIR <= keep_from {
            edits.delete(&format!("{EVENTS}/{n}"));
        } else if first < keep_from {
            let dir_key = format!("{EVENTS}/{n}");
            for (seq, file) in numbered(&child_tree(repo, &sub, &dir_key)?, &dir_key)? {
                if seq < keep_from {
                    edits.delete(&format!("{dir_key}/{}", file.name));
                }
            }
        }
    }
    Ok(())
}

fn blob(repo: &Repository, record: &impl Serialize) -> Result<Oid, StoreError> {
    let mut bytes = serde_json::to_vec(record).map_err(|e| backend("apply", e))?;
    bytes.push(b'\n');
    repo.blob(&bytes).map_err(|e| git_err("apply", e))
}

/// The first line of a state commit: what the batch did, for `git log`.
fn summary(revision: Revision, changes: &[Change]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for change in changes {
        let what = match change {
            Change::PutTask(_) => "task put",
            Change::AddReview(_) => "review added",
            Change::PutSpec(_) => "spec put",
            Change::DeleteSpec(_) => "spec deleted",
            Change::PutAssignment(_) => "assignment put",
            Change::DeleteAssignment(_) => "assignment deleted",
            Change::PutMeta(_) => "meta put",
            Change::AppendEvent(_) => "event",
        };
        match counts.iter_mut().find(|(w, _)| *w == what) {
            Some((_, n)) => *n += 1,
            None => counts.push((what, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(w, n)| format!("{n} {w}")).collect();
    let what = if parts.is_empty() {
        "no changes".to_owned()
    } else {
        parts.join(", ")
    };
    format!("hyperloop state revision {}: {what}", revision.0)
}

fn corrupt(key: impl Into<String>, reason: impl Display) -> StoreError {
    StoreError::Corrupt {
        key: key.into(),
        reason: format!("{reason} (see `git log -p {STATE_REF}`)"),
    }
}

fn unknown(key: impl Into<String>) -> StoreError {
    corrupt(
        key,
        format!("not part of state format {FORMAT}; a newer hyperloop or a hand edit wrote it"),
    )
}

fn backend(operation: &'static str, reason: impl Display) -> StoreError {
    StoreError::Backend {
        operation,
        reason: reason.to_string(),
        transient: false,
    }
}

fn git_err(operation: &'static str, e: git2::Error) -> StoreError {
    backend(operation, format!("git: {}", e.message()))
}
