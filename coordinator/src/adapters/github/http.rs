//! Requests to the GitHub REST and GraphQL APIs through octocrab's client (authentication,
//! base URI, timeouts), with what polling GitHub politely needs on top:
//! - conditional GETs: the last `ETag` and body of every GET are kept and sent back as
//!   `If-None-Match`; a `304 Not Modified` (free against the rate limit) reuses the body;
//! - rate limits: a 403/429 carrying `Retry-After`, `x-ratelimit-remaining: 0` or GitHub's
//!   secondary-rate-limit message is waited out and retried when the wait is short, and
//!   otherwise surfaces as [`ForgeError::RateLimited`] with the wait;
//! - 5xx and connection failures of idempotent requests are retried with exponential backoff.
//!   A `POST` is not retried here (GitHub may have done it): the callers' operations are
//!   idempotent and are retried as a whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{ACCEPT, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use octocrab::Octocrab;
use serde::de::DeserializeOwned;

use super::stats::ApiStats;
use crate::ports::forge::ForgeError;

/// How hard to try before giving a transient error back to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per request, the first included.
    pub attempts: u32,
    /// First backoff after a 5xx or a connection failure; doubles per try.
    pub backoff: Duration,
    /// A rate-limit wait up to this long is slept here; a longer one is returned as
    /// [`ForgeError::RateLimited`] so only the task that needed GitHub waits.
    pub max_inline_wait: Duration,
    /// Wait after a secondary rate limit that names no time (GitHub: at least a minute).
    pub secondary_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            backoff: Duration::from_millis(500),
            max_inline_wait: Duration::from_secs(10),
            secondary_wait: Duration::from_secs(60),
        }
    }
}

/// A response read to the end.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Body,
}

/// A response body, shared with the ETag cache.
pub(crate) type Body = Arc<Vec<u8>>;

/// Conditional-request entries kept before the cache starts over.
const CACHE_ENTRIES: usize = 2048;

#[derive(Debug, Clone)]
struct Cached {
    etag: HeaderValue,
    body: Body,
}

pub(crate) struct Api {
    rest: Octocrab,
    graphql: Octocrab,
    policy: RetryPolicy,
    /// Per GET path and query: the last ETag and body.
    cache: Mutex<HashMap<String, Cached>>,
    /// Every call sent, and the rate limit GitHub reports.
    pub stats: Arc<ApiStats>,
    /// `owner/repo`, for messages.
    pub repo: String,
    /// The API base URL, for messages.
    pub api_url: String,
}

/// The GitHub error body: `{"message": ..., "errors": [{"message": ..., "code": ...}]}`.
#[derive(serde::Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, ForgeError> {
        serde_json::from_slice(&self.body).map_err(|e| ForgeError::Decode {
            what: what.to_owned(),
            message: e.to_string(),
        })
    }

    /// GitHub's error message, with the details of `errors`.
    pub fn message(&self) -> String {
        let body: ErrorBody = serde_json::from_slice(&self.body).unwrap_or_default();
        let mut message = if body.message.is_empty() {
            String::from_utf8_lossy(&self.body)
                .trim()
                .chars()
                .take(300)
                .collect()
        } else {
            body.message
        };
        let details: Vec<String> = body
            .errors
            .iter()
            .filter_map(|e| {
                e.get("message")
                    .and_then(|m| m.as_str())
                    .or_else(|| e.get("code").and_then(|c| c.as_str()))
                    .map(str::to_owned)
            })
            .collect();
        if !details.is_empty() {
            message.push_str(": ");
            message.push_str(&details.join("; "));
        }
        if message.is_empty() {
            message = self
                .status
                .canonical_reason()
                .unwrap_or("no message")
                .to_owned();
        }
        message
    }

    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The error for an unsuccessful reply.
    pub fn error(&self, api: &Api, what: &str) -> ForgeError {
        let message = self.message();
        match self.status {
            StatusCode::UNAUTHORIZED => ForgeError::BadCredentials { message },
            StatusCode::FORBIDDEN => ForgeError::Forbidden {
                repo: api.repo.clone(),
                action: what.to_owned(),
                message,
            },
            StatusCode::NOT_FOUND => ForgeError::NotFound {
                what: what.to_owned(),
                message,
            },
            status => ForgeError::Rejected {
                what: what.to_owned(),
                status: status.as_u16(),
                message,
            },
        }
    }

    /// `self` when successful, else its error.
    pub fn ok(self, api: &Api, what: &str) -> Result<Reply, ForgeError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(self.error(api, what))
        }
    }
}

/// Why a 403/429 is a rate limit, and how long to wait.
fn rate_limit_wait(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    policy: &RetryPolicy,
    attempt: u32,
) -> Option<(Duration, bool)> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let number =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    if let Some(secs) = number(RETRY_AFTER.as_str()) {
        return Some((Duration::from_secs(secs), true));
    }
    if number("x-ratelimit-remaining") == Some(0) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let reset = number("x-ratelimit-reset").unwrap_or(now + 60);
        return Some((Duration::from_secs(reset.saturating_sub(now) + 1), false));
    }
    let text = String::from_utf8_lossy(body).to_lowercase();
    if status == StatusCode::TOO_MANY_REQUESTS || text.contains("secondary rate limit") {
        // No time given: wait at least a minute, longer each time (GitHub's guidance).
        let factor = 1u32 << attempt.min(4);
        return Some((policy.secondary_wait * factor, true));
    }
    None
}

impl Api {
    pub fn new(
        rest: Octocrab,
        graphql: Octocrab,
        policy: RetryPolicy,
        repo: String,
        api_url: String,
    ) -> Self {
        Api {
            rest,
            graphql,
            policy,
            cache: Mutex::new(HashMap::new()),
            stats: Arc::default(),
            repo,
            api_url,
        }
    }

    /// Sends a REST request (`path` relative to the API base, query included).
    pub async fn rest(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<Reply, ForgeError> {
        self.send(false, method, path, body, what).await
    }

    /// `GET` that must succeed, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, ForgeError> {
        self.rest(Method::GET, path, None, what)
            .await?
            .ok(self, what)?
            .json(what)
    }

    /// Every page of a list (`per_page=100`), in order.
    pub async fn get_all<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<Vec<T>, ForgeError> {
        const PER_PAGE: usize = 100;
        const MAX_PAGES: usize = 30;
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let items: Vec<T> = self
                .get(&format!("{path}{sep}per_page={PER_PAGE}&page={page}"), what)
                .await?;
            let done = items.len() < PER_PAGE;
            all.extend(items);
            if done {
                break;
            }
        }
        Ok(all)
    }

    /// A GraphQL query or mutation; GraphQL errors become [`ForgeError::Rejected`].
    pub async fn graphql<T: DeserializeOwned>(
        &self,
        query: &str,
        variables: serde_json::Value,
        what: &str,
    ) -> Result<T, ForgeError> {
        #[derive(serde::Deserialize)]
        struct Response<T> {
            data: Option<T>,
            #[serde(default)]
            errors: Vec<GraphqlError>,
        }
        #[derive(serde::Deserialize)]
        struct GraphqlError {
            message: String,
            #[serde(rename = "type", default)]
            kind: Option<String>,
        }
        let payload = serde_json::json!({ "query": query, "variables": variables });
        let reply = self
            .send(true, Method::POST, "/graphql", Some(&payload), what)
            .await?
            .ok(self, what)?;
        let response: Response<T> = reply.json(what)?;
        if let Some(limited) = response
            .errors
            .iter()
            .find(|e| e.kind.as_deref() == Some("RATE_LIMITED"))
        {
            tracing::debug!(message = %limited.message, "GraphQL rate limited");
            return Err(ForgeError::RateLimited {
                what: what.to_owned(),
                retry_after: self.policy.secondary_wait,
                secondary: false,
            });
        }
        match (response.data, response.errors.is_empty()) {
            (Some(data), true) => Ok(data),
            (_, _) => Err(ForgeError::Rejected {
                what: what.to_owned(),
                status: reply.status.as_u16(),
                message: response
                    .errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    /// The one place every request goes through: retries, the ETag cache and the counting.
    async fn send(
        &self,
        graphql: bool,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<Reply, ForgeError> {
        let (client, operation) = if graphql {
            (&self.graphql, "graphql")
        } else {
            (&self.rest, method.as_str())
        };
        let idempotent = method != Method::POST;
        let is_get = method == Method::GET;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let last = attempt >= self.policy.attempts.max(1);
            let cached = if is_get {
                self.cache.lock().expect("cache lock").get(path).cloned()
            } else {
                None
            };
            let mut builder = http::Request::builder()
                .method(method.clone())
                .uri(path)
                .header(ACCEPT, "application/vnd.github+json");
            if let Some(c) = &cached {
                builder = builder.header(IF_NONE_MATCH, c.etag.clone());
            }
            let request =
                client
                    .build_request(builder, body)
                    .map_err(|e| ForgeError::Transport {
                        what: what.to_owned(),
                        message: e.to_string(),
                    })?;
            let response = match client.execute(request).await {
                Ok(response) => response,
                Err(e) => {
                    self.stats.record(operation, None);
                    if idempotent && !last {
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    return Err(ForgeError::Transport {
                        what: what.to_owned(),
                        message: e.to_string(),
                    });
                }
            };
            let (parts, raw) = response.into_parts();
            self.stats
                .record(operation, Some((parts.status, &parts.headers)));
            let bytes = match raw.collect().await {
                Ok(collected) => collected.to_bytes().to_vec(),
                Err(e) => {
                    if idempotent && !last {
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    return Err(ForgeError::Transport {
                        what: what.to_owned(),
                        message: e.to_string(),
                    });
                }
            };
            let status = parts.status;
            if status == StatusCode::NOT_MODIFIED
                && let Some(c) = cached
            {
                return Ok(Reply {
                    status: StatusCode::OK,
                    body: c.body,
                });
            }
            if let Some((wait, secondary)) =
                rate_limit_wait(status, &parts.headers, &bytes, &self.policy, attempt)
            {
                tracing::warn!(
                    what,
                    wait_s = wait.as_secs_f64(),
                    secondary,
                    "GitHub rate limit"
                );
                if !last && wait <= self.policy.max_inline_wait {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(ForgeError::RateLimited {
                    what: what.to_owned(),
                    retry_after: wait,
                    secondary,
                });
            }
            if status.is_server_error() {
                if idempotent && !last {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
                return Err(ForgeError::Unavailable {
                    what: what.to_owned(),
                    status: status.as_u16(),
                });
            }
            let body = Arc::new(bytes);
            if is_get && status.is_success() {
                let mut cache = self.cache.lock().expect("cache lock");
                match parts.headers.get(ETAG) {
                    Some(etag) => {
                        // Polled URLs include per-commit ones: keep the memory bounded.
                        if cache.len() >= CACHE_ENTRIES && !cache.contains_key(path) {
                            cache.clear();
                        }
                        cache.insert(
                            path.to_owned(),
                            Cached {
                                etag: etag.clone(),
                                body: body.clone(),
                            },
                        );
                    }
                    None => {
                        cache.remove(path);
                    }
                }
            }
            return Ok(Reply { status, body });
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.policy.backoff * (1u32 << attempt.saturating_sub(1).min(6))
    }
}

/// Percent-encodes a path segment or query value (branch and label names contain `/`, `:`
/// and spaces).
pub(crate) fn enc(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_slashes_and_spaces() {
        assert_eq!(
            enc("hyperloop/needs approval"),
            "hyperloop%2Fneeds%20approval"
        );
    }

    #[test]
    fn rate_limits_are_recognised() {
        let policy = RetryPolicy::default();
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            rate_limit_wait(StatusCode::FORBIDDEN, &headers, b"{}", &policy, 1),
            Some((Duration::from_secs(3), true))
        );
        let none = HeaderMap::new();
        assert_eq!(
            rate_limit_wait(
                StatusCode::FORBIDDEN,
                &none,
                br#"{"message":"Resource not accessible by integration"}"#,
                &policy,
                1
            ),
            None
        );
        assert!(
            rate_limit_wait(
                StatusCode::FORBIDDEN,
                &none,
                br#"{"message":"You have exceeded a secondary rate limit."}"#,
                &policy,
                1
            )
            .is_some()
        );
    }
}
