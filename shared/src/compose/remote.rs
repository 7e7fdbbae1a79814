//! Remote git bases (`github.com/org/repo//base?ref=v1` and friends), parsed the way
//! kustomize reads them.

use std::fmt;

/// A kustomize remote resource: which repository to clone, which folder of it holds the
/// kustomization, and at which ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// What `git clone`/`git fetch` is given: `https://github.com/org/repo.git`,
    /// `git@github.com:org/repo`, `file:///srv/repo.git`, ...
    pub clone_url: String,
    /// Folder inside the repository (`""` for its root), without leading or trailing `/`.
    pub subdir: String,
    /// `?ref=` (or `?version=`); `None` means the remote's default branch.
    pub reference: Option<String>,
    /// The entry exactly as written in the kustomization.
    pub original: String,
}

/// Why a resource entry could not be read as a remote git base.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{entry}` is not a remote git base: {reason}")]
pub struct RemoteUrlError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Hosts whose URLs may omit the scheme and the `//` separator (kustomize knows these).
const KNOWN_HOSTS: &[&str] = &["github.com", "gitlab.com", "bitbucket.org"];

impl RemoteRef {
    /// Whether a resource entry is meant as a remote base rather than a local path.
    pub fn looks_remote(entry: &str) -> bool {
        const SCHEMES: &[&str] = &["https://", "http://", "ssh://", "file://", "git::", "git@"];
        SCHEMES.iter().any(|s| entry.starts_with(s))
            || KNOWN_HOSTS
                .iter()
                .any(|h| entry.starts_with(&format!("{h}/")))
            || entry.contains("?ref=")
    }

    /// Parses `entry`.
    ///
    /// # Errors
    /// When the entry names no repository or has an empty `ref`.
    pub fn parse(entry: &str) -> Result<Self, RemoteUrlError> {
        let err = |reason| RemoteUrlError {
            entry: entry.to_owned(),
            reason,
        };
        let raw = entry.strip_prefix("git::").unwrap_or(entry);
        let (location, query) = raw.split_once('?').unwrap_or((raw, ""));
        let mut reference = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == "ref" || k == "version" {
                if v.is_empty() {
                    return Err(err("`ref=` is empty"));
                }
                reference = Some(v.to_owned());
            }
        }
        // Where the host part ends, so that `//` in `https://` is not taken for the
        // repository/folder separator.
        let (scheme, rest) = match location.find("://") {
            Some(i) => location.split_at(i + 3),
            None => ("", location),
        };
        let (repo, subdir) = if let Some(i) = rest.find("//") {
            (&rest[..i], &rest[i + 2..])
        } else if let Some(i) = rest.find(".git/") {
            (&rest[..i + 4], &rest[i + 5..])
        } else if scheme.is_empty()
            && KNOWN_HOSTS
                .iter()
                .any(|h| rest.starts_with(&format!("{h}/")))
        {
            // host/org/repo[/path]
            let mut parts = rest.splitn(4, '/');
            let host = parts.next().unwrap_or_default();
            let org = parts.next().unwrap_or_default();
            let name = parts.next().unwrap_or_default();
            let len = host.len() + org.len() + name.len() + 2;
            (
                &rest[..len.min(rest.len())],
                rest.get(len + 1..).unwrap_or(""),
            )
        } else {
            (rest, "")
        };
        let repo = repo.trim_end_matches('/');
        if repo.is_empty() || (scheme != "file://" && !repo.contains('/') && !repo.contains(':')) {
            return Err(err(
                "it names no repository (expected e.g. github.com/org/repo//dir?ref=v1)",
            ));
        }
        let clone_url = if scheme.is_empty() && !repo.starts_with("git@") {
            let with_git = if repo.ends_with(".git") {
                repo.to_owned()
            } else {
                format!("{repo}.git")
            };
            format!("https://{with_git}")
        } else {
            format!("{scheme}{repo}")
        };
        Ok(Self {
            clone_url,
            subdir: subdir.trim_matches('/').to_owned(),
            reference,
            original: entry.to_owned(),
        })
    }

    /// The repository reduced to `host/path` (no scheme, user, `.git` or case), so the same
    /// repository written as https, ssh or scp-like URL compares equal.
    pub fn repository_key(&self) -> String {
        let url = self.clone_url.as_str();
        let without_scheme = url.split_once("://").map_or(url, |(_, r)| r);
        let without_user = without_scheme
            .split_once('@')
            .map_or(without_scheme, |(_, r)| r);
        without_user
            .replacen(':', "/", 1)
            .trim_end_matches(".git")
            .trim_end_matches('/')
            .to_ascii_lowercase()
    }

    /// Whether `self` and `other` denote the same folder of the same repository at the same ref.
    pub fn same_target(&self, other: &RemoteRef) -> bool {
        self.repository_key() == other.repository_key()
            && self.subdir == other.subdir
            && self.reference == other.reference
    }
}

impl fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(entry: &str, clone_url: &str, subdir: &str, reference: Option<&str>) {
        let r = RemoteRef::parse(entry).expect("parses");
        assert_eq!(
            (
                r.clone_url.as_str(),
                r.subdir.as_str(),
                r.reference.as_deref()
            ),
            (clone_url, subdir, reference),
            "{entry}"
        );
        assert!(RemoteRef::looks_remote(entry), "{entry}");
    }

    #[test]
    fn parses_every_form_the_seeds_use() {
        check(
            "github.com/org/repo//base?ref=v1",
            "https://github.com/org/repo.git",
            "base",
            Some("v1"),
        );
        check(
            "https://github.com/org/repo//path/x?ref=v1",
            "https://github.com/org/repo",
            "path/x",
            Some("v1"),
        );
        check(
            "git@github.com:org/repo//overlays/api",
            "git@github.com:org/repo",
            "overlays/api",
            None,
        );
        check(
            "ssh://git@host.example/org/repo//p?ref=abc",
            "ssh://git@host.example/org/repo",
            "p",
            Some("abc"),
        );
        check(
            "file:///srv/r/repo.git//base?ref=v2",
            "file:///srv/r/repo.git",
            "base",
            Some("v2"),
        );
        check(
            "file:///srv/r/repo.git/base?ref=v2",
            "file:///srv/r/repo.git",
            "base",
            Some("v2"),
        );
        check(
            "github.com/org/repo/base?ref=v1",
            "https://github.com/org/repo.git",
            "base",
            Some("v1"),
        );
        check(
            "github.com/org/repo?version=v3",
            "https://github.com/org/repo.git",
            "",
            Some("v3"),
        );
        check(
            "git::https://github.com/org/repo//b?ref=main",
            "https://github.com/org/repo",
            "b",
            Some("main"),
        );
    }

    #[test]
    fn local_paths_do_not_look_remote() {
        for p in [
            "../base",
            "base",
            "./overlays/api",
            "/abs/dir",
            "patch.yaml",
        ] {
            assert!(!RemoteRef::looks_remote(p), "{p}");
        }
    }

    #[test]
    fn an_empty_ref_or_missing_repository_is_an_error() {
        assert!(RemoteRef::parse("github.com/org/repo//base?ref=").is_err());
        assert!(RemoteRef::parse("https://").is_err());
    }

    #[test]
    fn the_same_repository_in_different_spellings_is_the_same_target() {
        let a = RemoteRef::parse("github.com/Org/Repo//base?ref=v1").expect("parses");
        let b = RemoteRef::parse("git@github.com:org/repo.git//base?ref=v1").expect("parses");
        let c = RemoteRef::parse("https://github.com/org/repo//base?ref=v2").expect("parses");
        assert!(a.same_target(&b));
        assert!(!a.same_target(&c));
    }
}
