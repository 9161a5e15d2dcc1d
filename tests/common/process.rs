//! The real `fieldvault` binary as a child process, for tests that need a
//! process boundary: kill -9, restart, captured logs, dev mode.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_fieldvault");

pub struct ServerProcess {
    child: Child,
    pub addr: String,
    /// Everything the server printed to stdout so far.
    pub stdout: String,
    /// The file that receives the server's stderr (its logs).
    pub log_path: PathBuf,
}

/// Starts `fieldvault serve --dev` on a free port with trace logging and
/// waits for "listening on ADDR". `log_path` gathers stderr (appended, so
/// logs of several runs accumulate).
pub fn start_dev(data_dir: &Path, log_path: &Path) -> Result<ServerProcess, String> {
    let data_dir = data_dir.to_str().unwrap();
    start(
        &[
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir,
        ],
        "trace",
        log_path,
    )
}

/// Starts `fieldvault serve --config FILE` (the config should listen on
/// port 0) with `info` logging.
pub fn start_with_config(config: &Path, log_path: &Path) -> Result<ServerProcess, String> {
    start(
        &["serve", "--config", config.to_str().unwrap()],
        "info",
        log_path,
    )
}

/// Like [`start_with_config`], but no file the server writes may grow past
/// `max_file_bytes` (RLIMIT_FSIZE, set by `ulimit -f` in a shell that then
/// execs the server, SIGXFSZ left at its default action, which kills the
/// process): the server must handle the signal itself, so that a write
/// beyond the limit fails with EFBIG, as on a full disk, and it survives.
pub fn start_with_config_and_file_limit(
    config: &Path,
    log_path: &Path,
    max_file_bytes: u64,
) -> Result<ServerProcess, String> {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(r#"trap - XFSZ; ulimit -f "$1" || exit 1; shift; exec "$@""#)
        .arg("sh")
        // Blocks of 512 bytes in dash, of 1024 in bash: the limit is at
        // least `max_file_bytes` either way.
        .arg((max_file_bytes / 512).to_string())
        .arg(BIN)
        .args(["serve", "--config", config.to_str().unwrap()]);
    spawn(command, "info", log_path)
}

fn start(args: &[&str], log_level: &str, log_path: &Path) -> Result<ServerProcess, String> {
    let mut command = Command::new(BIN);
    command.args(args);
    spawn(command, log_level, log_path)
}

fn spawn(mut command: Command, log_level: &str, log_path: &Path) -> Result<ServerProcess, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let mut child = command
        .env("RUST_LOG", log_level)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = String::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                printed.push_str(&line);
                printed.push('\n');
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return Ok(ServerProcess {
                        child,
                        addr: addr.trim().to_owned(),
                        stdout: printed,
                        log_path: log_path.to_path_buf(),
                    });
                }
            }
            Err(_) => {
                // Exited (or hung) before listening: report what it said.
                let _ = child.kill();
                let _ = child.wait();
                let logs = std::fs::read_to_string(log_path).unwrap_or_default();
                return Err(format!("{printed}{logs}"));
            }
        }
    }
}

impl ServerProcess {
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI with `args` and returns its output.
pub fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
