//! A real OpenTelemetry collector for the export tests: Rotel (PyPI `rotel`, a Rust OTLP
//! collector shipped as a binary inside the Python package), installed by `tests/setup` into
//! `${HYPERLOOP_TOOLS:-$HOME/.cache/hyperloop-tools}/rotel/venv` (or named by
//! `HYPERLOOP_ROTEL_BIN`). It receives OTLP over gRPC and HTTP on free ports, drops the data
//! (`blackhole` exporter) and prints what it received in the collector's debug format on
//! stdout, which [`Rotel::received`] reads back. Tests fail, never skip, without it.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct Rotel {
    /// `http://127.0.0.1:PORT` of the OTLP/gRPC receiver.
    pub grpc: String,
    /// `http://127.0.0.1:PORT` of the OTLP/HTTP receiver (`/v1/traces`, `/v1/metrics`).
    pub http: String,
    child: Child,
    output: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

/// The `rotel-agent` binary inside the virtualenv's `rotel` package.
fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("HYPERLOOP_ROTEL_BIN") {
        return PathBuf::from(bin);
    }
    let tools = std::env::var_os("HYPERLOOP_TOOLS").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/hyperloop-tools")
        },
        PathBuf::from,
    );
    let python = tools.join("rotel/venv/bin/python");
    let found = Command::new(&python)
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .stderr(Stdio::null())
        .output();
    match found {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
        _ => panic!(
            "the Rotel collector is not installed ({} cannot import rotel); run tests/setup",
            python.display()
        ),
    }
}

impl Rotel {
    /// Starts a collector that prints what it receives, and waits until both receivers
    /// accept connections.
    pub fn start() -> Rotel {
        Rotel::launch(true)
    }

    /// Starts a collector that only receives and drops (for benchmarks: printing every span
    /// would cost this machine's cores more than the exporter being measured).
    pub fn blackhole() -> Rotel {
        Rotel::launch(false)
    }

    fn launch(print: bool) -> Rotel {
        let dir = tempfile::tempdir().expect("temp dir");
        let (grpc, http) = (free_port(), free_port());
        let mut command = Command::new(binary());
        command
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--exporter", "blackhole"]);
        if print {
            command
                .args(["--debug-log", "traces", "--debug-log", "metrics"])
                .args(["--debug-log-verbosity", "detailed"]);
        }
        let mut child = command
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.path().join("rotel.log"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("rotel-agent starts");
        let output = Arc::new(Mutex::new(String::new()));
        let mut stdout = child.stdout.take().expect("piped stdout");
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("output")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let started = Instant::now();
        for port in [grpc, http] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("rotel-agent exited at startup ({status})");
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "rotel-agent does not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Rotel {
            grpc: format!("http://127.0.0.1:{grpc}"),
            http: format!("http://127.0.0.1:{http}"),
            child,
            output,
            _dir: dir,
        }
    }

    /// What the collector printed about the data it received, once `done` holds for it or
    /// after `limit`.
    pub fn received(&self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let output = self.output.lock().expect("output").clone();
            if done(&output) || started.elapsed() > limit {
                return output;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The names of the spans in `output` (the debug format's `Name           : run` lines).
pub fn span_names(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Name"))
        .filter_map(|rest| rest.trim_start().strip_prefix(": "))
        .collect()
}
