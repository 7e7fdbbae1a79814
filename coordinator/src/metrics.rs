//! Metrics: counters and histograms fed by the journal (a [`Notifier`], so they count only
//! what was stored) and by the loop's timings, plus gauges read from the loop's live view when
//! asked. One registry, two outputs: the Prometheus text format on `GET /metrics` of the
//! coordinator's listen address, and OpenTelemetry instruments ([`Metrics::export`]) that the
//! OTLP exporter collects on its own schedule.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use hyperloop_shared::event::{Event, EventKind};
use hyperloop_shared::model::TaskStatus;
use opentelemetry::KeyValue;
use tokio::sync::watch;

use crate::adapters::github::ApiStats;
use crate::control::Live;
use crate::ports::notifier::Notifier;

/// A metric family: its Prometheus name and help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Family {
    name: &'static str,
    help: &'static str,
}

const fn family(name: &'static str, help: &'static str) -> Family {
    Family { name, help }
}

const EVENTS: Family = family("hyperloop_events_total", "Events journaled, by event name.");
const STEPS_STARTED: Family = family(
    "hyperloop_steps_started_total",
    "Agent steps dispatched to workers, by role.",
);
const STEPS_FINISHED: Family = family(
    "hyperloop_steps_finished_total",
    "Agent steps whose result was reaped, by role and verdict.",
);
const INTAKE_RUNS: Family = family(
    "hyperloop_intake_runs_total",
    "Intake runs whose result was applied.",
);
const INTAKE_CREATED: Family = family(
    "hyperloop_intake_tasks_created_total",
    "Tasks created by intake.",
);
const INTAKE_REJECTED: Family = family(
    "hyperloop_intake_proposals_rejected_total",
    "Task proposals intake rejected.",
);
const AGENT_COST: Family = family(
    "hyperloop_agent_cost_usd_total",
    "Agent spend in US dollars as the runtime reported it, by role.",
);
const AGENT_TURNS: Family = family(
    "hyperloop_agent_turns_total",
    "Agent model turns as the runtime reported them, by role.",
);
const AGENT_TOKENS: Family = family(
    "hyperloop_agent_tokens_total",
    "Agent model tokens as the runtime reported them, by role and kind.",
);
const COUNTERS: [Family; 9] = [
    EVENTS,
    STEPS_STARTED,
    STEPS_FINISHED,
    INTAKE_RUNS,
    INTAKE_CREATED,
    INTAKE_REJECTED,
    AGENT_COST,
    AGENT_TURNS,
    AGENT_TOKENS,
];

const STEP_SECONDS: Family = family(
    "hyperloop_step_duration_seconds",
    "How long agent steps ran, by role.",
);
const DISPATCH_SECONDS: Family = family(
    "hyperloop_dispatch_latency_seconds",
    "From sending a step to a worker to the worker's first word about it.",
);
const LANDING_SECONDS: Family = family(
    "hyperloop_landing_duration_seconds",
    "From a task asking to land (its merge action) to its work being in the base branch, \
     retries and rebases included.",
);
/// Histograms with their bucket upper bounds (seconds).
const HISTOGRAMS: [(Family, &[f64]); 3] = [
    // Agent steps run from seconds to the better part of an hour.
    (
        STEP_SECONDS,
        &[
            1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
        ],
    ),
    // A round trip on a healthy network is milliseconds; seconds mean a busy worker.
    (
        DISPATCH_SECONDS,
        &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0],
    ),
    // A merge and push, or a queue behind others and a rebase-resolver.
    (
        LANDING_SECONDS,
        &[0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 1800.0],
    ),
];

const TASKS: Family = family(
    "hyperloop_tasks",
    "Tasks by status, as the loop last saw them.",
);
const WORKERS: Family = family(
    "hyperloop_workers_connected",
    "Workers connected to this coordinator (in-process ones included).",
);
const SLOTS: Family = family(
    "hyperloop_worker_slots",
    "Steps the connected workers can run at once.",
);
const RUNNING: Family = family("hyperloop_steps_running", "Steps running on workers now.");
const QUEUED: Family = family(
    "hyperloop_steps_queued",
    "Tasks ready for an agent step that wait for a free worker slot.",
);
const LEADING: Family = family("hyperloop_leading", "1 while this coordinator leads.");
const CYCLE: Family = family("hyperloop_cycle", "The last completed reconcile cycle.");
const GITHUB_CALLS: Family = family(
    "hyperloop_github_api_calls_total",
    "GitHub API calls (retries included), by operation (HTTP method or graphql) and status \
     class.",
);
const GITHUB_REMAINING: Family = family(
    "hyperloop_github_rate_limit_remaining",
    "GitHub rate limit left in the current window, by resource, as last reported.",
);
const GITHUB_LIMIT: Family = family(
    "hyperloop_github_rate_limit",
    "GitHub rate limit per window, by resource, as last reported.",
);
/// Counters kept elsewhere and read when asked.
const READ_COUNTERS: [Family; 1] = [GITHUB_CALLS];
const GAUGES: [Family; 9] = [
    TASKS,
    WORKERS,
    SLOTS,
    RUNNING,
    QUEUED,
    LEADING,
    CYCLE,
    GITHUB_REMAINING,
    GITHUB_LIMIT,
];

/// Whether `/metrics` is served: as configured, else only on a loopback address (metrics say
/// what a repository's agents do; who may read them off-host is the operator's choice).
pub fn served(listen: SocketAddr, configured: Option<bool>) -> bool {
    configured.unwrap_or_else(|| listen.ip().is_loopback())
}

/// Label pairs of one series, in a fixed order.
type Labels = Vec<(&'static str, String)>;

/// The registry. Cheap to update: one lock per stored batch or timing.
#[derive(Debug, Default)]
pub struct Metrics {
    // std Mutex: never held across an await.
    store: Mutex<Store>,
    /// The OpenTelemetry histograms, once [`Metrics::export`] ran (counters and gauges are
    /// observed from the registry when the exporter collects; histograms are recorded).
    otel: OnceLock<BTreeMap<&'static str, opentelemetry::metrics::Histogram<f64>>>,
    /// GitHub mode's API call counts and rate limits.
    github: Option<Arc<ApiStats>>,
}

#[derive(Debug, Default)]
struct Store {
    counters: BTreeMap<&'static str, BTreeMap<Labels, f64>>,
    histograms: BTreeMap<&'static str, BTreeMap<Labels, Histogram>>,
}

#[derive(Debug, Default)]
struct Histogram {
    /// Cumulative counts per bucket bound.
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Store {
    fn add(&mut self, family: Family, labels: Labels, by: f64) {
        *self
            .counters
            .entry(family.name)
            .or_default()
            .entry(labels)
            .or_default() += by;
    }
}

impl Notifier for Metrics {
    fn notify(&self, events: &[Event]) {
        let mut observed = Vec::new();
        let mut s = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            s.add(EVENTS, vec![("event", event.kind.name().to_owned())], 1.0);
            match &event.kind {
                EventKind::StepDispatched { role, .. } => {
                    s.add(STEPS_STARTED, vec![("role", role.clone())], 1.0);
                }
                EventKind::ResultReaped {
                    role,
                    verdict,
                    duration_ms,
                    usage,
                    ..
                } => {
                    let by_role = vec![("role", role.clone())];
                    let finished = vec![("role", role.clone()), ("verdict", verdict.to_string())];
                    s.add(STEPS_FINISHED, finished, 1.0);
                    s.add(AGENT_COST, by_role.clone(), usage.cost_usd);
                    s.add(AGENT_TURNS, by_role.clone(), f64::from(usage.turns));
                    for (kind, n) in usage.tokens.by_kind() {
                        let labels = vec![("role", role.clone()), ("kind", kind.to_owned())];
                        s.add(AGENT_TOKENS, labels, n as f64);
                    }
                    observed.push((STEP_SECONDS, by_role, *duration_ms as f64 / 1000.0));
                }
                EventKind::IntakeRun {
                    created, rejected, ..
                } => {
                    s.add(INTAKE_RUNS, Vec::new(), 1.0);
                    s.add(INTAKE_CREATED, Vec::new(), created.len() as f64);
                    s.add(INTAKE_REJECTED, Vec::new(), rejected.len() as f64);
                }
                EventKind::Merged {
                    duration_ms: Some(ms),
                    ..
                } => observed.push((LANDING_SECONDS, Vec::new(), *ms as f64 / 1000.0)),
                _ => {}
            }
        }
        drop(s);
        for (family, labels, value) in observed {
            self.observe(family, labels, value);
        }
    }
}

impl Metrics {
    /// A registry that also reports `github`'s API calls and rate limits (GitHub mode).
    pub fn new(github: Option<Arc<ApiStats>>) -> Self {
        Metrics {
            github,
            ..Metrics::default()
        }
    }

    /// A step's dispatch round trip: from sending it to the worker's first word about it.
    pub fn dispatched(&self, seconds: f64) {
        self.observe(DISPATCH_SECONDS, Vec::new(), seconds);
    }

    fn observe(&self, family: Family, labels: Labels, value: f64) {
        if let Some(otel) = self.otel.get().and_then(|h| h.get(family.name)) {
            otel.record(value, &key_values(&labels));
        }
        let bounds = bounds_of(family);
        let mut s = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let h = s
            .histograms
            .entry(family.name)
            .or_default()
            .entry(labels)
            .or_insert_with(|| Histogram {
                buckets: vec![0; bounds.len()],
                ..Histogram::default()
            });
        for (bucket, bound) in h.buckets.iter_mut().zip(bounds) {
            if value <= *bound {
                *bucket += 1;
            }
        }
        h.count += 1;
        h.sum += value;
    }

    /// The Prometheus text exposition of the registry and of `live`.
    pub fn render(&self, live: &Live) -> String {
        let mut out = String::new();
        let s = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        for f in COUNTERS {
            header(&mut out, f, "counter");
            for (labels, value) in s.counters.get(f.name).into_iter().flatten() {
                let _ = writeln!(out, "{}{} {value}", f.name, render_labels(labels, None));
            }
        }
        for (f, bounds) in HISTOGRAMS {
            header(&mut out, f, "histogram");
            for (labels, h) in s.histograms.get(f.name).into_iter().flatten() {
                let name = f.name;
                for (bound, n) in bounds.iter().zip(&h.buckets) {
                    let le = bound.to_string();
                    let _ = writeln!(out, "{name}_bucket{} {n}", render_labels(labels, Some(&le)));
                }
                let inf = render_labels(labels, Some("+Inf"));
                let _ = writeln!(out, "{name}_bucket{inf} {}", h.count);
                let plain = render_labels(labels, None);
                let _ = writeln!(out, "{name}_sum{plain} {}", h.sum);
                let _ = writeln!(out, "{name}_count{plain} {}", h.count);
            }
        }
        drop(s);
        let read = READ_COUNTERS
            .map(|f| (f, "counter"))
            .into_iter()
            .chain(GAUGES.map(|f| (f, "gauge")));
        for (f, kind) in read {
            header(&mut out, f, kind);
            for (labels, value) in self.read(f, live) {
                let _ = writeln!(out, "{}{} {value}", f.name, render_labels(&labels, None));
            }
        }
        out
    }

    /// Registers the registry with OpenTelemetry's global meter provider (set up by trace and
    /// metrics export): counters and gauges are observed when the exporter collects, on its
    /// own thread; histograms are recorded from now on as they are observed here.
    pub fn export(self: &Arc<Self>, live: watch::Receiver<Arc<Live>>) {
        let meter = opentelemetry::global::meter("hyperloop");
        let mut histograms = BTreeMap::new();
        for (f, bounds) in HISTOGRAMS {
            let h = meter
                .f64_histogram(otel_name(f))
                .with_description(f.help)
                .with_unit("s")
                .with_boundaries(bounds.to_vec())
                .build();
            histograms.insert(f.name, h);
        }
        if self.otel.set(histograms).is_err() {
            return; // exported already
        }
        // The provider keeps the callbacks (the instrument handles need not be held), and
        // they keep the registry: the last export, at shutdown, comes after the endpoint
        // that made it is gone.
        for f in COUNTERS {
            let metrics = Arc::clone(self);
            meter
                .f64_observable_counter(otel_name(f))
                .with_description(f.help)
                .with_callback(move |observer| {
                    let s = metrics.store.lock().unwrap_or_else(PoisonError::into_inner);
                    for (labels, value) in s.counters.get(f.name).into_iter().flatten() {
                        observer.observe(*value, &key_values(labels));
                    }
                })
                .build();
        }
        for f in READ_COUNTERS {
            meter
                .f64_observable_counter(otel_name(f))
                .with_description(f.help)
                .with_callback(self.reader(f, &live))
                .build();
        }
        for f in GAUGES {
            meter
                .f64_observable_gauge(otel_name(f))
                .with_description(f.help)
                .with_callback(self.reader(f, &live))
                .build();
        }
    }

    /// An OpenTelemetry callback that observes family `f` as [`Metrics::read`] gives it.
    fn reader(
        self: &Arc<Self>,
        f: Family,
        live: &watch::Receiver<Arc<Live>>,
    ) -> impl Fn(&dyn opentelemetry::metrics::AsyncInstrument<f64>) + Send + Sync + 'static {
        let (metrics, live) = (Arc::clone(self), live.clone());
        move |observer| {
            for (labels, value) in metrics.read(f, &live.borrow().clone()) {
                observer.observe(value, &key_values(&labels));
            }
        }
    }

    /// The series of `f`, one of the families read when asked (gauges, GitHub's counts).
    fn read(&self, f: Family, live: &Live) -> Vec<(Labels, f64)> {
        match f {
            GITHUB_CALLS | GITHUB_REMAINING | GITHUB_LIMIT => {
                let Some(stats) = &self.github else {
                    return Vec::new();
                };
                let snapshot = stats.snapshot();
                if f == GITHUB_CALLS {
                    return snapshot
                        .calls
                        .into_iter()
                        .map(|((op, class), n)| {
                            (vec![("operation", op), ("status", class)], n as f64)
                        })
                        .collect();
                }
                snapshot
                    .rate_limits
                    .into_iter()
                    .map(|(resource, limit)| {
                        let value = if f == GITHUB_LIMIT {
                            limit.limit
                        } else {
                            limit.remaining
                        };
                        (vec![("resource", resource)], value as f64)
                    })
                    .collect()
            }
            _ => gauge(f, live),
        }
    }
}

/// The series of live-view gauge `f`.
fn gauge(f: Family, live: &Live) -> Vec<(Labels, f64)> {
    let single = |value: f64| vec![(Vec::new(), value)];
    match f {
        TASKS => {
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
            by_status
                .into_iter()
                .map(|(status, n)| (vec![("status", status.to_owned())], n as f64))
                .collect()
        }
        WORKERS => single(live.workers.len() as f64),
        SLOTS => single(live.workers.iter().map(|w| f64::from(w.capacity)).sum()),
        RUNNING => single(live.workers.iter().map(|w| w.attempts.len()).sum::<usize>() as f64),
        QUEUED => single(live.queued as f64),
        LEADING => single(f64::from(u8::from(live.leading))),
        CYCLE => single(live.cycle as f64),
        _ => Vec::new(),
    }
}

fn bounds_of(f: Family) -> &'static [f64] {
    HISTOGRAMS
        .iter()
        .find(|(h, _)| *h == f)
        .map_or(&[], |(_, bounds)| bounds)
}

/// The OpenTelemetry name: the Prometheus name without the `_total` a Prometheus backend
/// adds back to counters itself.
fn otel_name(f: Family) -> &'static str {
    f.name.strip_suffix("_total").unwrap_or(f.name)
}

fn key_values(labels: &Labels) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| KeyValue::new(*k, v.clone()))
        .collect()
}

fn header(out: &mut String, f: Family, kind: &str) {
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} {kind}", f.name);
}

/// `{a="x",le="5"}`, or nothing without labels.
fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(le.map(|le| ("le", le)))
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
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
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperloop_shared::model::{TaskId, Verdict};
    use hyperloop_shared::step::{Tokens, Usage};

    fn event(kind: EventKind) -> Event {
        Event {
            seq: 1,
            at_ms: 0,
            task: Some(TaskId(1)),
            kind,
        }
    }

    fn reaped(role: &str, verdict: Verdict, duration_ms: u64, usage: Usage) -> Event {
        event(EventKind::ResultReaped {
            step: "0".into(),
            role: role.into(),
            round: 0,
            attempt: 1,
            worker: "w".into(),
            verdict,
            duration_ms,
            usage,
        })
    }

    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(text.lines().any(|l| l == *line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn reaped_results_count_by_role_and_verdict_fill_the_histogram_and_add_up_spend() {
        let metrics = Metrics::default();
        let spent = Usage {
            turns: 3,
            cost_usd: 0.25,
            tokens: Tokens {
                input: 100,
                output: 20,
                cache_read: 5,
                cache_write: 0,
            },
        };
        metrics.notify(&[
            reaped("implementer", Verdict::Pass, 2_000, spent),
            reaped("implementer", Verdict::Fail, 70_000, spent),
            reaped("verifier", Verdict::Pass, 500, Usage::default()),
        ]);
        let text = metrics.render(&Live::default());
        assert_lines(
            &text,
            &[
                "hyperloop_steps_finished_total{role=\"implementer\",verdict=\"pass\"} 1",
                "hyperloop_steps_finished_total{role=\"implementer\",verdict=\"fail\"} 1",
                "hyperloop_step_duration_seconds_bucket{role=\"implementer\",le=\"5\"} 1",
                "hyperloop_step_duration_seconds_bucket{role=\"implementer\",le=\"120\"} 2",
                "hyperloop_step_duration_seconds_bucket{role=\"implementer\",le=\"+Inf\"} 2",
                "hyperloop_step_duration_seconds_sum{role=\"implementer\"} 72",
                "hyperloop_step_duration_seconds_count{role=\"verifier\"} 1",
                "hyperloop_events_total{event=\"result_reaped\"} 3",
                "hyperloop_agent_cost_usd_total{role=\"implementer\"} 0.5",
                "hyperloop_agent_turns_total{role=\"implementer\"} 6",
                "hyperloop_agent_tokens_total{role=\"implementer\",kind=\"input\"} 200",
                "hyperloop_agent_tokens_total{role=\"implementer\",kind=\"cache_read\"} 10",
                "hyperloop_tasks{status=\"complete\"} 0",
                "hyperloop_workers_connected 0",
                "hyperloop_steps_queued 0",
            ],
        );
    }

    #[test]
    fn intake_landing_and_dispatch_timings_are_counted() {
        let metrics = Metrics::default();
        metrics.notify(&[
            event(EventKind::IntakeRun {
                changed_specs: vec!["specs/a.md".into()],
                failures_considered: 0,
                created: vec![TaskId(1), TaskId(2)],
                rejected: vec!["duplicate".into()],
            }),
            event(EventKind::Merged {
                branch: "hyperloop/task-1".into(),
                into: "main".into(),
                commit: "abc".into(),
                strategy: "squash".into(),
                duration_ms: Some(1_500),
            }),
            // Merged by a human: nothing to time.
            event(EventKind::Merged {
                branch: "hyperloop/task-2".into(),
                into: "main".into(),
                commit: "def".into(),
                strategy: "by a human".into(),
                duration_ms: None,
            }),
        ]);
        metrics.dispatched(0.003);
        let live = Live {
            queued: 4,
            ..Live::default()
        };
        let text = metrics.render(&live);
        assert_lines(
            &text,
            &[
                "hyperloop_intake_runs_total 1",
                "hyperloop_intake_tasks_created_total 2",
                "hyperloop_intake_proposals_rejected_total 1",
                "hyperloop_landing_duration_seconds_bucket{le=\"1\"} 0",
                "hyperloop_landing_duration_seconds_bucket{le=\"2.5\"} 1",
                "hyperloop_landing_duration_seconds_count 1",
                "hyperloop_dispatch_latency_seconds_bucket{le=\"0.001\"} 0",
                "hyperloop_dispatch_latency_seconds_bucket{le=\"0.005\"} 1",
                "hyperloop_steps_queued 4",
                "hyperloop_events_total{event=\"merged\"} 2",
            ],
        );
    }

    #[test]
    fn github_calls_and_rate_limits_are_read_from_the_forge_stats() {
        let stats = Arc::new(ApiStats::default());
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4990"),
            ("x-ratelimit-resource", "core"),
        ] {
            headers.insert(name, http::HeaderValue::from_static(value));
        }
        stats.record("GET", Some((http::StatusCode::OK, &headers)));
        stats.record("GET", Some((http::StatusCode::OK, &headers)));
        stats.record("POST", None);
        let text = Metrics::new(Some(stats)).render(&Live::default());
        assert_lines(
            &text,
            &[
                "# TYPE hyperloop_github_api_calls_total counter",
                "hyperloop_github_api_calls_total{operation=\"GET\",status=\"2xx\"} 2",
                "hyperloop_github_api_calls_total{operation=\"POST\",status=\"error\"} 1",
                "hyperloop_github_rate_limit_remaining{resource=\"core\"} 4990",
                "hyperloop_github_rate_limit{resource=\"core\"} 5000",
            ],
        );
        // Landing locally: the families are declared, with no series.
        let local = Metrics::default().render(&Live::default());
        assert!(
            !local.contains("hyperloop_github_api_calls_total{"),
            "{local}"
        );
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
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
