//! Prometheus metrics: counters fed by the journal (a [`Notifier`], so they count only what
//! was stored) and gauges read from the loop's live view at scrape time, rendered in the
//! Prometheus text format on `GET /metrics` of the coordinator's listen address.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use hyperloop_shared::event::{Event, EventKind};
use hyperloop_shared::model::TaskStatus;

use crate::control::Live;
use crate::ports::notifier::Notifier;

/// Upper bounds (seconds) of the step duration histogram: agent steps run from seconds to
/// the better part of an hour.
const STEP_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Whether `/metrics` is served: as configured, else only on a loopback address (metrics say
/// what a repository's agents do; who may read them off-host is the operator's choice).
pub fn served(listen: SocketAddr, configured: Option<bool>) -> bool {
    configured.unwrap_or_else(|| listen.ip().is_loopback())
}

/// The journal's counters. Cheap to update: one lock per stored batch.
#[derive(Debug, Default)]
pub struct Metrics {
    // std Mutex: never held across an await.
    counters: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    events: BTreeMap<&'static str, u64>,
    steps_started: BTreeMap<String, u64>,
    steps_finished: BTreeMap<(String, String), u64>,
    step_seconds: BTreeMap<String, Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    /// Cumulative counts per bucket of [`STEP_BUCKETS`].
    buckets: [u64; STEP_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(STEP_BUCKETS) {
            if value <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }
}

impl Notifier for Metrics {
    fn notify(&self, events: &[Event]) {
        let mut c = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            *c.events.entry(event.kind.name()).or_default() += 1;
            match &event.kind {
                EventKind::StepDispatched { role, .. } => {
                    *c.steps_started.entry(role.clone()).or_default() += 1;
                }
                EventKind::ResultReaped {
                    role,
                    verdict,
                    duration_ms,
                    ..
                } => {
                    let verdict = verdict.to_string();
                    *c.steps_finished.entry((role.clone(), verdict)).or_default() += 1;
                    c.step_seconds
                        .entry(role.clone())
                        .or_default()
                        .observe(*duration_ms as f64 / 1000.0);
                }
                _ => {}
            }
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of the counters and of `live`.
    pub fn render(&self, live: &Live) -> String {
        let c = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        family(
            &mut out,
            "hyperloop_events_total",
            "counter",
            "Events journaled, by event name.",
        );
        for (name, n) in &c.events {
            let _ = writeln!(out, "hyperloop_events_total{{event=\"{name}\"}} {n}");
        }
        family(
            &mut out,
            "hyperloop_steps_started_total",
            "counter",
            "Agent steps dispatched to workers, by role.",
        );
        for (role, n) in &c.steps_started {
            let _ = writeln!(
                out,
                "hyperloop_steps_started_total{{role=\"{}\"}} {n}",
                label(role)
            );
        }
        family(
            &mut out,
            "hyperloop_steps_finished_total",
            "counter",
            "Agent steps whose result was reaped, by role and verdict.",
        );
        for ((role, verdict), n) in &c.steps_finished {
            let _ = writeln!(
                out,
                "hyperloop_steps_finished_total{{role=\"{}\",verdict=\"{}\"}} {n}",
                label(role),
                label(verdict)
            );
        }
        family(
            &mut out,
            "hyperloop_step_duration_seconds",
            "histogram",
            "How long agent steps ran, by role.",
        );
        for (role, h) in &c.step_seconds {
            let role = label(role);
            for (bound, n) in STEP_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "hyperloop_step_duration_seconds_bucket{{role=\"{role}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "hyperloop_step_duration_seconds_bucket{{role=\"{role}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "hyperloop_step_duration_seconds_sum{{role=\"{role}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "hyperloop_step_duration_seconds_count{{role=\"{role}\"}} {}",
                h.count
            );
        }
        drop(c);

        family(
            &mut out,
            "hyperloop_tasks",
            "gauge",
            "Tasks by status, as the loop last saw them.",
        );
        let mut by_status: BTreeMap<&str, u64> = [
            TaskStatus::NotStarted,
            TaskStatus::InProgress,
            TaskStatus::Complete,
            TaskStatus::Failed,
        ]
        .into_iter()
        .map(|s| (status_name(s), 0))
        .collect();
        for task in &live.tasks {
            *by_status.entry(status_name(task.status)).or_default() += 1;
        }
        for (status, n) in &by_status {
            let _ = writeln!(out, "hyperloop_tasks{{status=\"{status}\"}} {n}");
        }
        let connected = live.workers.len();
        let slots: u64 = live.workers.iter().map(|w| u64::from(w.capacity)).sum();
        let busy: usize = live.workers.iter().map(|w| w.attempts.len()).sum();
        for (name, help, value) in [
            (
                "hyperloop_workers_connected",
                "Workers connected to this coordinator (in-process ones included).",
                connected as u64,
            ),
            (
                "hyperloop_worker_slots",
                "Steps the connected workers can run at once.",
                slots,
            ),
            (
                "hyperloop_steps_running",
                "Steps running on workers now.",
                busy as u64,
            ),
            (
                "hyperloop_leading",
                "1 while this coordinator leads.",
                u64::from(live.leading),
            ),
            (
                "hyperloop_cycle",
                "The last completed reconcile cycle.",
                live.cycle,
            ),
        ] {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn status_name(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::NotStarted => "not_started",
        TaskStatus::InProgress => "in_progress",
        TaskStatus::Complete => "complete",
        TaskStatus::Failed => "failed",
    }
}

/// A label value with `\`, `"` and newlines escaped as the text format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperloop_shared::model::{TaskId, Verdict};

    fn reaped(role: &str, verdict: Verdict, duration_ms: u64) -> Event {
        Event {
            seq: 1,
            at_ms: 0,
            task: Some(TaskId(1)),
            kind: EventKind::ResultReaped {
                step: "0".into(),
                role: role.into(),
                round: 0,
                attempt: 1,
                worker: "w".into(),
                verdict,
                duration_ms,
            },
        }
    }

    #[test]
    fn reaped_results_count_by_role_and_verdict_and_fill_the_histogram() {
        let metrics = Metrics::default();
        metrics.notify(&[
            reaped("implementer", Verdict::Pass, 2_000),
            reaped("implementer", Verdict::Fail, 70_000),
            reaped("verifier", Verdict::Pass, 500),
        ]);
        let text = metrics.render(&Live::default());
        for line in [
            "hyperloop_steps_finished_total{role=\"implementer\",verdict=\"pass\"} 1",
            "hyperloop_steps_finished_total{role=\"implementer\",verdict=\"fail\"} 1",
            "hyperloop_step_duration_seconds_bucket{role=\"implementer\",le=\"5\"} 1",
            "hyperloop_step_duration_seconds_bucket{role=\"implementer\",le=\"120\"} 2",
            "hyperloop_step_duration_seconds_bucket{role=\"implementer\",le=\"+Inf\"} 2",
            "hyperloop_step_duration_seconds_sum{role=\"implementer\"} 72",
            "hyperloop_step_duration_seconds_count{role=\"verifier\"} 1",
            "hyperloop_events_total{event=\"result_reaped\"} 3",
            "hyperloop_tasks{status=\"complete\"} 0",
            "hyperloop_workers_connected 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn metrics_are_served_on_loopback_unless_configured_otherwise() {
        let loopback: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let anywhere: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        assert!(served(loopback, None));
        assert!(!served(anywhere, None));
        assert!(served(anywhere, Some(true)));
        assert!(!served(loopback, Some(false)));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
