//! How `fieldvault serve` ends: a signal stops it cleanly with exit code 0,
//! after the store is closed. (A server task that fails or panics makes it
//! exit non-zero; app.rs tests that `Server` reports those.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::start_dev;
use std::time::Duration;

#[test]
fn sigterm_stops_the_server_cleanly_with_exit_code_zero() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = start_dev(dir.path(), &log).unwrap();
    let status = server.terminate(Duration::from_secs(30));
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.contains("shutting down"), "{logs}");
    // Stopped means closed: the next start finds the store free and whole.
    let again = start_dev(dir.path(), &log).unwrap();
    let status = again.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}
