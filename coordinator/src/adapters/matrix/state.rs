//! `.hyperloop/matrix-state.json`: the bot's credentials, its room and each task's thread
//! root, kept across restarts of this host's coordinator. A cache only: what was sent is read
//! from the room itself, so another host (with its own checkout) never needs this file.
//! Git-ignored through the repository's `info/exclude`, so neither agents nor landings ever
//! commit it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the state lives, relative to the checkout.
pub const STATE_FILE: &str = ".hyperloop/matrix-state.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MatrixState {
    /// The homeserver the credentials are for: another homeserver starts over.
    #[serde(default)]
    pub homeserver: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub room_id: Option<String>,
    /// Task id (`task-003`) → the event id of its thread root.
    #[serde(default)]
    pub threads: BTreeMap<String, String>,
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file of the checkout at `root`, made git-ignored through `git_dir`'s
    /// `info/exclude`.
    pub fn open(root: &Path, git_dir: &Path) -> std::io::Result<Self> {
        exclude(git_dir)?;
        Ok(StateFile {
            path: root.join(STATE_FILE),
        })
    }

    /// The saved state; a missing file is a fresh start, an unreadable one too (warned).
    pub fn load(&self) -> MatrixState {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "the Matrix state file is unreadable; starting over"
                );
                MatrixState::default()
            }),
            Err(_) => MatrixState::default(),
        }
    }

    /// Writes the state atomically (temporary file, then rename), readable by the owner only.
    pub fn save(&self, state: &MatrixState) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
        file.as_file().sync_all()?;
        file.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Adds the state file to `info/exclude` unless it is there already.
fn exclude(git_dir: &Path) -> std::io::Result<()> {
    let line = format!("/{STATE_FILE}");
    let info = git_dir.join("info");
    let path = info.join("exclude");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current.lines().any(|l| l.trim() == line) {
        return Ok(());
    }
    std::fs::create_dir_all(&info)?;
    let mut text = current;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&line);
    text.push('\n');
    std::fs::write(&path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_is_excluded_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let git_dir = dir.path().join(".git");
        std::fs::create_dir_all(git_dir.join("info")).expect("info");
        std::fs::write(git_dir.join("info/exclude"), "# existing").expect("write");
        let file = StateFile::open(dir.path(), &git_dir).expect("open");
        StateFile::open(dir.path(), &git_dir).expect("open again");
        let exclude = std::fs::read_to_string(git_dir.join("info/exclude")).expect("read");
        assert_eq!(exclude, "# existing\n/.hyperloop/matrix-state.json\n");
        assert_eq!(file.load(), MatrixState::default());
        let mut state = MatrixState {
            homeserver: "http://h".into(),
            room_id: Some("!r:h".into()),
            ..MatrixState::default()
        };
        state.threads.insert("task-001".into(), "$e".into());
        file.save(&state).expect("save");
        assert_eq!(file.load(), state);
    }
}
