//! [`CoordinatorLock`]: at most one coordinator per repository in embedded mode. An OS
//! advisory lock on `<git dir>/hyperloop/coordinator.lock`, so the kernel releases it when the
//! holder exits in any way (`kill -9` included) and no stale lock ever needs clearing by hand.
//! The file's content names the holder, for the error a second coordinator shows.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Held while the value lives; released on drop or when the process dies.
#[derive(Debug)]
pub struct CoordinatorLock {
    file: File,
    path: PathBuf,
}

/// Who holds the lock, as written into the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// Milliseconds since the Unix epoch.
    pub since_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another hyperloop coordinator ({}) is running on this repository; stop it first \
         (it holds {})",
        holder.as_ref().map_or_else(|| "it is still starting".to_owned(), Holder::to_string),
        path.display()
    )]
    Held {
        /// `None` if the holder has not written its details yet.
        holder: Option<Holder>,
        path: PathBuf,
    },
    #[error(
        "cannot take the coordinator lock {}: {source}; check that the directory exists and is \
         writable",
        path.display()
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} on host {}, since {}",
            self.pid,
            self.host,
            format_utc(self.since_ms)
        )
    }
}

impl CoordinatorLock {
    /// Takes the lock for the repository whose git directory is `git_dir` (for a linked
    /// worktree, pass the common git directory so all worktrees share one lock).
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder if another process (or another lock value in
    /// this process) holds it; [`LockError::Io`] if the file cannot be created.
    pub fn acquire(git_dir: impl AsRef<Path>) -> Result<Self, LockError> {
        let dir = git_dir.as_ref().join("hyperloop");
        let path = dir.join("coordinator.lock");
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io_err)?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                // Unreadable details still mean "held"; the error then says so.
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| serde_json::from_str(text.trim()).ok());
                return Err(LockError::Held { holder, path });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let holder = Holder {
            pid: std::process::id(),
            host: hostname(),
            since_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let mut line = serde_json::to_vec(&holder).map_err(|e| io_err(e.into()))?;
        line.push(b'\n');
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        file.write_all(&line).map_err(io_err)?;
        Ok(Self { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CoordinatorLock {
    fn drop(&mut self) {
        // Clear the details first so nobody reads a departed holder; closing the file
        // releases the lock. Best effort: a leftover line is harmless without the lock.
        let _ = self.file.set_len(0);
    }
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, whole seconds, as prost's `Timestamp` prints it).
pub fn format_utc(ms: u64) -> String {
    prost_types::Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: 0,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_as_utc() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_second_lock_in_the_same_process_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let first = CoordinatorLock::acquire(dir.path()).unwrap();
        let err = CoordinatorLock::acquire(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&format!("pid {} on host", std::process::id())),
            "{message}"
        );
        assert!(message.contains("stop it first"), "{message}");
        drop(first);
        CoordinatorLock::acquire(dir.path()).unwrap();
    }
}
