//! Shared helpers for hyperloop end-to-end tests.

pub mod etcd;
pub mod github;
pub mod model_server;
pub mod repo;

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
