//! Running the real CLI binary in tests: with none of the CLI's
//! environment variables, a given standard input and a deadline, and
//! reading what it printed.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use super::conn::CLI_ENV;
use super::process::{output_with_stdin, start_dev, ServerProcess, BIN, CLI_DEADLINE};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

pub use super::conn::{stderr, stdout};

/// Runs the CLI with `args` (none of the CLI's environment variables),
/// writing `stdin` to its standard input; panics (after killing it) past
/// [`CLI_DEADLINE`].
pub fn run(args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    for k in CLI_ENV {
        command.env_remove(k);
    }
    output_with_stdin(command, stdin, CLI_DEADLINE)
}

/// Exit code, stdout and stderr, for a failed assertion's message.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// [`run`], asserting the exit code.
#[track_caller]
pub fn run_to_exit(code: i32, args: &[&str], stdin: &str) -> Output {
    let out = run(args, stdin);
    assert_eq!(out.status.code(), Some(code), "{}", show(&out));
    out
}

/// A `serve --dev` server in a fresh data dir, and the CLI run against it.
pub struct Dev {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub server: ServerProcess,
}

impl Dev {
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let server = start_dev(&data, &tmp.path().join("server.log")).unwrap();
        Self { tmp, data, server }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("server.log")).unwrap()
    }

    /// Runs the CLI as dev identity `who` with `args` and `stdin`,
    /// asserting the exit code.
    #[track_caller]
    pub fn run(&self, code: i32, who: &str, args: &[&str], stdin: &str) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--addr",
            &self.server.addr,
            "--dev-identity",
            who,
            "--data-dir",
            self.data.to_str().unwrap(),
        ]);
        run_to_exit(code, &all, stdin)
    }
}

/// Stdout as one JSON value.
pub fn json(out: &Output) -> Value {
    serde_json::from_str(stdout(out).trim()).unwrap_or_else(|e| panic!("{e}: {}", show(out)))
}

/// Every line of stdout as JSON.
pub fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {}", show(out))))
        .collect()
}
