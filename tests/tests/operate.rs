//! Operating a running coordinator: a single-host coordinator without in-process workers
//! (`--local-workers 0`), `hyperloop-worker` processes joining it over gRPC on loopback, and
//! `hyperloopctl --server` acting on it. Real binaries, real git, the scripted `command`
//! agent; TLS certificates are generated here with rcgen.
//!
//! Covers issue 4's tests 6 (join token, TLS, mutual TLS) and 7 (cancel, drain) and the
//! operator's view: `status` with workers and waiting reasons, `logs -f`, label routing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyperloop_shared::event::{Event, EventKind};
use hyperloop_tests::free_port;
use hyperloop_tests::repo::{TestRepo, coordinator_bin, scripted_agent, test_home};
use serde_json::Value;

const SPEC_A: &str = "# A\n\nThe repository records work for A.\n";
const SPEC_B: &str = "# B\n\nThe repository records work for B.\n";
const TOKEN: &str = "operate-join-token-3M";
/// Bounds a whole run or a wait: a hung process fails the test instead of CI. Runs take a
/// few seconds; this only matters when something is broken.
const LIMIT: Duration = Duration::from_secs(60);
/// What issue 4 promises for cancel: the agent is gone within 1 s.
const CANCEL_WITHIN: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    u64::try_from(since.as_millis()).expect("millis")
}

/// PEM files of a CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate, all signed by the CA.
struct Certs {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

impl Certs {
    fn generate(dir: &Path) -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        let signed = |name: &str, names: &[&str]| {
            let key = KeyPair::generate().expect("key");
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let cert = CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &ca)
                .expect("signed certificate");
            (
                write(&format!("{name}.pem"), cert.pem()),
                write(&format!("{name}.key"), key.serialize_pem()),
            )
        };
        let server = signed("server", &["127.0.0.1", "localhost"]);
        let client = signed("client", &["worker.test"]);
        Certs {
            ca: write("ca.pem", ca.pem()),
            server,
            client,
        }
    }

    /// `--tls-ca`, and `--tls-cert`/`--tls-key` when `with_client_cert`.
    fn client_args(&self, with_client_cert: bool) -> Vec<String> {
        let mut args = vec!["--tls-ca".to_owned(), path(&self.ca)];
        if with_client_cert {
            args.extend([
                "--tls-cert".to_owned(),
                path(&self.client.0),
                "--tls-key".to_owned(),
                path(&self.client.1),
            ]);
        }
        args
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// How the coordinator's endpoint is secured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tls {
    Off,
    Server,
    Mutual,
}

/// What a finished process left behind.
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// The repository, the coordinator and the workers of one scenario. Dropping it stops every
/// process with SIGTERM (a worker then stops its agents) and kills what is left.
struct Site {
    repo: TestRepo,
    port: u16,
    url: String,
    certs: Option<Certs>,
    coordinator: Option<Child>,
    workers: BTreeMap<String, Child>,
    /// Names `hyperloopctl` output files apart.
    ctl_runs: usize,
}

impl Site {
    /// A repository with two specs (three tasks: task-001, task-002 after it, task-003) and
    /// `agent_extra` appended to the `agent:` section of its configuration.
    fn new(agent_extra: &str) -> Site {
        let config = format!(
            "max_workers: 2\npoll_interval: 1s\nmax_task_rounds: 4\n\
             dashboard:\n  enabled: false\n  events_limit: 100000\n\
             agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 60s\n\
             \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_MODE, SCRIPTED_DELAY]\n{agent_extra}",
            scripted_agent().display()
        );
        let repo = TestRepo::new(&[
            ("specs/a.md", SPEC_A),
            ("specs/b.md", SPEC_B),
            (".hyperloop.yaml", &config),
        ]);
        let port = free_port();
        Site {
            repo,
            port,
            url: format!("http://127.0.0.1:{port}"),
            certs: None,
            coordinator: None,
            workers: BTreeMap::new(),
            ctl_runs: 0,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.repo.dir.path().join(name)
    }

    /// Where agents run by worker `name` record their steps (and, in hang mode, their pids
    /// in `<that>.pids`).
    fn steps_file(&self, worker: &str) -> PathBuf {
        self.file(&format!("steps-{worker}.log"))
    }

    fn steps(&self, worker: &str) -> String {
        std::fs::read_to_string(self.steps_file(worker)).unwrap_or_default()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.file(&format!("{name}.log"))).unwrap_or_default()
    }

    /// Every process's output (workers that already exited included), for failure messages.
    fn logs(&self) -> String {
        let mut all = format!("\n===== coordinator\n{}", self.log("coordinator"));
        let mut workers: Vec<String> = std::fs::read_dir(self.repo.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("worker-")
                    .then(|| name.strip_suffix(".log").map(str::to_owned))
                    .flatten()
            })
            .collect();
        workers.sort();
        for name in workers {
            all.push_str(&format!("\n===== {name}\n{}", self.log(&name)));
        }
        all
    }

    /// A command with a clean environment (no HYPERLOOP_* of the caller's) and a HOME with
    /// a git identity, its output going to `<log>.log`.
    fn command(&self, program: PathBuf, log: &str) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HYPERLOOP_") {
                cmd.env_remove(key);
            }
        }
        let out = std::fs::File::create(self.file(&format!("{log}.log"))).expect("log file");
        cmd.env("XDG_CACHE_HOME", self.file("cache"))
            .env("HOME", test_home(self.repo.dir.path()))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        cmd
    }

    fn start_coordinator(&mut self, tls: Tls) {
        let mut cmd = self.command(coordinator_bin(), "coordinator");
        cmd.args(["run", "--path"])
            .arg(&self.repo.checkout)
            .args(["--local-workers", "0", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--join-token", TOKEN]);
        if tls != Tls::Off {
            let certs = Certs::generate(self.repo.dir.path());
            cmd.arg("--tls-cert")
                .arg(&certs.server.0)
                .arg("--tls-key")
                .arg(&certs.server.1);
            if tls == Tls::Mutual {
                cmd.arg("--tls-client-ca").arg(&certs.ca);
            }
            self.certs = Some(certs);
            self.url = format!("https://127.0.0.1:{}", self.port);
        }
        self.coordinator = Some(cmd.spawn().expect("coordinator starts"));
        self.wait_for("the coordinator to listen", |s| {
            std::net::TcpStream::connect(("127.0.0.1", s.port)).is_ok()
        });
    }

    /// `hyperloop-worker` joining this site's coordinator as `name`, with the TLS flags the
    /// coordinator needs; `args` adds or overrides the rest (capacity, labels, ...).
    fn worker_command(&self, name: &str, token: &str, args: &[&str]) -> Command {
        let mut cmd = self.command(
            coordinator_bin().with_file_name("hyperloop-worker"),
            &format!("worker-{name}"),
        );
        cmd.args(["--join", &self.url, "--token", token, "--name", name])
            .arg("--work-dir")
            .arg(self.file(&format!("work-{name}")))
            .args(args)
            .envs(hyperloop_tests::scripted_log(self.steps_file(name)))
            .env("SCRIPTED_MODE", "normal");
        cmd
    }

    fn start_worker(&mut self, name: &str, mut cmd: Command) {
        let child = cmd.spawn().expect("worker starts");
        self.workers.insert(name.to_owned(), child);
    }

    /// The TLS flags a worker or `hyperloopctl` needs here (none without TLS).
    fn client_tls(&self, with_client_cert: bool) -> Vec<String> {
        self.certs
            .as_ref()
            .map(|c| c.client_args(with_client_cert))
            .unwrap_or_default()
    }

    /// Runs `hyperloopctl --server <this coordinator> ARGS` to completion.
    fn ctl(&mut self, tls: &[String], args: &[&str]) -> Finished {
        self.ctl_runs += 1;
        let name = format!("ctl-{}", self.ctl_runs);
        let mut cmd = self.command(coordinator_bin().with_file_name("hyperloopctl"), &name);
        // Its stdout separately: the JSON a test parses.
        let stdout = std::fs::File::create(self.file(&format!("{name}.out"))).expect("out file");
        // Standing in the repository, as an operator does: the coordinator serves only that.
        cmd.args(["--server", &self.url])
            .args(tls)
            .args(args)
            .current_dir(&self.repo.checkout);
        cmd.stdout(stdout);
        let child = cmd.spawn().expect("hyperloopctl starts");
        let status = self.await_exit(child, &format!("hyperloopctl {}", args.join(" ")));
        Finished {
            code: status.code(),
            stdout: std::fs::read_to_string(self.file(&format!("{name}.out"))).unwrap_or_default(),
            stderr: self.log(&name),
        }
    }

    /// `hyperloopctl ARGS` on this coordinator, which must succeed; its stdout.
    fn ctl_ok(&mut self, args: &[&str]) -> String {
        let tls = self.client_tls(true);
        let out = self.ctl(&tls, args);
        assert_eq!(
            out.code,
            Some(0),
            "hyperloopctl {} failed:\n{}{}",
            args.join(" "),
            out.stderr,
            self.logs()
        );
        out.stdout
    }

    /// `hyperloopctl ARGS -o json`, parsed.
    fn ctl_json(&mut self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let out = self.ctl_ok(&args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: not JSON:\n{out}"))
    }

    /// The journal, oldest first.
    fn events(&mut self) -> Vec<Event> {
        let out = self.ctl_ok(&["get", "events", "--limit", "100000", "-o", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: not events:\n{out}"))
    }

    /// Waits until `done` holds, failing with every log after [`LIMIT`].
    fn wait_for(&self, what: &str, mut done: impl FnMut(&Site) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < LIMIT,
                "timed out after {LIMIT:?} waiting for {what}{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `child` to exit, killing it and failing after [`LIMIT`].
    fn await_exit(&self, mut child: Child, what: &str) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if started.elapsed() > LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {LIMIT:?}{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn await_coordinator(&mut self) -> Option<i32> {
        let child = self.coordinator.take().expect("a coordinator");
        self.await_exit(child, "the coordinator").code()
    }

    /// Waits for worker `name` to exit; its exit code and output.
    fn await_worker(&mut self, name: &str) -> (Option<i32>, String) {
        let child = self.workers.remove(name).expect("a worker");
        let code = self.await_exit(child, &format!("worker {name}")).code();
        (code, self.log(&format!("worker-{name}")))
    }

    /// Every task's work is on main exactly once.
    fn assert_landed(&self) {
        let files = self.repo.files("main");
        let history = self.repo.log("main");
        for task in ["task-001", "task-002", "task-003"] {
            let file = format!("work/{task}.txt");
            assert!(
                files.contains(&file),
                "{file} missing from main: {files:?}{}",
                self.logs()
            );
            let landed = history.matches(&format!("Task-Ref: {task}\n")).count();
            assert_eq!(landed, 1, "{task} should land exactly once:\n{history}");
        }
    }

    /// Pids the hanging implementers of worker `name` wrote, oldest first.
    fn agent_pids(&self, worker: &str) -> Vec<u32> {
        let mut pids = self.steps_file(worker).into_os_string();
        pids.push(".pids");
        std::fs::read_to_string(pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // SIGTERM first: a worker stops its agents (hanging ones included) on the way out.
        let workers: Vec<Child> = std::mem::take(&mut self.workers).into_values().collect();
        let everyone = workers.into_iter().chain(self.coordinator.take());
        let mut children: Vec<Child> = everyone.collect();
        for child in &children {
            signal("TERM", child.id());
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10)
            && children
                .iter_mut()
                .any(|c| c.try_wait().ok().flatten().is_none())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A worker killed above may have left a hanging agent behind.
        let names: Vec<String> = std::fs::read_dir(self.repo.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("steps-") && n.ends_with(".log"))
            .collect();
        for name in names {
            let worker = &name["steps-".len()..name.len() - ".log".len()];
            for pid in self.agent_pids(worker) {
                if alive(pid) {
                    signal("KILL", pid);
                }
            }
        }
    }
}

/// Sends SIGNAL to `pid` (ignoring a process that is already gone).
fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` still runs: it exists and has not exited (a zombie has, and only waits for
/// its parent to reap it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        // The state follows the command name, which is in parentheses.
        .is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
}

/// The task of the newest implementer step in a steps log.
fn last_implementer(steps: &str) -> Option<String> {
    steps
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("implementer "))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
}

fn task_json<'a>(tasks: &'a Value, id: &str) -> &'a Value {
    tasks
        .as_array()
        .and_then(|all| all.iter().find(|t| t["id"] == id))
        .unwrap_or_else(|| panic!("no {id} in {tasks:#}"))
}

/// Issue test 6: under mutual TLS, a worker and `hyperloopctl` with a client certificate get
/// in and the run converges; without one they are refused, saying which flags are missing; a
/// wrong join token is refused by name without printing either token.
#[test]
fn mutual_tls_admits_clients_with_certificates_and_refuses_the_rest() {
    let mut site = Site::new("");
    site.start_coordinator(Tls::Mutual);

    let status = site.ctl_json(&["status"]);
    assert!(status["workers"].as_array().is_some(), "{status:#}");
    let without_cert = site.client_tls(false);
    let refused = site.ctl(&without_cert, &["status"]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&site.url) && refused.stderr.contains("--tls-cert"),
        "hyperloopctl without a client certificate should say to pass one:\n{}",
        refused.stderr
    );
    // Said in words, not as Rust debug output.
    assert!(!refused.stderr.contains("tonic::"), "{}", refused.stderr);

    let mut args: Vec<String> = site.client_tls(false);
    args.extend(["--connect-timeout", "2s"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cmd = site.worker_command("nocert", TOKEN, &args);
    site.start_worker("nocert", cmd);
    let (code, nocert) = site.await_worker("nocert");
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {nocert}");
    let last = nocert.lines().last().unwrap_or_default();
    assert!(
        last.contains("--tls-cert") && last.contains("--tls-key"),
        "a worker without a client certificate should end naming the flags:\n{nocert}"
    );

    let wrong = "wrong-token-over-tls-8P";
    let tls = site.client_tls(true);
    let args: Vec<&str> = tls.iter().map(String::as_str).collect();
    let cmd = site.worker_command("wrong", wrong, &args);
    site.start_worker("wrong", cmd);
    let (code, refused) = site.await_worker("wrong");
    assert_eq!(code, Some(2), "{refused}");
    assert!(refused.contains("join token"), "{refused}");

    let mut args = tls.clone();
    args.extend(["--capacity", "2"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cmd = site.worker_command("w1", TOKEN, &args);
    site.start_worker("w1", cmd);
    let code = site.await_coordinator();
    assert_eq!(code, Some(0), "{}", site.logs());
    let (code, w1) = site.await_worker("w1");
    assert_eq!(code, Some(0), "{w1}");
    site.assert_landed();
    assert!(site.steps("w1").contains("implementer task-003 0"));

    for name in ["coordinator", "worker-w1", "worker-wrong", "worker-nocert"] {
        let log = site.log(name);
        assert!(
            !log.contains(TOKEN),
            "{name} printed the join token:\n{log}"
        );
        assert!(
            !log.contains(wrong),
            "{name} printed the presented token:\n{log}"
        );
    }
}

/// Issue test 6, server TLS only: a worker that trusts the CA joins over https and the run
/// converges.
#[test]
fn a_worker_joins_over_tls_and_the_run_converges() {
    let mut site = Site::new("");
    site.start_coordinator(Tls::Server);
    let tls = site.client_tls(false);
    let args: Vec<&str> = tls.iter().map(String::as_str).collect();
    let cmd = site.worker_command("w1", TOKEN, &args);
    site.start_worker("w1", cmd);
    let code = site.await_coordinator();
    assert_eq!(code, Some(0), "{}", site.logs());
    let (code, w1) = site.await_worker("w1");
    assert_eq!(code, Some(0), "{w1}");
    site.assert_landed();
}

/// Issue test 7, cancel: the operator's cancel reaches the hanging agent within a second and
/// the task fails with the operator's reason.
#[test]
fn cancel_stops_the_agent_within_a_second_and_fails_the_task_with_the_reason() {
    let mut site = Site::new("");
    site.start_coordinator(Tls::Off);
    let mut cmd = site.worker_command("w1", TOKEN, &["--capacity", "1"]);
    cmd.env("SCRIPTED_MODE", "hang");
    site.start_worker("w1", cmd);
    site.wait_for("a hanging implementer", |s| !s.agent_pids("w1").is_empty());
    let pid = site.agent_pids("w1")[0];
    let task = last_implementer(&site.steps("w1")).expect("an implementer step");
    assert!(alive(pid), "the agent {pid} should still hang");

    let reason = "superseded by a spec rewrite";
    let sent = Instant::now();
    let out = site.ctl_ok(&["cancel", &task, "--reason", reason]);
    let returned = Instant::now();
    assert!(out.contains(&format!("{task} cancelled")), "{out}");
    while alive(pid) && returned.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let gone = Instant::now();
    let after_return = gone.duration_since(returned);
    let after_send = gone.duration_since(sent);
    println!(
        "cancel latency: agent gone {after_return:?} after `hyperloopctl cancel` returned, \
         {after_send:?} after it started"
    );
    assert!(
        !alive(pid),
        "the agent {pid} survived the cancel{}",
        site.logs()
    );
    assert!(
        after_return <= CANCEL_WITHIN,
        "the agent stopped {after_return:?} after the cancel returned (more than \
         {CANCEL_WITHIN:?}){}",
        site.logs()
    );

    let tasks = site.ctl_json(&["get", "tasks"]);
    let cancelled = task_json(&tasks, &task);
    assert_eq!(cancelled["status"], "failed", "{cancelled:#}");
    let failure = cancelled["failure"].as_str().unwrap_or_default();
    assert!(failure.contains(reason), "{cancelled:#}");
    let cancelled_event = site.events().into_iter().any(|e| {
        e.task.is_some_and(|t| t.to_string() == task)
            && matches!(&e.kind, EventKind::TaskCancelled { reason: r } if r.contains(reason))
    });
    assert!(cancelled_event, "no task_cancelled event{}", site.logs());
}

/// Issue test 7, drain: a draining worker finishes its step (the coordinator reaps the
/// result), takes no new one, and exits 0 by itself.
#[test]
fn a_drained_worker_finishes_its_step_takes_no_other_and_exits_0() {
    let mut site = Site::new("");
    site.start_coordinator(Tls::Off);
    let mut cmd = site.worker_command("w1", TOKEN, &["--capacity", "1"]);
    cmd.env("SCRIPTED_DELAY", "3");
    site.start_worker("w1", cmd);
    site.wait_for("an implementer step", |s| {
        last_implementer(&s.steps("w1")).is_some()
    });
    let task = last_implementer(&site.steps("w1")).expect("an implementer step");

    let out = site.ctl_ok(&["drain", "w1"]);
    let steps_at_drain = site.steps("w1");
    assert!(out.contains("worker w1 draining"), "{out}");
    let (code, w1) = site.await_worker("w1");
    assert_eq!(code, Some(0), "{w1}");
    assert_eq!(
        site.steps("w1"),
        steps_at_drain,
        "the draining worker took a new step{}",
        site.logs()
    );

    let reaped = site.events().into_iter().any(|e| {
        e.task.is_some_and(|t| t.to_string() == task)
            && matches!(&e.kind, EventKind::ResultReaped { role, .. } if role == "implementer")
    });
    assert!(
        reaped,
        "the implementer step of {task} that w1 finished while draining was not reaped{}",
        site.logs()
    );
    // The coordinator keeps waiting for a worker for the rest of the run.
    let coordinator = site.coordinator.as_mut().expect("coordinator");
    assert!(
        coordinator.try_wait().expect("wait").is_none(),
        "the coordinator should still run{}",
        site.logs()
    );
}

/// `status` lists a joined worker with its capacity, labels and a fresh heartbeat, and
/// `logs -f` follows the agent output of a running step.
#[test]
fn status_lists_the_worker_and_logs_follow_a_running_step() {
    let mut site = Site::new("");
    site.start_coordinator(Tls::Off);
    let mut cmd = site.worker_command("w1", TOKEN, &["--capacity", "2", "--labels", "os=linux"]);
    cmd.env("SCRIPTED_MODE", "hang");
    site.start_worker("w1", cmd);
    site.wait_for("a running implementer", |s| !s.agent_pids("w1").is_empty());
    let task = last_implementer(&site.steps("w1")).expect("an implementer step");

    let status = site.ctl_json(&["status"]);
    let workers = status["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 1, "{status:#}");
    let w1 = &workers[0];
    assert_eq!(w1["name"], "w1", "{status:#}");
    assert_eq!(w1["capacity"], 2, "{status:#}");
    assert_eq!(w1["labels"]["os"], "linux", "{status:#}");
    let heartbeat = w1["last_heartbeat_ms"].as_u64().expect("last_heartbeat_ms");
    let age = now_ms().saturating_sub(heartbeat);
    assert!(
        age < 5_000,
        "the last heartbeat is {age} ms old: {status:#}"
    );
    // Heartbeats keep coming (every second), not just the registration's timestamp.
    let started = Instant::now();
    loop {
        let status = site.ctl_json(&["status"]);
        let later = status["workers"][0]["last_heartbeat_ms"].as_u64();
        if later > Some(heartbeat) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "no heartbeat after {heartbeat}: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(w1["load"].as_u64() >= Some(1), "{status:#}");
    assert!(
        status["tasks"]["in-progress"].as_u64() >= Some(1),
        "{status:#}"
    );
    let table = site.ctl_ok(&["status"]);
    assert!(
        table.contains("w1") && table.contains("os=linux"),
        "{table}"
    );

    let expected = format!("working on {task}");
    let line = follow_logs(&site, &task, &expected);
    assert!(line.contains("implementer"), "{line}");
}

/// Runs `hyperloopctl logs TASK -f` until it prints a line containing `expected` (then stops
/// it), failing after [`LIMIT`]; the line.
fn follow_logs(site: &Site, task: &str, expected: &str) -> String {
    let mut cmd = site.command(coordinator_bin().with_file_name("hyperloopctl"), "logs");
    cmd.args(["--server", &site.url, "logs", task, "-f"])
        .current_dir(&site.repo.checkout)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("hyperloopctl logs starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.contains(expected) => break Some(line),
            Ok(line) => seen.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < LIMIT => {}
            Err(_) => break None,
        }
    };
    // `-f` follows until stopped.
    let still_following = child.try_wait().expect("wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    let line = found.unwrap_or_else(|| {
        panic!(
            "`logs {task} -f` did not print {expected:?}; it printed {seen:?}\n{}{}",
            site.log("logs"),
            site.logs()
        )
    });
    assert!(still_following, "`logs -f` stopped on its own");
    line
}

/// Implementer steps need `gpu=a100`: while only an unlabelled worker is connected, `status`
/// says why they wait; once a labelled worker joins, it runs every implementer step.
#[test]
fn steps_go_only_to_workers_with_the_labels_their_role_requires() {
    let mut site = Site::new("  roles:\n    implementer:\n      labels: {gpu: a100}\n");
    site.start_coordinator(Tls::Off);
    let cmd = site.worker_command("plain", TOKEN, &["--capacity", "2"]);
    site.start_worker("plain", cmd);

    let started = Instant::now();
    let waiting = loop {
        let status = site.ctl_json(&["status"]);
        let waiting: Vec<Value> = status["waiting"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["reason"] == "no_matching_worker")
            .cloned()
            .collect();
        if !waiting.is_empty() {
            break waiting;
        }
        assert!(
            started.elapsed() < LIMIT,
            "no task waited for a matching worker: {status:#}{}",
            site.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for w in &waiting {
        let detail = w["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("no connected worker has the labels")
                && detail.contains("implementer")
                && detail.contains("gpu=a100"),
            "{waiting:#?}"
        );
    }
    let table = site.ctl_ok(&["status"]);
    assert!(
        table.contains("no_matching_worker") && table.contains("gpu=a100"),
        "{table}"
    );
    assert!(
        !site.steps("plain").contains("implementer"),
        "an implementer step went to the unlabelled worker:\n{}",
        site.steps("plain")
    );

    let cmd = site.worker_command("gpu", TOKEN, &["--capacity", "2", "--labels", "gpu=a100"]);
    site.start_worker("gpu", cmd);
    let code = site.await_coordinator();
    assert_eq!(code, Some(0), "{}", site.logs());
    site.assert_landed();
    let plain = site.steps("plain");
    let gpu = site.steps("gpu");
    assert!(
        !plain.contains("implementer"),
        "the unlabelled worker ran an implementer step:\n{plain}"
    );
    for task in ["task-001", "task-002", "task-003"] {
        assert!(
            gpu.contains(&format!("implementer {task} ")),
            "{task}'s implementer did not run on the labelled worker:\n{gpu}"
        );
    }
}
