//! The Matrix `Notifier`: posts high-signal events to a Matrix room, each task's messages in
//! one thread under a root message for the task.
//!
//! `notify` only filters and enqueues into a bounded queue (what does not fit is dropped,
//! counted and logged at the 1st, 2nd, 4th… drop); a background task sets the bot up and sends, retrying with
//! exponential backoff, so a slow or dead homeserver never slows the loop.
//!
//! Setup, once per repository: with a registration token the bot registers itself
//! (`bot_username`, default `hyperloop-<repo dir name>`) and creates a room (inviting
//! `invite_user`); with an access token (`token_env`) it uses that account. The credentials,
//! the room, each task's thread root and the last event sent are kept in
//! `.hyperloop/matrix-state.json` ([`state`]), so restarts neither register again nor send an
//! event twice.

mod client;
pub mod message;
mod state;

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyperloop_shared::config::MatrixConfig;
use hyperloop_shared::event::Event;
use hyperloop_shared::model::TaskId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::client::{Client, MatrixError, Session};
use self::message::{Message, Place};
use self::state::{MatrixState, StateFile};
use crate::ports::notifier::Notifier;

pub use self::state::STATE_FILE;

/// Events waiting to be sent; beyond this they are dropped (and counted).
const QUEUE: usize = 1024;
/// First wait after a failed request; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// At shutdown, how long what is still queued may take to go out (one try each).
const DRAIN: Duration = Duration::from_secs(5);

/// What the notifier needs, resolved from the config and the environment.
#[derive(Clone)]
pub struct Settings {
    pub homeserver: String,
    pub registration_token: Option<String>,
    pub access_token: Option<String>,
    pub bot_username: String,
    pub room_id: Option<String>,
    pub room_name: String,
    pub invite_user: Option<String>,
    pub verbose: bool,
}

impl Settings {
    /// Reads the tokens from the environment variables the config names; `repo_name` gives
    /// the default bot name and the room's name.
    ///
    /// # Errors
    /// A named environment variable is unset or empty (the message names the variable only).
    pub fn resolve(config: &MatrixConfig, repo_name: &str) -> Result<Self, String> {
        let read = |var: &Option<String>| -> Result<Option<String>, String> {
            match var {
                None => Ok(None),
                Some(var) => match std::env::var(var) {
                    Ok(value) if !value.is_empty() => Ok(Some(value)),
                    _ => Err(format!(
                        "Matrix notifications: the environment variable {var} (named by \
                         `observability.matrix`) is unset or empty"
                    )),
                },
            }
        };
        Ok(Settings {
            homeserver: config.homeserver.clone(),
            registration_token: read(&config.registration_token_env)?,
            access_token: read(&config.token_env)?,
            bot_username: config
                .bot_username
                .clone()
                .unwrap_or_else(|| default_bot_name(repo_name)),
            room_id: config.room_id.clone(),
            room_name: format!("hyperloop: {repo_name}"),
            invite_user: config.invite_user.clone(),
            verbose: config.verbose,
        })
    }
}

/// `hyperloop-<repo>`, reduced to what a Matrix user name may hold.
fn default_bot_name(repo_name: &str) -> String {
    let clean: String = repo_name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '=') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("hyperloop-{clean}")
}

/// Hands events to the background sender; never waits.
pub struct MatrixNotifier {
    queue: mpsc::Sender<Event>,
    verbose: bool,
    dropped: AtomicU64,
}

impl Notifier for MatrixNotifier {
    fn notify(&self, events: &[Event]) {
        for event in events {
            if !message::wanted(&event.kind, self.verbose) {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(event)) = self.queue.try_send(event.clone())
            {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // The 1st, 2nd, 4th, 8th… drop: an outage is visible without flooding the log.
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        seq = event.seq,
                        event = event.kind.name(),
                        dropped,
                        "the Matrix queue is full (homeserver slow or down); events not sent"
                    );
                }
            }
        }
    }
}

/// The notifier, and the sender to run in the background until `stop` (then it sends what
/// is queued, briefly, and ends).
///
/// # Errors
/// The state file cannot be git-ignored (`info/exclude` not writable).
pub fn start(
    settings: Settings,
    root: &Path,
    git_dir: &Path,
    stop: CancellationToken,
) -> std::io::Result<(MatrixNotifier, impl Future<Output = ()> + Send + 'static)> {
    let file = StateFile::open(root, git_dir)?;
    let (queue, inbox) = mpsc::channel(QUEUE);
    let notifier = MatrixNotifier {
        queue,
        verbose: settings.verbose,
        dropped: AtomicU64::new(0),
    };
    let sender = Sender {
        client: Client::new(&settings.homeserver),
        state: file.load(),
        file,
        settings,
        stop,
    };
    Ok((notifier, sender.run(inbox)))
}

struct Sender {
    client: Client,
    settings: Settings,
    file: StateFile,
    state: MatrixState,
    stop: CancellationToken,
}

/// Whether a failed request is tried again after a backoff or given up at once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tries {
    UntilStopped,
    Once,
}

impl Sender {
    async fn run(mut self, mut inbox: mpsc::Receiver<Event>) {
        let Some((session, room)) = self.set_up().await else {
            return;
        };
        tracing::info!(room = %room, user = %session.user_id, "Matrix notifications are on");
        loop {
            let event = tokio::select! {
                event = inbox.recv() => event,
                () = self.stop.cancelled() => break,
            };
            let Some(event) = event else { return };
            self.deliver(&session, &room, &event, Tries::UntilStopped)
                .await;
        }
        let drain = async {
            while let Ok(event) = inbox.try_recv() {
                if !self.deliver(&session, &room, &event, Tries::Once).await {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN, drain).await;
    }

    /// Logs in (registering once) and finds the room, retrying transient failures until
    /// stopped; `None` when stopped or refused for good (notifications off, warned).
    async fn set_up(&mut self) -> Option<(Session, String)> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.try_set_up().await {
                Ok(done) => return Some(done),
                Err(e) if e.is_transient() => {
                    tracing::warn!(
                        homeserver = %self.settings.homeserver,
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "Matrix setup failed; retrying"
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        homeserver = %self.settings.homeserver,
                        error = %e,
                        "Matrix setup was refused; Matrix notifications are off for this run"
                    );
                    return None;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.stop.cancelled() => return None,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn try_set_up(&mut self) -> Result<(Session, String), MatrixError> {
        if self.state.homeserver != self.settings.homeserver {
            // Credentials, room and threads of another homeserver mean nothing here.
            self.state = MatrixState {
                homeserver: self.settings.homeserver.clone(),
                last_seq: self.state.last_seq,
                ..MatrixState::default()
            };
        }
        let session = match (&self.settings.access_token, &self.state) {
            (Some(token), _) => Session {
                user_id: self.client.whoami(token).await?,
                access_token: token.clone(),
            },
            (
                None,
                MatrixState {
                    user_id: Some(user_id),
                    access_token: Some(token),
                    ..
                },
            ) => Session {
                user_id: user_id.clone(),
                access_token: token.clone(),
            },
            (None, _) => {
                let Some(registration_token) = &self.settings.registration_token else {
                    return Err(MatrixError::Refused {
                        status: 0,
                        message: "no access token and no registration token".to_owned(),
                    });
                };
                let session = self
                    .client
                    .register(
                        &self.settings.bot_username,
                        &random_password()?,
                        registration_token,
                    )
                    .await?;
                tracing::info!(user = %session.user_id, "registered the Matrix bot");
                self.state.user_id = Some(session.user_id.clone());
                self.state.access_token = Some(session.access_token.clone());
                self.state.room_id = None;
                self.state.threads.clear();
                self.save();
                session
            }
        };
        let room = match (&self.settings.room_id, &self.state.room_id) {
            (Some(configured), _) => {
                self.client.join(&session, configured).await?;
                if self.state.room_id.as_ref() != Some(configured) {
                    self.state.room_id = Some(configured.clone());
                    self.state.threads.clear();
                    self.save();
                }
                configured.clone()
            }
            (None, Some(room)) => room.clone(),
            (None, None) => {
                let room = self
                    .client
                    .create_room(
                        &session,
                        &self.settings.room_name,
                        self.settings.invite_user.as_deref(),
                    )
                    .await?;
                tracing::info!(room = %room, "created the Matrix room");
                self.state.room_id = Some(room.clone());
                self.state.threads.clear();
                self.save();
                room
            }
        };
        Ok((session, room))
    }

    /// Sends `event`'s message unless it was sent before; returns false when it gave up
    /// (stopped, or one try failed).
    async fn deliver(
        &mut self,
        session: &Session,
        room: &str,
        event: &Event,
        tries: Tries,
    ) -> bool {
        if event.seq <= self.state.last_seq {
            return true;
        }
        let attempted = match message::render(event, self.settings.verbose) {
            None => false,
            Some(message) => {
                let mut backoff = FIRST_BACKOFF;
                loop {
                    match self.post(session, room, event, &message).await {
                        Ok(()) => break true,
                        Err(e) if e.is_transient() && tries == Tries::UntilStopped => {
                            tracing::warn!(
                                seq = event.seq,
                                event = event.kind.name(),
                                error = %e,
                                retry_in_ms = backoff.as_millis() as u64,
                                "Matrix send failed; retrying"
                            );
                            let wait = match e {
                                MatrixError::RateLimited(Some(wait)) => wait.max(backoff),
                                _ => backoff,
                            };
                            tokio::select! {
                                () = tokio::time::sleep(wait) => {}
                                () = self.stop.cancelled() => return false,
                            }
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        Err(e) if e.is_transient() => {
                            tracing::warn!(seq = event.seq, error = %e, "Matrix send failed");
                            return false;
                        }
                        Err(e) => {
                            // Refused for good: skipping it keeps the rest flowing.
                            tracing::warn!(
                                seq = event.seq,
                                event = event.kind.name(),
                                error = %e,
                                "the homeserver refused a Matrix message; skipping it"
                            );
                            break true;
                        }
                    }
                }
            }
        };
        self.state.last_seq = event.seq;
        if attempted {
            self.save();
        }
        true
    }

    /// Posts one message in its place, opening the task's thread first if needed.
    async fn post(
        &mut self,
        session: &Session,
        room: &str,
        event: &Event,
        message: &Message,
    ) -> Result<(), MatrixError> {
        let txn = |part: &str| format!("hl-{}-{}-{part}", event.seq, event.at_ms);
        match &message.place {
            Place::Room => {
                self.client
                    .send(session, room, &txn("m"), &message.body, None)
                    .await?;
            }
            Place::Root(task) => {
                let root = self
                    .client
                    .send(session, room, &txn("m"), &message.body, None)
                    .await?;
                self.state.threads.insert(task.to_string(), root);
            }
            Place::Thread(task) => {
                let root = self.thread_root(session, room, *task, &txn("root")).await?;
                self.client
                    .send(session, room, &txn("m"), &message.body, Some(&root))
                    .await?;
            }
        }
        Ok(())
    }

    async fn thread_root(
        &mut self,
        session: &Session,
        room: &str,
        task: TaskId,
        txn: &str,
    ) -> Result<String, MatrixError> {
        if let Some(root) = self.state.threads.get(&task.to_string()) {
            return Ok(root.clone());
        }
        let root = self
            .client
            .send(session, room, txn, &message::fallback_root(task), None)
            .await?;
        self.state.threads.insert(task.to_string(), root.clone());
        self.save();
        Ok(root)
    }

    fn save(&self) {
        if let Err(e) = self.file.save(&self.state) {
            tracing::warn!(error = %e, file = STATE_FILE, "cannot save the Matrix state");
        }
    }
}

/// A password nobody needs to know: the bot logs in with its access token.
fn random_password() -> Result<String, MatrixError> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| MatrixError::Refused {
            status: 0,
            message: format!("cannot read /dev/urandom: {e}"),
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperloop_shared::event::EventKind;

    fn settings() -> Settings {
        Settings {
            homeserver: "http://127.0.0.1:9".into(),
            registration_token: Some("t".into()),
            access_token: None,
            bot_username: "bot".into(),
            room_id: None,
            room_name: "room".into(),
            invite_user: None,
            verbose: false,
        }
    }

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            seq,
            at_ms: 0,
            task: Some(TaskId(1)),
            kind,
        }
    }

    #[tokio::test]
    async fn notify_never_waits_it_queues_what_is_wanted_and_counts_what_does_not_fit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let git_dir = dir.path().join(".git");
        // The sender is never run: nothing drains the queue.
        let (notifier, _sender) =
            start(settings(), dir.path(), &git_dir, CancellationToken::new()).expect("start");
        let noise: Vec<Event> = (1..=3000)
            .map(|seq| {
                event(
                    seq,
                    EventKind::PromptComposed {
                        role: "r".into(),
                        round: 0,
                        bytes: 1,
                    },
                )
            })
            .collect();
        notifier.notify(&noise);
        assert_eq!(notifier.dropped.load(Ordering::Relaxed), 0);
        let wanted: Vec<Event> = (1..=3000)
            .map(|seq| event(seq, EventKind::TaskCompleted { rounds: 1 }))
            .collect();
        let started = std::time::Instant::now();
        notifier.notify(&wanted);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            notifier.dropped.load(Ordering::Relaxed),
            3000 - QUEUE as u64
        );
    }

    #[test]
    fn the_default_bot_name_is_a_valid_matrix_user_name() {
        assert_eq!(default_bot_name("My Repo!"), "hyperloop-my-repo-");
        assert_eq!(default_bot_name("widgets"), "hyperloop-widgets");
    }
}
