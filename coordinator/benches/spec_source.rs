//! PERFORMANCE P5 for the spec source: 10,000 specs in a real repository.
//!
//! Measures the "nothing changed" check and the "one spec changed" diff, next to references
//! taken in the same run: a full listing of all specs (what a scan without a cursor costs)
//! and `git rev-parse` (the cheapest thing the CLI can tell about a branch).
//!
//! `cargo bench -p hyperloop-coordinator --bench spec_source`

#[path = "support/spec_repo.rs"]
mod spec_repo;

use std::process::Command;
use std::time::{Duration, Instant};

use git2::{FileMode, Oid, Repository, Signature};
use hyperloop_coordinator::adapters::git::GitSpecSource;
use hyperloop_coordinator::ports::spec_source::SpecSource;
use spec_repo::{DIRS, SPECS};

/// P5's budget for a whole reconcile cycle; the spec check must be a small part of it.
const TARGET: Duration = Duration::from_millis(20);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let repo = Repository::init(tmp.path())?;
    let sig = Signature::now("bench", "bench@example.invalid")?;

    let built = Instant::now();
    let (specs_tree, dirs) = spec_repo::write_specs_tree(&repo)?;
    let commit_with =
        |specs_tree: Oid, code: &str, parent: Option<Oid>| -> Result<Oid, git2::Error> {
            let mut root = repo.treebuilder(None)?;
            root.insert("specs", specs_tree, i32::from(FileMode::Tree))?;
            root.insert("main.rs", repo.blob(code.as_bytes())?, 0o100644)?;
            let tree = repo.find_tree(root.write()?)?;
            let parents: Vec<_> = parent
                .map(|p| repo.find_commit(p))
                .transpose()?
                .into_iter()
                .collect();
            let parents: Vec<_> = parents.iter().collect();
            repo.commit(None, &sig, &sig, "bench", &tree, &parents)
        };
    let first = commit_with(specs_tree, "fn main() {}\n", None)?;
    repo.reference("refs/heads/main", first, true, "bench")?;
    eprintln!(
        "built a repository with {SPECS} specs in {:?}",
        built.elapsed()
    );

    let source = GitSpecSource::open(tmp.path(), "main", "specs")?;
    let full = source.changes(None)?;
    assert_eq!(full.changes.len(), SPECS);
    let v1 = full.version;

    // A code-only commit: the specs tree id is unchanged.
    let second = commit_with(specs_tree, "fn main() { println!(); }\n", Some(first))?;
    repo.reference("refs/heads/main", second, true, "bench")?;
    let unchanged = source.changes(Some(&v1))?;
    assert!(unchanged.is_unchanged());

    // One spec edited.
    let mut area = repo.treebuilder(Some(&repo.find_tree(dirs[42])?))?;
    area.insert(
        "s007.md",
        repo.blob(b"# spec 42/7\n\nChanged.\n")?,
        0o100644,
    )?;
    let mut specs2 = repo.treebuilder(Some(&repo.find_tree(specs_tree)?))?;
    specs2.insert("area042", area.write()?, i32::from(FileMode::Tree))?;
    let third = commit_with(specs2.write()?, "fn main() { println!(); }\n", Some(second))?;

    // Measure the "nothing changed" check at the tip of `second`.
    let nothing = measure(500, || {
        let c = source.changes(Some(&v1)).expect("scan");
        assert!(c.is_unchanged());
    });
    let full_scan = measure(10, || {
        assert_eq!(source.changes(None).expect("scan").changes.len(), SPECS);
    });
    let rev_parse = measure(50, || {
        let out = Command::new("git")
            .arg("-C")
            .arg(tmp.path())
            .args(["rev-parse", "refs/heads/main"])
            .output()
            .expect("git");
        assert!(out.status.success());
    });
    repo.reference("refs/heads/main", third, true, "bench")?;
    let one = measure(500, || {
        let c = source.changes(Some(&v1)).expect("scan");
        assert_eq!(c.changes.len(), 1);
    });

    println!("spec source, {SPECS} specs in {DIRS} folders (median / p99 over the samples):");
    report("nothing changed (changes since the last version)", &nothing);
    report("one spec changed (tree diff)", &one);
    report("reference: full listing of all specs", &full_scan);
    report(
        "reference: `git rev-parse main` (process spawn)",
        &rev_parse,
    );
    println!(
        "nothing changed: {:.1}% of the P5 budget ({TARGET:?}), {:.0}x faster than a full listing",
        100.0 * nothing.median.as_secs_f64() / TARGET.as_secs_f64(),
        full_scan.median.as_secs_f64() / nothing.median.as_secs_f64()
    );
    assert!(nothing.p99 < TARGET, "nothing-changed check over budget");
    Ok(())
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn measure(samples: usize, mut f: impl FnMut()) -> Stats {
    f(); // warm-up
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    Stats {
        median: times[samples / 2],
        p99: times[(samples * 99 / 100).min(samples - 1)],
    }
}

fn report(what: &str, s: &Stats) {
    println!("  {what:<52} {:>10.3?} {:>10.3?}", s.median, s.p99);
}
