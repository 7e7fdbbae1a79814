//! The few Matrix client-server API calls the notifier makes, over hyper with rustls.
//! Errors never carry the access token or the registration token.

use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// One request's limit: a stalled homeserver fails the try, and the sender backs off.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// No answer (connection refused, timeout): worth retrying.
    #[error("cannot reach the homeserver: {0}")]
    Unreachable(String),
    /// The homeserver asks to slow down.
    #[error("rate limited by the homeserver")]
    RateLimited(Option<Duration>),
    /// A 5xx: worth retrying.
    #[error("homeserver error {status}: {message}")]
    Server { status: u16, message: String },
    /// A 4xx: retrying the same request will not help.
    #[error("request refused ({status}): {message}")]
    Refused { status: u16, message: String },
}

impl MatrixError {
    pub fn is_transient(&self) -> bool {
        !matches!(self, MatrixError::Refused { .. })
    }

    /// Whether the homeserver refused with this Matrix error code (`M_USER_IN_USE`).
    pub fn is_refusal(&self, errcode: &str) -> bool {
        matches!(self, MatrixError::Refused { message, .. }
            if message.split(' ').next() == Some(errcode))
    }
}

/// One page of a room's history, newest first.
pub struct Page {
    pub messages: Vec<Value>,
    /// Where the next (older) page starts; `None` at the room's beginning.
    pub next: Option<String>,
}

/// A bot logged in to a homeserver.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub access_token: String,
}

pub struct Client {
    base: String,
    http: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Client {
    pub fn new(homeserver: &str) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Client {
            base: homeserver.trim_end_matches('/').to_owned(),
            http: HyperClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends one request; a 2xx body comes back as JSON, a 401 with interactive-auth flows
    /// too (registration reads them), everything else as an error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<(StatusCode, Value), MatrixError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| MatrixError::Unreachable(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| MatrixError::Unreachable(e.to_string()))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| MatrixError::Unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, MatrixError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| MatrixError::Unreachable("timed out".to_owned()))??;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() || status == StatusCode::UNAUTHORIZED && value.get("flows").is_some()
        {
            return Ok((status, value));
        }
        let message = format!(
            "{} {}",
            value["errcode"].as_str().unwrap_or(""),
            value["error"].as_str().unwrap_or("")
        )
        .trim()
        .to_owned();
        Err(match status.as_u16() {
            429 => MatrixError::RateLimited(
                value["retry_after_ms"].as_u64().map(Duration::from_millis),
            ),
            code @ 500.. => MatrixError::Server {
                status: code,
                message,
            },
            code => MatrixError::Refused {
                status: code,
                message,
            },
        })
    }

    /// Registers `username` with a registration token: interactive auth in two stages,
    /// `m.login.registration_token` then `m.login.dummy`.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        registration_token: &str,
    ) -> Result<Session, MatrixError> {
        let path = "/_matrix/client/v3/register";
        let mut body = json!({
            "username": username,
            "password": password,
            "initial_device_display_name": "hyperloop",
        });
        let (_, challenge) = self.call(Method::POST, path, None, &body).await?;
        let session = challenge["session"].as_str().unwrap_or_default().to_owned();
        let stages = [
            json!({"type": "m.login.registration_token", "token": registration_token, "session": session}),
            json!({"type": "m.login.dummy", "session": session}),
        ];
        for auth in stages {
            body["auth"] = auth;
            let (status, reply) = self.call(Method::POST, path, None, &body).await?;
            if status.is_success() {
                return session_from(&reply);
            }
            if let Some(errcode) = reply["errcode"].as_str() {
                // A stage was rejected (an invalid or used-up registration token).
                return Err(MatrixError::Refused {
                    status: status.as_u16(),
                    message: format!("{errcode} {}", reply["error"].as_str().unwrap_or("")),
                });
            }
        }
        Err(MatrixError::Refused {
            status: 401,
            message: "registration needs more than a registration token".to_owned(),
        })
    }

    /// Logs in `username` with its password (a new device and access token).
    pub async fn login(&self, username: &str, password: &str) -> Result<Session, MatrixError> {
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": username},
            "password": password,
            "initial_device_display_name": "hyperloop",
        });
        let (_, reply) = self
            .call(Method::POST, "/_matrix/client/v3/login", None, &body)
            .await?;
        session_from(&reply)
    }

    /// Who the access token belongs to.
    pub async fn whoami(&self, access_token: &str) -> Result<String, MatrixError> {
        let (_, reply) = self
            .call(
                Method::GET,
                "/_matrix/client/v3/account/whoami",
                Some(access_token),
                &json!({}),
            )
            .await?;
        field(&reply, "user_id")
    }

    /// Creates a private room named `name` with the alias `#alias:<server>`, inviting
    /// `invite`; returns its id. An alias already taken is refused with `M_ROOM_IN_USE`.
    pub async fn create_room(
        &self,
        session: &Session,
        name: &str,
        alias: &str,
        invite: Option<&str>,
    ) -> Result<String, MatrixError> {
        let invite: Vec<&str> = invite.into_iter().collect();
        let body = json!({
            "name": name,
            "room_alias_name": alias,
            "preset": "private_chat",
            "invite": invite,
        });
        let (_, reply) = self
            .call(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&session.access_token),
                &body,
            )
            .await?;
        field(&reply, "room_id")
    }

    /// The room `#alias:server` points to.
    pub async fn resolve_alias(
        &self,
        session: &Session,
        alias: &str,
    ) -> Result<String, MatrixError> {
        let path = format!("/_matrix/client/v3/directory/room/{}", encode(alias));
        let (_, reply) = self
            .call(Method::GET, &path, Some(&session.access_token), &json!({}))
            .await?;
        field(&reply, "room_id")
    }

    /// A page of `room`'s messages sent by `sender`, newest first, starting at `from` (the
    /// newest when `None`).
    pub async fn messages_back(
        &self,
        session: &Session,
        room: &str,
        sender: &str,
        from: Option<&str>,
    ) -> Result<Page, MatrixError> {
        let filter = json!({"types": ["m.room.message"], "senders": [sender]}).to_string();
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100&filter={}",
            encode(room),
            encode(&filter)
        );
        if let Some(from) = from {
            path.push_str(&format!("&from={}", encode(from)));
        }
        let (_, reply) = self
            .call(Method::GET, &path, Some(&session.access_token), &json!({}))
            .await?;
        let messages = reply["chunk"].as_array().cloned().unwrap_or_default();
        let next = reply["end"]
            .as_str()
            .filter(|_| !messages.is_empty())
            .map(str::to_owned);
        Ok(Page { messages, next })
    }

    /// Joins `room` (a no-op for a member).
    pub async fn join(&self, session: &Session, room: &str) -> Result<(), MatrixError> {
        let path = format!("/_matrix/client/v3/join/{}", encode(room));
        self.call(Method::POST, &path, Some(&session.access_token), &json!({}))
            .await
            .map(drop)
    }

    /// Sends an `m.notice` to `room`, in the thread under `thread_root` if given, with the
    /// fields of `marks` added to its content; returns the event id. `txn` makes a retried
    /// send idempotent.
    pub async fn send(
        &self,
        session: &Session,
        room: &str,
        txn: &str,
        body: &str,
        thread_root: Option<&str>,
        marks: serde_json::Map<String, Value>,
    ) -> Result<String, MatrixError> {
        let mut content = json!({"msgtype": "m.notice", "body": body});
        content.as_object_mut().expect("an object").extend(marks);
        if let Some(root) = thread_root {
            content["m.relates_to"] = json!({
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": true,
                "m.in_reply_to": {"event_id": root},
            });
        }
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            encode(room),
            encode(txn)
        );
        let (_, reply) = self
            .call(Method::PUT, &path, Some(&session.access_token), &content)
            .await?;
        field(&reply, "event_id")
    }
}

fn session_from(reply: &Value) -> Result<Session, MatrixError> {
    Ok(Session {
        user_id: field(reply, "user_id")?,
        access_token: field(reply, "access_token")?,
    })
}

fn field(reply: &Value, name: &str) -> Result<String, MatrixError> {
    reply[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| MatrixError::Server {
            status: 200,
            message: format!("the reply has no `{name}`"),
        })
}

/// Percent-encodes a path segment (room ids hold `!` and `:`).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() * 3);
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn room_ids_are_percent_encoded_in_paths() {
        assert_eq!(super::encode("!abc:localhost"), "%21abc%3Alocalhost");
    }

    #[test]
    fn a_refusal_is_recognised_by_its_error_code() {
        let taken = super::MatrixError::Refused {
            status: 400,
            message: "M_USER_IN_USE User ID already taken.".into(),
        };
        assert!(taken.is_refusal("M_USER_IN_USE"));
        assert!(!taken.is_refusal("M_ROOM_IN_USE"));
    }
}
