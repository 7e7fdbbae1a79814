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
