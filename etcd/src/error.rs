//! [`Error`]: what a [`crate::Client`] call can fail with.

/// Why an etcd call failed. [`Error::Unreachable`] and [`Error::Status`] keep the gRPC
/// status, so callers can tell a member that is down or electing (worth a retry) from a
/// refused request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no etcd endpoint was given")]
    NoEndpoints,
    /// An endpoint this client cannot use (not a URL, or not `http://`).
    #[error("{endpoint:?} is not a usable etcd endpoint: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// No endpoint could be connected to (refused, timed out, unresolvable): the request
    /// was sent nowhere. `last` is the last endpoint's connect failure.
    #[error("could not connect to any etcd endpoint ({endpoints}): {}", describe(.last))]
    Unreachable {
        /// Every endpoint tried, comma-separated.
        endpoints: String,
        last: tonic::Status,
    },
    /// The call reached a member and failed there: etcd's answer, or the connection
    /// breaking or timing out mid-call.
    #[error("etcd call failed ({:?}): {}", .0.code(), describe(.0))]
    Status(tonic::Status),
    /// etcd closed a watch or keep-alive stream.
    #[error("etcd closed the {0} stream")]
    StreamEnded(&'static str),
}

/// The status's message followed by its underlying errors (where a transport failure
/// keeps the useful part, e.g. "Connection refused").
fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let line = error.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = error.source();
    }
    text
}
