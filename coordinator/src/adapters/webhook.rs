//! [`Webhooks`]: a [`Notifier`] that POSTs each event as a JSON object to the URLs under
//! `notifications.webhooks`, so Slack, PagerDuty or an operator's own tools can follow a
//! repository without new code.
//!
//! Each delivery carries `X-Hyperloop-Event` (the event name), `X-Hyperloop-Delivery` (the
//! repository and the event's journal number: unique, and the same on a retry) and, with a
//! secret, `X-Hyperloop-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, the scheme
//! GitHub uses for its webhooks, so receivers can verify with code they already have.
//!
//! `notify` never waits: each sink has a bounded queue, drained by its own task, which retries
//! a failed delivery (network error, 429, 5xx) with exponential backoff and gives up on other
//! answers. When the queue is full the event is dropped for that sink and counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use hyperloop_shared::config::WebhookConfig;
use hyperloop_shared::event::Event;
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::ports::notifier::Notifier;

/// Events waiting per sink; beyond this a slow or dead receiver loses events, never the loop.
const QUEUE: usize = 1024;
/// Attempts per delivery (the first included).
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<bytes::Bytes>>;

/// Every configured webhook.
pub struct Webhooks {
    // std Mutex: never held across an await (drain takes the sinks out first).
    sinks: Mutex<Vec<Sink>>,
}

struct Sink {
    name: String,
    verbose: bool,
    queue: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhooks {
    /// Starts one delivery task per webhook (call inside a tokio runtime). `repository`
    /// names the repository in every body and delivery id.
    pub fn start(
        hooks: &std::collections::BTreeMap<String, WebhookConfig>,
        repository: &str,
    ) -> Self {
        let client = https_client();
        let sinks = hooks
            .iter()
            .map(|(name, hook)| {
                let (queue, events) = mpsc::channel(QUEUE);
                let delivery = Delivery {
                    name: name.clone(),
                    url: hook.url.clone(),
                    secret: hook.secret.as_ref().map(|s| s.expose().as_bytes().to_vec()),
                    repository: repository.to_owned(),
                    client: client.clone(),
                };
                let task = tokio::spawn(delivery.run(events));
                tracing::info!(webhook = %name, url = %redact_url(&hook.url), signed = hook.secret.is_some(), "events are sent to a webhook");
                Sink {
                    name: name.clone(),
                    verbose: hook.verbose,
                    queue,
                    dropped: Arc::default(),
                    task,
                }
            })
            .collect();
        Self {
            sinks: Mutex::new(sinks),
        }
    }
}

impl Notifier for Webhooks {
    fn notify(&self, events: &[Event]) {
        let sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        for sink in sinks.iter() {
            for event in events {
                let wanted = event.kind.audience().reaches(sink.verbose);
                if wanted && sink.queue.try_send(event.clone()).is_err() {
                    let dropped = sink.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    // Said at 1, 2, 4, 8, ... drops: visible without flooding the log.
                    if dropped.is_power_of_two() {
                        tracing::warn!(webhook = %sink.name, dropped, "a webhook is not keeping up; events for it are dropped");
                    }
                }
            }
        }
    }

    fn drain(&self, within: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        // Dropping a sink's queue ends its task once the backlog is delivered.
        let sinks = std::mem::take(&mut *self.sinks.lock().unwrap_or_else(PoisonError::into_inner));
        Box::pin(async move {
            let all = async {
                for sink in sinks {
                    drop(sink.queue);
                    let _ = sink.task.await;
                }
            };
            if tokio::time::timeout(within, all).await.is_err() {
                tracing::warn!(
                    "webhook deliveries still pending at shutdown were dropped after {}s",
                    within.as_secs()
                );
            }
        })
    }
}

/// What one sink's task needs to deliver.
struct Delivery {
    name: String,
    url: String,
    secret: Option<Vec<u8>>,
    repository: String,
    client: HttpsClient,
}

impl Delivery {
    async fn run(self, mut events: mpsc::Receiver<Event>) {
        while let Some(event) = events.recv().await {
            let body = body(&event, &self.repository);
            let id = format!("{}#{}", self.repository, event.seq);
            let mut backoff = FIRST_BACKOFF;
            for attempt in 1..=ATTEMPTS {
                match self.send(&event, &id, &body).await {
                    Ok(()) => break,
                    Err(Failure::Final(why)) => {
                        tracing::warn!(webhook = %self.name, seq = event.seq, reason = %why, "a webhook refused an event; it is not sent again");
                        break;
                    }
                    Err(Failure::Retry { why, after }) => {
                        if attempt == ATTEMPTS {
                            tracing::warn!(webhook = %self.name, seq = event.seq, reason = %why, attempts = ATTEMPTS, "a webhook delivery failed; the event is dropped");
                            break;
                        }
                        tokio::time::sleep(after.unwrap_or(backoff)).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    async fn send(&self, event: &Event, id: &str, body: &[u8]) -> Result<(), Failure> {
        let mut request = http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("hyperloop/", env!("CARGO_PKG_VERSION")),
            )
            .header("X-Hyperloop-Event", event.kind.name())
            .header("X-Hyperloop-Delivery", id);
        if let Some(secret) = &self.secret {
            request = request.header("X-Hyperloop-Signature-256", signature(secret, body));
        }
        let request = request
            .body(Full::new(bytes::Bytes::copy_from_slice(body)))
            .map_err(|e| Failure::Final(format!("cannot build the request: {e}")))?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request)).await;
        let response = match answer {
            Err(_) => {
                return Err(Failure::Retry {
                    why: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
                    after: None,
                });
            }
            Ok(Err(e)) => {
                return Err(Failure::Retry {
                    why: crate::tls::error_chain(&e),
                    after: None,
                });
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_BACKOFF));
        // Read the body so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
            Err(Failure::Retry {
                why: format!("answered {status}"),
                after,
            })
        } else {
            Err(Failure::Final(format!("answered {status}")))
        }
    }
}

enum Failure {
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Final(String),
}

/// The event as the journal stores it (flat: `event`, `seq`, `at_ms`, `task`, its fields),
/// plus the repository it is about.
fn body(event: &Event, repository: &str) -> Vec<u8> {
    let mut value = serde_json::to_value(event).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("repository".to_owned(), repository.into());
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// `sha256=<lowercase hex of HMAC-SHA256(secret, body)>`.
fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The URL without user information or query (tokens often live there), for logs.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    format!("{scheme}://{rest}")
}

fn https_client() -> HttpsClient {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
        .expect("the ring provider supports the default protocol versions")
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn urls_are_logged_without_credentials_or_query() {
        assert_eq!(
            redact_url("https://user:tok@hooks.example.com/h?key=abc"),
            "https://hooks.example.com/h"
        );
        assert_eq!(redact_url("http://127.0.0.1:9/a"), "http://127.0.0.1:9/a");
    }
}
