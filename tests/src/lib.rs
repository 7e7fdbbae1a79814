//! Shared helpers for hyperloop end-to-end tests.

pub mod etcd;
pub mod github;
pub mod model_server;
pub mod repo;
pub mod rotel;
pub mod synapse;

/// A loopback port that was free a moment ago, for a process under test to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// Waits up to `limit` for `child` (its stderr piped) to exit and returns that stderr,
/// failing with it unless the exit was 0 (or when it takes too long, after killing it).
pub fn exits_ok(mut child: std::process::Child, limit: std::time::Duration) -> String {
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = child
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    match status {
        Some(status) if status.success() => stderr,
        Some(status) => panic!("exited with {status}:\n{stderr}"),
        None => panic!("did not exit within {limit:?}:\n{stderr}"),
    }
}

/// The environment that points the scripted agent's log at `log`, and lets a confined agent
/// append to it: both files it writes (`log` and `log.pids`) are created and named in
/// `HYPERLOOP_AGENT_WRITABLE`, the operator's list of extra writable paths.
pub fn scripted_log(log: impl AsRef<std::path::Path>) -> [(&'static str, std::ffi::OsString); 2] {
    let log = log.as_ref();
    let mut pids = log.as_os_str().to_owned();
    pids.push(".pids");
    let pids = std::path::PathBuf::from(pids);
    for file in [log, pids.as_path()] {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", file.display()));
    }
    let mut writable = log.as_os_str().to_owned();
    writable.push(":");
    writable.push(&pids);
    [
        ("SCRIPTED_LOG", log.as_os_str().to_owned()),
        ("HYPERLOOP_AGENT_WRITABLE", writable),
    ]
}

/// Waits for `child` up to `limit` (then kills it), reading its piped stderr meanwhile so a
/// chatty run never blocks on a full pipe; returns the exit code and the stderr.
pub fn wait_with_limit(
    child: std::process::Child,
    limit: std::time::Duration,
) -> (Option<i32>, String) {
    wait_with_limit_during(child, limit, || {})
}

/// [`wait_with_limit`], calling `during` between polls (to act on the run while it goes).
pub fn wait_with_limit_during(
    mut child: std::process::Child,
    limit: std::time::Duration,
    mut during: impl FnMut(),
) -> (Option<i32>, String) {
    use std::io::Read;
    let mut pipe = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        during();
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (code, reader.join().unwrap_or_default())
}

/// Pids the scripted agent wrote to `<log>.pids`.
pub fn logged_pids(log: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(format!("{}.pids", log.display()))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether `pid` runs (a zombie does not: it holds nothing and runs nothing).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    })
}
