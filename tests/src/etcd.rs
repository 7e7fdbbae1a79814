//! A real etcd for tests (3.4, `apt-get install etcd-server`, see `tests/setup`): one
//! member ([`Etcd`]) or a cluster ([`EtcdCluster`]) on free loopback ports with temp data
//! dirs, healthy before `start` returns, killed by PID when dropped.
//!
//! One server per test rather than per test binary: nextest runs every test in its own
//! process, where a shared server in a `static` would never be dropped and would outlive the
//! run. Starting one member takes ~0.1–0.5 s, a 3-member cluster about a second.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::free_port;

/// How long a fresh etcd may take to report healthy (it usually needs well under a second;
/// a loaded CI machine running many tests in parallel needs more).
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

/// The batch size the state store needs etcd to accept in one txn (etcd's default is 128;
/// `deploy/README.md` asks production etcd for the same).
pub const MAX_TXN_OPS: u32 = 10_000;

/// A single-member etcd.
pub struct Etcd {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    cluster: EtcdCluster,
}

impl Etcd {
    /// Starts etcd and waits until it is healthy.
    ///
    /// # Panics
    /// If the `etcd` binary is missing (the message says how to install it), or it does not
    /// become healthy in time (the message includes its log).
    pub fn start() -> Etcd {
        let cluster = EtcdCluster::start(1);
        Etcd {
            endpoint: cluster.endpoints()[0].clone(),
            cluster,
        }
    }

    /// The member's log so far (for failure messages).
    pub fn log(&self) -> String {
        self.cluster.log(0)
    }
}

/// An etcd cluster of several members on loopback.
pub struct EtcdCluster {
    members: Vec<Member>,
    _dir: TempDir,
}

struct Member {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl EtcdCluster {
    /// Starts `size` members as one new cluster and waits until every member is healthy
    /// (the cluster has a leader and each member serves).
    ///
    /// # Panics
    /// As [`Etcd::start`].
    pub fn start(size: usize) -> EtcdCluster {
        assert!(size > 0, "a cluster needs a member");
        // Ports picked by binding port 0 can be taken by someone else before etcd binds
        // them; retry with new ones when that happens.
        let mut last_logs = String::new();
        for _ in 0..3 {
            let mut cluster = EtcdCluster::spawn(size);
            if cluster.wait_healthy() {
                return cluster;
            }
            last_logs = (0..size)
                .map(|i| format!("--- member {i}:\n{}", cluster.log(i)))
                .collect();
        }
        panic!("etcd did not become healthy within {HEALTHY_WITHIN:?}; its logs:\n{last_logs}");
    }

    fn spawn(size: usize) -> EtcdCluster {
        let binary = std::env::var("HYPERLOOP_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, &(client, peer))| {
                spawn_member(&binary, dir.path(), i, client, peer, &initial_cluster)
            })
            .collect();
        EtcdCluster { members, _dir: dir }
    }

    /// Every member's client URL, killed ones included.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// Kills member `i` with SIGKILL, as a crashed machine would stop.
    pub fn kill_member(&mut self, i: usize) {
        let member = &mut self.members[i];
        let _ = member.child.kill();
        let _ = member.child.wait();
    }

    /// The member that is the cluster's raft leader, if a live one knows it is.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            let Some(status) = http(&self.members[i].endpoint, "POST", "/v3/maintenance/status")
            else {
                return false;
            };
            let body = status.split_once("\r\n\r\n").map_or("", |(_, body)| body);
            let Ok(status) = serde_json::from_str::<serde_json::Value>(body) else {
                return false;
            };
            // uint64s are strings in etcd's JSON gateway.
            let leader = status["leader"].as_str();
            leader.is_some() && leader == status["header"]["member_id"].as_str()
        })
    }

    /// Member `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    fn wait_healthy(&mut self) -> bool {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        let mut pending: Vec<usize> = (0..self.members.len()).collect();
        while Instant::now() < deadline {
            for &i in &pending {
                if let Ok(Some(_)) = self.members[i].child.try_wait() {
                    return false; // exited: most likely a port was taken
                }
            }
            pending.retain(|&i| !health(&self.members[i].endpoint));
            if pending.is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

fn spawn_member(
    binary: &str,
    dir: &Path,
    i: usize,
    client: u16,
    peer: u16,
    initial_cluster: &str,
) -> Member {
    let endpoint = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = dir.join(format!("m{i}.log"));
    let log_file = std::fs::File::create(&log).expect("etcd log file");
    let spawned = Command::new(binary)
        .args(["--name", &format!("m{i}")])
        .arg("--data-dir")
        .arg(dir.join(format!("m{i}.data")))
        .args(["--listen-client-urls", &endpoint])
        .args(["--advertise-client-urls", &endpoint])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", initial_cluster])
        .args(["--initial-cluster-state", "new"])
        .args(["--max-txn-ops", &MAX_TXN_OPS.to_string()])
        .args(["--logger", "zap", "--log-outputs", "stderr"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "the `{binary}` binary is not installed: run tests/setup (apt-get install \
             etcd-server)"
        ),
        Err(e) => panic!("starting {binary}: {e}"),
    };
    Member {
        child,
        endpoint,
        log,
    }
}

/// `GET /health`: true once the member serves and its cluster has a leader.
fn health(endpoint: &str) -> bool {
    http(endpoint, "GET", "/health").is_some_and(|r| r.contains("\"health\":\"true\""))
}

/// One plain HTTP/1.0 request (with an empty JSON body for POST); the whole response.
fn http(endpoint: &str, method: &str, path: &str) -> Option<String> {
    let addr = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let body = if method == "POST" { "{}" } else { "" };
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    Some(response)
}
