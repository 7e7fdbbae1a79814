//! OpenTelemetry export end to end: the real coordinator (and `hyperloop-worker`) binaries
//! export over OTLP/gRPC to an in-process `fake-opentelemetry-collector`, a real OTLP
//! receiver, and over OTLP/HTTP and gRPC to the Rotel collector (`hyperloop_tests::rotel`).
//! The spans must nest run → cycle → task → step, the worker's step span must continue the
//! coordinator's trace across processes, and the agent must see `TRACEPARENT`. Metrics made
//! from `opentelemetry::global::meter` after `Telemetry::start` must reach the collector.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_opentelemetry_collector::{ExportedMetric, ExportedSpan, FakeCollectorServer};
use hyperloop_tests::repo::{TestRepo, coordinator_bin, scripted_agent, test_home};
use hyperloop_tests::rotel::{Rotel, span_names};
use hyperloop_tests::{free_port, wait_with_limit};
use hyperloop_worker::otel::{ExportSettings, Telemetry};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const TOKEN: &str = "otel-join-token-4K";

/// A one-spec repository whose agent logs its `TRACEPARENT`; `otel` is the collector's
/// endpoint, if any.
fn repo(otel: Option<&str>) -> TestRepo {
    repo_exporting(
        otel.map(|endpoint| format!("{{endpoint: \"{endpoint}\", service_name: hl-test}}"))
            .as_deref(),
    )
}

/// Likewise, with `otel` as the whole `observability.otel` mapping.
fn repo_exporting(otel: Option<&str>) -> TestRepo {
    let mut config = format!(
        "max_workers: 1\npoll_interval: 1s\nmax_task_rounds: 3\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 20s\n\
         \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_TRACE]\n",
        scripted_agent().display()
    );
    if let Some(otel) = otel {
        config.push_str(&format!("observability:\n  otel: {otel}\n"));
    }
    TestRepo::new(&[
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop.yaml", &config),
    ])
}

/// The environment a test process runs with: its own HOME and cache, the agent's log, and
/// no OpenTelemetry or hyperloop variables from the caller.
fn env(cmd: &mut Command, repo: &TestRepo, log: &Path) {
    cmd.envs(hyperloop_tests::scripted_log(log))
        .env("SCRIPTED_TRACE", "1")
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env("HOME", test_home(repo.dir.path()))
        .env_remove("HYPERLOOP_PATH")
        .env_remove("HYPERLOOP_TOKEN")
        .env_remove("HYPERLOOP_JOIN_TOKEN")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_METRIC_EXPORT_INTERVAL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
}

fn coordinator(repo: &TestRepo, log: &Path, args: &[&str]) -> Child {
    let mut cmd = Command::new(coordinator_bin());
    cmd.args(["run", "--path"]).arg(&repo.checkout).args(args);
    env(&mut cmd, repo, log);
    cmd.spawn().expect("coordinator starts")
}

/// Runs the coordinator to convergence (with in-process workers) and returns how long it
/// took.
fn converge(repo: &TestRepo, log: &Path) -> Duration {
    let started = Instant::now();
    let child = coordinator(repo, log, &["--listen", "127.0.0.1:0"]);
    let (code, stderr) = wait_with_limit(child, RUN_TIMEOUT);
    assert_eq!(code, Some(0), "the run did not converge:\n{stderr}");
    started.elapsed()
}

/// The collector, drained continuously (its channels hold only 64 items and an undrained
/// one stalls exports).
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
    metrics: Arc<Mutex<Vec<ExportedMetric>>>,
}

impl Collector {
    async fn start() -> Collector {
        let mut server = FakeCollectorServer::start()
            .await
            .expect("the fake collector starts");
        let endpoint = server.endpoint();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(Mutex::new(Vec::new()));
        let (span_sink, metric_sink) = (spans.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                let batch = server.exported_spans(64, Duration::from_millis(50)).await;
                span_sink.lock().expect("spans").extend(batch);
                let batch = server.exported_metrics(64, Duration::from_millis(10)).await;
                metric_sink.lock().expect("metrics").extend(batch);
            }
        });
        Collector {
            endpoint,
            spans,
            metrics,
        }
    }

    /// The metric exports received once a metric named `name` arrived, or after `limit`.
    async fn metrics(&self, limit: Duration, name: &str) -> Vec<ExportedMetric> {
        let started = Instant::now();
        loop {
            let exports = self.metrics.lock().expect("metrics").clone();
            let arrived = exports
                .iter()
                .flat_map(|e| &e.metrics)
                .any(|m| m.name == name);
            if arrived || started.elapsed() > limit {
                return exports;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The spans received once `done` holds for them, or after `limit`.
    async fn spans(&self, limit: Duration, done: impl Fn(&[ExportedSpan]) -> bool) -> Spans {
        let started = Instant::now();
        loop {
            let spans = self.spans.lock().expect("spans").clone();
            if done(&spans) || started.elapsed() > limit {
                return Spans(spans);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Spans(Vec<ExportedSpan>);

/// An attribute's value as text (the collector keeps the OTLP value's debug form, like
/// `Some(AnyValue { value: Some(StringValue("pm")) })`).
fn attr(span: &ExportedSpan, key: &str) -> String {
    let raw = span
        .attributes
        .get(key)
        .unwrap_or_else(|| panic!("{} has no {key}: {:?}", span.name, span.attributes));
    raw.split_once("Value(")
        .map_or(raw.as_str(), |(_, value)| value.trim_end_matches(")) })"))
        .trim_matches('"')
        .to_owned()
}

impl Spans {
    fn named(&self, name: &str) -> Vec<&ExportedSpan> {
        self.0.iter().filter(|s| s.name == name).collect()
    }

    fn parent_of(&self, span: &ExportedSpan) -> &ExportedSpan {
        self.0
            .iter()
            .find(|p| p.span_id == span.parent_span_id && p.trace_id == span.trace_id)
            .unwrap_or_else(|| {
                panic!(
                    "no parent exported for {} {:?} (parent {})",
                    span.name, span.attributes, span.parent_span_id
                )
            })
    }
}

/// The `traceparent` values the agent logged, as (role, task, trace id, parent span id).
fn agent_traceparents(log: &Path) -> Vec<(String, String, String, String)> {
    std::fs::read_to_string(log)
        .expect("agent log")
        .lines()
        .filter_map(|line| line.strip_prefix("traceparent "))
        .map(|rest| {
            let fields: Vec<&str> = rest.split(' ').collect();
            let parts: Vec<&str> = fields[2].split('-').collect();
            assert_eq!(parts.len(), 4, "not a W3C traceparent: {rest}");
            (
                fields[0].to_owned(),
                fields[1].to_owned(),
                parts[1].to_owned(),
                parts[2].to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_run_exports_spans_that_nest_run_cycle_task_and_step() {
    let collector = Collector::start().await;
    let repo = repo(Some(&collector.endpoint));
    let log = repo.dir.path().join("steps.log");
    let (_repo, log) = tokio::task::spawn_blocking(move || {
        converge(&repo, &log);
        (repo, log)
    })
    .await
    .expect("run");
    // The coordinator flushed on shutdown: everything has arrived or is arriving.
    let spans = collector
        .spans(Duration::from_secs(10), |s| {
            s.iter().any(|s| s.name == "run")
        })
        .await;

    let runs = spans.named("run");
    assert_eq!(runs.len(), 1, "one run span");
    let run = runs[0];
    assert!(run.parent_span_id.is_empty(), "the run span is a root");
    assert_eq!(attr(run, "coordinator_id"), "single-host");
    assert!(!attr(run, "repository").is_empty());
    let steps = spans.named("step");
    assert!(
        steps.len() >= 3,
        "a pm, an implementer and a verifier step at least: {:?}",
        steps.iter().map(|s| &s.attributes).collect::<Vec<_>>()
    );
    let mut roles = Vec::new();
    for step in &steps {
        let task = spans.parent_of(step);
        assert_eq!(task.name, "task", "a step's parent is its task span");
        assert_eq!(attr(task, "task_id"), attr(step, "task_id"));
        assert_eq!(attr(task, "attempt"), attr(step, "attempt"));
        assert!(["pass", "fail"].contains(&attr(task, "verdict").as_str()));
        let cycle = spans.parent_of(task);
        assert_eq!(cycle.name, "cycle", "a task's parent is a cycle span");
        assert_eq!(spans.parent_of(cycle).span_id, run.span_id);
        roles.push(attr(task, "role"));
    }
    for role in ["pm", "implementer", "verifier"] {
        assert!(
            roles.iter().any(|r| r == role),
            "no {role} step in {roles:?}"
        );
    }

    // Each agent ran under its step's span, in the run's trace.
    let seen = agent_traceparents(&log);
    assert_eq!(
        seen.len(),
        steps.len(),
        "one traceparent per step: {seen:?}"
    );
    for (role, task, trace, parent) in &seen {
        assert_eq!(trace, &run.trace_id, "{role} {task} is in the run's trace");
        let step = steps
            .iter()
            .find(|s| &s.span_id == parent)
            .unwrap_or_else(|| panic!("{role} {task}: parent {parent} is no step span"));
        assert_eq!(&attr(step, "role"), role);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_run_exports_the_coordinators_metrics() {
    let collector = Collector::start().await;
    let repo = repo(Some(&collector.endpoint));
    let log = repo.dir.path().join("steps.log");
    let _repo = tokio::task::spawn_blocking(move || {
        converge(&repo, &log);
        repo
    })
    .await
    .expect("run");
    // The default interval is 10 s: the flush at shutdown delivers them.
    let exports = collector
        .metrics(Duration::from_secs(10), "hyperloop_steps_finished")
        .await;
    let metrics: Vec<_> = exports.iter().flat_map(|e| &e.metrics).collect();
    let shown = |name: &str| {
        let metric = metrics.iter().rfind(|m| m.name == name).unwrap_or_else(|| {
            let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
            panic!("no {name} among {names:?}")
        });
        format!("{:?}", metric.data)
    };
    let finished = shown("hyperloop_steps_finished");
    for role in ["implementer", "verifier"] {
        assert!(finished.contains(role), "{role}: {finished}");
    }
    assert!(finished.contains("\"verdict\""), "{finished}");
    assert!(
        shown("hyperloop_steps_started").contains("pm"),
        "intake counts"
    );
    let durations = shown("hyperloop_step_duration_seconds");
    assert!(durations.contains("Histogram"), "{durations}");
    assert!(shown("hyperloop_landing_duration_seconds").contains("Histogram"));
    assert!(shown("hyperloop_dispatch_latency_seconds").contains("Histogram"));
    assert!(shown("hyperloop_tasks").contains("complete"));
    for name in [
        "hyperloop_intake_runs",
        "hyperloop_events",
        "hyperloop_workers_connected",
        "hyperloop_steps_queued",
    ] {
        shown(name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_workers_step_span_is_a_child_of_the_coordinators_task_span() {
    let collector = Collector::start().await;
    let repo = repo(Some(&collector.endpoint));
    let log = repo.dir.path().join("steps.log");
    let endpoint = collector.endpoint.clone();
    let (_repo, log) = tokio::task::spawn_blocking(move || {
        let l = &log;
        let port = free_port();
        let coordinator = coordinator(
            &repo,
            l,
            &[
                "--local-workers",
                "0",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--join-token",
                TOKEN,
            ],
        );
        let mut worker = Command::new(coordinator_bin().with_file_name("hyperloop-worker"));
        worker
            .args(["--join", &format!("http://127.0.0.1:{port}")])
            .args(["--token", TOKEN, "--name", "remote-otel"])
            .arg("--work-dir")
            .arg(repo.dir.path().join("worker"));
        env(&mut worker, &repo, l);
        // The standard variable, as an operator would set it.
        let worker = worker
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .spawn()
            .expect("worker starts");
        let (code, stderr) = wait_with_limit(coordinator, RUN_TIMEOUT);
        assert_eq!(code, Some(0), "the run did not converge:\n{stderr}");
        let (code, stderr) = wait_with_limit(worker, Duration::from_secs(30));
        assert_eq!(code, Some(0), "the worker did not leave cleanly:\n{stderr}");
        (repo, log)
    })
    .await
    .expect("run");
    let spans = collector
        .spans(Duration::from_secs(10), |s| {
            s.iter().any(|s| s.name == "run")
                && s.iter().filter(|s| s.name == "step").count()
                    == s.iter().filter(|s| s.name == "task").count()
        })
        .await;

    let run = spans.named("run")[0];
    let steps = spans.named("step");
    assert!(!steps.is_empty(), "the worker exported its step spans");
    for step in &steps {
        let task = spans.parent_of(step);
        assert_eq!(task.name, "task");
        assert_eq!(step.trace_id, task.trace_id);
        assert_eq!(step.trace_id, run.trace_id);
        assert_eq!(attr(task, "task_id"), attr(step, "task_id"));
        assert_eq!(attr(step, "round"), attr(task, "round"));
    }
    let seen = agent_traceparents(&log);
    assert!(!seen.is_empty());
    for (role, task, trace, parent) in &seen {
        assert_eq!(trace, &run.trace_id, "{role} {task}");
        assert!(
            steps.iter().any(|s| &s.span_id == parent),
            "{role} {task}: the agent's parent is the worker's step span"
        );
    }
}

/// Also the measured comparison for the README: the same run with export off, to a live
/// collector, and to a dead endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_the_run_about_nothing() {
    let collector = Collector::start().await;
    let live = collector.endpoint.clone();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let times = tokio::task::spawn_blocking(move || {
        let mut times = Vec::new();
        for endpoint in [None, Some(live.as_str()), Some(dead.as_str())] {
            let repo = repo(endpoint);
            let log = repo.dir.path().join("steps.log");
            times.push(converge(&repo, &log));
        }
        times
    })
    .await
    .expect("runs");
    let [off, live, dead] = times[..] else {
        unreachable!("three runs")
    };
    eprintln!("export off {off:?}, to a live collector {live:?}, to a dead endpoint {dead:?}");
    let bound = off * 2 + Duration::from_secs(3);
    assert!(dead < bound, "dead endpoint: {dead:?} against {off:?} off");
    assert!(live < bound, "live collector: {live:?} against {off:?} off");
}

/// Starts export in this process, as the binaries do, with `env` as the environment.
fn export_in_process(
    env: &[(&str, &str)],
) -> (
    Telemetry,
    impl tracing_subscriber::Layer<tracing_subscriber::Registry>,
) {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let settings =
        ExportSettings::resolve(None, |name| env.get(name).cloned(), "hl-in-process", vec![])
            .expect("valid settings")
            .expect("an endpoint turns export on");
    Telemetry::start(&settings).expect("export starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_from_the_global_meter_reaches_the_collector_at_shutdown() {
    let mut collector = FakeCollectorServer::start()
        .await
        .expect("the fake collector starts");
    let endpoint = collector.endpoint();
    // The default 10 s interval: only the flush at shutdown can deliver it in time.
    let (telemetry, _spans) = export_in_process(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    opentelemetry::global::meter("hyperloop")
        .u64_counter("hyperloop_test_steps")
        .build()
        .add(3, &[opentelemetry::KeyValue::new("role", "pm")]);
    let flushed = Instant::now();
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("shutdown");
    assert!(
        flushed.elapsed() < Duration::from_secs(4),
        "shutdown is bounded"
    );
    let exported = collector.exported_metrics(1, Duration::from_secs(5)).await;
    let metric = exported
        .iter()
        .flat_map(|e| &e.metrics)
        .find(|m| m.name == "hyperloop_test_steps")
        .unwrap_or_else(|| panic!("the counter was not exported: {exported:?}"));
    let shown = format!("{:?}", metric.data);
    assert!(shown.contains("AsInt(3)"), "{shown}");
    assert!(shown.contains("\"role\""), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_rotel_over_http_protobuf() {
    let rotel = tokio::task::spawn_blocking(Rotel::start)
        .await
        .expect("rotel");
    let (telemetry, spans) = export_in_process(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &rotel.http),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
    ]);
    let subscriber = tracing_subscriber::layer::SubscriberExt::with(
        tracing_subscriber::Registry::default(),
        spans,
    );
    tracing::subscriber::with_default(subscriber, || {
        let _span = tracing::info_span!(target: "hyperloop_worker", "over_http").entered();
    });
    opentelemetry::global::meter("hyperloop")
        .u64_counter("hyperloop_test_over_http")
        .build()
        .add(1, &[]);
    // The periodic reader sends the counter on its own, well before shutdown.
    let rotel = tokio::task::spawn_blocking(move || {
        let seen = rotel.received(Duration::from_secs(10), |out| {
            out.contains("hyperloop_test_over_http")
        });
        assert!(
            seen.contains("hyperloop_test_over_http"),
            "no periodic metric export within 10 s:\n{seen}"
        );
        telemetry.shutdown();
        rotel
    })
    .await
    .expect("metrics");
    let seen = rotel.received(Duration::from_secs(10), |out| {
        span_names(out).contains(&"over_http")
    });
    assert!(span_names(&seen).contains(&"over_http"), "no span:\n{seen}");
    assert!(seen.contains("service.name: Str(hl-in-process)"), "{seen}");
}

/// The smoke test against a real collector: a scripted run whose coordinator exports over
/// OTLP/HTTP (the repository's `protocol` key) and whose remote worker exports over gRPC (the
/// standard variable), both to one Rotel.
#[test]
fn a_run_exports_to_rotel_over_http_and_grpc() {
    let rotel = Rotel::start();
    let repo = repo_exporting(Some(&format!(
        "{{endpoint: \"{}\", protocol: http, service_name: hl-test}}",
        rotel.http
    )));
    let log = repo.dir.path().join("steps.log");
    let port = free_port();
    let coordinator = coordinator(
        &repo,
        &log,
        &[
            "--local-workers",
            "0",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--join-token",
            TOKEN,
        ],
    );
    let mut worker = Command::new(coordinator_bin().with_file_name("hyperloop-worker"));
    worker
        .args(["--join", &format!("http://127.0.0.1:{port}")])
        .args(["--token", TOKEN, "--name", "remote-rotel"])
        .arg("--work-dir")
        .arg(repo.dir.path().join("worker"));
    env(&mut worker, &repo, &log);
    let worker = worker
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rotel.grpc)
        .spawn()
        .expect("worker starts");
    let (code, stderr) = wait_with_limit(coordinator, RUN_TIMEOUT);
    assert_eq!(code, Some(0), "the run did not converge:\n{stderr}");
    let (code, stderr) = wait_with_limit(worker, Duration::from_secs(30));
    assert_eq!(code, Some(0), "the worker did not leave cleanly:\n{stderr}");

    let seen = rotel.received(Duration::from_secs(10), |out| {
        let names = span_names(out);
        ["run", "cycle", "task", "step"]
            .iter()
            .all(|name| names.contains(name))
    });
    let names = span_names(&seen);
    for name in ["run", "cycle", "task", "step"] {
        assert!(names.contains(&name), "no {name} span in {names:?}");
    }
    assert!(
        seen.contains("service.name: Str(hl-test)"),
        "the coordinator's spans"
    );
    assert!(
        seen.contains("service.name: Str(hyperloop-worker)"),
        "the worker's spans"
    );
    assert!(seen.contains("hyperloop.worker.name: Str(remote-rotel)"));
}
