//! Prometheus `/metrics` on a running coordinator (the real binary, `watch`, the scripted
//! agent), scraped over plain HTTP/1.1 as Prometheus does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyperloop_tests::repo::{TestRepo, coordinator_bin, scripted_agent, test_home};

const WAIT: Duration = Duration::from_secs(60);

fn repo(extra: &str) -> TestRepo {
    let config = format!(
        "max_workers: 1\npoll_interval: 1s\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n{extra}",
        scripted_agent().display()
    );
    TestRepo::new(&[
        (".hyperloop.yaml", &config),
        ("specs/a.md", "# A\n\nThe repository records work for A.\n"),
    ])
}

struct Watching(Child);

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn watch(repo: &TestRepo, port: u16) -> Watching {
    let child = Command::new(coordinator_bin())
        .args(["watch", "--listen", &format!("127.0.0.1:{port}"), "--path"])
        .arg(&repo.checkout)
        .env("HOME", test_home(repo.dir.path()))
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coordinator starts");
    Watching(child)
}

/// `GET /metrics`: the status line and the body, once the port answers.
fn scrape(port: u16) -> (String, String) {
    let started = Instant::now();
    loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
            return (head.to_owned(), body.to_owned());
        }
        assert!(started.elapsed() < WAIT, "the coordinator never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_steps_by_role_and_verdict_and_show_tasks_and_workers() {
    let repo = repo("");
    let port = hyperloop_tests::free_port();
    let _coordinator = watch(&repo, port);
    let started = Instant::now();
    let body = loop {
        let (head, body) = scrape(port);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain"),
            "{head}"
        );
        if value(&body, "hyperloop_tasks{status=\"complete\"}") == Some(2.0) {
            break body;
        }
        assert!(started.elapsed() < WAIT, "tasks never completed:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Every sample line has the text format's shape: name{labels} value.
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, number) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(number.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("hyperloop_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert!(!series.contains('{') || series.ends_with('}'), "{line}");
    }
    let started_impl = value(&body, "hyperloop_steps_started_total{role=\"implementer\"}");
    let passed_impl = value(
        &body,
        "hyperloop_steps_finished_total{role=\"implementer\",verdict=\"pass\"}",
    );
    assert!(started_impl >= Some(2.0), "{body}");
    assert!(passed_impl >= Some(2.0), "{body}");
    // The histogram counts every finished implementer step.
    let finished: f64 = body
        .lines()
        .filter(|l| l.starts_with("hyperloop_steps_finished_total{role=\"implementer\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(
        value(
            &body,
            "hyperloop_step_duration_seconds_count{role=\"implementer\"}"
        ),
        Some(finished),
        "{body}"
    );
    assert!(
        value(&body, "hyperloop_workers_connected") >= Some(1.0),
        "{body}"
    );
    assert_eq!(value(&body, "hyperloop_leading"), Some(1.0), "{body}");
    assert!(
        value(&body, "hyperloop_events_total{event=\"merged\"}") >= Some(2.0),
        "{body}"
    );
    // The loop's timings: every landing, and every step's dispatch round trip.
    assert!(
        value(&body, "hyperloop_landing_duration_seconds_count") >= Some(2.0),
        "{body}"
    );
    let dispatched: f64 = body
        .lines()
        .filter(|l| l.starts_with("hyperloop_steps_started_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    let timed = value(&body, "hyperloop_dispatch_latency_seconds_count").unwrap_or(0.0);
    assert!(timed >= 1.0 && timed <= dispatched, "{body}");
    assert!(
        value(&body, "hyperloop_intake_runs_total") >= Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(&body, "hyperloop_intake_tasks_created_total"),
        Some(2.0),
        "{body}"
    );
    assert_eq!(value(&body, "hyperloop_steps_queued"), Some(0.0), "{body}");
}

#[test]
fn metrics_turned_off_are_not_served() {
    let repo = repo("observability:\n  prometheus: false\n");
    let port = hyperloop_tests::free_port();
    let _coordinator = watch(&repo, port);
    // The path is unknown to the endpoint: gRPC's UNIMPLEMENTED (12), and no metrics.
    let (head, body) = scrape(port);
    assert!(head.contains("grpc-status: 12"), "{head}");
    assert!(!body.contains("hyperloop_"), "{body}");
}
