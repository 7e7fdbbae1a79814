//! hyperloop's log lines (coordinator and worker), as the product documents show them:
//!
//! ```text
//! 2026-04-15T14:23:01Z [info     ] result_reaped        duration_s=142.3 role=verifier task_id=task-003 verdict=pass
//! {"timestamp":"2026-04-15T14:23:01Z","level":"info","event":"result_reaped","task_id":"task-003",...}
//! ```
//!
//! Fields are flat: a journal event is logged with its fields spliced in (see
//! [`EVENT_FIELDS`]), never as a Rust `Debug` dump, so a log aggregator can query `event`,
//! `task_id`, `role`, `verdict`, `duration_s`. Colour only when the writer is a terminal.
//!
//! [`render`] is pure (a [`Record`] in, one line out) so the format is tested without a
//! subscriber; [`Format`] is the `tracing-subscriber` adapter.

use std::fmt::{self, Write as _};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// A field whose value is a JSON object to splice into the line as flat fields (how
/// `log_events` logs a journal event's typed fields).
pub const EVENT_FIELDS: &str = "event_fields";

/// Console or JSON, and whether the console may use colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Console { colour: bool },
    Json,
}

/// One log line before rendering.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub at_ms: u64,
    /// `info`, `warning`, … (the seed's names).
    pub level: &'static str,
    /// The `event` field, or else the message.
    pub event: String,
    /// In the order given; rendered sorted in the console, as given in JSON.
    pub fields: Vec<(String, Value)>,
}

/// The seed's level names.
pub fn level_name(level: tracing::Level) -> &'static str {
    match level {
        tracing::Level::TRACE => "trace",
        tracing::Level::DEBUG => "debug",
        tracing::Level::INFO => "info",
        tracing::Level::WARN => "warning",
        tracing::Level::ERROR => "error",
    }
}

/// Renders one line, newline included.
pub fn render(style: Style, record: &Record) -> String {
    let timestamp = rfc3339(record.at_ms);
    match style {
        Style::Json => {
            let head = [
                ("timestamp", Value::String(timestamp)),
                ("level", Value::String(record.level.to_owned())),
                ("event", Value::String(record.event.clone())),
            ];
            let head = head.iter().map(|(k, v)| (*k, v));
            let rest = record.fields.iter().map(|(k, v)| (k.as_str(), v));
            let mut line = String::from("{");
            for (i, (key, value)) in head.chain(rest).enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push_str(&Value::String(key.to_owned()).to_string());
                line.push(':');
                line.push_str(&value.to_string());
            }
            line.push_str("}\n");
            line
        }
        Style::Console { colour } => {
            let level = format!("{:<9}", record.level);
            let (on, off) = match (colour, record.level) {
                (false, _) => ("", ""),
                (true, "error") => ("\x1b[31;1m", "\x1b[0m"),
                (true, "warning") => ("\x1b[33m", "\x1b[0m"),
                (true, "info") => ("\x1b[32m", "\x1b[0m"),
                (true, _) => ("\x1b[2m", "\x1b[0m"),
            };
            let mut line = format!("{timestamp} [{on}{level}{off}] {:<20}", record.event);
            let mut fields: Vec<&(String, Value)> = record.fields.iter().collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, value) in fields {
                let Some(text) = console_value(value) else {
                    continue;
                };
                let _ = write!(line, " {key}={text}");
            }
            let mut line = line.trim_end().to_owned();
            line.push('\n');
            line
        }
    }
}

/// A value as `key=value` shows it: bare when it is one word, quoted otherwise; lists
/// comma-separated; absent values (null, empty list) left out.
fn console_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => return None,
        Value::Array(items) => items
            .iter()
            .filter_map(console_value)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let bare = !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control());
    Some(if bare {
        text
    } else {
        // JSON string quoting: escapes quotes, newlines and control characters (so an
        // ANSI escape in a message cannot reach the log as one).
        Value::String(text).to_string()
    })
}

/// `2026-04-15T14:23:01Z` (UTC, whole seconds).
pub fn rfc3339(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A journal event's fields, flat, with the names logs use: `task_id` for the task, and
/// durations in seconds (`duration_s`, one decimal).
pub fn flatten_event(task: Option<&str>, kind: &Value) -> Vec<(String, Value)> {
    let mut fields = Vec::new();
    if let Some(task) = task {
        fields.push(("task_id".to_owned(), Value::String(task.to_owned())));
    }
    if let Value::Object(map) = kind {
        for (key, value) in map {
            match key.as_str() {
                "event" => {}
                "duration_ms" => {
                    let ms = value.as_u64().unwrap_or(0);
                    #[allow(clippy::cast_precision_loss)]
                    let secs = (ms as f64 / 100.0).round() / 10.0;
                    fields.push(("duration_s".to_owned(), Value::from(secs)));
                }
                _ => fields.push((key.clone(), value.clone())),
            }
        }
    }
    fields
}

/// Collects an event's fields into a [`Record`].
struct Collect<'a>(&'a mut Record, Option<String>);

impl Collect<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        match (field.name(), value) {
            ("message", Value::String(s)) => self.1 = Some(s),
            ("event", Value::String(s)) => self.0.event = s,
            (EVENT_FIELDS, Value::String(s)) => {
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&s) {
                    self.0.fields.extend(map);
                }
            }
            // One name for the task everywhere, whether a line comes from an event or not.
            ("task", value) => self.0.fields.push(("task_id".to_owned(), value)),
            (name, value) => self.0.fields.push((name.to_owned(), value)),
        }
    }
}

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` arrives here too, as its Display; `?x` as its Debug.
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
}

/// The `tracing-subscriber` event formatter for [`render`].
#[derive(Debug, Clone, Copy)]
pub struct Format(pub Style);

impl<S, N> FormatEvent<S, N> for Format
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut record = Record {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            level: level_name(*meta.level()),
            ..Record::default()
        };
        let mut collect = Collect(&mut record, None);
        event.record(&mut collect);
        let message = collect.1;
        match message {
            Some(m) if record.event.is_empty() => record.event = m,
            Some(m) => record.fields.push(("message".to_owned(), Value::String(m))),
            None => {}
        }
        // Where a dependency's line came from; ours are known by their event.
        if !meta.target().starts_with("hyperloop") {
            record
                .fields
                .push(("target".to_owned(), Value::String(meta.target().to_owned())));
        }
        writer.write_str(&render(self.0, &record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(level: &'static str, event: &str, fields: Vec<(&str, Value)>) -> Record {
        Record {
            at_ms: 1_776_263_381_000,
            level,
            event: event.to_owned(),
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    #[test]
    fn a_console_line_reads_like_the_seed_sample_with_sorted_flat_fields() {
        let line = render(
            Style::Console { colour: false },
            &record(
                "info",
                "result_reaped",
                vec![
                    ("task_id", json!("task-003")),
                    ("verdict", json!("pass")),
                    ("role", json!("verifier")),
                    ("duration_s", json!(142.3)),
                ],
            ),
        );
        assert_eq!(
            line,
            "2026-04-15T14:29:41Z [info     ] result_reaped        duration_s=142.3 \
             role=verifier task_id=task-003 verdict=pass\n"
        );
    }

    #[test]
    fn console_values_with_spaces_or_escapes_are_quoted_and_lists_are_comma_joined() {
        let line = render(
            Style::Console { colour: false },
            &record(
                "warning",
                "spec cannot be used; given up",
                vec![
                    ("reason", json!("not UTF-8 \"text\"\n\x1b[31m")),
                    ("created", json!(["task-001", "task-002"])),
                    ("rejected", json!([])),
                    ("commit", Value::Null),
                ],
            ),
        );
        assert_eq!(
            line,
            "2026-04-15T14:29:41Z [warning  ] spec cannot be used; given up created=task-001,task-002 \
             reason=\"not UTF-8 \\\"text\\\"\\n\\u001b[31m\"\n"
        );
    }

    #[test]
    fn colour_is_used_only_when_asked_for() {
        let r = record("error", "boom", vec![]);
        assert!(!render(Style::Console { colour: false }, &r).contains('\x1b'));
        assert!(render(Style::Console { colour: true }, &r).contains("\x1b[31;1merror"));
    }

    #[test]
    fn a_json_line_is_one_flat_object_with_timestamp_level_and_event_first() {
        let mut r = record("info", "result_reaped", vec![]);
        r.fields = flatten_event(
            Some("task-003"),
            &json!({"event": "result_reaped", "role": "verifier", "verdict": "pass",
                    "duration_ms": 142_340, "round": 2}),
        );
        let line = render(Style::Json, &r);
        assert!(
            line.starts_with(
                r#"{"timestamp":"2026-04-15T14:29:41Z","level":"info","event":"result_reaped","task_id":"task-003","#
            ),
            "{line}"
        );
        let value: Value = serde_json::from_str(&line).unwrap();
        let object = value.as_object().unwrap();
        assert!(object.values().all(|v| !v.is_object()), "{line}");
        assert_eq!(value["duration_s"], json!(142.3));
        assert_eq!(value["verdict"], "pass");
        assert_eq!(value["round"], 2);
        assert!(value.get("duration_ms").is_none());
    }

    #[test]
    fn timestamps_are_utc_rfc3339_across_leap_years_and_epochs() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_776_263_381_999), "2026-04-15T14:29:41Z");
    }

    #[test]
    fn a_real_tracing_event_with_event_fields_is_logged_flat() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(Format(Style::Console { colour: false }))
            .with_writer(move || writer.clone())
            .finish();
        let fields = json!({"changed_specs": ["specs/a.md"], "created": ["task-001"]});
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(event = "intake_run", event_fields = %fields);
            tracing::warn!(task = %"task-001", "landing failed");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].ends_with(
                "[info     ] intake_run           changed_specs=specs/a.md created=task-001"
            ),
            "{out}"
        );
        assert!(
            lines[1].ends_with("[warning  ] landing failed       task_id=task-001"),
            "{out}"
        );
        assert!(!out.contains('{'), "{out}");
    }
}
