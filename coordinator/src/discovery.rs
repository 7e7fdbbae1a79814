//! How `hyperloopctl` finds the coordinator of the repository it stands in, and how a
//! coordinator refuses a `hyperloopctl` that stands in another repository.
//!
//! A running coordinator records its endpoint in `<git common dir>/hyperloop/endpoint.json`
//! (removed when it exits; a record whose process is gone is ignored), so two repositories on
//! one host each have their own coordinator and `hyperloopctl` needs no `--server` in either.
//!
//! Every admin request from `hyperloopctl` inside a repository carries that repository's
//! identity (its git directory and its normalised origin) in binary metadata; the coordinator
//! answers only a client of its own repository: the same checkout where the state is the
//! checkout's (embedded), the same origin where the state is shared through etcd. A request
//! without the metadata (a script, `hyperloopctl` outside any repository) is not checked.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::metadata::{BinaryMetadataValue, MetadataMap};

/// The file, under the git common directory.
const FILE: &str = "hyperloop/endpoint.json";
const PATH_KEY: &str = "hyperloop-repository-path-bin";
const ORIGIN_KEY: &str = "hyperloop-repository-origin-bin";

/// What a coordinator writes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Where `hyperloopctl` reaches the admin API.
    pub url: String,
    pub pid: u32,
    pub host: String,
}

/// Removes the record when the coordinator ends (unless a newer coordinator replaced it).
#[derive(Debug)]
pub struct Published {
    path: PathBuf,
}

impl Drop for Published {
    fn drop(&mut self) {
        if read(&self.path).is_some_and(|r| r.pid == std::process::id()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Records `url` as this process's endpoint for the repository whose git common directory is
/// `common_dir`. Written to a temporary file and renamed, so a reader never sees half a
/// record.
///
/// # Errors
/// The directory cannot be created or written.
pub fn publish(common_dir: &Path, url: &str) -> io::Result<Published> {
    let path = common_dir.join(FILE);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let record = Record {
        url: url.to_owned(),
        pid: std::process::id(),
        host: crate::lock::hostname(),
    };
    let partial = path.with_extension(format!("json.{}", record.pid));
    let mut text = serde_json::to_string(&record).map_err(io::Error::other)?;
    text.push('\n');
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, &path)?;
    Ok(Published { path })
}

/// The endpoint of the coordinator running for the repository at or above `path`, if one
/// recorded itself and its process is still alive on this host.
pub fn find(path: &Path) -> Option<Record> {
    let repo = git2::Repository::discover(path).ok()?;
    let record = read(&repo.commondir().join(FILE))?;
    let alive = record.host == crate::lock::hostname()
        && Path::new(&format!("/proc/{}", record.pid)).exists();
    alive.then_some(record)
}

fn read(path: &Path) -> Option<Record> {
    serde_json::from_str(std::fs::read_to_string(path).ok()?.trim()).ok()
}

/// Which repository a coordinator serves, or a `hyperloopctl` stands in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// The canonical git common directory.
    pub git_dir: PathBuf,
    /// The origin URL normalised as the etcd prefix is (credentials, scheme and `.git`
    /// dropped), so every spelling of one origin compares equal.
    pub origin: Option<String>,
}

impl Repository {
    /// The repository at or above `path`; `None` outside any repository.
    pub fn discover(path: &Path) -> Option<Self> {
        let repo = git2::Repository::discover(path).ok()?;
        let git_dir = std::fs::canonicalize(repo.commondir()).ok()?;
        let origin = repo
            .find_remote("origin")
            .ok()
            .and_then(|r| r.url().ok().map(str::to_owned))
            .and_then(|url| hyperloop_shared::origin::etcd_prefix(&url).ok());
        Some(Self { git_dir, origin })
    }

    /// Adds this repository's identity to a request.
    pub fn stamp(&self, metadata: &mut MetadataMap) {
        metadata.insert_bin(
            PATH_KEY,
            BinaryMetadataValue::from_bytes(self.git_dir.as_os_str().as_encoded_bytes()),
        );
        if let Some(origin) = &self.origin {
            metadata.insert_bin(
                ORIGIN_KEY,
                BinaryMetadataValue::from_bytes(origin.as_bytes()),
            );
        }
    }

    fn label(&self) -> String {
        let dir = self.git_dir.display();
        match &self.origin {
            Some(origin) => format!("{dir} (origin {origin})"),
            None => dir.to_string(),
        }
    }
}

/// The server side: answers only clients of the repository it serves.
#[derive(Debug, Clone)]
pub struct Gatekeeper {
    pub serves: Repository,
    /// Whether the state is shared by every clone of the origin (etcd), so a client in any
    /// clone of it is the same repository; otherwise it lives in this one checkout.
    pub shared_by_origin: bool,
}

impl tonic::service::Interceptor for Gatekeeper {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata();
        let field = |key| {
            metadata
                .get_bin(key)
                .and_then(|v| v.to_bytes().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let Some(git_dir) = field(PATH_KEY) else {
            return Ok(request);
        };
        let client = Repository {
            git_dir: PathBuf::from(git_dir),
            origin: field(ORIGIN_KEY),
        };
        let same_checkout = client.git_dir == self.serves.git_dir;
        let same_origin =
            self.shared_by_origin && client.origin.is_some() && client.origin == self.serves.origin;
        if same_checkout || same_origin {
            return Ok(request);
        }
        Err(tonic::Status::failed_precondition(format!(
            "this coordinator serves the repository {}, and hyperloopctl stands in {}; run \
             hyperloopctl inside the repository you mean (it finds that repository's \
             coordinator itself), or pass --path to it",
            self.serves.label(),
            client.label()
        )))
    }
}
