//! The etcd key prefix a repository's state lives under, derived from its origin URL so that
//! every coordinator of one repository agrees on it without configuration, and coordinators
//! of different repositories sharing one etcd never see each other's keys.

/// Where derived prefixes live, one level per host and path segment.
const ROOT: &str = "/hyperloop";

/// The origin URL names no repository (an empty path, or no URL at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot derive an etcd prefix from origin URL {origin:?}: it names no repository path; \
     set etcd.prefix (--etcd-prefix) explicitly"
)]
pub struct PrefixError {
    /// The URL with any credentials removed.
    pub origin: String,
}

/// `/hyperloop/<host>/<path>` for an origin URL in any form git accepts:
///
/// - `git@github.com:Owner/repo.git`, `https://user:token@github.com/owner/repo/`,
///   `ssh://git@github.com:22/owner/repo.git` → `/hyperloop/github.com/owner/repo`
/// - `file:///tmp/x/origin.git`, `/tmp/x/origin.git` → `/hyperloop/file/tmp/x/origin`
///
/// Stable across the spellings of one repository: the scheme, user, password/token and port
/// are dropped (so credentials never reach etcd keys or logs), a trailing `.git` and slashes
/// are removed, and network hosts and paths are lowercased (hosting services treat them
/// case-insensitively). Local paths keep their case, as the file system does.
pub fn etcd_prefix(origin: &str) -> Result<String, PrefixError> {
    let origin = origin.trim();
    let (host, path) = split(origin);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if let Some(last) = segments.pop() {
        let last = last.strip_suffix(".git").unwrap_or(last);
        if !last.is_empty() {
            segments.push(last);
        }
    }
    if segments.is_empty() {
        return Err(PrefixError {
            origin: redact(origin),
        });
    }
    let mut prefix = format!("{ROOT}/{}", host.unwrap_or("file").to_lowercase());
    for segment in segments {
        prefix.push('/');
        match host {
            Some(_) => prefix.push_str(&segment.to_lowercase()),
            None => prefix.push_str(segment),
        }
    }
    Ok(prefix)
}

/// The network host (without user or port; `None` for a local repository) and the path.
fn split(origin: &str) -> (Option<&str>, &str) {
    if let Some((scheme, rest)) = origin.split_once("://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if scheme.eq_ignore_ascii_case("file") {
            return (None, path);
        }
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        return (Some(strip_port(host)), path);
    }
    // scp-like `[user@]host:path`; git reads a colon after a slash as part of a local path.
    if let Some((authority, path)) = origin.split_once(':')
        && !authority.contains('/')
        && !authority.is_empty()
    {
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        return (Some(host), path);
    }
    (None, origin)
}

/// `host:port` → `host`, keeping a bracketed IPv6 address whole.
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            if name.starts_with('[') && !name.ends_with(']') {
                host
            } else {
                name
            }
        }
        _ => host,
    }
}

/// The URL with `user[:password]@` removed, for error messages.
fn redact(origin: &str) -> String {
    match origin.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}/{path}")
        }
        None => origin
            .split_once('@')
            .filter(|(user, _)| !user.contains('/'))
            .map_or_else(|| origin.to_owned(), |(_, rest)| rest.to_owned()),
    }
}

/// The GitHub `owner/repo` an `origin` URL points at, for inferring `target.repo` (seed
/// 001: "default: inferred from git remote"): `git@github.com:o/r.git`,
/// `ssh://git@github.com/o/r.git`, `https://github.com/o/r(.git)(/)`. Anything else, local
/// paths and other hosts included, is `None`, so such repositories keep landing locally.
pub fn github_repo(origin: &str) -> Option<String> {
    let origin = origin.trim();
    let (host, path) = split(origin);
    if !host?.eq_ignore_ascii_case("github.com") {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let owner = segments.next()?;
    let name = segments.next()?;
    let name = name.strip_suffix(".git").unwrap_or(name);
    if segments.next().is_some() || owner.is_empty() || name.is_empty() {
        return None;
    }
    Some(format!("{owner}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn derives(origin: &str, expected: &str) {
        assert_eq!(etcd_prefix(origin).as_deref(), Ok(expected), "{origin}");
    }

    #[test]
    fn every_spelling_of_a_github_repository_gives_one_prefix() {
        for origin in [
            "git@github.com:Owner/repo.git",
            "git@github.com:owner/repo",
            "https://github.com/owner/repo",
            "https://github.com/owner/repo.git/",
            "https://GitHub.com/Owner/Repo/",
            "ssh://git@github.com/owner/repo.git",
            "ssh://git@github.com:22/owner/repo.git",
            "git://github.com/owner/repo.git",
            "https://github.com/owner/repo?x=1#frag",
            "  https://github.com//owner/repo  ",
        ] {
            derives(origin, "/hyperloop/github.com/owner/repo");
        }
    }

    #[test]
    fn credentials_never_reach_the_prefix() {
        for origin in [
            "https://user:ghp_s3cret@github.com/owner/repo.git",
            "https://x-access-token:ghp_s3cret@github.com:443/owner/repo",
            "ssh://user:ghp_s3cret@github.com/owner/repo",
        ] {
            derives(origin, "/hyperloop/github.com/owner/repo");
        }
        let err = etcd_prefix("https://user:ghp_s3cret@github.com/").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(err.to_string().contains("--etcd-prefix"), "{err}");
    }

    #[test]
    fn local_repositories_keep_their_paths_case() {
        derives("file:///tmp/x/origin.git", "/hyperloop/file/tmp/x/origin");
        derives("/tmp/X/origin.git/", "/hyperloop/file/tmp/X/origin");
        derives("./rel/repo", "/hyperloop/file/rel/repo");
    }

    #[test]
    fn nested_groups_and_other_hosts_keep_every_segment() {
        derives(
            "git@gitlab.example.com:Group/Sub/project.git",
            "/hyperloop/gitlab.example.com/group/sub/project",
        );
        derives(
            "https://[::1]:8080/owner/repo",
            "/hyperloop/[::1]/owner/repo",
        );
    }

    #[test]
    fn an_origin_without_a_repository_path_is_refused() {
        for origin in [
            "",
            "https://github.com",
            "https://github.com/",
            "file:///",
            "git@host:",
            "/.git",
        ] {
            assert!(etcd_prefix(origin).is_err(), "{origin:?}");
        }
    }

    #[test]
    fn different_repositories_get_different_prefixes() {
        let a = etcd_prefix("git@github.com:owner/repo.git").unwrap();
        let b = etcd_prefix("git@github.com:owner/repo2.git").unwrap();
        assert!(!b.starts_with(&format!("{a}/")) && a != b);
    }

    #[test]
    fn github_origins_name_their_repository_and_others_none() {
        for origin in [
            "git@github.com:o/r.git",
            "git@github.com:o/r",
            "https://github.com/o/r",
            "https://github.com/o/r.git",
            "https://github.com/o/r/",
            "https://user:token@github.com/o/r.git",
            "ssh://git@github.com/o/r.git",
        ] {
            assert_eq!(github_repo(origin).as_deref(), Some("o/r"), "{origin}");
        }
        for origin in [
            "/tmp/x/origin.git",
            "file:///tmp/x/origin.git",
            "../origin.git",
            "git@gitlab.com:o/r.git",
            "https://github.com/o",
            "https://github.com/o/r/tree/main",
        ] {
            assert_eq!(github_repo(origin), None, "{origin}");
        }
    }
}
