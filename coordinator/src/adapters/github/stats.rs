//! [`ApiStats`]: how many calls the coordinator made to GitHub, and how much of GitHub's rate
//! limit is left, as the last answers' `x-ratelimit-*` headers said. Recorded by
//! [`super::http::Api`] for every request it sends (retries included: each is a call GitHub
//! counts), read by whoever reports on it (metrics, logs) through [`ApiStats::snapshot`].

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use http::{HeaderMap, StatusCode};

/// The rate limit of one GitHub resource (`core` for REST, `graphql`, ...), as last seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// `x-ratelimit-limit`: calls (GraphQL: points) allowed per window.
    pub limit: u64,
    /// `x-ratelimit-remaining`.
    pub remaining: u64,
    /// `x-ratelimit-used`, when sent.
    pub used: Option<u64>,
    /// `x-ratelimit-reset`: when the window resets, in seconds since the Unix epoch.
    pub reset: Option<u64>,
}

/// What [`ApiStats::snapshot`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiSnapshot {
    /// Calls by (operation, status class): operations are HTTP methods for REST (`GET`,
    /// `POST`, ...) and `graphql`; classes are `2xx` ... `5xx`, or `error` when no answer came.
    pub calls: BTreeMap<(String, String), u64>,
    /// The latest rate limit per resource (GitHub budgets REST and GraphQL separately).
    pub rate_limits: BTreeMap<String, RateLimit>,
}

impl ApiSnapshot {
    /// Calls made, all kinds together.
    pub fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }

    /// The REST budget (`core`), which nearly every call spends.
    pub fn core(&self) -> Option<RateLimit> {
        self.rate_limits.get(CORE).copied()
    }

    pub fn rate_limit_remaining(&self) -> Option<u64> {
        self.core().map(|r| r.remaining)
    }

    pub fn rate_limit_limit(&self) -> Option<u64> {
        self.core().map(|r| r.limit)
    }
}

/// The resource a rate limit without `x-ratelimit-resource` belongs to (older GitHub
/// Enterprise Servers send none; REST is what they mean).
const CORE: &str = "core";

/// Shared by the client that records and the readers; cheap to snapshot.
#[derive(Debug, Default)]
pub struct ApiStats {
    // std Mutex: held only to bump a counter or copy the maps, never across an await.
    inner: Mutex<ApiSnapshot>,
}

impl ApiStats {
    /// Counts one call of `operation`: answered with `status` and `headers`, or (`None`)
    /// not answered at all.
    pub(crate) fn record(&self, operation: &str, answer: Option<(StatusCode, &HeaderMap)>) {
        let class = match answer {
            Some((status, _)) => format!("{}xx", status.as_u16() / 100),
            None => "error".to_owned(),
        };
        let limit = answer.and_then(|(_, headers)| rate_limit(headers));
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *inner
            .calls
            .entry((operation.to_owned(), class))
            .or_insert(0) += 1;
        if let Some((resource, limit)) = limit {
            inner.rate_limits.insert(resource, limit);
        }
    }

    pub fn snapshot(&self) -> ApiSnapshot {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The resource and its limit from an answer's headers; `None` unless both the limit and
/// what remains of it are there (GitHub Enterprise Server with rate limits off sends none).
fn rate_limit(headers: &HeaderMap) -> Option<(String, RateLimit)> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let number = |name: &str| text(name)?.parse::<u64>().ok();
    let limit = RateLimit {
        limit: number("x-ratelimit-limit")?,
        remaining: number("x-ratelimit-remaining")?,
        used: number("x-ratelimit-used"),
        reset: number("x-ratelimit-reset"),
    };
    let resource = text("x-ratelimit-resource")
        .filter(|r| !r.is_empty())
        .unwrap_or(CORE);
    Some((resource.to_owned(), limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn calls_are_counted_by_operation_and_status_class() {
        let stats = ApiStats::default();
        let none = HeaderMap::new();
        stats.record("GET", Some((StatusCode::OK, &none)));
        stats.record("GET", Some((StatusCode::NOT_MODIFIED, &none)));
        stats.record("GET", Some((StatusCode::OK, &none)));
        stats.record("POST", Some((StatusCode::UNPROCESSABLE_ENTITY, &none)));
        stats.record("graphql", Some((StatusCode::BAD_GATEWAY, &none)));
        stats.record("PUT", None);
        let calls = stats.snapshot().calls;
        let count = |op: &str, class: &str| calls.get(&(op.to_owned(), class.to_owned())).copied();
        assert_eq!(count("GET", "2xx"), Some(2));
        assert_eq!(count("GET", "3xx"), Some(1));
        assert_eq!(count("POST", "4xx"), Some(1));
        assert_eq!(count("graphql", "5xx"), Some(1));
        assert_eq!(count("PUT", "error"), Some(1));
        assert_eq!(stats.snapshot().total_calls(), 6);
    }

    #[test]
    fn the_latest_rate_limit_headers_are_kept_per_resource() {
        let stats = ApiStats::default();
        assert_eq!(stats.snapshot().rate_limit_remaining(), None);
        let first = headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4999"),
            ("x-ratelimit-used", "1"),
            ("x-ratelimit-reset", "1700000000"),
            ("x-ratelimit-resource", "core"),
        ]);
        stats.record("GET", Some((StatusCode::OK, &first)));
        // No resource named: REST's (older Enterprise Servers).
        let later = headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", " 4990 "),
        ]);
        stats.record("GET", Some((StatusCode::OK, &later)));
        let graphql = headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4900"),
            ("x-ratelimit-resource", "graphql"),
        ]);
        stats.record("graphql", Some((StatusCode::OK, &graphql)));
        let snapshot = stats.snapshot();
        assert_eq!(
            snapshot.core(),
            Some(RateLimit {
                limit: 5000,
                remaining: 4990,
                used: None,
                reset: None,
            })
        );
        assert_eq!(snapshot.rate_limit_limit(), Some(5000));
        assert_eq!(snapshot.rate_limits["graphql"].remaining, 4900);
    }

    #[test]
    fn an_answer_without_usable_headers_keeps_what_was_known() {
        let stats = ApiStats::default();
        let known = headers(&[("x-ratelimit-limit", "60"), ("x-ratelimit-remaining", "59")]);
        stats.record("GET", Some((StatusCode::OK, &known)));
        let garbled = headers(&[
            ("x-ratelimit-limit", "many"),
            ("x-ratelimit-remaining", "0"),
        ]);
        stats.record("GET", Some((StatusCode::FORBIDDEN, &garbled)));
        stats.record("GET", None);
        assert_eq!(stats.snapshot().rate_limit_remaining(), Some(59));
    }
}
