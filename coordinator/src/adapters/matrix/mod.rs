//! The Matrix `Notifier`: posts high-signal events to a Matrix room, each task's messages in
//! one thread under a root message for the task.
//!
//! `notify` only filters and enqueues into a bounded queue (what does not fit is dropped,
//! counted and logged at the 1st, 2nd, 4th… drop, then read back from the journal); a
//! background task sets the bot up and sends, retrying with exponential backoff, so a slow or
//! dead homeserver never slows the loop.
//!
//! Exactly once across restarts and leader changes: the room itself is the cursor. Every
//! message carries the journal sequence number of its event (`org.hyperloop.seq`) and which
//! journal it follows (`org.hyperloop.journal`); thread roots carry their task
//! (`org.hyperloop.task`). When a term starts, the sender reads the room backwards for the
//! newest sequence number it sent, sends what the journal holds after it, then the term's own
//! events, skipping what it has seen. A deposed leader drops its queue: the next leader sends
//! it from the journal. Events the journal no longer keeps are summed up in one note.
//!
//! Setup: with a registration token the bot registers itself (`bot_username`, default
//! `hyperloop-<repository name>`) with a password derived from the token, so any host holding
//! the token logs in when another registered it first; it creates a room with an alias
//! derived from the journal (inviting `invite_user`), which the other hosts resolve and join.
//! With an access token (`token_env`) it uses that account. Credentials, room and thread roots
//! are cached in `.hyperloop/matrix-state.json` ([`state`]), so a restart neither registers
//! again nor reads the room for them.

mod client;
pub mod message;
mod state;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use hyperloop_shared::config::MatrixConfig;
use hyperloop_shared::event::Event;
use hyperloop_shared::model::TaskId;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::client::{Client, MatrixError, Session};
use self::message::{Message, Place};
use self::state::{MatrixState, StateFile};
use crate::ports::notifier::{Leading, Notifier};

pub use self::state::STATE_FILE;

/// Events waiting to be sent; beyond this they are dropped (and counted).
const QUEUE: usize = 1024;
/// First wait after a failed request; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// At shutdown, how long what is still queued may take to go out (one try each).
const DRAIN: Duration = Duration::from_secs(5);
/// Journal events read per request when catching up.
const JOURNAL_PAGE: usize = 256;
/// How many pages (of 100 of the bot's messages) of the room are read, at most, for the
/// cursor or a thread root.
const SCAN_PAGES: usize = 100;
/// Content fields that make the room the cursor.
pub const SEQ_FIELD: &str = "org.hyperloop.seq";
pub const JOURNAL_FIELD: &str = "org.hyperloop.journal";
pub const TASK_FIELD: &str = "org.hyperloop.task";

/// What the notifier needs, resolved from the config and the environment.
#[derive(Clone)]
pub struct Settings {
    pub homeserver: String,
    pub registration_token: Option<String>,
    pub access_token: Option<String>,
    pub bot_username: String,
    pub room_id: Option<String>,
    pub room_name: String,
    /// The local part of the alias of the room the bot makes: one per journal, so every
    /// host following the journal finds the same room.
    pub room_alias: String,
    pub invite_user: Option<String>,
    pub verbose: bool,
    /// Which journal the messages' sequence numbers count in (a digest of its identity).
    pub journal_id: String,
}

impl Settings {
    /// Reads the tokens from the environment variables the config names; `repo_name` gives
    /// the default bot name and the room's name, `journal` (where the event journal lives:
    /// the same on every host sharing it) the room's alias and the messages' journal mark.
    ///
    /// # Errors
    /// A named environment variable is unset or empty (the message names the variable only).
    pub fn resolve(config: &MatrixConfig, repo_name: &str, journal: &str) -> Result<Self, String> {
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
        let journal_id = hex(&Sha256::digest(journal.as_bytes()))[..16].to_owned();
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
            room_alias: format!("{}-{journal_id}", default_bot_name(repo_name)),
            invite_user: config.invite_user.clone(),
            verbose: config.verbose,
            journal_id,
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bot's password: HMAC-SHA256 of its user name keyed by the registration token, so
/// every host holding the token can log in to the account whichever host registered it.
fn bot_password(registration_token: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(registration_token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"hyperloop matrix bot password\0");
    mac.update(username.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Hands events to the background sender; never waits.
pub struct MatrixNotifier {
    queue: mpsc::Sender<Event>,
    terms: mpsc::UnboundedSender<Leading>,
    verbose: bool,
    dropped: AtomicU64,
    /// Set when an event did not fit: the sender reads what it missed from the journal.
    overflowed: Arc<AtomicBool>,
    /// The newest sequence number queued: `drain` waits for the sender to be done with it.
    queued: AtomicU64,
    progress: watch::Receiver<Progress>,
}

/// How far the sender got.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// The newest sequence number it is done with (sent, skipped or dropped).
    handled: u64,
    /// Its last send failed: waiting for it is pointless until the homeserver answers.
    failing: bool,
}

impl Notifier for MatrixNotifier {
    fn notify(&self, events: &[Event]) {
        for event in events {
            if !message::wanted(&event.kind, self.verbose) {
                continue;
            }
            match self.queue.try_send(event.clone()) {
                Ok(()) => {
                    self.queued.fetch_max(event.seq, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.overflowed.store(true, Ordering::Relaxed);
                    let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    // The 1st, 2nd, 4th, 8th… drop: an outage is visible without flooding
                    // the log.
                    if dropped.is_power_of_two() {
                        tracing::warn!(
                            seq = event.seq,
                            event = event.kind.name(),
                            dropped,
                            "the Matrix queue is full (homeserver slow or down); events are \
                             sent from the journal later, as long as it still keeps them"
                        );
                    }
                }
                // The sender ended (notifications refused for good; warned then).
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    fn lead(&self, term: &Leading) {
        let _ = self.terms.send(term.clone());
    }

    fn drain(&self, within: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let target = self.queued.load(Ordering::Relaxed);
        let mut progress = self.progress.clone();
        Box::pin(async move {
            let done = progress.wait_for(|p| p.handled >= target || p.failing);
            let _ = tokio::time::timeout(within, done).await;
        })
    }
}

/// The notifier, and the sender to run in the background until `stop` (then it sends what
/// is queued, briefly, and ends). The sender sets up and sends only while a term leads
/// ([`Notifier::lead`]).
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
    let (terms, terms_rx) = mpsc::unbounded_channel();
    let (progress, progress_rx) = watch::channel(Progress::default());
    let overflowed = Arc::new(AtomicBool::new(false));
    let notifier = MatrixNotifier {
        queue,
        terms,
        verbose: settings.verbose,
        dropped: AtomicU64::new(0),
        overflowed: overflowed.clone(),
        queued: AtomicU64::new(0),
        progress: progress_rx,
    };
    let sender = Sender {
        client: Client::new(&settings.homeserver),
        state: file.load(),
        file,
        settings,
        stop,
        overflowed,
        progress,
        done: None,
        roots_read: false,
    };
    Ok((notifier, sender.run(inbox, terms_rx)))
}

struct Sender {
    client: Client,
    settings: Settings,
    file: StateFile,
    state: MatrixState,
    stop: CancellationToken,
    overflowed: Arc<AtomicBool>,
    progress: watch::Sender<Progress>,
    /// The newest sequence number this term is done with (sent, skipped, or found in the
    /// room); `None` while the room holds nothing of this journal and no event came yet.
    done: Option<u64>,
    /// Whether this term has read the room to its beginning for thread roots.
    roots_read: bool,
}

/// Whether a failed request is tried again after a backoff or given up at once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tries {
    UntilStopped,
    Once,
}

enum Setup {
    Ready(Session, String),
    /// Refused for good: notifications are off for this run (warned).
    Refused,
    /// Stopped or deposed before it was done.
    Interrupted,
}

/// What the room is read back for.
#[derive(Clone, Copy)]
enum Want {
    /// The newest sequence number sent: the first page holding one is enough.
    Cursor,
    Root(TaskId),
}

/// One message for the room: an event's, or the note about events the journal lost.
struct Outgoing {
    seq: u64,
    /// Prefix of its transaction ids: the same for every try of this message from one
    /// session, so a retried send is deduplicated by the homeserver.
    txn: String,
    message: Message,
}

impl Sender {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Event>,
        mut terms: mpsc::UnboundedReceiver<Leading>,
    ) {
        let mut ready: Option<(Session, String)> = None;
        loop {
            // Between terms nothing is sent; what a term queued and left is sorted out by
            // sequence number when the next one starts.
            let term = tokio::select! {
                term = terms.recv() => term,
                () = self.stop.cancelled() => None,
            };
            let Some(term) = term else { return };
            let (session, room) = match ready.clone() {
                Some(ready) => ready,
                None => match self.set_up(&term.deposed).await {
                    Setup::Ready(session, room) => {
                        tracing::info!(room = %room, user = %session.user_id, "Matrix notifications are on");
                        ready = Some((session.clone(), room.clone()));
                        (session, room)
                    }
                    Setup::Refused => return,
                    Setup::Interrupted => continue,
                },
            };
            let mut caught_up = self.resume(&session, &room, &term).await;
            loop {
                let event = tokio::select! {
                    biased;
                    () = term.deposed.cancelled() => {
                        self.discard(&mut inbox);
                        break;
                    }
                    () = self.stop.cancelled() => {
                        let drain = async {
                            while let Ok(event) = inbox.try_recv() {
                                if !self.deliver(&session, &room, &event, &term.deposed, Tries::Once).await {
                                    break;
                                }
                            }
                        };
                        let _ = tokio::time::timeout(DRAIN, drain).await;
                        return;
                    }
                    event = inbox.recv() => event,
                };
                let Some(event) = event else { return };
                if !caught_up || self.overflowed.swap(false, Ordering::Relaxed) {
                    caught_up = self.catch_up(&session, &room, &term).await;
                }
                self.deliver(&session, &room, &event, &term.deposed, Tries::UntilStopped)
                    .await;
            }
        }
    }

    /// Sleeps `wait`; false when stopped or deposed first.
    async fn pause(&self, wait: Duration, deposed: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.stop.cancelled() => false,
            () = deposed.cancelled() => false,
        }
    }

    /// Deposed: what is queued is no longer this coordinator's to send; the next leader
    /// sends it from the journal.
    fn discard(&mut self, inbox: &mut mpsc::Receiver<Event>) {
        let mut discarded = 0;
        while let Ok(event) = inbox.try_recv() {
            self.progress.send_if_modified(|p| raise(p, event.seq));
            discarded += 1;
        }
        tracing::info!(
            discarded,
            "lost the leadership: Matrix messages are left to the next leader"
        );
    }

    /// Logs in (registering once) and finds the room, retrying transient failures until
    /// stopped or deposed.
    async fn set_up(&mut self, deposed: &CancellationToken) -> Setup {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.try_set_up().await {
                Ok((session, room)) => return Setup::Ready(session, room),
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
                    return Setup::Refused;
                }
            }
            if !self.pause(backoff, deposed).await {
                return Setup::Interrupted;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn try_set_up(&mut self) -> Result<(Session, String), MatrixError> {
        if self.state.homeserver != self.settings.homeserver {
            // Credentials, room and threads of another homeserver mean nothing here.
            self.state = MatrixState {
                homeserver: self.settings.homeserver.clone(),
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
                let session = self.register_or_log_in().await?;
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
                let room = self.find_or_create_room(&session).await?;
                self.state.room_id = Some(room.clone());
                self.state.threads.clear();
                self.save();
                room
            }
        };
        Ok((session, room))
    }

    /// Registers the bot, or logs in when it exists (registered by another host with the
    /// same derived password).
    async fn register_or_log_in(&self) -> Result<Session, MatrixError> {
        let Some(registration_token) = &self.settings.registration_token else {
            return Err(MatrixError::Refused {
                status: 0,
                message: "no access token and no registration token".to_owned(),
            });
        };
        let username = &self.settings.bot_username;
        let password = bot_password(registration_token, username);
        match self
            .client
            .register(username, &password, registration_token)
            .await
        {
            Ok(session) => {
                tracing::info!(user = %session.user_id, "registered the Matrix bot");
                Ok(session)
            }
            Err(e) if e.is_refusal("M_USER_IN_USE") => {
                let session =
                    self.client
                        .login(username, &password)
                        .await
                        .map_err(|e| match e {
                            MatrixError::Refused { status, message } => MatrixError::Refused {
                                status,
                                message: format!(
                                    "the Matrix user {username} exists, but the password derived \
                                 from the registration token does not log it in ({message}); \
                                 set `observability.matrix.bot_username` to an unused name, \
                                 or `token_env` to a variable holding that user's access token"
                                ),
                            },
                            e => e,
                        })?;
                tracing::info!(user = %session.user_id, "logged in as the existing Matrix bot");
                Ok(session)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the room under the journal's alias, or joins the room the alias names (made
    /// by another host).
    async fn find_or_create_room(&self, session: &Session) -> Result<String, MatrixError> {
        let server = session
            .user_id
            .split_once(':')
            .map_or("localhost", |(_, server)| server);
        let alias = format!("#{}:{server}", self.settings.room_alias);
        let created = self
            .client
            .create_room(
                session,
                &self.settings.room_name,
                &self.settings.room_alias,
                self.settings.invite_user.as_deref(),
            )
            .await;
        match created {
            Ok(room) => {
                tracing::info!(room = %room, %alias, "created the Matrix room");
                Ok(room)
            }
            Err(e) if e.is_refusal("M_ROOM_IN_USE") => {
                let room = self.client.resolve_alias(session, &alias).await?;
                self.client.join(session, &room).await?;
                tracing::info!(room = %room, %alias, "joined the Matrix room of this journal");
                Ok(room)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts a term: reads from the room how far the journal was sent, then sends the rest.
    /// False when it could not finish (stopped, deposed, or the journal unreadable for now).
    async fn resume(&mut self, session: &Session, room: &str, term: &Leading) -> bool {
        // Another leader may have sent since this process last did.
        self.done = None;
        self.roots_read = false;
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.scan(session, room, Want::Cursor).await {
                Ok(newest) => {
                    self.done = newest;
                    break;
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "cannot read the Matrix room's history; retrying");
                    if !self.pause(backoff, &term.deposed).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    // Without the cursor only this term's events are sent.
                    tracing::warn!(error = %e, "the homeserver refused to show the Matrix \
                        room's history; events an earlier run left unsent are not sent");
                    return true;
                }
            }
        }
        self.catch_up(session, room, term).await
    }

    /// Sends what the journal holds after `done`; with no cursor (a room that holds nothing
    /// of this journal) nothing older than this term is sent. False when it could not
    /// finish.
    async fn catch_up(&mut self, session: &Session, room: &str, term: &Leading) -> bool {
        let Some(mut after) = self.done else {
            return true;
        };
        let mut first = true;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let events = match (term.journal)(after, JOURNAL_PAGE).await {
                Ok(events) => events,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "cannot read the journal for Matrix; retrying");
                    if !self.pause(backoff, &term.deposed).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the journal for Matrix");
                    return false;
                }
            };
            if first {
                first = false;
                if let Some(oldest) = events.first().filter(|e| e.seq > after + 1)
                    && !self
                        .note_gap(session, room, after, oldest.seq, &term.deposed)
                        .await
                {
                    return false;
                }
            }
            let Some(last) = events.last() else {
                return true;
            };
            after = last.seq;
            for event in &events {
                if !self
                    .deliver(session, room, event, &term.deposed, Tries::UntilStopped)
                    .await
                {
                    return false;
                }
            }
        }
    }

    /// Events `sent + 1 .. oldest` left the journal before they were sent: one note says how
    /// many, marked with the last of them so it is sent once.
    async fn note_gap(
        &mut self,
        session: &Session,
        room: &str,
        sent: u64,
        oldest: u64,
        deposed: &CancellationToken,
    ) -> bool {
        let skipped = oldest - sent - 1;
        tracing::warn!(
            skipped,
            "journal events were dropped before Matrix got them"
        );
        let note = Outgoing {
            seq: oldest - 1,
            txn: format!("hl-{}-gap", oldest - 1),
            message: Message {
                place: Place::Room,
                body: format!(
                    "⚠️ {skipped} event(s) were not sent: the journal no longer keeps them \
                     (`dashboard.events_limit`)"
                ),
            },
        };
        if !self
            .send_out(session, room, &note, deposed, Tries::UntilStopped)
            .await
        {
            return false;
        }
        self.done = Some(note.seq);
        true
    }

    /// Sends `event`'s message unless it was sent before; returns false when it gave up
    /// (stopped, deposed, or one try failed).
    async fn deliver(
        &mut self,
        session: &Session,
        room: &str,
        event: &Event,
        deposed: &CancellationToken,
        tries: Tries,
    ) -> bool {
        let sent_before = self.done.is_some_and(|done| event.seq <= done);
        if !sent_before {
            if let Some(message) = message::render(event, self.settings.verbose) {
                let out = Outgoing {
                    seq: event.seq,
                    txn: format!("hl-{}-{}", event.seq, event.at_ms),
                    message,
                };
                if !self.send_out(session, room, &out, deposed, tries).await {
                    return false;
                }
            }
            self.done = Some(event.seq);
        }
        self.progress.send_if_modified(|p| raise(p, event.seq));
        true
    }

    /// Sends one message, retrying transient failures as `tries` says; a refusal is skipped.
    /// False when it gave up.
    async fn send_out(
        &mut self,
        session: &Session,
        room: &str,
        out: &Outgoing,
        deposed: &CancellationToken,
        tries: Tries,
    ) -> bool {
        let mut backoff = FIRST_BACKOFF;
        loop {
            // Deposed mid-request: given up at once. The homeserver may still store a
            // request already on its way after the next leader read the room; that message
            // is then sent twice (the one window left: Matrix has no conditional send).
            let result = tokio::select! {
                result = self.post(session, room, out) => result,
                () = deposed.cancelled() => return false,
            };
            let failing = matches!(&result, Err(e) if e.is_transient());
            self.progress.send_if_modified(|p| {
                let changed = p.failing != failing;
                p.failing = failing;
                changed
            });
            match result {
                Ok(()) => return true,
                Err(e) if e.is_transient() && tries == Tries::UntilStopped => {
                    tracing::warn!(
                        seq = out.seq,
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "Matrix send failed; retrying"
                    );
                    let wait = match e {
                        MatrixError::RateLimited(Some(wait)) => wait.max(backoff),
                        _ => backoff,
                    };
                    if !self.pause(wait, deposed).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(seq = out.seq, error = %e, "Matrix send failed");
                    return false;
                }
                Err(e) => {
                    // Refused for good: skipping it keeps the rest flowing.
                    tracing::warn!(
                        seq = out.seq,
                        error = %e,
                        "the homeserver refused a Matrix message; skipping it"
                    );
                    return true;
                }
            }
        }
    }

    /// Posts one message in its place, opening the task's thread first if needed.
    async fn post(
        &mut self,
        session: &Session,
        room: &str,
        out: &Outgoing,
    ) -> Result<(), MatrixError> {
        let journal = &self.settings.journal_id;
        let txn = |part: &str| format!("{}-{part}", out.txn);
        let body = &out.message.body;
        match out.message.place {
            Place::Room => {
                let marks = marks(journal, Some(out.seq), None);
                self.client
                    .send(session, room, &txn("m"), body, None, marks)
                    .await?;
            }
            Place::Root(task) => {
                let marks = marks(journal, Some(out.seq), Some(task));
                let root = self
                    .client
                    .send(session, room, &txn("m"), body, None, marks)
                    .await?;
                self.state.threads.insert(task.to_string(), root);
                self.save();
            }
            Place::Thread(task) => {
                let marks = marks(journal, Some(out.seq), None);
                let root = self.thread_root(session, room, task, &txn("root")).await?;
                self.client
                    .send(session, room, &txn("m"), body, Some(&root), marks)
                    .await?;
            }
        }
        Ok(())
    }

    /// The task's thread root: cached, found in the room, or (its creation was never sent)
    /// a fallback root sent now. The fallback carries no sequence number: it is not the
    /// event's message, which follows in the thread.
    async fn thread_root(
        &mut self,
        session: &Session,
        room: &str,
        task: TaskId,
        txn: &str,
    ) -> Result<String, MatrixError> {
        let key = task.to_string();
        if !self.state.threads.contains_key(&key) && !self.roots_read {
            self.scan(session, room, Want::Root(task)).await?;
        }
        if let Some(root) = self.state.threads.get(&key) {
            return Ok(root.clone());
        }
        let marks = marks(&self.settings.journal_id, None, Some(task));
        let root = self
            .client
            .send(
                session,
                room,
                txn,
                &message::fallback_root(task),
                None,
                marks,
            )
            .await?;
        self.state.threads.insert(key, root.clone());
        self.save();
        Ok(root)
    }

    /// Reads the bot's messages of this journal in the room, newest first, until `want` is
    /// met or the room's beginning (at most [`SCAN_PAGES`] pages); records the thread roots
    /// seen on the way and returns the newest sequence number seen.
    async fn scan(
        &mut self,
        session: &Session,
        room: &str,
        want: Want,
    ) -> Result<Option<u64>, MatrixError> {
        let mut from: Option<String> = None;
        let mut newest: Option<u64> = None;
        let mut roots_found = false;
        for _ in 0..SCAN_PAGES {
            let page = self
                .client
                .messages_back(session, room, &session.user_id, from.as_deref())
                .await?;
            for message in &page.messages {
                let content = &message["content"];
                if content[JOURNAL_FIELD] != self.settings.journal_id.as_str() {
                    continue;
                }
                if let Some(seq) = content[SEQ_FIELD].as_u64() {
                    newest = newest.max(Some(seq));
                }
                if let (Some(task), Some(id)) =
                    (content[TASK_FIELD].as_str(), message["event_id"].as_str())
                {
                    // Newest first: a later fallback root wins over an older one.
                    self.state
                        .threads
                        .entry(task.to_owned())
                        .or_insert_with(|| id.to_owned());
                    roots_found = true;
                }
            }
            let met = match want {
                Want::Cursor => newest.is_some(),
                Want::Root(task) => self.state.threads.contains_key(&task.to_string()),
            };
            match page.next {
                Some(next) if !met => from = Some(next),
                next => {
                    if next.is_none() {
                        self.roots_read = true;
                    }
                    if roots_found {
                        self.save();
                    }
                    return Ok(newest);
                }
            }
        }
        tracing::warn!(
            pages = SCAN_PAGES,
            "read the Matrix room this far back without finding what this journal sent; \
             going on as if it sent nothing older"
        );
        self.roots_read = true;
        if roots_found {
            self.save();
        }
        Ok(newest)
    }

    fn save(&self) {
        if let Err(e) = self.file.save(&self.state) {
            tracing::warn!(error = %e, file = STATE_FILE, "cannot save the Matrix state");
        }
    }
}

/// What makes the room the cursor: the journal, the event's sequence number, the task whose
/// thread a root opens.
fn marks(journal: &str, seq: Option<u64>, root_of: Option<TaskId>) -> Map<String, Value> {
    let mut marks = Map::new();
    marks.insert(JOURNAL_FIELD.to_owned(), Value::from(journal));
    if let Some(seq) = seq {
        marks.insert(SEQ_FIELD.to_owned(), Value::from(seq));
    }
    if let Some(task) = root_of {
        marks.insert(TASK_FIELD.to_owned(), Value::from(task.to_string()));
    }
    marks
}

/// Raises `progress.handled` to `seq`; whether it changed.
fn raise(progress: &mut Progress, seq: u64) -> bool {
    let raised = seq > progress.handled;
    progress.handled = progress.handled.max(seq);
    raised
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
            room_alias: "hyperloop-repo-0123".into(),
            invite_user: None,
            verbose: false,
            journal_id: "0123".into(),
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
    fn the_bot_password_is_derived_from_the_token_and_the_name() {
        let password = bot_password("token", "hyperloop-widgets");
        assert_eq!(password, bot_password("token", "hyperloop-widgets"));
        assert_eq!(password.len(), 64);
        assert_ne!(password, bot_password("other-token", "hyperloop-widgets"));
        assert_ne!(password, bot_password("token", "hyperloop-gadgets"));
    }

    #[test]
    fn the_default_bot_name_is_a_valid_matrix_user_name() {
        assert_eq!(default_bot_name("My Repo!"), "hyperloop-my-repo-");
        assert_eq!(default_bot_name("widgets"), "hyperloop-widgets");
    }
}
