//! [`TreeEdits`]: a batch of blob puts and deletes, written as a new tree that shares every
//! untouched subtree with the old one. Cost grows with the directories touched, not with the
//! size of the state.

use std::collections::BTreeMap;

use git2::{ObjectType, Oid, Repository, Tree};

const BLOB_MODE: i32 = 0o100_644;
const TREE_MODE: i32 = 0o040_000;

#[derive(Debug)]
enum Edit {
    Put(Oid),
    /// Removes a blob or a whole directory.
    Delete,
    Dir(TreeEdits),
}

#[derive(Debug, Default)]
pub struct TreeEdits(BTreeMap<String, Edit>);

impl TreeEdits {
    /// Puts `blob` at a `/`-separated `path`; a later edit of the same path wins.
    pub fn put(&mut self, path: &str, blob: Oid) {
        self.edit(path, Edit::Put(blob));
    }

    pub fn delete(&mut self, path: &str) {
        self.edit(path, Edit::Delete);
    }

    fn edit(&mut self, path: &str, edit: Edit) {
        match path.split_once('/') {
            None => {
                self.0.insert(path.to_owned(), edit);
            }
            Some((dir, rest)) => {
                let entry = self
                    .0
                    .entry(dir.to_owned())
                    .or_insert_with(|| Edit::Dir(TreeEdits::default()));
                if !matches!(entry, Edit::Dir(_)) {
                    *entry = Edit::Dir(TreeEdits::default());
                }
                if let Edit::Dir(sub) = entry {
                    sub.edit(rest, edit);
                }
            }
        }
    }

    /// Writes the edited tree; the root is written even when empty.
    pub fn write_root(
        &self,
        repo: &Repository,
        base: Option<&Tree<'_>>,
    ) -> Result<Oid, git2::Error> {
        match self.write(repo, base)? {
            Some(oid) => Ok(oid),
            None => repo.treebuilder(None)?.write(),
        }
    }

    /// The edited tree, or `None` if it ends up empty (git has no empty directories).
    fn write(
        &self,
        repo: &Repository,
        base: Option<&Tree<'_>>,
    ) -> Result<Option<Oid>, git2::Error> {
        let mut builder = repo.treebuilder(base)?;
        for (name, edit) in &self.0 {
            let existing = builder.get(name)?.map(|e| (e.id(), e.kind()));
            match edit {
                Edit::Put(blob) => {
                    builder.insert(name, *blob, BLOB_MODE)?;
                }
                Edit::Delete => {
                    if existing.is_some() {
                        builder.remove(name)?;
                    }
                }
                Edit::Dir(sub) => {
                    let sub_base = match existing {
                        Some((id, Some(ObjectType::Tree))) => Some(repo.find_tree(id)?),
                        _ => None,
                    };
                    match sub.write(repo, sub_base.as_ref())? {
                        Some(tree) => {
                            builder.insert(name, tree, TREE_MODE)?;
                        }
                        None if existing.is_some() => builder.remove(name)?,
                        None => {}
                    }
                }
            }
        }
        if builder.is_empty() {
            Ok(None)
        } else {
            builder.write().map(Some)
        }
    }
}
