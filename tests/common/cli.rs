//! Running the real CLI binary in tests: with none of the CLI's
//! environment variables, a given standard input and a deadline, and
//! reading what it printed.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use super::conn::CLI_ENV;
use super::process::{output_with_stdin, BIN, CLI_DEADLINE};
use serde_json::Value;
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
