//! The 10,000-spec tree the P5 benches run against, written directly with git2. Included by
//! each bench with `#[path = "support/spec_repo.rs"] mod spec_repo;`.

use git2::{FileMode, Oid, Repository};

/// Specs in the tree, spread evenly over [`DIRS`] areas.
pub const SPECS: usize = 10_000;
pub const DIRS: usize = 100;

/// Writes the specs tree (`area000/s000.md` … `area099/s099.md`) into `repo`'s object store
/// and returns its id and the ids of the area trees, in order.
pub fn write_specs_tree(repo: &Repository) -> Result<(Oid, Vec<Oid>), git2::Error> {
    let mut specs = repo.treebuilder(None)?;
    let mut areas = Vec::with_capacity(DIRS);
    for d in 0..DIRS {
        let mut dir = repo.treebuilder(None)?;
        for f in 0..SPECS / DIRS {
            let text = format!("# spec {d}/{f}\n\nThe system shall do thing {f} of area {d}.\n");
            dir.insert(format!("s{f:03}.md"), repo.blob(text.as_bytes())?, 0o100644)?;
        }
        areas.push(dir.write()?);
        specs.insert(format!("area{d:03}"), areas[d], i32::from(FileMode::Tree))?;
    }
    Ok((specs.write()?, areas))
}
