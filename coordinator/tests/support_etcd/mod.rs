//! A real etcd for tests: one `etcd` process on free loopback ports with a temp data dir,
//! healthy before `start` returns, killed by PID when dropped.
//!
//! One server per harness rather than per test binary: nextest runs every test in its own
//! process, where a shared server in a `static` would never be dropped and would outlive the
//! run. Starting one takes ~0.1–0.5 s.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a fresh etcd may take to report healthy (it usually needs well under a second;
/// a loaded CI machine running many tests in parallel needs more).
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

/// The batch size the state store needs etcd to accept in one txn (etcd's default is 128;
/// `deploy/README.md` asks production etcd for the same).
pub const MAX_TXN_OPS: u32 = 10_000;

pub struct Etcd {
    child: Child,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    log: PathBuf,
    _dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

impl Etcd {
    /// Starts etcd and waits until it is healthy.
    ///
    /// # Panics
    /// If the `etcd` binary is missing (the message says how to install it), or it does not
    /// become healthy in time (the message includes its log).
    pub fn start() -> Etcd {
        let binary = std::env::var("HYPERLOOP_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        // Ports picked by binding port 0 can be taken by someone else before etcd binds them;
        // retry with new ones when that happens.
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir for etcd");
            let (client, peer) = (free_port(), free_port());
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = dir.path().join("etcd.log");
            let log_file = std::fs::File::create(&log).expect("etcd log file");
            let spawned = Command::new(&binary)
                .args(["--name", "test"])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &endpoint])
                .args(["--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("test={peer_url}")])
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
            let mut etcd = Etcd {
                child,
                endpoint,
                log,
                _dir: dir,
            };
            if etcd.wait_healthy() {
                return etcd;
            }
            last_log = std::fs::read_to_string(&etcd.log).unwrap_or_default();
        }
        panic!("etcd did not become healthy within {HEALTHY_WITHIN:?}; its log:\n{last_log}");
    }

    fn wait_healthy(&mut self) -> bool {
        let addr = self.endpoint.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + HEALTHY_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false; // exited: most likely a port was taken
            }
            if health(&addr) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// `GET /health` over plain HTTP/1.0.
fn health(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
