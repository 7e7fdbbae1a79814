//! The per-worker repository mirror and the per-step worktrees created from it.
//!
//! Layout under the work dir:
//!
//! ```text
//! <work_dir>/mirror/              bare repository; fetches `+refs/heads/*:refs/remotes/origin/*`
//! <work_dir>/worktrees/attempt-N/ one worktree per running step
//! <work_dir>/spare/N/             finished worktrees, cleaned and parked for reuse
//! ```
//!
//! A finished step's worktree is reset, cleaned of everything untracked or ignored, detached
//! from its branch and parked (at most [`MAX_SPARE_WORKTREES`]); the next step moves a parked
//! one into place and checks out its commit, which rewrites only the files that differ. On a
//! large repository this turns agent start from "write every file" into "write the diff"
//! (PERFORMANCE P2), while each step still starts from a pristine tree.
//!
//! The fetch refspec only writes `refs/remotes/origin/*`, so `fetch --prune` can never delete
//! the local task branches that running worktrees have checked out ("prune-safe"). The result
//! file is ignored through the mirror's `info/exclude`, which every worktree shares, so the
//! repository's own files are never touched.
//!
//! Guarantees: [`Workspace::remove`] is idempotent and tolerates [`Workspace::checkout`]
//! never having run or having stopped half way; a worktree directory and its admin entry in
//! `mirror/worktrees/` are both gone afterwards. Assumptions: one worker process per work
//! dir (a second process would race on the mirror; the coordinator gives each local worker its
//! own work dir).

use std::path::{Path, PathBuf};

use hyperloop_shared::result_file::RESULT_FILE_PATH;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Mutex;

use crate::git::{self, GitError, LOCAL_GIT_TIMEOUT, NETWORK_GIT_TIMEOUT};

/// A failure to prepare or clean up a step's git workspace.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("could not create the mirror of {url} in {dir}: {source}")]
    CreateMirror {
        url: String,
        dir: PathBuf,
        #[source]
        source: GitError,
    },
    #[error(
        "could not fetch {url} into the mirror: {source}; check that the repository URL is \
         reachable from this worker and its credentials are configured"
    )]
    Fetch {
        url: String,
        #[source]
        source: GitError,
    },
    #[error(
        "base commit {commit} is not in {url} after fetching; the coordinator dispatched a \
         commit that was never pushed (push the base branch, then retry the step)"
    )]
    BaseCommitMissing { commit: String, url: String },
    #[error(
        "branch `{branch}` does not exist in {url} and the assignment has no base commit; \
         push the base branch or fix `base_branch` in .hyperloop.yaml"
    )]
    BaseBranchMissing { branch: String, url: String },
    #[error("could not create the worktree {path}: {source}")]
    AddWorktree {
        path: PathBuf,
        #[source]
        source: GitError,
    },
    #[error("could not inspect the worktree {path}: {source}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: GitError,
    },
    #[error("could not push branch `{branch}` to {url}: {source}")]
    Push {
        branch: String,
        url: String,
        #[source]
        source: GitError,
    },
    #[error("file system error on {path}: {source}; check permissions and free space")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a step needs checked out.
#[derive(Debug, Clone)]
pub(crate) struct CheckoutRequest<'a> {
    pub repo_url: &'a str,
    /// Task branch; `None` checks out a detached HEAD (intake runs produce no commits).
    pub branch: Option<&'a str>,
    pub base_branch: &'a str,
    /// Empty means "the tip of `origin/<base_branch>`".
    pub base_commit: &'a str,
}

/// A checked-out worktree.
#[derive(Debug, Clone)]
pub(crate) struct Checkout {
    pub path: PathBuf,
    /// The commit the worktree started at.
    pub start_commit: String,
    /// The task branch's tip on the remote before the step, if the branch existed there.
    /// Pushing uses it as the force-with-lease expectation.
    pub remote_tip: Option<String>,
    /// The worktree's admin directory in the mirror (`mirror/worktrees/<name>`): its HEAD,
    /// index and pointer files.
    pub admin_dir: PathBuf,
}

/// How many checkouts between two `git maintenance run --auto` on the mirror (which packs
/// loose objects and refs when git's own thresholds say so). Fetches run with
/// `--no-auto-maintenance` because their automatic maintenance forks a detached process on
/// every step; this runs it in the step's path instead, rarely.
pub const MAINTENANCE_EVERY_CHECKOUTS: u64 = 256;

/// Parked worktrees kept for reuse. Bounded so disk use does not grow with the number of
/// steps; a handful covers a worker's concurrent steps.
pub const MAX_SPARE_WORKTREES: usize = 4;

/// What the mirror lock protects besides the mirror itself.
#[derive(Debug, Default)]
struct MirrorState {
    /// The URL the mirror's `origin` is known to point at (saves a `git config` per step).
    url: Option<String>,
    /// Parked worktrees, ready to be moved into place.
    spares: Vec<PathBuf>,
    next_spare: u64,
}

/// A worker's mirror plus its worktrees. Shared by all steps of one worker (`Arc`).
#[derive(Debug)]
pub struct Workspace {
    mirror_dir: PathBuf,
    worktrees_dir: PathBuf,
    spare_dir: PathBuf,
    root: PathBuf,
    /// Serialises everything that writes the mirror's refs or worktree admin files (fetch,
    /// worktree add/move/remove/prune, ref updates). A tokio mutex: it is held across awaits
    /// on git.
    lock: Mutex<MirrorState>,
    checkouts: AtomicU64,
}

impl Workspace {
    /// A workspace rooted at `work_dir` (created on first use).
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        let root = work_dir.into();
        Self {
            mirror_dir: root.join("mirror"),
            worktrees_dir: root.join("worktrees"),
            spare_dir: root.join("spare"),
            root,
            lock: Mutex::new(MirrorState::default()),
            checkouts: AtomicU64::new(0),
        }
    }

    /// The bare mirror repository.
    pub fn mirror_dir(&self) -> &Path {
        &self.mirror_dir
    }

    /// The directory that holds the step worktrees.
    pub fn worktrees_dir(&self) -> &Path {
        &self.worktrees_dir
    }

    /// Where the worktree for `attempt_id` lives while the step runs.
    pub fn worktree_path(&self, attempt_id: u64) -> PathBuf {
        self.worktrees_dir.join(format!("attempt-{attempt_id}"))
    }

    /// Removes worktrees left behind by an earlier process (crash, `kill -9`). Call before
    /// taking work; nothing may be running in this workspace.
    ///
    /// # Errors
    ///
    /// When a leftover directory cannot be removed.
    pub async fn sweep(&self) -> Result<(), WorkspaceError> {
        let mut state = self.lock.lock().await;
        state.spares.clear();
        // An earlier worker killed with `kill -9` may have left agents running in these
        // worktrees; they would race this worker's steps for the same branches.
        crate::process::orphans::reap(&self.worktrees_dir);
        for dir in [&self.worktrees_dir, &self.spare_dir] {
            if dir.exists() {
                tokio::fs::remove_dir_all(dir).await.map_err(io_err(dir))?;
            }
        }
        if self.mirror_dir.join("HEAD").exists() {
            // Stale admin entries point at the directories just removed.
            let _ = git::run(&self.mirror_dir, &["worktree", "prune"], LOCAL_GIT_TIMEOUT).await;
            self.maintain().await;
        }
        Ok(())
    }

    /// Brings the mirror up to date and checks out a fresh worktree at `path`.
    pub(crate) async fn checkout(
        &self,
        req: &CheckoutRequest<'_>,
        path: &Path,
    ) -> Result<Checkout, WorkspaceError> {
        let (start_commit, remote_tip, reused) = {
            let mut state = self.lock.lock().await;
            self.sync_mirror(req.repo_url, &mut state.url).await?;
            if self.checkouts.fetch_add(1, Ordering::Relaxed) % MAINTENANCE_EVERY_CHECKOUTS
                == MAINTENANCE_EVERY_CHECKOUTS - 1
            {
                self.maintain().await;
            }
            let mirror = &self.mirror_dir;

            // One process resolves everything the checkout needs.
            let remote_branch = req.branch.map(|b| format!("refs/remotes/origin/{b}"));
            let names = [
                remote_branch
                    .clone()
                    .unwrap_or_else(|| "refs/remotes/origin/HEAD".to_owned()),
                format!("refs/remotes/origin/{}", req.base_branch),
                format!("refs/heads/{}", req.base_branch),
                if req.base_commit.is_empty() {
                    "HEAD".to_owned()
                } else {
                    req.base_commit.to_owned()
                },
            ];
            let [remote_tip, base_tip, local_base, base_commit] = resolve_all(mirror, &names)
                .await
                .map_err(|source| WorkspaceError::Inspect {
                    path: mirror.clone(),
                    source,
                })?;
            let remote_tip = remote_tip.filter(|_| remote_branch.is_some());
            let base_commit = if req.base_commit.is_empty() {
                None
            } else {
                Some(
                    base_commit.ok_or_else(|| WorkspaceError::BaseCommitMissing {
                        commit: req.base_commit.to_owned(),
                        url: git::redact_url(req.repo_url),
                    })?,
                )
            };
            let start = match (&remote_tip, &base_commit, &base_tip) {
                (Some(tip), _, _) => tip.clone(),
                (None, Some(commit), _) => commit.clone(),
                (None, None, Some(tip)) => tip.clone(),
                (None, None, None) => {
                    return Err(WorkspaceError::BaseBranchMissing {
                        branch: req.base_branch.to_owned(),
                        url: git::redact_url(req.repo_url),
                    });
                }
            };

            // The base branch as a local ref, so agents can `git diff <base>...HEAD`.
            if req.branch != Some(req.base_branch)
                && let Some(base) = base_tip.as_ref().or(base_commit.as_ref())
                && local_base.as_ref() != Some(base)
            {
                let local = format!("refs/heads/{}", req.base_branch);
                git::run(mirror, &["update-ref", &local, base], LOCAL_GIT_TIMEOUT)
                    .await
                    .map_err(|source| WorkspaceError::AddWorktree {
                        path: path.to_owned(),
                        source,
                    })?;
            }

            if path.exists() {
                self.remove_locked(path, None).await;
            }
            let parent = path.parent().unwrap_or(&self.worktrees_dir);
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io_err(parent))?;
            let path_arg = path.as_os_str().to_string_lossy().into_owned();
            let mut reused = false;
            if let Some(spare) = state.spares.pop() {
                let spare_arg = spare.as_os_str().to_string_lossy().into_owned();
                match git::run(
                    mirror,
                    &["worktree", "move", &spare_arg, &path_arg],
                    LOCAL_GIT_TIMEOUT,
                )
                .await
                {
                    Ok(_) => reused = true,
                    Err(e) => {
                        tracing::debug!(error = %e, "could not reuse a parked worktree; adding one");
                        self.remove_locked(&spare, None).await;
                    }
                }
            }
            if !reused {
                // --no-checkout under the lock (~10 ms); the file checkout, which grows with
                // the repository, happens below without holding up other steps.
                let mut args = vec!["worktree", "add", "--force", "--no-checkout"];
                match req.branch {
                    Some(branch) => args.extend(["-B", branch]),
                    None => args.push("--detach"),
                }
                args.extend([path_arg.as_str(), start.as_str()]);
                git::run(mirror, &args, LOCAL_GIT_TIMEOUT)
                    .await
                    .map_err(|source| WorkspaceError::AddWorktree {
                        path: path.to_owned(),
                        source,
                    })?;
            }
            (start, remote_tip, reused)
        };

        let add_err = |source| WorkspaceError::AddWorktree {
            path: path.to_owned(),
            source,
        };
        if reused {
            // Only the files that differ from the parked tree are written.
            let mut args = vec!["checkout", "--force", "--quiet"];
            match req.branch {
                Some(branch) => args.extend(["-B", branch]),
                None => args.push("--detach"),
            }
            args.push(start_commit.as_str());
            git::run(path, &args, NETWORK_GIT_TIMEOUT)
                .await
                .map_err(add_err)?;
        } else {
            git::run(path, &["reset", "--hard", "--quiet"], NETWORK_GIT_TIMEOUT)
                .await
                .map_err(add_err)?;
        }
        let admin_dir = read_gitdir(path)
            .await
            .ok_or_else(|| WorkspaceError::Inspect {
                path: path.to_owned(),
                source: GitError::Failed {
                    args: "worktree add".to_owned(),
                    dir: path.to_owned(),
                    status: "no .git file".to_owned(),
                    stderr: "the new worktree has no `.git` file naming its admin directory"
                        .to_owned(),
                },
            })?;
        Ok(Checkout {
            path: path.to_owned(),
            start_commit,
            remote_tip,
            admin_dir,
        })
    }

    /// A private temp directory for the step's agent (its `TMPDIR`), beside the worktrees.
    pub fn tmp_path(&self, attempt_id: u64) -> PathBuf {
        self.root.join("tmp").join(format!("attempt-{attempt_id}"))
    }

    /// Restores the files that tell git where a worktree's repository is (`<worktree>/.git`,
    /// and `gitdir`/`commondir` in its admin directory) to what the worker wrote. The agent
    /// can write all three; pointed elsewhere, they would have the worker's own git read a
    /// configuration (hooks, fsmonitor) the agent chose. Call after the agent, before any git
    /// command in the worktree.
    pub(crate) async fn reseal(&self, checkout: &Checkout) -> std::io::Result<()> {
        let dot_git = checkout.path.join(".git");
        if tokio::fs::symlink_metadata(&dot_git)
            .await
            .is_ok_and(|m| m.is_dir())
        {
            tokio::fs::remove_dir_all(&dot_git).await?;
        }
        write_replacing(
            &dot_git,
            format!("gitdir: {}\n", checkout.admin_dir.display()),
        )
        .await?;
        let admin = &checkout.admin_dir;
        write_replacing(&admin.join("gitdir"), format!("{}\n", dot_git.display())).await?;
        let common = std::path::absolute(&self.mirror_dir)?;
        write_replacing(&admin.join("commondir"), format!("{}\n", common.display())).await
    }

    /// Removes the worktree at `path` and its admin entry, and deletes the local task branch
    /// (the remote keeps the pushed work). Idempotent; errors are logged, not returned,
    /// because cleanup must never turn a result into a different one.
    pub(crate) async fn remove(&self, path: &Path, branch: Option<&str>) {
        let mut state = self.lock.lock().await;
        if state.spares.len() < MAX_SPARE_WORKTREES
            && let Some(spare) = self.park(path, &mut state).await
        {
            state.spares.push(spare);
            if let Some(branch) = branch {
                let local = format!("refs/heads/{branch}");
                let _ = git::run(
                    &self.mirror_dir,
                    &["update-ref", "-d", &local],
                    LOCAL_GIT_TIMEOUT,
                )
                .await;
            }
            return;
        }
        self.remove_locked(path, branch).await;
    }

    /// Cleans a finished worktree (tracked files reset, untracked and ignored files deleted,
    /// branch detached) and moves it under `spare/`. `None` when any step fails; the caller
    /// then removes it instead.
    async fn park(&self, path: &Path, state: &mut MirrorState) -> Option<PathBuf> {
        if !path.exists() || !self.mirror_dir.join("HEAD").exists() {
            return None;
        }
        for args in [
            &["checkout", "--detach", "--quiet"][..],
            &["reset", "--hard", "--quiet"],
            &["clean", "-ffdxq"],
        ] {
            if let Err(e) = git::run(path, args, LOCAL_GIT_TIMEOUT).await {
                tracing::debug!(error = %e, "could not park a worktree; removing it");
                return None;
            }
        }
        tokio::fs::create_dir_all(&self.spare_dir).await.ok()?;
        let spare = self.spare_dir.join(state.next_spare.to_string());
        state.next_spare += 1;
        let from = path.as_os_str().to_string_lossy().into_owned();
        let to = spare.as_os_str().to_string_lossy().into_owned();
        git::run(
            &self.mirror_dir,
            &["worktree", "move", &from, &to],
            LOCAL_GIT_TIMEOUT,
        )
        .await
        .ok()?;
        Some(spare)
    }

    async fn remove_locked(&self, path: &Path, branch: Option<&str>) {
        if !self.mirror_dir.join("HEAD").exists() {
            if path.exists() {
                let _ = tokio::fs::remove_dir_all(path).await;
            }
            return;
        }
        let mirror = &self.mirror_dir;
        let mut needs_prune = true;
        if path.exists() {
            let path_arg = path.as_os_str().to_string_lossy().into_owned();
            let removed = git::run(
                mirror,
                &["worktree", "remove", "--force", "--force", &path_arg],
                LOCAL_GIT_TIMEOUT,
            )
            .await;
            match removed {
                // `worktree remove` deletes the admin entry too.
                Ok(_) => needs_prune = false,
                Err(e) => {
                    tracing::debug!(error = %e, "git worktree remove failed; deleting the directory");
                }
            }
            if path.exists()
                && let Err(e) = tokio::fs::remove_dir_all(path).await
            {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a worktree");
            }
        }
        if needs_prune
            && let Err(e) = git::run(mirror, &["worktree", "prune"], LOCAL_GIT_TIMEOUT).await
        {
            tracing::warn!(error = %e, "git worktree prune failed");
        }
        if let Some(branch) = branch {
            let local = format!("refs/heads/{branch}");
            // Fails harmlessly when another worktree still has the branch checked out.
            let _ = git::run(mirror, &["update-ref", "-d", &local], LOCAL_GIT_TIMEOUT).await;
        }
    }

    /// Packs the mirror when git thinks it is due. Failures only cost disk space: logged.
    async fn maintain(&self) {
        let args = ["maintenance", "run", "--auto", "--quiet"];
        if let Err(e) = git::run(&self.mirror_dir, &args, NETWORK_GIT_TIMEOUT).await {
            tracing::warn!(error = %e, "git maintenance on the mirror failed");
        }
    }

    /// Creates the mirror on first use (atomically: clone into a temporary directory, then
    /// rename) and fetches. Called with the lock held.
    async fn sync_mirror(
        &self,
        url: &str,
        known_url: &mut Option<String>,
    ) -> Result<(), WorkspaceError> {
        let mirror = &self.mirror_dir;
        // Auto maintenance is run by `sweep` and every MAINTENANCE_EVERY_CHECKOUTS checkouts
        // instead: after every fetch it forks a detached `git maintenance` per step.
        let fetch = [
            "fetch",
            "--prune",
            "--no-tags",
            "--quiet",
            "--no-auto-maintenance",
            "--no-write-fetch-head",
            "origin",
        ];
        if !mirror.join("HEAD").exists() {
            tokio::fs::create_dir_all(&self.root)
                .await
                .map_err(io_err(&self.root))?;
            let tmp = self.root.join(format!("mirror.tmp-{}", std::process::id()));
            if tmp.exists() {
                tokio::fs::remove_dir_all(&tmp)
                    .await
                    .map_err(io_err(&tmp))?;
            }
            let tmp_arg = tmp.as_os_str().to_string_lossy().into_owned();
            let create = |source| WorkspaceError::CreateMirror {
                url: git::redact_url(url),
                dir: mirror.clone(),
                source,
            };
            git::run(
                &self.root,
                &["init", "--bare", "--quiet", &tmp_arg],
                LOCAL_GIT_TIMEOUT,
            )
            .await
            .map_err(create)?;
            git::run(&tmp, &["remote", "add", "origin", url], LOCAL_GIT_TIMEOUT)
                .await
                .map_err(create)?;
            ensure_excluded(&tmp).await?;
            git::run(&tmp, &fetch, NETWORK_GIT_TIMEOUT)
                .await
                .map_err(|source| WorkspaceError::Fetch {
                    url: git::redact_url(url),
                    source,
                })?;
            tokio::fs::rename(&tmp, mirror)
                .await
                .map_err(io_err(mirror))?;
            *known_url = Some(url.to_owned());
            return Ok(());
        }
        if known_url.as_deref() != Some(url) {
            let current = git::run(
                mirror,
                &["config", "--get", "remote.origin.url"],
                LOCAL_GIT_TIMEOUT,
            )
            .await
            .unwrap_or_default();
            if current != url {
                git::run(
                    mirror,
                    &["remote", "set-url", "origin", url],
                    LOCAL_GIT_TIMEOUT,
                )
                .await
                .map_err(|source| WorkspaceError::CreateMirror {
                    url: git::redact_url(url),
                    dir: mirror.clone(),
                    source,
                })?;
            }
            ensure_excluded(mirror).await?;
            *known_url = Some(url.to_owned());
        }
        git::run(mirror, &fetch, NETWORK_GIT_TIMEOUT)
            .await
            .map_err(|source| WorkspaceError::Fetch {
                url: git::redact_url(url),
                source,
            })?;
        Ok(())
    }
}

/// Makes the result file git-ignored in every worktree of `repo` via `info/exclude`.
async fn ensure_excluded(repo: &Path) -> Result<(), WorkspaceError> {
    let info = repo.join("info");
    let exclude = info.join("exclude");
    let line = format!("/{RESULT_FILE_PATH}");
    let current = match tokio::fs::read_to_string(&exclude).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(&exclude)(e)),
    };
    if current.lines().any(|l| l.trim() == line) {
        return Ok(());
    }
    tokio::fs::create_dir_all(&info)
        .await
        .map_err(io_err(&info))?;
    let mut text = current;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("# hyperloop: the agent result file is never committed\n");
    text.push_str(&line);
    text.push('\n');
    tokio::fs::write(&exclude, text)
        .await
        .map_err(io_err(&exclude))
}

/// The commits the revisions name (`None` for those that do not exist), in one
/// `git cat-file --batch-check` process.
async fn resolve_all<const N: usize>(
    repo: &Path,
    revs: &[String; N],
) -> Result<[Option<String>; N], GitError> {
    let input: String = revs.iter().map(|r| format!("{r}^{{commit}}\n")).collect();
    let out = git::run_with_input(
        repo,
        &["cat-file", "--batch-check=%(objectname) %(objecttype)"],
        input,
        LOCAL_GIT_TIMEOUT,
    )
    .await?;
    let mut lines = out.lines();
    Ok(std::array::from_fn(|_| {
        // "<oid> commit" when found; "<input> missing" (or "ambiguous") otherwise.
        lines.next().and_then(|line| match line.split_once(' ') {
            Some((oid, "commit")) => Some(oid.to_owned()),
            _ => None,
        })
    }))
}

/// The state of a worktree after the agent ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorktreeState {
    /// The commit at HEAD.
    pub head: String,
    /// Paths with uncommitted changes (tracked or untracked, not ignored).
    pub uncommitted: Vec<String>,
}

/// HEAD and uncommitted paths, from one `git status --porcelain=v2 --branch`.
pub(crate) async fn state(worktree: &Path) -> Result<WorktreeState, WorkspaceError> {
    let out = git::run(
        worktree,
        &[
            "status",
            "--porcelain=v2",
            "--branch",
            "--untracked-files=normal",
            // A nested repository the agent made would have git read its config (and run
            // its fsmonitor) in the worker.
            "--ignore-submodules=all",
        ],
        LOCAL_GIT_TIMEOUT,
    )
    .await
    .map_err(|source| WorkspaceError::Inspect {
        path: worktree.to_owned(),
        source,
    })?;
    let mut head = String::new();
    let mut uncommitted = Vec::new();
    for line in out.lines() {
        if let Some(oid) = line.strip_prefix("# branch.oid ") {
            head = oid.trim().to_owned();
            continue;
        }
        // Entry formats: `1 <7 fields> <path>`, `2 <8 fields> <path>\t<orig>`,
        // `u <9 fields> <path>`, `? <path>`.
        let path = match line.as_bytes().first() {
            Some(b'1') => line.splitn(9, ' ').nth(8),
            Some(b'2') => line
                .splitn(10, ' ')
                .nth(9)
                .map(|p| p.split('\t').next().unwrap_or(p)),
            Some(b'u') => line.splitn(11, ' ').nth(10),
            Some(b'?') => line.get(2..),
            _ => None,
        };
        if let Some(path) = path {
            uncommitted.push(path.to_owned());
        }
    }
    Ok(WorktreeState { head, uncommitted })
}

/// The admin directory a worktree's `.git` file names.
async fn read_gitdir(worktree: &Path) -> Option<PathBuf> {
    let text = tokio::fs::read_to_string(worktree.join(".git"))
        .await
        .ok()?;
    let dir = PathBuf::from(text.trim().strip_prefix("gitdir: ")?);
    Some(if dir.is_absolute() {
        dir
    } else {
        worktree.join(dir)
    })
}

/// Writes `text` to `path`, replacing a symlink rather than following it.
async fn write_replacing(path: &Path, text: String) -> std::io::Result<()> {
    // A fresh file renamed over the old entry: whatever the agent left there (a symlink
    // included) is replaced, never written through, and git in another step's `worktree add`
    // (which reads every worktree's admin files) never sees the file missing or empty.
    let mut fresh = path.as_os_str().to_owned();
    fresh.push(".hyperloop-new");
    let fresh = PathBuf::from(fresh);
    match tokio::fs::remove_file(&fresh).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&fresh)
        .await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes()).await?;
    drop(file);
    tokio::fs::rename(&fresh, path).await
}

/// Pushes `branch` to `url`, overwriting only the commit we started from
/// (`--force-with-lease`; an empty expectation means "the branch must not exist yet").
pub(crate) async fn push(
    worktree: &Path,
    url: &str,
    branch: &str,
    expected_tip: Option<&str>,
) -> Result<(), WorkspaceError> {
    let lease = format!(
        "--force-with-lease=refs/heads/{branch}:{}",
        expected_tip.unwrap_or("")
    );
    let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
    git::run(
        worktree,
        &["push", "--quiet", "--no-verify", &lease, url, &refspec],
        NETWORK_GIT_TIMEOUT,
    )
    .await
    .map(drop)
    .map_err(|source| WorkspaceError::Push {
        branch: branch.to_owned(),
        url: git::redact_url(url),
        source,
    })
}
