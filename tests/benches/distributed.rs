//! P1, P3, P4 and P6 of PERFORMANCE.md against the real `hyperloop-coordinator` binary over a
//! real etcd on loopback, each next to a reference measured in the same run.
//!
//! - P1 dispatch latency and P6 throughput use a protocol-level worker in this process (a
//!   tonic client of `WorkerService` that answers every Assign at once), so the figures are
//!   what the coordinator and etcd add, without agent start or git work (P2 covers those).
//!   P1: the worker sends step k's StepResult → it receives the Assign of step k+1 of the
//!   same task (both instants on this process's monotonic clock). One task alone, its
//!   verifier failing until round `P1_ROUNDS`, gives ~2 × `P1_ROUNDS` samples on an idle
//!   coordinator. Reference: one etcd txn (a compare on a fence key and a put of a
//!   `RECORD_BYTES` value, the state store's shape), serial round trips.
//!   P6: then `P6_TASKS` tasks of two no-op steps fan out to `FAKE_WORKERS` × `CAPACITY`
//!   slots; steps per second from the last step of the first task to the last result
//!   acknowledged, against the serial txn rate of the reference.
//! - P3 and P4 use the real `hyperloop-worker` binaries and the scripted agent, and read the
//!   journal in etcd (`at_ms`, millisecond resolution) against the instant this process sent
//!   the signal. P3: `kill -9` (killed) and SIGSTOP (hung) of a worker mid-step → the
//!   StepDispatched of the same step to another worker. P4: `kill -9` of the leading
//!   coordinator → the new leader's first StepDispatched, `P4_RUNS` times.
//!
//! `cargo bench -p hyperloop-tests --bench distributed`. It first builds the two binaries in
//! the bench profile into `target/distributed-bench` (minutes the first time, a no-op after),
//! so the processes measured are always the current code; the scenarios take ~40 s.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyperloop_coordinator::adapters::etcd_store::EtcdStore;
use hyperloop_coordinator::ports::state_store::StateStore;
use hyperloop_etcd::etcdserverpb::{
    Compare, PutRequest, RequestOp, TxnRequest, compare::CompareResult,
};
use hyperloop_etcd::{Client, Options};
use hyperloop_proto::PROTOCOL_VERSION;
use hyperloop_proto::v1::{
    self, coordinator_message::Body as Tell, worker_message::Body,
    worker_service_client::WorkerServiceClient,
};
use hyperloop_shared::event::{Event, EventKind};
use hyperloop_tests::etcd::Etcd;
use hyperloop_tests::repo::{TestRepo, git, logged_command, scripted_agent};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const TOKEN: &str = "bench-join-token-7Q";
const PREFIX: &str = "/hyperloop-bench";
/// Serial raw txns for the reference.
const RAW_TXNS: usize = 500;
/// About a task record's size in the state store.
const RECORD_BYTES: usize = 512;
/// Verifier rounds of the P1 task (two steps each).
const P1_ROUNDS: u32 = 50;
const P6_TASKS: usize = 300;
const FAKE_WORKERS: usize = 2;
const CAPACITY: u32 = 8;
const P4_RUNS: usize = 3;
/// Where the coordinator and worker binaries are (see [`build_binaries`]).
static BINS: OnceLock<PathBuf> = OnceLock::new();
/// Bounds every wait: a stuck scenario fails the bench with the logs instead of hanging.
const WAIT: Duration = Duration::from_secs(90);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    BINS.set(build_binaries()).expect("set once");
    if std::env::args().any(|a| a == "otel") {
        return export_on_and_off().await;
    }
    let mut rows = Vec::new();

    let etcd = Etcd::start();
    let (rtt, raw_rate) = raw_txns(&etcd.endpoint).await;
    rows.push(row_dist(
        "reference: one etcd txn (serial round trip)",
        &rtt,
    ));
    let (p1, p6) = fake_worker_run(&etcd, None).await;
    rows.push(row_dist(
        "**P1 result sent → next step's Assign received**",
        &p1,
    ));
    rows.push(vec![
        "reference: raw etcd serial txn throughput".into(),
        format!("{raw_rate:.0} txn/s"),
        String::new(),
    ]);
    rows.push(vec![
        format!("**P6 no-op steps through the coordinator ({P6_TASKS} tasks)**"),
        format!("{:.0} steps/s", p6.steps_per_s),
        format!(
            "{:.0} % of raw; {:.2} etcd writes/step; {} steps in {:.2} s",
            p6.steps_per_s / raw_rate * 100.0,
            p6.writes_per_step,
            p6.steps,
            p6.elapsed.as_secs_f64()
        ),
    ]);
    drop(etcd);

    let (killed, hung) = dead_worker_run().await;
    rows.push(vec![
        "reference: RECONNECT_GRACE / HEARTBEAT_TIMEOUT".into(),
        "2 s / 4 s".into(),
        String::new(),
    ]);
    rows.push(vec![
        "**P3 worker `kill -9` → step dispatched again**".into(),
        ms(killed),
        String::new(),
    ]);
    rows.push(vec![
        "**P3 worker SIGSTOP → step dispatched again**".into(),
        ms(hung),
        String::new(),
    ]);

    let failovers = failover_run().await;
    rows.push(vec![
        "reference: etcd lease TTL (`etcd.lease_ttl`)".into(),
        "3 s".into(),
        String::new(),
    ]);
    for (i, (elected, dispatched)) in failovers.iter().enumerate() {
        rows.push(vec![
            format!(
                "**P4 leader `kill -9` → new leader dispatching, run {}**",
                i + 1
            ),
            ms(*dispatched),
            format!("elected after {}", ms(*elected)),
        ]);
    }

    print_rows(rows);
}

fn print_rows(rows: Vec<Vec<String>>) {
    println!("\n| what | figure | detail |\n|---|---|---|");
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
}

/// `cargo bench -p hyperloop-tests --bench distributed -- otel`: P1 and P6 with OpenTelemetry
/// export off and on (traces and metrics over OTLP/gRPC to a live Rotel collector that
/// drops what it receives), alternating, each run on a fresh etcd.
async fn export_on_and_off() {
    let rotel = hyperloop_tests::rotel::Rotel::blackhole();
    let mut rows = Vec::new();
    for (run, export) in [false, true, false, true].into_iter().enumerate() {
        let etcd = Etcd::start();
        let endpoint = export.then_some(rotel.grpc.as_str());
        let (p1, p6) = fake_worker_run(&etcd, endpoint).await;
        let label = if export { "export on" } else { "export off" };
        rows.push(row_dist(&format!("P1, {label} (run {})", run + 1), &p1));
        rows.push(vec![
            format!("P6, {label} (run {})", run + 1),
            format!("{:.0} steps/s", p6.steps_per_s),
            format!("{} steps in {:.2} s", p6.steps, p6.elapsed.as_secs_f64()),
        ]);
    }
    print_rows(rows);
}

// --- helpers ---------------------------------------------------------------------------

/// Builds the binaries the bench runs in the bench profile, so they are never stale (cargo
/// does not build another package's binaries for this bench), and returns where they are.
/// A target dir of their own: built together with this bench, cargo unifies features
/// differently and each build would invalidate the other's dependencies.
fn build_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    // target/release/deps/<bench> → target/distributed-bench
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target dir")
        .join("distributed-bench");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--profile", "bench", "--bins"])
        .args(["-p", "hyperloop-coordinator", "-p", "hyperloop-worker"])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the binaries failed");
    target.join("release")
}

fn bin(name: &str) -> PathBuf {
    BINS.get().expect("binaries built").join(name)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let k = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

fn fmt_d(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// min / p50 / p99 (nearest rank) of `samples`.
fn row_dist(what: &str, samples: &[Duration]) -> Vec<String> {
    let mut s = samples.to_vec();
    s.sort();
    vec![
        what.to_owned(),
        format!("p50 {}", fmt_d(percentile(&s, 0.5))),
        format!(
            "min {}, p99 {}, max {}, n = {}",
            fmt_d(s[0]),
            fmt_d(percentile(&s, 0.99)),
            fmt_d(s[s.len() - 1]),
            s.len()
        ),
    ]
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms fit")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// etcd's count of committed raft proposals (every write, txn or lease grant is one).
fn proposals_committed(endpoint: &str) -> u64 {
    let mut stream = TcpStream::connect(endpoint.trim_start_matches("http://")).expect("etcd");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("metrics request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_server_proposals_committed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("etcd_server_proposals_committed_total in /metrics") as u64
}

// --- reference: raw etcd txns ----------------------------------------------------------

/// Serial round trips of a fenced put, and their rate.
async fn raw_txns(endpoint: &str) -> (Vec<Duration>, f64) {
    let client = Client::connect(&[endpoint], &Options::default()).expect("etcd client");
    let fence = client
        .put(PutRequest::new("/bench-raw/fence", "leader"))
        .await
        .expect("fence put")
        .header
        .expect("header")
        .revision;
    let value = "x".repeat(RECORD_BYTES);
    let mut rtt = Vec::with_capacity(RAW_TXNS);
    let started = Instant::now();
    for i in 0..RAW_TXNS {
        let t = Instant::now();
        let txn = TxnRequest {
            compare: vec![Compare::create_revision(
                "/bench-raw/fence",
                CompareResult::Equal,
                fence,
            )],
            success: vec![RequestOp::put(
                format!("/bench-raw/rec/{:03}", i % 100),
                value.clone(),
            )],
            failure: vec![],
        };
        let resp = client.txn(txn).await.expect("txn");
        assert!(resp.succeeded, "the fence compare holds");
        rtt.push(t.elapsed());
    }
    let rate = RAW_TXNS as f64 / started.elapsed().as_secs_f64();
    (rtt, rate)
}

// --- the repository and the processes ---------------------------------------------------

/// A repository, the coordinators working on it and the real workers joined to them.
struct Site {
    repo: TestRepo,
    endpoints: Vec<String>,
    ports: Vec<u16>,
    coordinators: Vec<Option<Child>>,
    workers: BTreeMap<String, Child>,
}

impl Site {
    fn new(endpoints: Vec<String>, coordinators: usize, files: &[(&str, &str)]) -> Site {
        let repo = TestRepo::new(files);
        for i in 1..coordinators {
            git(
                repo.dir.path(),
                &["clone", "-q", "origin.git", &format!("checkout-{i}")],
            );
        }
        Site {
            repo,
            endpoints,
            ports: (0..coordinators).map(|_| free_port()).collect(),
            coordinators: (0..coordinators).map(|_| None).collect(),
            workers: BTreeMap::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.repo.dir.path().join(name)
    }

    fn command(&self, program: PathBuf, log: &str) -> Command {
        logged_command(
            &program,
            self.repo.dir.path(),
            &self.path(&format!("{log}.log")),
        )
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn start_coordinator(&mut self, i: usize) {
        let checkout = if i == 0 {
            self.repo.checkout.clone()
        } else {
            self.path(&format!("checkout-{i}"))
        };
        let mut cmd = self.command(bin("hyperloop-coordinator"), &format!("coordinator-{i}"));
        cmd.args(["run", "--path"])
            .arg(checkout)
            .args(["--local-workers", "0", "--listen"])
            .arg(format!("127.0.0.1:{}", self.ports[i]))
            .args(["--etcd", &self.endpoints.join(",")])
            .args(["--etcd-prefix", PREFIX, "--join-token", TOKEN]);
        self.coordinators[i] = Some(cmd.spawn().expect("coordinator starts"));
    }

    fn start_worker(&mut self, name: &str, delay: &str) {
        let urls: Vec<String> = (0..self.ports.len()).map(|i| self.url(i)).collect();
        let mut cmd = self.command(bin("hyperloop-worker"), &format!("worker-{name}"));
        cmd.args(["--join", &urls.join(",")])
            .args(["--token", TOKEN, "--capacity", "1", "--name", name])
            .args(["--connect-timeout", "0", "--work-dir"])
            .arg(self.path(&format!("work-{name}")))
            .env("SCRIPTED_MODE", "normal")
            .env("SCRIPTED_DELAY", delay);
        self.workers
            .insert(name.to_owned(), cmd.spawn().expect("worker starts"));
    }

    fn logs(&self) -> String {
        let mut names: Vec<String> = (0..self.coordinators.len())
            .map(|i| format!("coordinator-{i}"))
            .collect();
        names.extend(self.workers.keys().map(|w| format!("worker-{w}")));
        names
            .iter()
            .map(|n| {
                let text =
                    std::fs::read_to_string(self.path(&format!("{n}.log"))).unwrap_or_default();
                format!("\n===== {n}\n{text}")
            })
            .collect()
    }

    async fn events(&self) -> Vec<Event> {
        EtcdStore::new(&self.endpoints, PREFIX, 100_000)
            .events(0, 100_000)
            .await
            .expect("events from etcd")
    }

    /// Polls the journal until `find` returns something, failing with every log after `WAIT`.
    async fn wait_event<T>(&self, what: &str, mut find: impl FnMut(&[Event]) -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(found) = find(&self.events().await) {
                return found;
            }
            assert!(
                started.elapsed() < WAIT,
                "timed out waiting for {what}{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for child in self
            .coordinators
            .iter_mut()
            .flatten()
            .chain(self.workers.values_mut())
        {
            signal("CONT", child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

fn config(rounds: u32) -> String {
    format!(
        "poll_interval: 1s\nmax_task_rounds: {rounds}\ndashboard:\n  enabled: false\n  \
         events_limit: 100000\nagent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  \
         timeout: 120s\n  env_passthrough: [SCRIPTED_MODE, SCRIPTED_DELAY]\n",
        scripted_agent().display()
    )
}

// --- P1 and P6: the protocol-level worker ----------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    Assigned,
    Sent,
    Acked,
}

struct Record {
    at: Instant,
    seen: Seen,
    task: String,
}

/// What every fake worker saw, in order.
#[derive(Default)]
struct Journal {
    records: Mutex<Vec<Record>>,
    /// The task P1 measures: the first one proposed, the others depend on it.
    solo: OnceLock<String>,
    /// Attempt id → task id, for acks.
    attempts: Mutex<BTreeMap<u64, String>>,
}

impl Journal {
    fn note(&self, seen: Seen, task: &str) {
        self.records.lock().expect("journal").push(Record {
            at: Instant::now(),
            seen,
            task: task.to_owned(),
        });
    }
}

fn registration(name: &str) -> v1::Registration {
    v1::Registration {
        name: name.to_owned(),
        instance_id: format!("{name}-bench"),
        capacity: CAPACITY,
        labels: Default::default(),
        version: "bench".into(),
    }
}

/// Joins `url` as worker `name` and answers every Assign at once until aborted.
async fn fake_worker(url: String, name: String, journal: Arc<Journal>) {
    let (tx, rx) = mpsc::channel(4096);
    let hello = v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        registration: Some(registration(&name)),
        token: TOKEN.into(),
        attempts: Vec::new(),
    };
    tx.send(v1::WorkerMessage {
        body: Some(Body::Hello(hello)),
    })
    .await
    .expect("queue hello");
    let mut client = WorkerServiceClient::connect(url)
        .await
        .expect("connect to the coordinator");
    let mut inbound = client
        .join(ReceiverStream::new(rx))
        .await
        .expect("join")
        .into_inner();
    let (beat, beating) = (tx.clone(), name.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let heartbeat = v1::Heartbeat {
                protocol_version: PROTOCOL_VERSION,
                registration: Some(registration(&beating)),
                attempts: Vec::new(),
                draining: false,
            };
            let msg = v1::WorkerMessage {
                body: Some(Body::Heartbeat(heartbeat)),
            };
            if beat.send(msg).await.is_err() {
                return;
            }
        }
    });
    loop {
        let msg = match inbound.message().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return,
            Err(status) => {
                eprintln!("fake worker {name}: the coordinator ended the stream: {status}");
                return;
            }
        };
        match msg.body {
            Some(Tell::Assign(assign)) => {
                journal.note(Seen::Assigned, &assign.task_id);
                for body in answer(&assign, &journal) {
                    tx.send(v1::WorkerMessage { body: Some(body) })
                        .await
                        .expect("send");
                }
                journal.note(Seen::Sent, &assign.task_id);
            }
            Some(Tell::ResultAck(ack)) => {
                let task = journal
                    .attempts
                    .lock()
                    .expect("attempts")
                    .remove(&ack.attempt_id);
                journal.note(Seen::Acked, &task.unwrap_or_default());
            }
            _ => {}
        }
    }
}

/// Accepted and the result: the PM proposes the P1 task and `P6_TASKS` depending on it; the
/// P1 task's verifier fails until its last round; everything else passes.
fn answer(assign: &v1::Assign, journal: &Journal) -> [Body; 2] {
    let mut proposals = Vec::new();
    if assign.role == "pm" {
        let proposal = |key: String, deps: Vec<String>| v1::Proposal {
            key: Some(key.clone()),
            title: format!("Bench {key}"),
            spec: "specs/bench.md".into(),
            deps,
        };
        proposals.push(proposal("solo".into(), Vec::new()));
        for i in 0..P6_TASKS {
            proposals.push(proposal(format!("t{i}"), vec!["solo".into()]));
        }
    } else if assign.role == "implementer" {
        let _ = journal.solo.set(assign.task_id.clone());
    }
    let fail = assign.role == "verifier"
        && journal.solo.get() == Some(&assign.task_id)
        && assign.round + 1 < P1_ROUNDS;
    journal
        .attempts
        .lock()
        .expect("attempts")
        .insert(assign.attempt_id, assign.task_id.clone());
    let verdict = if fail {
        v1::Verdict::Fail
    } else {
        v1::Verdict::Pass
    };
    [
        Body::Accepted(v1::Accepted {
            attempt_id: assign.attempt_id,
        }),
        Body::StepResult(v1::StepResult {
            attempt_id: assign.attempt_id,
            task_id: assign.task_id.clone(),
            step_path: assign.step_path.clone(),
            result: Some(v1::WorkerResult {
                verdict: verdict as i32,
                detail: "- bench finding".into(),
            }),
            proposals,
            // Stands for a pushed commit: an implementer passing without one fails its round.
            new_commits: !fail,
            ..Default::default()
        }),
    ]
}

struct Throughput {
    steps: usize,
    elapsed: Duration,
    steps_per_s: f64,
    writes_per_step: f64,
}

/// P1 samples and P6 throughput from one coordinator run with the fake workers.
/// `otel`: the OTLP/gRPC endpoint the coordinator exports traces and metrics to, if any.
async fn fake_worker_run(etcd: &Etcd, otel: Option<&str>) -> (Vec<Duration>, Throughput) {
    // One agent step pair in a loop and nothing else: no merge action (the fake workers push
    // no branch), no process-improver hook (the P1 task fails on purpose).
    let kustomization = "resources:\n- github.com/hyperloop-dev/hyperloop//base?ref=v0.1.0\n\
                         patches:\n- path: process.yaml\n  target:\n    kind: Process\n    \
                         name: default\n";
    let process = "kind: Process\nmetadata:\n  name: default\npipeline:\n- loop:\n  \
                   - agent: implementer\n  - agent: verifier\nhooks:\n  after_reap: []\n";
    let mut config = config(P1_ROUNDS + 1);
    if let Some(endpoint) = otel {
        config.push_str(&format!(
            "observability:\n  otel: {{endpoint: \"{endpoint}\", service_name: hl-bench}}\n"
        ));
    }
    let mut site = Site::new(
        vec![etcd.endpoint.clone()],
        1,
        &[
            ("specs/bench.md", "# Bench\n\nNo-op work.\n"),
            (".hyperloop.yaml", &config),
            (".hyperloop/agents/kustomization.yaml", kustomization),
            (".hyperloop/agents/process.yaml", process),
        ],
    );
    let writes_before = proposals_committed(&etcd.endpoint);
    site.start_coordinator(0);
    let journal = Arc::new(Journal::default());
    let url = site.url(0);
    wait_for_port(site.ports[0], &site).await;
    let workers: Vec<_> = (0..FAKE_WORKERS)
        .map(|i| {
            tokio::spawn(fake_worker(
                url.clone(),
                format!("fake{i}"),
                journal.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    let code = loop {
        if let Some(status) = site.coordinators[0]
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("wait")
        {
            break status.code();
        }
        assert!(
            started.elapsed() < WAIT,
            "the run did not converge{}",
            site.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    site.coordinators[0] = None;
    assert_eq!(code, Some(0), "the coordinator failed{}", site.logs());
    let writes = proposals_committed(&etcd.endpoint) - writes_before;
    for w in workers {
        w.abort();
    }

    let records = journal.records.lock().expect("journal");
    let solo = journal.solo.get().expect("the P1 task ran").clone();
    let mut p1 = Vec::new();
    let mut sent: Option<Instant> = None;
    for r in records.iter().filter(|r| r.task == solo) {
        match r.seen {
            Seen::Sent => sent = Some(r.at),
            Seen::Assigned => {
                if let Some(at) = sent.take() {
                    p1.push(r.at - at);
                }
            }
            Seen::Acked => {}
        }
    }
    let solo_done = records
        .iter()
        .filter(|r| r.task == solo && r.seen == Seen::Sent)
        .map(|r| r.at)
        .max()
        .expect("the P1 task finished");
    let steps = records
        .iter()
        .filter(|r| r.task != solo && r.seen == Seen::Assigned && r.at > solo_done)
        .count();
    let last = records
        .iter()
        .filter(|r| r.seen == Seen::Acked)
        .map(|r| r.at)
        .max()
        .expect("acks");
    let all_steps = records.iter().filter(|r| r.seen == Seen::Assigned).count();
    let elapsed = last - solo_done;
    assert_eq!(steps, 2 * P6_TASKS, "every fan-out task ran its two steps");
    (
        p1,
        Throughput {
            steps,
            elapsed,
            steps_per_s: steps as f64 / elapsed.as_secs_f64(),
            writes_per_step: writes as f64 / all_steps as f64,
        },
    )
}

async fn wait_for_port(port: u16, site: &Site) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < WAIT,
            "the coordinator never listened{}",
            site.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- P3: dead workers ------------------------------------------------------------------

/// The latest dispatch of an implementer step, per task: (task, attempt, worker).
fn running_implementers(events: &[Event]) -> BTreeMap<String, (u64, String)> {
    let mut latest = BTreeMap::new();
    for e in events {
        if let (
            Some(task),
            EventKind::StepDispatched {
                role,
                attempt,
                worker,
                ..
            },
        ) = (e.task, &e.kind)
            && role == "implementer"
        {
            latest.insert(task.to_string(), (*attempt, worker.clone()));
        }
    }
    latest
}

/// The instant (ms) the step of `task` was dispatched with an attempt after `attempt`.
fn redispatched(events: &[Event], task: &str, attempt: u64) -> Option<u64> {
    events.iter().find_map(|e| match (&e.task, &e.kind) {
        (Some(t), EventKind::StepDispatched { attempt: a, .. })
            if t.to_string() == task && *a > attempt =>
        {
            Some(e.at_ms)
        }
        _ => None,
    })
}

/// (killed, hung): signal → the victim's step dispatched to another worker.
async fn dead_worker_run() -> (Duration, Duration) {
    let etcd = Etcd::start();
    let config = config(4);
    let mut site = Site::new(
        vec![etcd.endpoint.clone()],
        1,
        &[
            ("specs/a.md", "# A\n\nWork for A.\n"),
            ("specs/b.md", "# B\n\nWork for B.\n"),
            (".hyperloop.yaml", &config),
        ],
    );
    site.start_coordinator(0);
    for w in ["w1", "w2", "w3", "w4"] {
        site.start_worker(w, "30");
    }
    // task-001 and task-003 run their implementers (task-002 waits for task-001).
    let running = site
        .wait_event("two implementer steps", |events| {
            let r = running_implementers(events);
            (r.len() >= 2).then_some(r)
        })
        .await;
    let mut figures = Vec::new();
    for (case, (task, (attempt, worker))) in ["KILL", "STOP"].iter().zip(running) {
        let name = site
            .workers
            .keys()
            .find(|n| worker.contains(n.as_str()))
            .unwrap_or_else(|| panic!("no worker process for {worker}"))
            .clone();
        // The step is under way (the agent sleeps 30 s); give it a moment past Accepted.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = site.workers[&name].id();
        let at = now_ms();
        signal(case, pid);
        let again = site
            .wait_event(&format!("{task} dispatched again after {case}"), |events| {
                redispatched(events, &task, attempt)
            })
            .await;
        figures.push(Duration::from_millis(again.saturating_sub(at)));
    }
    (figures[0], figures[1])
}

// --- P4: leader failover ---------------------------------------------------------------

/// The newest LeaderElected: (term, leader URL, at_ms).
fn leader(events: &[Event]) -> Option<(u64, String, u64)> {
    events.iter().rev().find_map(|e| match &e.kind {
        EventKind::LeaderElected { coordinator, term } => {
            Some((*term, coordinator.clone(), e.at_ms))
        }
        _ => None,
    })
}

/// Per run: (kill → LeaderElected, kill → first StepDispatched of the new term).
async fn failover_run() -> Vec<(Duration, Duration)> {
    let etcd = Etcd::start();
    let config = config(4);
    let specs: Vec<(String, String)> = (0..60)
        .map(|i| {
            (
                format!("specs/s{i:02}.md"),
                format!("# S{i:02}\n\nWork for S{i:02}.\n"),
            )
        })
        .collect();
    let mut files: Vec<(&str, &str)> = specs
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    files.push((".hyperloop.yaml", &config));
    let mut site = Site::new(vec![etcd.endpoint.clone()], 2, &files);
    site.start_coordinator(0);
    site.start_coordinator(1);
    for w in ["w1", "w2", "w3"] {
        site.start_worker(w, "1");
    }
    let mut runs = Vec::new();
    for run in 0..P4_RUNS {
        // The leader is dispatching steps to agents (past intake).
        let (term, url, _) = site
            .wait_event("a leader dispatching implementers", |events| {
                let (term, url, at) = leader(events)?;
                events
                    .iter()
                    .any(|e| {
                        e.at_ms >= at
                            && matches!(&e.kind, EventKind::StepDispatched { role, .. } if role == "implementer")
                    })
                    .then_some((term, url, at))
            })
            .await;
        let i = (0..2)
            .find(|&i| site.url(i) == url.trim_end_matches('/'))
            .unwrap_or_else(|| panic!("no coordinator serves {url}"));
        // Both up: the standby is campaigning.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let at = now_ms();
        let mut child = site.coordinators[i].take().expect("leader running");
        let _ = child.kill();
        let _ = child.wait();
        let (elected, dispatched) = site
            .wait_event(&format!("failover {}", run + 1), |events| {
                let (new_term, _, elected) = leader(events)?;
                if new_term <= term {
                    return None;
                }
                let first = events.iter().find(|e| {
                    e.at_ms >= elected && matches!(e.kind, EventKind::StepDispatched { .. })
                })?;
                Some((elected, first.at_ms))
            })
            .await;
        runs.push((
            Duration::from_millis(elected.saturating_sub(at)),
            Duration::from_millis(dispatched.saturating_sub(at)),
        ));
        // The killed one comes back as the standby for the next run.
        site.start_coordinator(i);
    }
    runs
}
