//! The single-coordinator lock across processes: the test binary re-executes itself as the
//! holder.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use hyperloop_coordinator::lock::{CoordinatorLock, LockError};

const CHILD_ENV: &str = "HYPERLOOP_TEST_LOCK_HOLDER";

/// In the child: takes the lock, says so, and holds it until killed.
#[test]
fn lock_holder_child() {
    let Ok(git_dir) = std::env::var(CHILD_ENV) else {
        return; // a normal run: nothing to do
    };
    let _lock = CoordinatorLock::acquire(&git_dir).expect("child takes the lock");
    println!("locked");
    // Bounded, in case the parent dies without killing us.
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn a_second_coordinator_is_refused_by_name_until_the_first_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let locked = stdout
        .lines()
        .map_while(Result::ok)
        .any(|line| line.trim_end().ends_with("locked")); // libtest may print "test name ... " first
    assert!(locked, "the child reported taking the lock");

    let err = CoordinatorLock::acquire(dir.path()).unwrap_err();
    let message = err.to_string();
    let LockError::Held {
        holder: Some(holder),
        ..
    } = err
    else {
        panic!("expected Held with details, got {message}");
    };
    assert_eq!(holder.pid, child.id());
    assert!(
        message.starts_with(&format!(
            "another hyperloop coordinator (pid {} on host ",
            child.id()
        )),
        "{message}"
    );

    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let lock = CoordinatorLock::acquire(dir.path()).expect("the kernel released the lock");
    let details = std::fs::read_to_string(lock.path()).unwrap();
    assert!(
        details.contains(&format!("\"pid\":{}", std::process::id())),
        "{details}"
    );
}
