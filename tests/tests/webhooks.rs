//! Webhook notifications end to end: the real coordinator binary and the scripted agent, a
//! receiver on loopback that records every request, and signatures checked by Python's own
//! `hmac` module (an implementation independent of ours).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyperloop_tests::repo::{TestRepo, coordinator_bin, scripted_agent, test_home};

const LIMIT: Duration = Duration::from_secs(120);
const SECRET: &str = "hook-secret-Q7x";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    /// The status it was answered with.
    status: u16,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// An HTTP/1.1 receiver that answers 503 to the first `fail_first` requests, 200 after.
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = Arc::clone(&record);
                std::thread::spawn(move || serve(stream, &record, fail_first));
            }
        });
        Self { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self, path: &str) -> Vec<Received> {
        let all = self.seen.lock().unwrap().clone();
        all.into_iter().filter(|r| r.path == path).collect()
    }
}

/// Serves keep-alive requests on one connection until the client closes it.
fn serve(stream: TcpStream, record: &Mutex<Vec<Received>>, fail_first: usize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let status = {
            let mut all = record.lock().unwrap();
            let status = if all.len() < fail_first { 503 } else { 200 };
            all.push(Received {
                path,
                headers,
                body,
                status,
            });
            status
        };
        let reason = if status == 200 {
            "OK"
        } else {
            "Service Unavailable"
        };
        let answer = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n");
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn repo(webhooks: &str) -> TestRepo {
    let config = format!(
        "max_workers: 1\npoll_interval: 1s\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n\
         notifications:\n  webhooks:\n{webhooks}",
        scripted_agent().display()
    );
    TestRepo::new(&[
        (".hyperloop.yaml", &config),
        ("specs/a.md", "# A\n\nThe repository records work for A.\n"),
    ])
}

/// Runs the coordinator to its end; its exit code, stderr and how long it took.
fn run(repo: &TestRepo) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let child = Command::new(coordinator_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--path"])
        .arg(&repo.checkout)
        .env("HOME", test_home(repo.dir.path()))
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env("HOOK_SECRET", SECRET)
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator starts");
    let (code, stderr) = hyperloop_tests::wait_with_limit(child, LIMIT);
    (code, stderr, started.elapsed())
}

/// The signatures of `bodies` as Python's `hmac` computes them with `SECRET`.
fn python_signatures(bodies: &[Vec<u8>]) -> Vec<String> {
    let script = "import hmac, hashlib, sys, json\n\
                  secret = sys.argv[1].encode()\n\
                  for body in json.load(sys.stdin):\n\
                  \x20   mac = hmac.new(secret, bytes(body), hashlib.sha256)\n\
                  \x20   print('sha256=' + mac.hexdigest())\n";
    let mut child = Command::new("python3")
        .args(["-c", script, SECRET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let input = serde_json::to_vec(bodies).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn signed_webhooks_get_what_a_person_acts_on_verbose_ones_get_progress_and_a_503_is_retried() {
    // The first two requests are answered 503: each is retried and arrives.
    let receiver = Receiver::start(2);
    let hooks = format!(
        "    ops: {{url: '{}', secret_env: HOOK_SECRET}}\n    feed: {{url: '{}', verbose: true}}\n",
        receiver.url("/ops"),
        receiver.url("/feed")
    );
    let repo = repo(&hooks);
    let (code, stderr, _) = run(&repo);
    assert_eq!(code, Some(0), "{stderr}");

    let ops = receiver.seen("/ops");
    let names: Vec<String> = ops
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.headers["x-hyperloop-event"].clone())
        .collect();
    for expected in [
        "result_reaped",
        "task_completed",
        "merged",
        "coordinator_halted",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "no {expected} in {names:?}"
        );
    }
    // Progress detail only goes to the verbose sink; phase transitions go nowhere.
    assert!(!names.iter().any(|n| n == "step_dispatched"), "{names:?}");
    let feed: Vec<String> = receiver
        .seen("/feed")
        .iter()
        .map(|r| r.headers["x-hyperloop-event"].clone())
        .collect();
    assert!(feed.iter().any(|n| n == "step_dispatched"), "{feed:?}");
    assert!(!feed.iter().any(|n| n == "task_advanced"), "{feed:?}");
    assert!(
        receiver
            .seen("/feed")
            .iter()
            .all(|r| !r.headers.contains_key("x-hyperloop-signature-256"))
    );

    // Bodies are the flat journal events with the repository; signatures check out.
    let first = ops.iter().find(|r| r.status == 200).unwrap().json();
    assert!(
        first["event"].is_string() && first["seq"].is_u64(),
        "{first}"
    );
    assert!(first["repository"].is_string(), "{first}");
    let bodies: Vec<Vec<u8>> = ops.iter().map(|r| r.body.clone()).collect();
    let expected = python_signatures(&bodies);
    for (r, signature) in ops.iter().zip(expected) {
        assert_eq!(r.headers["x-hyperloop-signature-256"], signature);
        assert_eq!(r.headers["content-type"], "application/json");
    }

    // A delivery answered 503 came again with the same delivery id, and every event once.
    let all = receiver.seen.lock().unwrap().clone();
    let failed: Vec<&Received> = all.iter().filter(|r| r.status == 503).collect();
    assert_eq!(failed.len(), 2);
    for f in &failed {
        let id = &f.headers["x-hyperloop-delivery"];
        assert!(
            all.iter().any(|r| r.status == 200
                && r.path == f.path
                && &r.headers["x-hyperloop-delivery"] == id),
            "{id} was not delivered after its 503"
        );
    }
    let mut ids: Vec<&String> = ops
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| &r.headers["x-hyperloop-delivery"])
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event was delivered twice");
}

#[test]
fn a_webhook_nobody_answers_does_not_slow_the_run() {
    let baseline = repo("    none: {url: 'http://127.0.0.1:9/unused', verbose: false}\n");
    // Port 9 (discard) is closed on loopback: every delivery fails at once and is retried.
    let (code, stderr, dead) = run(&baseline);
    assert_eq!(code, Some(0), "{stderr}");
    let receiver = Receiver::start(0);
    let live = repo(&format!("    ok: {{url: '{}'}}\n", receiver.url("/ok")));
    let (code, stderr, alive) = run(&live);
    assert_eq!(code, Some(0), "{stderr}");
    // At most the shutdown grace (3 s) beyond a run whose webhook answers.
    assert!(
        dead < alive + Duration::from_secs(5),
        "dead webhook run {dead:?} vs live {alive:?}"
    );
    assert!(stderr.contains("events are sent to a webhook"), "{stderr}");
}
