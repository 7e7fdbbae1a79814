//! The remote worker's connection to its coordinators.
//!
//! [`connect_loop`] finds the leader among the `--join` URLs, bridges each `Join` stream to
//! a fresh [`Link`] handed to [`hyperloop_worker::serve_links`], and reconnects when a
//! stream ends. The protocol itself (Hello with held attempts, resending results) is
//! `serve_links`' business; this module only decides where to connect next:
//!
//! - `NotLeader{leader_address}` → that address next, at once (an empty address, or a run of
//!   redirects that never reaches a leader: the `--join` list with backoff).
//! - A stream that was registered and then ended → the same coordinator first (it may have
//!   blipped), then the list. Backoff restarts from its floor after every registration.
//! - Unreachable, TLS failure, stream error → the next URL in the list after a backoff of
//!   100 ms doubling to 1 s, with jitter so a fleet of workers does not reconnect in step.
//!   Each failure is logged at warn, at most once per [`REPEAT_WARNING_EVERY`] for the same
//!   URL and cause.
//! - A refusal no retry can fix (wrong join token, protocol version, invalid Hello) ends the
//!   process at once with exit 2 and the coordinator's message.
//! - Before the first registration the worker gives up after `--connect-timeout` (exit 1,
//!   naming every URL and why it failed): a typo in `--join` must not hang a deployment
//!   silently. After that it retries forever, because it may hold running steps.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use hyperloop_proto::v1::coordinator_message::Body;
use hyperloop_proto::v1::worker_service_client::WorkerServiceClient;
use hyperloop_shared::duration::human;
use hyperloop_worker::Link;
use hyperloop_worker::link::CoordinatorEnd;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Exit codes (PRODUCT.md §11).
pub const RUNTIME: u8 = 1;
pub const USAGE: u8 = 2;

/// Why the worker stopped, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// `--join`, in order.
    pub urls: Vec<String>,
    /// Applied to `https://` URLs (leader addresses included).
    pub tls: Option<ClientTlsConfig>,
    /// Give up if no coordinator registers this worker within this time (None: never).
    pub connect_timeout: Option<Duration>,
}

/// First retry delay, and the delay after a registration.
const BACKOFF_FLOOR: Duration = Duration::from_millis(100);
/// Low on purpose: a leader failover takes a few seconds (the etcd lease), and a worker that
/// backed off further would keep the new leader waiting. A reconnect costs one TCP (and TLS)
/// handshake, cheap enough for hundreds of workers once a second.
const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// The same failure at the same URL is logged at warn at most this often.
const REPEAT_WARNING_EVERY: Duration = Duration::from_secs(30);
/// TCP connect and TLS handshake, each. Loopback and LAN answer in milliseconds.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings find a coordinator that vanished without closing the connection (host down,
/// partition) long before TCP would.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Redirects followed at once; more in a row (followers pointing at each other mid-election)
/// wait for the backoff like any failure.
const MAX_IMMEDIATE_REDIRECTS: u32 = 3;

/// How one connection attempt ended.
#[derive(Debug)]
enum Outcome {
    /// Could not connect, or the stream failed before registration.
    Failed(String),
    /// Registered, later ended for this reason.
    Registered(String),
    /// A follower answered; the leader's address (empty during an election).
    NotLeader(String),
    /// A refusal no retry fixes.
    Refused(tonic::Status),
}

/// Connects, hands each stream to the worker as a [`Link`] over `links`, and reconnects until
/// the worker is gone (Ok) or a refusal or the startup deadline ends the process (Err).
pub async fn connect_loop(config: JoinConfig, links: mpsc::Sender<Link>) -> Result<(), Failure> {
    let started = Instant::now();
    let mut registered_once = false;
    let mut backoff = Backoff::default();
    let mut warnings = WarningLimiter::default();
    let mut last_errors: BTreeMap<String, String> = BTreeMap::new();
    let mut next = 0;
    let mut redirect: Option<String> = None;
    let mut redirects = 0;
    loop {
        let url = redirect.take().unwrap_or_else(|| {
            let url = config.urls[next % config.urls.len()].clone();
            next += 1;
            url
        });
        let outcome = match dial(&config, &url).await {
            Err(cause) => Outcome::Failed(cause),
            Ok(channel) => {
                let (link, end) = Link::pair();
                if links.send(link).await.is_err() {
                    return Ok(());
                }
                bridge(channel, end, url.starts_with("https://")).await
            }
        };
        let mut wait = true;
        match outcome {
            Outcome::Refused(status) => return Err(refusal(&url, &status)),
            Outcome::Registered(ended) => {
                registered_once = true;
                backoff = Backoff::default();
                redirects = 0;
                tracing::info!(coordinator = %url, "stream ended ({ended}); reconnecting");
                redirect = Some(url);
            }
            Outcome::NotLeader(leader) if !leader.is_empty() && leader != url => {
                redirects += 1;
                tracing::info!(coordinator = %url, %leader, "not the leader; following the redirect");
                wait = redirects > MAX_IMMEDIATE_REDIRECTS;
                redirect = Some(leader);
            }
            Outcome::NotLeader(_) => {
                redirects = 0;
                tracing::info!(coordinator = %url, "not the leader and no leader known yet (election in progress)");
            }
            Outcome::Failed(cause) => {
                redirects = 0;
                warnings.warn(&url, &cause);
                // Keep the failure that names a fix over a vaguer one that followed it.
                let named_fix = |c: &str| hint(c, url.starts_with("https://")).is_some();
                if named_fix(&cause) || !last_errors.get(&url).is_some_and(|c| named_fix(c)) {
                    last_errors.insert(url, cause);
                }
            }
        }
        if !registered_once
            && let Some(limit) = config.connect_timeout
            && started.elapsed() >= limit
        {
            return Err(give_up(&config.urls, limit, &last_errors));
        }
        if wait {
            let mut delay = backoff.next_delay();
            if !registered_once && let Some(limit) = config.connect_timeout {
                delay = delay.min(limit.saturating_sub(started.elapsed()));
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// Opens a connection (TCP, and TLS for `https://`).
async fn dial(config: &JoinConfig, url: &str) -> Result<Channel, String> {
    let endpoint = endpoint(url, config.tls.as_ref())?;
    let https = url.starts_with("https://");
    endpoint
        .connect()
        .await
        .map_err(|e| explain(&error_chain(&e), https))
}

/// The tonic endpoint for `url`, with TLS for `https://`. Also used to check the TLS flags at
/// startup (tonic parses the PEM files here).
pub fn endpoint(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?
        .connect_timeout(DIAL_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    if url.starts_with("https://") {
        let Some(tls) = tls else {
            return Err(format!(
                "{url} uses TLS: pass --tls-ca FILE, the CA certificate (PEM) that signed the \
                 coordinator's certificate"
            ));
        };
        endpoint = endpoint
            .tls_config(tls.clone().timeout(DIAL_TIMEOUT))
            .map_err(|e| {
                format!(
                    "invalid TLS settings ({}); check that --tls-ca, --tls-cert and --tls-key are \
                     PEM files",
                    error_chain(&e)
                )
            })?;
    }
    Ok(endpoint)
}

/// Carries one `Join` call between the gRPC stream and `end`, until either side ends it.
async fn bridge(channel: Channel, end: CoordinatorEnd, https: bool) -> Outcome {
    let CoordinatorEnd {
        outbound: to_worker,
        inbound: from_worker,
    } = end;
    let mut client = WorkerServiceClient::new(channel)
        .max_decoding_message_size(hyperloop_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(hyperloop_proto::MAX_MESSAGE_BYTES);
    // The coordinator reads Hello before it answers, so a refusal arrives as this status.
    let response = tokio::select! {
        response = client.join(ReceiverStream::new(from_worker)) => response,
        () = to_worker.closed() => return Outcome::Failed("the worker closed the stream".into()),
    };
    let mut inbound = match response {
        Ok(response) => response.into_inner(),
        Err(status) => return from_status(status, https),
    };
    let mut registered = false;
    let mut leader = None;
    let ended = loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = to_worker.closed() => break "the worker closed it".to_owned(),
        };
        match message {
            Ok(Some(message)) => {
                match &message.body {
                    Some(Body::Registered(_)) => registered = true,
                    Some(Body::NotLeader(n)) => leader = Some(n.leader_address.clone()),
                    _ => {}
                }
                if to_worker.send(message).await.is_err() {
                    break "the worker closed it".to_owned();
                }
            }
            Ok(None) => break "the coordinator closed it".to_owned(),
            Err(status) => match from_status(status, https) {
                Outcome::Failed(cause) => break cause,
                refused => return refused,
            },
        }
    };
    match (leader, registered) {
        (Some(leader), _) => Outcome::NotLeader(leader),
        (None, true) => Outcome::Registered(ended),
        (None, false) => Outcome::Failed(ended),
    }
}

fn from_status(status: tonic::Status, https: bool) -> Outcome {
    match status.code() {
        Code::Unauthenticated | Code::FailedPrecondition | Code::InvalidArgument => {
            Outcome::Refused(status)
        }
        code => Outcome::Failed(explain(&status_text(code, &status), https)),
    }
}

/// `Unknown: transport error: connection error: received fatal alert: ...` (tonic's Display
/// of a Status repeats the code, message and source in debug form).
fn status_text(code: Code, status: &tonic::Status) -> String {
    let message = status.message();
    match std::error::Error::source(status).map(error_chain) {
        Some(chain) if chain.starts_with(message) => format!("{code:?}: {chain}"),
        Some(chain) => format!("{code:?}: {message}: {chain}"),
        None => format!("{code:?}: {message}"),
    }
}

/// The exit-2 message for a refusal, naming the fix (unless the coordinator's message already
/// does). The coordinator's message never holds the token (and neither does anything here).
fn refusal(url: &str, status: &tonic::Status) -> Failure {
    let fix = match status.code() {
        Code::Unauthenticated if !status.message().contains("--token") => {
            "; check the join token (--token or HYPERLOOP_TOKEN) against the coordinator's"
        }
        Code::FailedPrecondition => "; run a worker and coordinator of the same release",
        _ => "",
    };
    Failure {
        code: USAGE,
        message: format!(
            "the coordinator at {url} refused to let this worker join: {}{fix}",
            status.message()
        ),
    }
}

fn give_up(urls: &[String], limit: Duration, errors: &BTreeMap<String, String>) -> Failure {
    let tried: Vec<String> = urls
        .iter()
        .map(|url| match errors.get(url) {
            Some(cause) => format!("{url}: {cause}"),
            None => url.clone(),
        })
        .collect();
    Failure {
        code: RUNTIME,
        message: format!(
            "cannot reach a coordinator within {} ({}); check --join and that \
             `hyperloop-coordinator run` is listening there (--connect-timeout 0 waits forever)",
            human(limit),
            tried.join("; ")
        ),
    }
}

/// Adds the likely fix to a connection failure that names a TLS problem.
fn explain(cause: &str, https: bool) -> String {
    match hint(cause, https) {
        Some(hint) => format!("{cause} ({hint})"),
        None => cause.to_owned(),
    }
}

fn hint(cause: &str, https: bool) -> Option<&'static str> {
    if cause.contains("CertificateRequired") || cause.contains("certificate required") {
        Some(
            "the coordinator requires a client certificate: pass --tls-cert and --tls-key \
             signed by a CA it trusts",
        )
    } else if cause.contains("NotValidForName") {
        Some(
            "the coordinator's certificate does not name the host in the URL: join by a name \
             it lists, or set --tls-server-name",
        )
    } else if cause.contains("invalid peer certificate") || cause.contains("UnknownIssuer") {
        Some(
            "the coordinator's certificate is not signed by the --tls-ca CA: pass the CA \
             that signed it",
        )
    } else if cause.contains("received fatal alert") {
        Some(
            "the coordinator rejected the TLS handshake: check that --tls-cert/--tls-key are \
             signed by a CA the coordinator trusts",
        )
    } else if cause.contains("InvalidContentType") || cause.contains("corrupt message") {
        Some("the coordinator does not speak TLS there: join it with http://")
    } else if https && cause.contains("connection closed") {
        // TLS 1.3: a missing client certificate often surfaces as a bare close.
        Some(
            "closed during the TLS exchange: if the coordinator requires mutual TLS, pass \
             --tls-cert and --tls-key signed by a CA it trusts",
        )
    } else {
        None
    }
}

/// An error with its causes (tonic's top-level message is just "transport error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut last = text.clone();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper and tonic repeat a cause's text one level up; print it once.
        if cause_text != last && !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        last = cause_text;
        source = cause.source();
    }
    text
}

/// Exponential backoff with jitter: 100 ms doubling to 1 s, each delay drawn from its upper
/// half so workers that lost the same coordinator spread out.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FLOOR,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_CAP);
        // RandomState is seeded randomly per instance: enough jitter without a rand crate.
        let random = RandomState::new().hash_one(0u8);
        let half = base / 2;
        half + half.mul_f64((random % 1000) as f64 / 1000.0)
    }
}

/// Logs a connection failure at warn unless the same URL failed the same way recently.
#[derive(Debug, Default)]
struct WarningLimiter {
    last: HashMap<String, (String, Instant)>,
}

impl WarningLimiter {
    fn warn(&mut self, url: &str, cause: &str) {
        let now = Instant::now();
        let repeat = self.last.get(url).is_some_and(|(last_cause, at)| {
            last_cause == cause && now.duration_since(*at) < REPEAT_WARNING_EVERY
        });
        if repeat {
            tracing::debug!(coordinator = url, %cause, "cannot connect");
        } else {
            tracing::warn!(coordinator = url, %cause, "cannot connect; retrying with backoff");
            self.last.insert(url.to_owned(), (cause.to_owned(), now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::default();
        let mut base = BACKOFF_FLOOR;
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(delay >= base / 2 && delay <= base, "{delay:?} for {base:?}");
            base = (base * 2).min(BACKOFF_CAP);
        }
        assert_eq!(backoff.next, BACKOFF_CAP);
    }

    #[test]
    fn tls_failures_name_the_fix() {
        assert!(explain("received fatal alert: CertificateRequired", true).contains("--tls-cert"));
        assert!(explain("invalid peer certificate: UnknownIssuer", true).contains("--tls-ca"));
        assert!(explain("NotValidForName", true).contains("--tls-server-name"));
        assert_eq!(explain("connection refused", true), "connection refused");
        assert_eq!(explain("connection closed", false), "connection closed");
    }

    #[test]
    fn a_refused_token_names_the_flag_once() {
        let bare = refusal("http://c:1", &tonic::Status::unauthenticated("bad token"));
        assert_eq!(bare.code, USAGE);
        assert!(
            bare.message.contains("join token (--token"),
            "{}",
            bare.message
        );
        let named =
            tonic::Status::unauthenticated("the join token was refused; pass it with --token");
        let message = refusal("http://c:1", &named).message;
        assert_eq!(message.matches("--token").count(), 1, "{message}");
    }

    #[test]
    fn https_without_a_ca_names_the_flag() {
        let err = endpoint("https://c:1", None).unwrap_err();
        assert!(err.contains("--tls-ca"), "{err}");
        endpoint("http://c:1", None).unwrap();
    }
}
