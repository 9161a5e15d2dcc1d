//! The real `fieldvault` binary as a child process, for tests that need a
//! process boundary: kill -9, restart, captured logs, dev mode.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to print "listening on".
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a CLI command may run.
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// The pids of the server processes now running, for [`kill_live_servers`].
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn forget(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|p| *p != pid);
    }
}

/// SIGKILLs every server this process started and has not stopped: for a
/// watchdog about to exit, when no destructor will run.
pub fn kill_live_servers() {
    let pids = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

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

/// Like [`start_with_config`], under an open-file limit (RLIMIT_NOFILE, set
/// by `ulimit -n` in a shell that then execs the server).
pub fn start_with_config_and_open_file_limit(
    config: &Path,
    log_path: &Path,
    max_open_files: u64,
) -> Result<ServerProcess, String> {
    start_in_shell(
        r#"ulimit -n "$1" || exit 1; shift; exec "$@""#,
        &max_open_files.to_string(),
        config,
        log_path,
    )
}

/// Like [`start_with_config`], but the server starts under `umask` (set by
/// a shell that then execs the server), as a service started by hand would.
pub fn start_with_config_under_umask(
    config: &Path,
    log_path: &Path,
    umask: &str,
) -> Result<ServerProcess, String> {
    start_in_shell(
        r#"umask "$1" || exit 1; shift; exec "$@""#,
        umask,
        config,
        log_path,
    )
}

/// Runs `script` in `/bin/sh` with `arg` as `$1`, then the server's command
/// line, which the script execs.
fn start_in_shell(
    script: &str,
    arg: &str,
    config: &Path,
    log_path: &Path,
) -> Result<ServerProcess, String> {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(arg)
        .arg(BIN)
        .args(["serve", "--config", config.to_str().unwrap()]);
    spawn(command, "info", log_path)
}

pub fn start(args: &[&str], log_level: &str, log_path: &Path) -> Result<ServerProcess, String> {
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
    // An empty level leaves RUST_LOG unset: the config's `[log] level` rules.
    if log_level.is_empty() {
        command.env_remove("RUST_LOG");
    } else {
        command.env("RUST_LOG", log_level);
    }
    let mut child = command
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    LIVE.lock().unwrap().push(child.id());
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
        match rx.recv_timeout(START_DEADLINE) {
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
            Err(e) => {
                // Exited (or hung) before listening: report what it said.
                let _ = child.kill();
                let _ = child.wait();
                forget(child.id());
                if e == mpsc::RecvTimeoutError::Timeout {
                    printed.push_str(&format!(
                        "(not listening after {START_DEADLINE:?}: killed)\n"
                    ));
                }
                let logs = std::fs::read_to_string(log_path).unwrap_or_default();
                return Err(format!("{printed}{logs}"));
            }
        }
    }
}

impl ServerProcess {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits (at most `deadline`, then SIGKILL and panic) for
    /// the process to exit; returns how it exited.
    pub fn terminate(self, deadline: Duration) -> std::process::ExitStatus {
        self.signal_term();
        self.wait_exit(deadline)
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_term(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits (at most `deadline`, then SIGKILL and panic) for the process
    /// to exit; returns how it exited.
    pub fn wait_exit(mut self, deadline: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                forget(self.child.id());
                return status;
            }
            if started.elapsed() > deadline {
                panic!("the server did not exit within {deadline:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        forget(self.child.id());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        forget(self.child.id());
    }
}

/// Runs the CLI with `args` and returns its output; panics (after killing
/// it) if it runs longer than [`CLI_DEADLINE`].
pub fn cli(args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    output_within(command, CLI_DEADLINE)
}

/// Runs `command` to completion and returns its output; panics (after
/// killing it) if it runs longer than `deadline`.
pub fn output_within(command: Command, deadline: Duration) -> Output {
    run_within(command, None, deadline)
}

/// [`output_within`], writing `stdin` to the command's standard input.
pub fn output_with_stdin(command: Command, stdin: &str, deadline: Duration) -> Output {
    run_within(command, Some(stdin), deadline)
}

fn run_within(mut command: Command, stdin: Option<&str>, deadline: Duration) -> Output {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written on a thread of its own: a child that does not read its
    // input, or reads it after writing much output, cannot block this one.
    let writer = stdin.map(|text| {
        let mut input = child.stdin.take().unwrap();
        let data = text.as_bytes().to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = input.write_all(&data);
        })
    });
    // Drain both pipes while waiting, so a chatty child never blocks.
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after {deadline:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(writer) = writer {
        writer.join().unwrap();
    }
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}
