//! Rendering of scripted replies as the Messages API's Server-Sent Events.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::script::{Block, StopReason};

/// Input tokens reported for every request: non-zero so the CLI computes a non-zero cost.
pub const INPUT_TOKENS: u64 = 100;

/// Longest piece of text or tool input sent in one delta event, in characters. Splitting
/// makes the CLI reassemble deltas the way it must for the real API.
const DELTA_CHARS: usize = 40;

fn event(out: &mut String, name: &str, data: &Value) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

fn chunks(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars
        .chunks(DELTA_CHARS)
        .map(|c| c.iter().collect())
        .collect()
}

/// `message_start` (with an empty content list and the input usage).
pub fn message_start(out: &mut String, message_id: &str, model: &str) {
    event(
        out,
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": INPUT_TOKENS,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1
                }
            }
        }),
    );
}

/// `content_block_start` with `start` as the block, then `body` in pieces as
/// `content_block_delta` events whose delta `delta(piece)` builds.
fn content_block(
    out: &mut String,
    index: usize,
    start: Value,
    body: &str,
    delta: impl Fn(&str) -> Value,
) {
    event(
        out,
        "content_block_start",
        &json!({
            "type": "content_block_start",
            "index": index,
            "content_block": start
        }),
    );
    for piece in chunks(body) {
        event(
            out,
            "content_block_delta",
            &json!({
                "type": "content_block_delta",
                "index": index,
                "delta": delta(&piece)
            }),
        );
    }
}

/// A complete streamed message. `tool_id(i)` names the tool_use block at index `i`.
pub fn message(
    message_id: &str,
    model: &str,
    blocks: &[Block],
    stop: StopReason,
    tool_id: impl Fn(usize) -> String,
) -> String {
    let mut out = String::new();
    message_start(&mut out, message_id, model);
    event(&mut out, "ping", &json!({"type": "ping"}));
    let mut output_chars = 0;
    for (index, block) in blocks.iter().enumerate() {
        match block {
            Block::Text(text) => {
                output_chars += text.len();
                content_block(
                    &mut out,
                    index,
                    json!({"type": "text", "text": ""}),
                    text,
                    |piece| json!({"type": "text_delta", "text": piece}),
                );
            }
            Block::ToolUse { name, input } => {
                let input = input.to_string();
                output_chars += input.len();
                content_block(
                    &mut out,
                    index,
                    json!({
                        "type": "tool_use",
                        "id": tool_id(index),
                        "name": name,
                        "input": {}
                    }),
                    &input,
                    |piece| json!({"type": "input_json_delta", "partial_json": piece}),
                );
            }
        }
        event(
            &mut out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }
    event(
        &mut out,
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop.as_str(), "stop_sequence": null},
            "usage": {"output_tokens": 1 + output_chars / 4}
        }),
    );
    event(&mut out, "message_stop", &json!({"type": "message_stop"}));
    out
}

/// The same message as one JSON object, for a request without `stream: true`.
pub fn message_json(
    message_id: &str,
    model: &str,
    blocks: &[Block],
    stop: StopReason,
    tool_id: impl Fn(usize) -> String,
) -> Value {
    let mut output_chars = 0;
    let content: Vec<Value> = blocks
        .iter()
        .enumerate()
        .map(|(index, block)| match block {
            Block::Text(text) => {
                output_chars += text.len();
                json!({"type": "text", "text": text})
            }
            Block::ToolUse { name, input } => {
                output_chars += input.to_string().len();
                json!({"type": "tool_use", "id": tool_id(index), "name": name, "input": input})
            }
        })
        .collect();
    json!({
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop.as_str(),
        "stop_sequence": null,
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1 + output_chars / 4
        }
    })
}

/// The HTTP status the API uses for an error type.
pub fn error_status(error_type: &str) -> StatusCode {
    match error_type {
        "invalid_request_error" => StatusCode::BAD_REQUEST,
        "authentication_error" => StatusCode::UNAUTHORIZED,
        "permission_error" => StatusCode::FORBIDDEN,
        "not_found_error" => StatusCode::NOT_FOUND,
        "request_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "rate_limit_error" => StatusCode::TOO_MANY_REQUESTS,
        "overloaded_error" => StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The API's JSON error body.
pub fn error_body(error_type: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type, "message": message}})
}

/// `message_start`, then an SSE `error` event.
pub fn stream_error(message_id: &str, model: &str, error_type: &str, msg: &str) -> String {
    let mut out = String::new();
    message_start(&mut out, message_id, model);
    event(&mut out, "error", &error_body(error_type, msg));
    out
}
