//! The benchmark runs end to end and every call it makes succeeds (no
//! timing is asserted: numbers come from `fieldvault bench` runs, not tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn a_short_benchmark_run_succeeds_on_every_call() {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldvault"))
        .args([
            "bench",
            "--duration",
            "0.3",
            "--preload",
            "500",
            "--concurrency",
            "8",
            "--connections",
            "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for scenario in [
        "tokenize-1-random",
        "tokenize-1-deterministic",
        "tokenize-100",
        "detokenize-1",
        "detokenize-100",
        "mixed-80r-20w",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {scenario} |")))
            .unwrap_or_else(|| panic!("no row for {scenario}: {stdout}"));
        // The last column counts failed calls.
        assert!(row.trim_end().ends_with("| 0 |"), "{row}");
    }
    assert!(stdout.contains("bytes per token"), "{stdout}");
    assert!(stdout.contains("restart with"), "{stdout}");
}
