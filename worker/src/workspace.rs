//! The per-worker repository mirror and the per-step worktrees created from it.
//!
//! Layout under the work dir:
//!
//! ```text
//! <work_dir>/mirror/              bare repository; fetches `+refs/heads/*:refs/remotes/origin/*`
//! <work_dir>/worktrees/attempt-N/ one worktree per running step, removed when it ends
//! ```
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
}

/// A worker's mirror plus its worktrees. Shared by all steps of one worker (`Arc`).
#[derive(Debug)]
pub struct Workspace {
    mirror_dir: PathBuf,
    worktrees_dir: PathBuf,
    root: PathBuf,
    /// Serialises everything that writes the mirror's refs or worktree admin files (fetch,
    /// worktree add/remove/prune, ref updates). A tokio mutex: it is held across awaits on git.
    lock: Mutex<()>,
}

impl Workspace {
    /// A workspace rooted at `work_dir` (created on first use).
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        let root = work_dir.into();
        Self {
            mirror_dir: root.join("mirror"),
            worktrees_dir: root.join("worktrees"),
            root,
            lock: Mutex::new(()),
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
        let _guard = self.lock.lock().await;
        if self.worktrees_dir.exists() {
            tokio::fs::remove_dir_all(&self.worktrees_dir)
                .await
                .map_err(io_err(&self.worktrees_dir))?;
        }
        if self.mirror_dir.join("HEAD").exists() {
            // Stale admin entries point at the directories just removed.
            let _ = git::run(&self.mirror_dir, &["worktree", "prune"], LOCAL_GIT_TIMEOUT).await;
        }
        Ok(())
    }

    /// Brings the mirror up to date and checks out a fresh worktree at `path`.
    pub(crate) async fn checkout(
        &self,
        req: &CheckoutRequest<'_>,
        path: &Path,
    ) -> Result<Checkout, WorkspaceError> {
        let (start_commit, remote_tip) = {
            let _guard = self.lock.lock().await;
            self.sync_mirror(req.repo_url).await?;
            let mirror = &self.mirror_dir;

            let remote_tip = match req.branch {
                Some(branch) => {
                    resolve(mirror, &format!("refs/remotes/origin/{branch}"))
                        .await
                        .map_err(|source| WorkspaceError::Inspect {
                            path: mirror.clone(),
                            source,
                        })?
                }
                None => None,
            };
            let base_tip = resolve(mirror, &format!("refs/remotes/origin/{}", req.base_branch))
                .await
                .map_err(|source| WorkspaceError::Inspect {
                    path: mirror.clone(),
                    source,
                })?;
            let base_commit = if req.base_commit.is_empty() {
                None
            } else {
                Some(
                    resolve(mirror, req.base_commit)
                        .await
                        .map_err(|source| WorkspaceError::Inspect {
                            path: mirror.clone(),
                            source,
                        })?
                        .ok_or_else(|| WorkspaceError::BaseCommitMissing {
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
            {
                let local = format!("refs/heads/{}", req.base_branch);
                git::run(mirror, &["update-ref", &local, base], LOCAL_GIT_TIMEOUT)
                    .await
                    .map_err(|source| WorkspaceError::AddWorktree {
                        path: path.to_owned(),
                        source,
                    })?;
            }

            self.remove_locked(path, None).await;
            let parent = path.parent().unwrap_or(&self.worktrees_dir);
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io_err(parent))?;
            let path_arg = path.as_os_str().to_string_lossy().into_owned();
            // --no-checkout under the lock (~10 ms); the file checkout, which grows with the
            // repository, happens below without holding up other steps.
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
            (start, remote_tip)
        };

        git::run(path, &["reset", "--hard", "--quiet"], NETWORK_GIT_TIMEOUT)
            .await
            .map_err(|source| WorkspaceError::AddWorktree {
                path: path.to_owned(),
                source,
            })?;
        Ok(Checkout {
            path: path.to_owned(),
            start_commit,
            remote_tip,
        })
    }

    /// Removes the worktree at `path` and its admin entry, and deletes the local task branch
    /// (the remote keeps the pushed work). Idempotent; errors are logged, not returned,
    /// because cleanup must never turn a result into a different one.
    pub(crate) async fn remove(&self, path: &Path, branch: Option<&str>) {
        let _guard = self.lock.lock().await;
        self.remove_locked(path, branch).await;
    }

    async fn remove_locked(&self, path: &Path, branch: Option<&str>) {
        if !self.mirror_dir.join("HEAD").exists() {
            if path.exists() {
                let _ = tokio::fs::remove_dir_all(path).await;
            }
            return;
        }
        let mirror = &self.mirror_dir;
        if path.exists() {
            let path_arg = path.as_os_str().to_string_lossy().into_owned();
            let removed = git::run(
                mirror,
                &["worktree", "remove", "--force", "--force", &path_arg],
                LOCAL_GIT_TIMEOUT,
            )
            .await;
            if let Err(e) = removed {
                tracing::debug!(error = %e, "git worktree remove failed; deleting the directory");
            }
            if path.exists()
                && let Err(e) = tokio::fs::remove_dir_all(path).await
            {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a worktree");
            }
        }
        if let Err(e) = git::run(mirror, &["worktree", "prune"], LOCAL_GIT_TIMEOUT).await {
            tracing::warn!(error = %e, "git worktree prune failed");
        }
        if let Some(branch) = branch {
            let local = format!("refs/heads/{branch}");
            // Fails harmlessly when another worktree still has the branch checked out.
            let _ = git::run(mirror, &["update-ref", "-d", &local], LOCAL_GIT_TIMEOUT).await;
        }
    }

    /// Creates the mirror on first use (atomically: clone into a temporary directory, then
    /// rename) and fetches. Called with the lock held.
    async fn sync_mirror(&self, url: &str) -> Result<(), WorkspaceError> {
        let mirror = &self.mirror_dir;
        let fetch = ["fetch", "--prune", "--no-tags", "--quiet", "origin"];
        if !mirror.join("HEAD").exists() {
            tokio::fs::create_dir_all(&self.root)
                .await
                .map_err(io_err(&self.root))?;
            let tmp = self
                .root
                .join(format!("mirror.tmp-{}", std::process::id()));
            if tmp.exists() {
                tokio::fs::remove_dir_all(&tmp).await.map_err(io_err(&tmp))?;
            }
            let tmp_arg = tmp.as_os_str().to_string_lossy().into_owned();
            let create = |source| WorkspaceError::CreateMirror {
                url: git::redact_url(url),
                dir: mirror.clone(),
                source,
            };
            git::run(&self.root, &["init", "--bare", "--quiet", &tmp_arg], LOCAL_GIT_TIMEOUT)
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
            tokio::fs::rename(&tmp, mirror).await.map_err(io_err(mirror))?;
            return Ok(());
        }
        let current = git::run(
            mirror,
            &["config", "--get", "remote.origin.url"],
            LOCAL_GIT_TIMEOUT,
        )
        .await
        .unwrap_or_default();
        if current != url {
            git::run(mirror, &["remote", "set-url", "origin", url], LOCAL_GIT_TIMEOUT)
                .await
                .map_err(|source| WorkspaceError::CreateMirror {
                    url: git::redact_url(url),
                    dir: mirror.clone(),
                    source,
                })?;
        }
        ensure_excluded(mirror).await?;
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
    tokio::fs::create_dir_all(&info).await.map_err(io_err(&info))?;
    let mut text = current;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("# hyperloop: the agent result file is never committed\n");
    text.push_str(&line);
    text.push('\n');
    tokio::fs::write(&exclude, text).await.map_err(io_err(&exclude))
}

/// The commit `rev` names, or `None` when it does not exist.
async fn resolve(repo: &Path, rev: &str) -> Result<Option<String>, GitError> {
    let spec = format!("{rev}^{{commit}}");
    if !git::succeeds(repo, &["rev-parse", "--verify", "--quiet", &spec]).await? {
        return Ok(None);
    }
    git::run(repo, &["rev-parse", "--verify", "--quiet", &spec], LOCAL_GIT_TIMEOUT)
        .await
        .map(Some)
}

/// The commit at HEAD of a worktree.
pub(crate) async fn head(worktree: &Path) -> Result<String, WorkspaceError> {
    git::run(worktree, &["rev-parse", "HEAD"], LOCAL_GIT_TIMEOUT)
        .await
        .map_err(|source| WorkspaceError::Inspect {
            path: worktree.to_owned(),
            source,
        })
}

/// Paths with uncommitted changes (tracked or untracked, not ignored), as `git status`
/// prints them.
pub(crate) async fn uncommitted(worktree: &Path) -> Result<Vec<String>, WorkspaceError> {
    let out = git::run(
        worktree,
        &["status", "--porcelain=v1", "--untracked-files=normal"],
        LOCAL_GIT_TIMEOUT,
    )
    .await
    .map_err(|source| WorkspaceError::Inspect {
        path: worktree.to_owned(),
        source,
    })?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.to_owned())
        .collect())
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
