//! Locked doors: what an outsider or a mistake cannot do to a running repository.

use std::net::TcpListener;
use std::process::{Command, Stdio};

use hyperloop_tests::repo::{TestRepo, coordinator_bin, test_home};

#[test]
fn a_coordinator_whose_listen_address_is_busy_exits_2_naming_the_address_and_the_flag() {
    // Another repository's coordinator (here: any process) holds the port.
    let other = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = other.local_addr().expect("address").to_string();
    let repo = TestRepo::new(&[("specs/a.md", "# A\n\nA works.\n")]);
    let out = Command::new(coordinator_bin())
        .args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", &addr])
        .env("HOME", test_home(repo.dir.path()))
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .output()
        .expect("coordinator runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("--listen"),
        "the error names the address and the flag:\n{stderr}"
    );
    assert!(
        repo.log("main").lines().count() == 1,
        "nothing ran: no work landed"
    );
}
