//! The benchmark (`fieldvault-bench`, a binary of its own) runs end to end
//! and every call it makes succeeds (no timing is asserted: numbers come
//! from `fieldvault-bench` runs, not tests). The server binary has no
//! benchmark or ceiling command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{cli, output_within, start_dev};
use std::process::{Command, Output};
use std::time::Duration;

const BENCH: &str = env!("CARGO_BIN_EXE_fieldvault-bench");
/// The bound on one benchmark run in these tests.
const RUN_DEADLINE: Duration = Duration::from_secs(180);

const SCENARIOS: [&str; 6] = [
    "tokenize-1-random",
    "tokenize-1-deterministic",
    "tokenize-100",
    "detokenize-1",
    "detokenize-100",
    "mixed-80r-20w",
];

/// Every scenario has a row whose last column (failed calls) is 0.
fn assert_no_failed_calls(stdout: &str) {
    assert_no_failed_calls_in(stdout, &SCENARIOS);
}

/// Each of `scenarios` has a row whose last column (failed calls) is 0.
fn assert_no_failed_calls_in(stdout: &str, scenarios: &[&str]) {
    for scenario in scenarios {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {scenario} |")))
            .unwrap_or_else(|| panic!("no row for {scenario}: {stdout}"));
        assert!(row.trim_end().ends_with("| 0 |"), "{row}");
    }
}

/// Runs `fieldvault-bench ARGS`, killing it past [`RUN_DEADLINE`].
fn run_bench(args: &[&str]) -> Output {
    let mut command = Command::new(BENCH);
    command.args(args);
    output_within(command, RUN_DEADLINE)
}

/// Runs `fieldvault-bench ARGS`, asserts it exited 0, returns its stdout.
fn bench(args: &[&str]) -> String {
    let out = run_bench(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_short_benchmark_run_succeeds_on_every_call() {
    let stdout = bench(&[
        "--duration",
        "0.3",
        "--preload",
        "500",
        "--concurrency",
        "8",
        "--connections",
        "2",
    ]);
    assert_no_failed_calls(&stdout);
    assert!(stdout.contains("bytes per token"), "{stdout}");
    assert!(stdout.contains("restart with"), "{stdout}");
}

#[test]
fn the_rewrap_phase_runs_end_to_end_and_reports_each_load() {
    let stdout = bench(&[
        "--duration",
        "0.3",
        "--preload",
        "300",
        "--concurrency",
        "4",
        "--connections",
        "1",
        "--scenarios",
        "detokenize-1",
        "--rewrap-rate",
        "1000",
    ]);
    assert!(stdout.contains("rewrap of 300 records:"), "{stdout}");
    for row in [
        "| without a rewrap |",
        "| during a rewrap at 1000/s |",
        "| during an unthrottled rewrap |",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row}: {stdout}"));
        // The failed column is the second to last.
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells[cells.len() - 3], "0", "{line}");
    }
}

#[test]
fn the_benchmark_loads_a_vault_that_is_already_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev(dir.path(), &dir.path().join("server.log")).unwrap();
    let stdout = bench(&[
        "--addr",
        &server.addr,
        "--data-dir",
        dir.path().to_str().unwrap(),
        // The sample policy of `serve --dev` reveals for callbacks.
        "--purpose",
        "callback",
        "--duration",
        "0.3",
        "--preload",
        "200",
        "--concurrency",
        "8",
        "--connections",
        "1",
    ]);
    assert_no_failed_calls(&stdout);
    // Not our process: no RSS, disk or restart figures are made up.
    assert!(!stdout.contains("restart with"), "{stdout}");
    // The running vault really took the load: its audit log has the reads.
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(
        audit.lines().count() > 10,
        "{} audit lines",
        audit.lines().count()
    );
}

#[test]
fn addr_without_a_dev_pki_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bench(&[
        "--addr",
        "127.0.0.1:1",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no dev PKI here"), "{stderr}");
}

#[test]
fn the_server_binary_has_no_benchmark_or_ceiling_command() {
    for command in ["bench", "bench-ceiling", "ceiling"] {
        let out = cli(&[command, "--help"]);
        assert!(!out.status.success(), "fieldvault {command} exists");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("unrecognized subcommand"), "{stderr}");
    }
    let help = String::from_utf8_lossy(&cli(&["--help"]).stdout).into_owned();
    assert!(!help.contains("bench"), "{help}");
}

#[test]
fn the_benchmark_names_a_missing_server_binary() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-fieldvault");
    let out = run_bench(&[
        "--vault-bin",
        missing.to_str().unwrap(),
        "--duration",
        "0.1",
        "--preload",
        "1",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-fieldvault: no fieldvault server binary there"),
        "{stderr}"
    );
}

#[test]
fn the_audit_sink_phase_measures_detokenize_with_the_trail_where_it_is_and_moved() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let audit = dir.path().join("audit");
    // Any directory will do here; the benchmark's note says it is no tmpfs.
    let compare = dir.path().join("compare");
    std::fs::create_dir(&compare).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let stdout = bench(&[
        "--duration",
        "0.3",
        "--preload",
        "300",
        "--concurrency",
        "4",
        "--connections",
        "1",
        "--scenarios",
        "detokenize-1",
        "--data-dir",
        &path(&data),
        "--audit-dir",
        &path(&audit),
        "--compare-audit-dir",
        &path(&compare),
    ]);
    assert_no_failed_calls_in(&stdout, &["detokenize-1"]);
    let row = |sink: &str| {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {sink} |")))
            .unwrap_or_else(|| panic!("no row for the trail {sink}: {stdout}"))
            .to_owned();
        let cells: Vec<String> = line.split('|').map(|c| c.trim().to_owned()).collect();
        // | sink | file | filesystem | ops/s | p50 | p99 | max | failed |
        assert_eq!(cells[cells.len() - 2], "0", "{line}");
        assert!(cells[4].parse::<f64>().unwrap() > 0.0, "{line}");
        cells
    };
    let durable = row("where the vault keeps it");
    assert_eq!(durable[2], path(&audit.join("audit.log")), "{durable:?}");
    let moved = row("moved (--compare-audit-dir)");
    assert!(moved[2].starts_with(&path(&compare)), "{moved:?}");
    assert!(
        stdout.contains("the throughput of the trail on"),
        "{stdout}"
    );
    assert!(stdout.contains("is not a tmpfs"), "{stdout}");

    // The trail went to --audit-dir, not the data dir, and is back there
    // after the phase, whole; nothing is left in the compared directory.
    assert!(!data.join("audit.log").exists());
    assert_eq!(std::fs::read_dir(&compare).unwrap().count(), 0);
    let master = fieldvault::crypto::MasterKey::from_file(
        &fieldvault::dev::dev_dir(&data).join("master.key"),
    )
    .unwrap();
    let log = audit.join("audit.log");
    let key = fieldvault::audit::keyfile::load(&log, &master).unwrap();
    let files = fieldvault::audit::trail::files_of(&log).unwrap();
    let summaries = fieldvault::audit::verify::verify_files(&key, &files).unwrap();
    let events: u64 = summaries.iter().map(|s| s.events()).sum();
    assert!(events > 10, "{events} events");
}

#[test]
fn the_end_phase_options_are_refused_with_a_running_vault() {
    for option in [
        &["--audit-dir", "/dev/shm"][..],
        &["--compare-audit-dir", "/dev/shm"],
        &["--compare-quotas"],
        &["--lifecycle"],
        &["--grants"],
    ] {
        let mut args = vec!["--addr", "127.0.0.1:1", "--data-dir", "/nonexistent"];
        args.extend(option);
        let out = run_bench(&args);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot be used with"),
            "{option:?}: {stderr}"
        );
    }
}

#[test]
fn the_quota_phase_measures_detokenize_with_quotas_off_and_on_and_the_vault_counts_every_value() {
    let stdout = bench(&[
        "--duration",
        "0.3",
        "--preload",
        "300",
        "--concurrency",
        "4",
        "--connections",
        "1",
        "--scenarios",
        "detokenize-1,detokenize-100",
        "--compare-quotas",
    ]);
    assert_no_failed_calls_in(&stdout, &["detokenize-1", "detokenize-100"]);
    for scenario in ["detokenize-1", "detokenize-100"] {
        for setting in ["off", "on"] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("| {scenario} | {setting} |")))
                .unwrap_or_else(|| panic!("no row for {scenario}, quotas {setting}: {stdout}"));
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | scenario | quotas | ops/s | values/s | p50 | p99 | max | failed |
            assert_eq!(cells[cells.len() - 2], "0", "{line}");
            assert!(cells[3].parse::<f64>().unwrap() > 0.0, "{line}");
        }
        assert!(
            stdout.contains(&format!("{scenario}: quotas on give ")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains(r#"quota = ["1000000000/minute", "1000000000/day"]"#),
        "{stdout}"
    );
    // The quotas were in force: the vault charged every value the runs
    // with quotas on revealed to the reader rule's day counter.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("the vault counted "))
        .unwrap_or_else(|| panic!("no quota count: {stdout}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [counted, revealed] = numbers[..] else {
        panic!("{line}")
    };
    assert!(revealed > 0, "{line}");
    if !stdout.contains("the day's window turned during the runs") {
        assert_eq!(counted, revealed, "{line}");
    }
}

/// The number after `label` in `line` (`"delete rate: 1234 tokens/s"`).
fn number_after(line: &str, label: &str) -> f64 {
    let rest = line
        .split_once(label)
        .unwrap_or_else(|| panic!("no '{label}' in {line}"))
        .1;
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after '{label}' in {line}"))
}

#[test]
fn the_lifecycle_phase_reports_the_delete_erase_and_sweep_rates() {
    let stdout = bench(&[
        "--duration",
        "0.3",
        "--preload",
        "200",
        "--concurrency",
        "4",
        "--connections",
        "1",
        "--scenarios",
        "none",
        "--lifecycle",
        "--delete-tokens",
        "250",
        "--erase-values",
        "30",
        "--sweep-tokens",
        "300",
        "--sweep-batch",
        "50",
    ]);
    // No scenario ran: no scenario table.
    assert!(!stdout.contains("| scenario |"), "{stdout}");
    let cells = |row: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {row} |")))
            .unwrap_or_else(|| panic!("no row {row}: {stdout}"));
        line.split('|').map(|c| c.trim().to_owned()).collect()
    };
    // | operation | work | calls | seconds | rate | p50 | p99 | max | failed |
    let delete = cells("delete");
    assert_eq!(delete[3], "3", "250 tokens in batches of 100: {delete:?}");
    assert_eq!(delete[9], "0", "{delete:?}");
    let erase = cells("erase");
    assert_eq!(erase[3], "30", "one call per value: {erase:?}");
    assert_eq!(erase[9], "0", "every value had its 4 tokens: {erase:?}");
    // | sweep | passes | tokens deleted | … : each sweep took every token.
    for sweep in ["alone", "beside detokenize-1"] {
        let row = cells(sweep);
        assert_eq!(row[3], "300", "{row:?}");
        assert!(row[2].parse::<u64>().unwrap() >= 1, "{row:?}");
    }
    for row in ["before the sweep", "during the sweep"] {
        let row = cells(row);
        assert_eq!(row[row.len() - 2], "0", "{row:?}");
        assert!(row[2].parse::<f64>().unwrap() > 0.0, "{row:?}");
    }
    assert!(stdout.contains("sweep_batch = 50"), "{stdout}");
    let rates = stdout
        .lines()
        .find(|l| l.starts_with("delete rate: "))
        .unwrap_or_else(|| panic!("no rates: {stdout}"));
    for label in [
        "delete rate: ",
        "erase rate: ",
        "values/s (",
        "sweep rate: ",
        "records/s alone, ",
    ] {
        assert!(number_after(rates, label) > 0.0, "{label}: {rates}");
    }
}

#[test]
fn the_grants_phase_measures_detokenize_without_and_under_a_grant_and_the_grant_counts_every_value()
{
    let stdout = bench(&[
        "--duration",
        "0.3",
        "--preload",
        "100",
        "--concurrency",
        "4",
        "--connections",
        "1",
        "--scenarios",
        "none",
        "--grants",
        "--grant-addresses",
        "300",
    ]);
    // No scenario ran: no scenario table.
    assert!(!stdout.contains("| scenario | ops/s"), "{stdout}");
    assert!(stdout.contains("300 addresses tokenized"), "{stdout}");
    for scenario in ["detokenize-1", "detokenize-100"] {
        for caller in [
            "support, masked, no grant",
            "fulfilment, full, under the grant",
        ] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("| {scenario} | {caller} |")))
                .unwrap_or_else(|| panic!("no row for {scenario} as {caller}: {stdout}"));
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | scenario | caller | calls/s | values/s | p50 | p99 | max | failed |
            assert_eq!(cells[cells.len() - 2], "0", "{line}");
            assert!(cells[3].parse::<f64>().unwrap() > 0.0, "{line}");
        }
        assert!(
            stdout.contains(&format!("{scenario}: under the grant ")),
            "{stdout}"
        );
    }
    // The grant was charged for every value revealed under it, and only
    // for those: its `used`, read back with GetGrant, is their number.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("grant count: "))
        .unwrap_or_else(|| panic!("no grant count: {stdout}"));
    let used = number_after(line, "used = ");
    let revealed = number_after(line, "values revealed under the grant = ");
    assert!(revealed > 100.0, "{line}");
    assert_eq!(used, revealed, "{line}");
    assert!(line.trim_end().ends_with(": exact"), "{line}");
}
