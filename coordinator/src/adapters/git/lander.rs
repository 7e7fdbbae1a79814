//! [`Lander`] for local mode: merges task branches into the base branch of the coordinator's
//! repository with plumbing, then pushes to `origin`.
//!
//! How a landing proceeds (each step idempotent, so a retry after a crash completes it):
//! 1. Resolve the base tip and the task's head (the verified commit, else the branch tip,
//!    fetched from `origin` if only there). If the head is already in the base, or a base commit
//!    since the branch point carries this task's `Task-Ref:` trailer, it is already landed.
//! 2. Merge in memory (git2 `merge_commits`); conflicts are reported with nothing written but
//!    unreferenced objects. A merge that leaves the base tree as is means already landed.
//! 3. Write the commit object (squash: one parent; merge: two), then move the base branch with
//!    a compare-and-swap from the tip read in step 1; if the base moved meanwhile, start over.
//!    Where the base branch is checked out, its index and working tree are moved first with
//!    `git read-tree -m -u old new` — git's fast-forward check, which refuses to overwrite
//!    uncommitted changes — so the user's `HEAD` never points past their index (a later
//!    `git commit -a` would silently revert the landed work).
//! 4. Push the base branch to `origin` (git CLI: the user's credentials apply), then delete
//!    the task branch locally and on `origin`.
//!
//! Assumptions: the coordinator is the only writer landing tasks into this repository; human
//! commits to the base branch are expected and merged around.

use std::path::{Path, PathBuf};

use git2::{
    BranchType, Commit, ErrorCode, MergeOptions, Oid, Repository, Signature, Sort,
    message_trailers_strs,
};
use hyperloop_shared::config::MergeStrategy;

use super::cli::{failure, git};
use crate::ports::lander::{
    CheckoutSync, LandError, LandOutcome, LandRequest, LandedEvidence, Lander, Landing, PushStatus,
    WorkRef,
};
use crate::ports::spec_source::CommitId;

/// Compare-and-swap attempts before giving up: each retry needs a human commit racing the
/// few milliseconds between reading the base tip and moving it, so three is plenty.
const MAX_ATTEMPTS: u32 = 3;
/// Base-branch commits searched for a landing when the task branch is gone. Only this rare
/// path (a crash after the branch was deleted) walks history this far.
const TRAILER_SCAN_LIMIT: usize = 10_000;
/// Commits listed in a landing message; longer branches end with "... and N more".
const LISTED_COMMITS: usize = 50;

/// Lands into `refs/heads/<base_branch>` of the repository at `path`.
#[derive(Debug, Clone)]
pub struct GitLander {
    path: PathBuf,
    base_branch: String,
    /// Several coordinators (each with its own checkout) land into one `origin`: its base
    /// branch is the truth. Each landing starts from origin's tip and counts only once
    /// pushed; a rejected push starts over on the new tip.
    shared_origin: bool,
}

impl GitLander {
    /// # Errors
    /// `path` is not a git repository.
    pub fn open(path: &Path, base_branch: &str) -> Result<Self, LandError> {
        let lander = Self {
            path: path.to_owned(),
            base_branch: base_branch.to_owned(),
            shared_origin: false,
        };
        lander.repo()?;
        Ok(lander)
    }

    /// A lander whose landings count only once pushed to `origin` (see `shared_origin`).
    ///
    /// # Errors
    /// `path` is not a git repository or has no `origin` remote.
    pub fn open_shared(path: &Path, base_branch: &str) -> Result<Self, LandError> {
        let mut lander = Self::open(path, base_branch)?;
        lander.shared_origin = true;
        let repo = lander.repo()?;
        repo.find_remote("origin")
            .map_err(|_| LandError::OpenRepository {
                repo: path.display().to_string(),
                reason: "it has no `origin` remote, which coordinators sharing state land \
                         into; add one with `git remote add origin URL`"
                    .to_owned(),
            })?;
        Ok(lander)
    }

    /// Fetches origin's base branch and moves the local one there; returns origin's tip.
    fn pull_base(&self, repo: &Repository, task: WorkRef) -> Result<Oid, LandError> {
        let remote = self
            .fetch_branch(repo, &self.base_branch)
            .ok_or_else(|| LandError::Git {
                task,
                operation: "fetch the base branch from origin",
                reason: format!(
                    "origin has no branch {} or cannot be reached",
                    self.base_branch
                ),
            })?;
        let local = repo.refname_to_id(&self.base_ref()).ok();
        match local {
            Some(local) if local == remote => {}
            // origin's branch must only have moved forward; never take a rewrite over.
            Some(local) if !repo.graph_descendant_of(remote, local).unwrap_or(false) => {
                return Err(LandError::Rewritten {
                    task,
                    branch: self.base_branch.clone(),
                    from: local.to_string(),
                    to: remote.to_string(),
                });
            }
            Some(local) => match self.advance(repo, task, local, remote)? {
                Advance::Moved(_) => {}
                Advance::Raced => {
                    return Err(LandError::Contended {
                        task,
                        branch: self.base_branch.clone(),
                        attempts: 1,
                    });
                }
                Advance::Deferred(reason) => {
                    return Err(LandError::Git {
                        task,
                        operation: "update the base branch from origin",
                        reason,
                    });
                }
            },
            None => {
                repo.reference(
                    &self.base_ref(),
                    remote,
                    false,
                    "hyperloop: base from origin",
                )
                .map_err(git_err(task, "create the base branch"))?;
            }
        }
        Ok(remote)
    }

    /// Pushes the landed base branch; false if origin refused (it moved meanwhile).
    fn push_base(&self, repo: &Repository) -> bool {
        let spec = format!("{0}:{0}", self.base_ref());
        git(cli_dir(repo), ["push", "-q", "origin", &spec]).is_ok_and(|out| out.status.success())
    }

    fn repo(&self) -> Result<Repository, LandError> {
        // Opened per landing: refs and the index are re-read fresh, and the lander stays
        // Send + Sync without a lock.
        Repository::open(&self.path).map_err(|e| LandError::OpenRepository {
            repo: self.path.display().to_string(),
            reason: e.message().to_owned(),
        })
    }

    fn base_ref(&self) -> String {
        format!("refs/heads/{}", self.base_branch)
    }
}

/// A failed git2 call, labelled with the task and operation.
fn git_err(task: WorkRef, operation: &'static str) -> impl Fn(git2::Error) -> LandError {
    move |e| LandError::Git {
        task,
        operation,
        reason: e.message().to_owned(),
    }
}

/// The directory git CLI commands run in: the working tree, or the git dir when bare.
fn cli_dir(repo: &Repository) -> &Path {
    repo.workdir().unwrap_or_else(|| repo.path())
}

enum Advance {
    Moved(CheckoutSync),
    /// The base branch moved since it was read: start over.
    Raced,
    Deferred(String),
}

impl Lander for GitLander {
    fn land(&self, request: &LandRequest) -> Result<LandOutcome, LandError> {
        let repo = self.repo()?;
        let task = request.task;
        for _ in 0..MAX_ATTEMPTS {
            if self.shared_origin {
                self.pull_base(&repo, task)?;
            }
            let base = self.base_tip(&repo, task)?;
            let Some(head) = self.task_head(&repo, request)? else {
                // The branch is gone: fine only if an earlier run landed it and deleted it.
                return match find_landing(&repo, task, base.id(), None)? {
                    Some(commit) => Ok(LandOutcome::AlreadyLanded {
                        landing: self.finish(&repo, request, commit, CheckoutSync::Untouched),
                        evidence: LandedEvidence::Trailer,
                    }),
                    None => Err(LandError::TaskBranchMissing {
                        task,
                        branch: request.branch.clone(),
                    }),
                };
            };
            let already = |commit: Oid, evidence| {
                Ok(LandOutcome::AlreadyLanded {
                    landing: self.finish(&repo, request, commit, CheckoutSync::Untouched),
                    evidence,
                })
            };
            if head.id() == base.id()
                || repo
                    .graph_descendant_of(base.id(), head.id())
                    .map_err(git_err(task, "compare history"))?
            {
                return already(head.id(), LandedEvidence::Contained);
            }
            let branch_point = match repo.merge_base(base.id(), head.id()) {
                Ok(oid) => Some(oid),
                Err(e) if e.code() == ErrorCode::NotFound => None,
                Err(e) => return Err(git_err(task, "find the branch point")(e)),
            };
            if let Some(found) = find_landing(&repo, task, base.id(), branch_point)? {
                return already(found, LandedEvidence::Trailer);
            }

            let mut opts = MergeOptions::new();
            opts.find_renames(true);
            let mut index = repo
                .merge_commits(&base, &head, Some(&opts))
                .map_err(git_err(task, "merge"))?;
            if index.has_conflicts() {
                return Ok(LandOutcome::Conflict {
                    files: conflict_files(&index, task)?,
                });
            }
            let tree_id = index
                .write_tree_to(&repo)
                .map_err(git_err(task, "write the merged tree"))?;
            if tree_id == base.tree_id() {
                return already(base.id(), LandedEvidence::SameTree);
            }
            let tree = repo
                .find_tree(tree_id)
                .map_err(git_err(task, "read the merged tree"))?;
            let committer = repo
                .signature()
                .or_else(|_| Signature::now("hyperloop", "hyperloop@localhost"))
                .map_err(git_err(task, "make a signature"))?;
            let message = landing_message(&repo, request, &base, &head)?;
            let (author, parents) = match request.strategy {
                MergeStrategy::Squash => (head.author().to_owned(), vec![&base]),
                MergeStrategy::Merge => (committer.clone(), vec![&base, &head]),
            };
            // No ref is updated here: the commit is an unreferenced object until step 3.
            let landed = repo
                .commit(None, &author, &committer, &message, &tree, &parents)
                .map_err(git_err(task, "write the landing commit"))?;
            match self.advance(&repo, task, base.id(), landed)? {
                Advance::Moved(_) if self.shared_origin && !self.push_base(&repo) => {
                    // Origin moved since the fetch: undo locally and start over on its tip.
                    let _ = self.advance(&repo, task, landed, base.id())?;
                }
                Advance::Moved(checkout) => {
                    return Ok(LandOutcome::Landed(
                        self.finish(&repo, request, landed, checkout),
                    ));
                }
                Advance::Deferred(reason) => return Ok(LandOutcome::Deferred { reason }),
                Advance::Raced => {}
            }
        }
        Err(LandError::Contended {
            task,
            branch: self.base_branch.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// In shared mode, brings the local base branch (and a checkout of it) to origin's tip.
    /// Local commits origin does not have are dropped: nothing counts as landed before it
    /// was pushed.
    fn sync(&self) -> Result<(), LandError> {
        if !self.shared_origin {
            return Ok(());
        }
        let repo = self.repo()?;
        self.pull_base(&repo, WorkRef::ProcessImprovement)
            .map(|_| ())
    }
}

impl GitLander {
    fn base_tip<'r>(&self, repo: &'r Repository, task: WorkRef) -> Result<Commit<'r>, LandError> {
        match repo.find_reference(&self.base_ref()) {
            Ok(r) => r
                .peel_to_commit()
                .map_err(git_err(task, "read the base branch")),
            Err(e) if e.code() == ErrorCode::NotFound => Err(LandError::BaseBranchMissing {
                branch: self.base_branch.clone(),
                repo: self.path.display().to_string(),
            }),
            Err(e) => Err(git_err(task, "read the base branch")(e)),
        }
    }

    /// The commit to land, or `None` when the task branch exists neither here nor on origin.
    fn task_head<'r>(
        &self,
        repo: &'r Repository,
        request: &LandRequest,
    ) -> Result<Option<Commit<'r>>, LandError> {
        let task = request.task;
        if let Some(head) = &request.head {
            let find = |repo: &'r Repository| {
                Oid::from_str(&head.0)
                    .and_then(|oid| repo.find_commit(oid))
                    .ok()
            };
            if let Some(commit) = find(repo) {
                return Ok(Some(commit));
            }
            // Workers may have pushed the branch only to origin.
            self.fetch_branch(repo, &request.branch);
            return find(repo).map(Some).ok_or_else(|| LandError::HeadMissing {
                task,
                commit: head.0.clone(),
            });
        }
        let local = |repo: &'r Repository| {
            repo.find_branch(&request.branch, BranchType::Local)
                .ok()
                .and_then(|b| b.get().peel_to_commit().ok())
        };
        if let Some(commit) = local(repo) {
            return Ok(Some(commit));
        }
        Ok(self
            .fetch_branch(repo, &request.branch)
            .and_then(|oid| repo.find_commit(oid).ok()))
    }

    /// Fetches `branch` from origin into its remote-tracking ref; `None` if there is no origin
    /// or no such branch there.
    fn fetch_branch(&self, repo: &Repository, branch: &str) -> Option<Oid> {
        repo.find_remote("origin").ok()?;
        let tracking = format!("refs/remotes/origin/{branch}");
        let refspec = format!("+refs/heads/{branch}:{tracking}");
        let out = git(
            cli_dir(repo),
            ["fetch", "-q", "--no-tags", "origin", &refspec],
        )
        .ok()?;
        if !out.status.success() {
            return None;
        }
        repo.refname_to_id(&tracking).ok()
    }

    /// After a refused push: whether origin's base branch was replaced by a history that
    /// shares nothing with ours (not merely moved on by someone's push).
    fn origin_rewritten(&self, repo: &Repository, local: Oid) -> Option<PushStatus> {
        let remote = self.fetch_branch(repo, &self.base_branch)?;
        repo.merge_base(local, remote)
            .is_err()
            .then(|| PushStatus::OriginRewritten {
                branch: self.base_branch.clone(),
                origin_tip: remote.to_string(),
                local_tip: local.to_string(),
            })
    }

    /// Moves the base branch from `old` to `new`, carrying a checkout of it along.
    fn advance(
        &self,
        repo: &Repository,
        task: WorkRef,
        old: Oid,
        new: Oid,
    ) -> Result<Advance, LandError> {
        let checkout = self.checkout_of_base(repo);
        if let Some(dir) = &checkout {
            // Refresh stat info first: read-tree trusts the index and would call a touched
            // but unchanged file "not uptodate".
            let _ = git(dir, ["update-index", "-q", "--refresh"]);
            let out = git(
                dir,
                ["read-tree", "-m", "-u", &old.to_string(), &new.to_string()],
            )
            .map_err(|e| LandError::Git {
                task,
                operation: "run git read-tree",
                reason: e.to_string(),
            })?;
            if !out.status.success() {
                return Ok(Advance::Deferred(format!(
                    "{} has uncommitted changes to files this landing changes ({}); commit or \
                     stash them, and landing will be retried",
                    dir.display(),
                    failure(&out)
                )));
            }
        }
        let moved = repo.reference_matching(
            &self.base_ref(),
            new,
            true,
            old,
            &format!("hyperloop: land {task}"),
        );
        match moved {
            Ok(_) => Ok(Advance::Moved(if checkout.is_some() {
                CheckoutSync::Updated
            } else {
                CheckoutSync::Untouched
            })),
            Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::Locked) => {
                if let Some(dir) = &checkout {
                    // Put the checkout back where its HEAD still is.
                    let _ = git(
                        dir,
                        ["read-tree", "-m", "-u", &new.to_string(), &old.to_string()],
                    );
                }
                Ok(Advance::Raced)
            }
            Err(e) => Err(git_err(task, "move the base branch")(e)),
        }
    }

    /// The working tree (main or linked) that has the base branch checked out, if any.
    fn checkout_of_base(&self, repo: &Repository) -> Option<PathBuf> {
        let base_ref = self.base_ref();
        let on_base = |r: &Repository| {
            !r.is_bare()
                && r.find_reference("HEAD")
                    .ok()
                    .and_then(|h| h.symbolic_target().ok().flatten().map(|t| t == base_ref))
                    .unwrap_or(false)
        };
        let main = Repository::open(repo.commondir()).ok()?;
        if on_base(&main) {
            return main.workdir().map(Path::to_owned);
        }
        let names = main.worktrees().ok()?;
        names
            .iter()
            .filter_map(|name| name.ok().flatten())
            .filter_map(|name| main.find_worktree(name).ok())
            .filter_map(|wt| Repository::open_from_worktree(&wt).ok())
            .find(|r| on_base(r))
            .and_then(|r| r.workdir().map(Path::to_owned))
    }

    /// Pushes the base branch and deletes the task branch; failures here never undo the
    /// landing and are retried by landing again.
    fn finish(
        &self,
        repo: &Repository,
        request: &LandRequest,
        commit: Oid,
        checkout: CheckoutSync,
    ) -> Landing {
        let dir = cli_dir(repo);
        let has_origin = repo.find_remote("origin").is_ok();
        let push = if has_origin {
            let spec = format!("{0}:{0}", self.base_ref());
            match git(dir, ["push", "-q", "origin", &spec]) {
                Ok(out) if out.status.success() => PushStatus::Pushed,
                Ok(out) => self
                    .origin_rewritten(repo, commit)
                    .unwrap_or(PushStatus::Failed {
                        reason: failure(&out),
                    }),
                Err(e) => PushStatus::Failed {
                    reason: e.to_string(),
                },
            }
        } else {
            PushStatus::NoOrigin
        };
        let branch_deleted = request.delete_branch
            && self.delete_local_branch(repo, request)
            && match push {
                PushStatus::NoOrigin => true,
                // Keep origin's copy until origin also has the landed base branch.
                PushStatus::Failed { .. } | PushStatus::OriginRewritten { .. } => false,
                PushStatus::Pushed => delete_remote_branch(dir, &request.branch),
            };
        Landing {
            commit: CommitId(commit.to_string()),
            checkout,
            push,
            branch_deleted,
        }
    }

    /// Deletes the local task branch unless it has commits the landing did not include (a
    /// pinned `head` older than the tip): those were never verified, but are not ours to drop.
    fn delete_local_branch(&self, repo: &Repository, request: &LandRequest) -> bool {
        let Ok(mut branch) = repo.find_branch(&request.branch, BranchType::Local) else {
            return true;
        };
        let Ok(base) = repo.refname_to_id(&self.base_ref()) else {
            return false;
        };
        let tip = branch.get().target();
        let contained = tip
            .is_some_and(|tip| tip == base || repo.graph_descendant_of(base, tip).unwrap_or(false));
        let landed_tip = request
            .head
            .as_ref()
            .is_none_or(|h| tip.is_some_and(|t| t.to_string() == h.0));
        (contained || landed_tip) && branch.delete().is_ok()
    }
}

fn delete_remote_branch(dir: &Path, branch: &str) -> bool {
    match git(dir, ["push", "-q", "origin", "--delete", branch]) {
        Ok(out) if out.status.success() => true,
        // Already gone (deleted by an earlier attempt or never pushed).
        Ok(out) => failure(&out).contains("remote ref does not exist"),
        Err(_) => false,
    }
}

/// A base-branch commit (first-parent history, newest first, down to `stop`) that carries
/// `Task-Ref: <task>`: the trace of an earlier landing.
fn find_landing(
    repo: &Repository,
    task: WorkRef,
    base: Oid,
    stop: Option<Oid>,
) -> Result<Option<Oid>, LandError> {
    let mut walk = repo.revwalk().map_err(git_err(task, "walk history"))?;
    walk.push(base).map_err(git_err(task, "walk history"))?;
    walk.simplify_first_parent()
        .map_err(git_err(task, "walk history"))?;
    if let Some(stop) = stop {
        walk.hide(stop).map_err(git_err(task, "walk history"))?;
    }
    let wanted = task.to_string();
    for oid in walk.take(TRAILER_SCAN_LIMIT) {
        let oid = oid.map_err(git_err(task, "walk history"))?;
        let commit = repo
            .find_commit(oid)
            .map_err(git_err(task, "read history"))?;
        let Ok(message) = commit.message() else {
            continue;
        };
        let Ok(trailers) = message_trailers_strs(message) else {
            continue;
        };
        if trailers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("Task-Ref") && v.trim() == wanted)
        {
            return Ok(Some(oid));
        }
    }
    Ok(None)
}

fn conflict_files(index: &git2::Index, task: WorkRef) -> Result<Vec<String>, LandError> {
    let mut files = Vec::new();
    for conflict in index.conflicts().map_err(git_err(task, "list conflicts"))? {
        let conflict = conflict.map_err(git_err(task, "list conflicts"))?;
        if let Some(entry) = conflict.our.or(conflict.their).or(conflict.ancestor) {
            files.push(String::from_utf8_lossy(&entry.path).into_owned());
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Title, the task's commits, then the trailers as the final paragraph (where `git` and
/// `git interpret-trailers` look for them).
fn landing_message(
    repo: &Repository,
    request: &LandRequest,
    base: &Commit<'_>,
    head: &Commit<'_>,
) -> Result<String, LandError> {
    let task = request.task;
    // Only the first line: a title from a proposal must not inject its own trailers.
    let title = request.title.lines().next().unwrap_or("").trim();
    let title = if title.is_empty() {
        format!("Land {task}")
    } else {
        title.to_owned()
    };
    let subject = match request.strategy {
        MergeStrategy::Squash => title,
        MergeStrategy::Merge => format!("Merge {}: {title}", request.branch),
    };
    let mut walk = repo.revwalk().map_err(git_err(task, "list task commits"))?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)
        .map_err(git_err(task, "list task commits"))?;
    walk.push(head.id())
        .map_err(git_err(task, "list task commits"))?;
    walk.hide(base.id())
        .map_err(git_err(task, "list task commits"))?;
    let mut lines = Vec::new();
    let mut total = 0usize;
    for oid in walk {
        let oid = oid.map_err(git_err(task, "list task commits"))?;
        total += 1;
        if lines.len() < LISTED_COMMITS {
            let commit = repo
                .find_commit(oid)
                .map_err(git_err(task, "read commits"))?;
            let summary = String::from_utf8_lossy(commit.summary_bytes().unwrap_or_default());
            let short = oid.to_string();
            lines.push(format!("- {} {summary}", &short[..10.min(short.len())]));
        }
    }
    if total > lines.len() {
        lines.push(format!("- ... and {} more", total - lines.len()));
    }
    let mut message = subject;
    message.push_str("\n\n");
    if !lines.is_empty() {
        message.push_str(&lines.join("\n"));
        message.push_str("\n\n");
    }
    if let Some(spec_ref) = &request.spec_ref {
        message.push_str(&format!("Spec-Ref: {spec_ref}\n"));
    }
    message.push_str(&format!("Task-Ref: {task}\n"));
    Ok(message)
}
