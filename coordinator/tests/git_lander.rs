//! The local lander against real repositories: a bare `origin` and a clone as the
//! coordinator's checkout.

mod support;

use std::path::{Path, PathBuf};

use hyperloop_coordinator::adapters::git::GitLander;
use hyperloop_coordinator::ports::lander::{
    CheckoutSync, LandError, LandOutcome, LandRequest, LandedEvidence, Lander, Landing, PushStatus,
    WorkRef,
};
use hyperloop_coordinator::ports::spec_source::CommitId;
use hyperloop_shared::config::MergeStrategy;
use hyperloop_shared::model::{SpecRef, TaskId};

/// Commits made by the test stand for the agent's work on the task branch.
fn git(dir: &Path, args: &[&str]) -> String {
    support::git_as("agent", dir, args).trim().to_owned()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    origin: PathBuf,
    work: PathBuf,
}

const BRANCH: &str = "hyperloop/task-007";
const TRAILERS: &str = "\n\nSpec-Ref: specs/x.md@0000000\nTask-Ref: task-007";

impl Fixture {
    /// origin (bare) with `main`; `work` a clone of it with the task branch (two commits, also
    /// pushed to origin) and `main` checked out and clean.
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let origin = tmp.path().join("origin.git");
        let work = tmp.path().join("work");
        git(
            tmp.path(),
            &["init", "-q", "--bare", "-b", "main", "origin.git"],
        );
        git(tmp.path(), &["clone", "-q", "origin.git", "work"]);
        git(&work, &["config", "user.name", "coordinator"]);
        git(
            &work,
            &["config", "user.email", "coordinator@example.invalid"],
        );
        let f = Fixture {
            _tmp: tmp,
            origin,
            work,
        };
        f.write("specs/x.md", "# x\n");
        f.write("a.txt", "one\ntwo\nthree\n");
        f.commit("initial");
        git(&f.work, &["push", "-q", "origin", "main"]);
        git(&f.work, &["checkout", "-q", "-b", BRANCH]);
        f.write("feature.txt", "feature\n");
        f.commit(&format!("Add feature{TRAILERS}"));
        f.write("a.txt", "one\ntwo\nthree\nfour\n");
        f.commit(&format!("Extend a{TRAILERS}"));
        git(&f.work, &["push", "-q", "origin", BRANCH]);
        git(&f.work, &["checkout", "-q", "main"]);
        f
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.work.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.work.join(rel)).unwrap()
    }

    fn commit(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn rev(&self, dir: &Path, rev: &str) -> String {
        git(dir, &["rev-parse", rev])
    }

    fn lander(&self) -> GitLander {
        GitLander::open(&self.work, "main").unwrap()
    }

    fn status(&self) -> String {
        git(&self.work, &["status", "--porcelain"])
    }
}

fn request(strategy: MergeStrategy) -> LandRequest {
    LandRequest {
        task: WorkRef::Task(TaskId(7)),
        title: "Add the feature\nignored second line".into(),
        spec_ref: Some("specs/x.md@0000000".parse::<SpecRef>().unwrap()),
        branch: BRANCH.into(),
        head: None,
        strategy,
        delete_branch: true,
    }
}

fn landed(outcome: LandOutcome) -> Landing {
    match outcome {
        LandOutcome::Landed(landing) => landing,
        other => panic!("expected Landed, got {other:?}"),
    }
}

#[test]
fn squash_lands_one_commit_with_trailers_pushes_and_deletes_the_branch() {
    let f = Fixture::new();
    let before = f.rev(&f.work, "main");
    let landing = landed(f.lander().land(&request(MergeStrategy::Squash)).unwrap());

    let main = f.rev(&f.work, "main");
    assert_eq!(landing.commit.0, main);
    assert_eq!(
        f.rev(&f.work, "main^"),
        before,
        "one commit on top of the old base"
    );
    assert_eq!(
        git(
            &f.work,
            &["rev-list", "--count", &format!("{before}..main")]
        ),
        "1"
    );
    let message = git(&f.work, &["log", "-1", "--format=%B", "main"]);
    assert!(message.starts_with("Add the feature\n\n- "), "{message}");
    assert!(!message.contains("ignored second line"), "{message}");
    assert!(
        message.contains("Add feature") && message.contains("Extend a"),
        "{message}"
    );
    let grep = git(
        &f.work,
        &[
            "log",
            "--format=%H",
            "--grep",
            "Spec-Ref: specs/x.md",
            "main",
        ],
    );
    assert_eq!(grep, main);
    let trailers = git(
        &f.work,
        &[
            "log",
            "-1",
            "--format=%(trailers:key=Task-Ref,valueonly)",
            "main",
        ],
    );
    assert_eq!(trailers, "task-007");

    // The checkout followed, the push happened, the branch is gone everywhere.
    assert_eq!(landing.checkout, CheckoutSync::Updated);
    assert_eq!(f.read("feature.txt"), "feature\n");
    assert_eq!(f.status(), "");
    assert_eq!(landing.push, PushStatus::Pushed);
    assert_eq!(f.rev(&f.origin, "main"), main);
    assert!(landing.branch_deleted);
    assert_eq!(git(&f.work, &["branch", "--list", BRANCH]), "");
    assert_eq!(git(&f.origin, &["branch", "--list", BRANCH]), "");
}

#[test]
fn merge_keeps_the_branch_commits_and_their_trailers() {
    let f = Fixture::new();
    let branch_tip = f.rev(&f.work, BRANCH);
    let landing = landed(f.lander().land(&request(MergeStrategy::Merge)).unwrap());
    let main = f.rev(&f.work, "main");
    assert_eq!(landing.commit.0, main);
    assert_eq!(f.rev(&f.work, "main^2"), branch_tip);
    let subject = git(&f.work, &["log", "-1", "--format=%s", "main"]);
    assert_eq!(subject, format!("Merge {BRANCH}: Add the feature"));
    let grep = git(
        &f.work,
        &[
            "log",
            "--format=%s",
            "--grep",
            "Spec-Ref: specs/x.md",
            "main",
        ],
    );
    assert_eq!(
        grep.lines().count(),
        3,
        "merge commit and both branch commits: {grep}"
    );
    assert_eq!(f.rev(&f.origin, "main"), main);
}

#[test]
fn landing_again_is_a_no_op_with_or_without_the_branch() {
    for strategy in [MergeStrategy::Squash, MergeStrategy::Merge] {
        let f = Fixture::new();
        let mut keep = request(strategy);
        keep.delete_branch = false;
        let first = landed(f.lander().land(&keep).unwrap());
        let main = f.rev(&f.work, "main");

        // As after a crash between the merge and the state write.
        match f.lander().land(&keep).unwrap() {
            LandOutcome::AlreadyLanded { landing, evidence } => {
                let expected = match strategy {
                    MergeStrategy::Squash => LandedEvidence::Trailer,
                    MergeStrategy::Merge => LandedEvidence::Contained,
                };
                assert_eq!(evidence, expected, "{strategy:?}");
                if strategy == MergeStrategy::Squash {
                    assert_eq!(landing.commit, first.commit);
                }
            }
            other => panic!("{strategy:?}: {other:?}"),
        }
        assert_eq!(
            f.rev(&f.work, "main"),
            main,
            "{strategy:?}: no second merge"
        );

        // Deleting the branch is completed by the retry; a further retry finds the trailer.
        match f.lander().land(&request(strategy)).unwrap() {
            LandOutcome::AlreadyLanded { landing, .. } => assert!(landing.branch_deleted),
            other => panic!("{strategy:?}: {other:?}"),
        }
        match f.lander().land(&request(strategy)).unwrap() {
            LandOutcome::AlreadyLanded { landing, evidence } => {
                assert_eq!(evidence, LandedEvidence::Trailer);
                assert_eq!(landing.commit.0, main);
            }
            other => panic!("{strategy:?}: {other:?}"),
        }
        assert_eq!(f.rev(&f.work, "main"), main);
        assert_eq!(f.rev(&f.origin, "main"), main);
    }
}

#[test]
fn a_conflict_names_the_files_and_changes_nothing() {
    let f = Fixture::new();
    f.write("a.txt", "one\ntwo\nthree\nFOUR by a human\n");
    let human = f.commit("human edit");
    match f.lander().land(&request(MergeStrategy::Squash)).unwrap() {
        LandOutcome::Conflict { files } => assert_eq!(files, ["a.txt"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.rev(&f.work, "main"), human);
    assert_eq!(f.status(), "");
    assert_eq!(f.read("a.txt"), "one\ntwo\nthree\nFOUR by a human\n");
    assert!(!f.work.join("feature.txt").exists());
    assert_ne!(
        git(&f.work, &["branch", "--list", BRANCH]),
        "",
        "branch kept"
    );
}

#[test]
fn human_commits_on_the_base_are_merged_around() {
    let f = Fixture::new();
    f.write("human.txt", "mine\n");
    let human = f.commit("human work");
    let landing = landed(f.lander().land(&request(MergeStrategy::Squash)).unwrap());
    assert_eq!(f.rev(&f.work, "main^"), human);
    assert_eq!(landing.commit.0, f.rev(&f.work, "main"));
    assert_eq!(f.read("human.txt"), "mine\n");
    assert_eq!(f.read("a.txt"), "one\ntwo\nthree\nfour\n");
}

#[test]
fn uncommitted_changes_to_landed_files_defer_the_landing_untouched() {
    let f = Fixture::new();
    let before = f.rev(&f.work, "main");
    f.write("a.txt", "my unsaved work\n");
    match f.lander().land(&request(MergeStrategy::Squash)).unwrap() {
        LandOutcome::Deferred { reason } => {
            assert!(reason.contains("commit or stash"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.rev(&f.work, "main"), before);
    assert_eq!(f.read("a.txt"), "my unsaved work\n");
    assert_eq!(f.status(), "M a.txt");
}

#[test]
fn uncommitted_changes_to_other_files_are_carried_along() {
    let f = Fixture::new();
    f.write("specs/x.md", "# x, edited by the user\n");
    f.write("scratch.txt", "untracked\n");
    let landing = landed(f.lander().land(&request(MergeStrategy::Squash)).unwrap());
    assert_eq!(landing.checkout, CheckoutSync::Updated);
    assert_eq!(f.read("specs/x.md"), "# x, edited by the user\n");
    assert_eq!(f.read("scratch.txt"), "untracked\n");
    assert_eq!(f.read("feature.txt"), "feature\n");
    assert_eq!(f.status(), "M specs/x.md\n?? scratch.txt");
}

#[test]
fn a_checkout_on_another_branch_is_left_alone() {
    let f = Fixture::new();
    git(&f.work, &["checkout", "-q", "-b", "user-branch"]);
    f.write("a.txt", "dirty on the user's branch\n");
    let landing = landed(f.lander().land(&request(MergeStrategy::Squash)).unwrap());
    assert_eq!(landing.checkout, CheckoutSync::Untouched);
    assert_eq!(f.read("a.txt"), "dirty on the user's branch\n");
    assert!(!f.work.join("feature.txt").exists());
    assert_eq!(
        git(&f.work, &["symbolic-ref", "HEAD"]),
        "refs/heads/user-branch"
    );
    assert_eq!(git(&f.work, &["show", "main:feature.txt"]), "feature");
}

#[test]
fn a_branch_only_on_origin_is_fetched_and_landed() {
    let f = Fixture::new();
    git(&f.work, &["branch", "-q", "-D", BRANCH]);
    let landing = landed(f.lander().land(&request(MergeStrategy::Merge)).unwrap());
    assert_eq!(f.rev(&f.origin, "main"), landing.commit.0);
    assert!(landing.branch_deleted);
    assert_eq!(git(&f.origin, &["branch", "--list", BRANCH]), "");
}

#[test]
fn the_verified_head_is_landed_even_if_the_branch_moved_on() {
    let f = Fixture::new();
    let verified = f.rev(&f.work, &format!("{BRANCH}^"));
    git(&f.work, &["checkout", "-q", BRANCH]);
    f.write("late.txt", "unverified\n");
    f.commit("late commit");
    git(&f.work, &["checkout", "-q", "main"]);
    let mut req = request(MergeStrategy::Squash);
    req.head = Some(CommitId(verified));
    let landing = landed(f.lander().land(&req).unwrap());
    assert!(!f.work.join("late.txt").exists());
    assert_eq!(f.read("feature.txt"), "feature\n");
    assert_eq!(f.read("a.txt"), "one\ntwo\nthree\n");
    assert!(!landing.branch_deleted, "unlanded commits are kept");
    assert_ne!(git(&f.work, &["branch", "--list", BRANCH]), "");
}

#[test]
fn a_rejected_push_is_reported_and_keeps_the_remote_branch() {
    let f = Fixture::new();
    // Someone else pushed to origin's main in the meantime.
    let other = f.work.parent().unwrap().join("other");
    git(
        f.work.parent().unwrap(),
        &["clone", "-q", "origin.git", "other"],
    );
    std::fs::write(other.join("theirs.txt"), "theirs\n").unwrap();
    git(&other, &["add", "-A"]);
    git(&other, &["commit", "-q", "-m", "theirs"]);
    git(&other, &["push", "-q", "origin", "main"]);

    let landing = landed(f.lander().land(&request(MergeStrategy::Squash)).unwrap());
    assert!(
        matches!(landing.push, PushStatus::Failed { .. }),
        "{:?}",
        landing.push
    );
    assert!(!landing.branch_deleted);
    assert_ne!(git(&f.origin, &["branch", "--list", BRANCH]), "");
}

#[test]
fn a_missing_base_branch_names_the_setting() {
    let f = Fixture::new();
    let err = GitLander::open(&f.work, "trunk")
        .unwrap()
        .land(&request(MergeStrategy::Squash))
        .unwrap_err()
        .to_string();
    assert!(err.contains("branch trunk does not exist"), "{err}");
    assert!(err.contains("target.base_branch"), "{err}");
}

#[test]
fn a_missing_task_branch_that_never_landed_is_an_error() {
    let f = Fixture::new();
    git(&f.work, &["branch", "-q", "-D", BRANCH]);
    git(&f.work, &["push", "-q", "origin", "--delete", BRANCH]);
    let err = f
        .lander()
        .land(&request(MergeStrategy::Squash))
        .unwrap_err();
    assert!(err.to_string().contains("reset the task"), "{err}");
}

#[test]
fn a_linked_worktree_on_the_base_branch_is_moved_along() {
    let f = Fixture::new();
    git(&f.work, &["checkout", "-q", "-b", "user-branch"]);
    let linked = f.work.parent().unwrap().join("linked");
    git(
        &f.work,
        &["worktree", "add", "-q", linked.to_str().unwrap(), "main"],
    );
    let landing = landed(f.lander().land(&request(MergeStrategy::Squash)).unwrap());
    assert_eq!(landing.checkout, CheckoutSync::Updated);
    assert_eq!(
        std::fs::read_to_string(linked.join("feature.txt")).unwrap(),
        "feature\n"
    );
    assert_eq!(git(&linked, &["status", "--porcelain"]), "");
}

#[test]
fn a_shared_origin_whose_base_was_rewritten_is_never_landed_onto_or_pulled() {
    let f = Fixture::new();
    let before = f.rev(&f.work, "main");
    // Someone (an agent with origin credentials) force-pushes an unrelated history to main.
    let other = f._tmp.path().join("other");
    git(f._tmp.path(), &["clone", "-q", "origin.git", "other"]);
    git(&other, &["checkout", "-q", "--orphan", "evil"]);
    git(&other, &["rm", "-rq", "--cached", "."]);
    std::fs::write(other.join("evil.txt"), "replaced\n").unwrap();
    git(&other, &["add", "evil.txt"]);
    git(&other, &["commit", "-q", "-m", "unrelated history"]);
    git(&other, &["push", "-q", "--force", "origin", "evil:main"]);
    let rewritten = f.rev(&f.origin, "main");

    let lander = GitLander::open_shared(&f.work, "main").unwrap();
    let err = lander
        .land(&request(MergeStrategy::Squash))
        .expect_err("a rewritten origin is refused");
    assert!(matches!(err, LandError::Rewritten { .. }), "{err:?}");
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains(&format!("git push --force origin {before}:refs/heads/main")),
        "{message}"
    );
    assert_eq!(
        f.rev(&f.work, "main"),
        before,
        "the local base was not moved"
    );
    assert_eq!(
        f.rev(&f.origin, "main"),
        rewritten,
        "and nothing was pushed on top"
    );
    assert_eq!(f.status(), "", "the checkout is untouched");
}
