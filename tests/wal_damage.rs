//! The real binary and a damaged write-ahead log: one flipped bit in the
//! first of several frames makes `serve` refuse to start, naming the file
//! and the offset, and leaves the log untouched; `store salvage` keeps the
//! frames that verify and the server starts again with their tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{start_dev, BIN};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fake numbers, one per frame.
const PHONES: [&str; 4] = [
    "+1 202-555-0141",
    "+1 202-555-0142",
    "+1 202-555-0143",
    "+1 202-555-0144",
];
/// Format 2: a 24-byte header, then frames with a 28-byte header.
const WAL_HEADER: usize = 24;
const FRAME_HEADER: usize = 28;

/// Runs the binary with a bound: a process still running after 60 s is
/// killed and the test fails, saying which command hung. A server that
/// starts listening is stopped at once (its output then says so).
fn run_bounded(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let listening = std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .contains("listening on");
        if listening || Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().unwrap();
            assert!(listening, "fieldvault {args:?} still running after 60 s");
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tokenize(addr: &str, data: &str, phone: &str) -> String {
    let out = run_bounded(&[
        "tokenize",
        "--kind",
        "phone",
        phone,
        "--addr",
        addr,
        "--dev-identity",
        "orders",
        "--data-dir",
        data,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Detokenizes `tokens` as `support` through the CLI: one output line per
/// token, and the whole output for failure messages.
fn detokenize(addr: &str, data: &str, tokens: &[String]) -> (Vec<String>, String) {
    let mut args = vec![
        "detokenize",
        "--purpose",
        "callback",
        "--addr",
        addr,
        "--dev-identity",
        "support",
        "--data-dir",
        data,
    ];
    args.extend(tokens.iter().map(String::as_str));
    let out = run_bounded(&args);
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (lines, text(&out))
}

/// Every file of the store directory with its bytes.
fn store_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

/// `PHONES[i]` in E.164, as a full reveal prints it.
fn e164(i: usize) -> String {
    format!("+1202555014{}", i + 1)
}

/// A detokenize output line reveals exactly `PHONES[i]`.
fn assert_reveals(line: &str, i: usize) {
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(
        fields.get(1..).unwrap_or_default(),
        ["phone", "full", e164(i).as_str()],
        "token {i}: {line}"
    );
}

/// A token whose frame was dropped or cut: an error, or (if sled already
/// held it) exactly its own value; never another value.
fn assert_gone_or_itself(line: &str, i: usize) {
    if !line.contains("\terror") {
        assert_reveals(line, i);
    }
}

fn serve_dev(data: &str) -> Output {
    run_bounded(&[
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ])
}

#[test]
fn a_flipped_bit_in_the_first_frame_stops_the_server_and_salvage_keeps_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();
    let log = tmp.path().join("server.log");
    let wal = data.join("store").join("fieldvault.wal");

    // Four tokens, one call each (one frame each), then kill -9 so that
    // no checkpoint empties the log.
    let server = start_dev(&data, &log).unwrap();
    let tokens: Vec<String> = PHONES
        .iter()
        .map(|p| tokenize(&server.addr, data_s, p))
        .collect();
    server.kill9();

    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(
        bytes.len() > WAL_HEADER + 4 * FRAME_HEADER,
        "the log holds the frames ({} bytes)",
        bytes.len()
    );
    // One bit of the first frame's payload.
    bytes[WAL_HEADER + FRAME_HEADER + 5] ^= 0x08;
    std::fs::write(&wal, &bytes).unwrap();

    let store_before = store_files(&data.join("store"));
    let out = serve_dev(data_s);
    let said = text(&out);
    assert!(!out.status.success(), "the server started: {said}");
    assert!(
        store_files(&data.join("store")) == store_before,
        "the refused start changed the store's files"
    );
    assert!(said.contains(&wal.display().to_string()), "{said}");
    assert!(said.contains(&format!("byte {WAL_HEADER}")), "{said}");
    assert!(said.contains("fieldvault store salvage"), "{said}");
    // One prefix, then the file: not "storage: storage failed: storage files
    // are corrupt: …".
    assert!(
        said.contains(&format!(
            "storage: {}: write-ahead log damaged at byte",
            wal.display()
        )),
        "{said}"
    );
    assert!(!said.contains("storage failed"), "{said}");
    assert!(!said.contains("files are corrupt"), "{said}");
    assert!(!said.contains("listening on"), "{said}");
    assert_eq!(std::fs::read(&wal).unwrap(), bytes, "the log was changed");

    // Salvage: the first frame goes, the three after it stay.
    let out = run_bounded(&["store", "salvage", "--dev", "--data-dir", data_s]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("at byte {WAL_HEADER}")), "{said}");
    assert!(said.contains("sequence numbers): 0"), "{said}");
    let copies: Vec<_> = std::fs::read_dir(data.join("store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("fieldvault.wal.corrupt-"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(std::fs::read(&copies[0]).unwrap(), bytes);

    // The server starts again; the tokens of the kept frames are back.
    // The one in the dropped frame is gone, unless sled had already
    // written it to its own files before the kill (its background flush
    // may have): either way it never comes back as anything but itself.
    let server = start_dev(&data, &log).unwrap();
    let (lines, out) = detokenize(&server.addr, data_s, &tokens);
    assert_eq!(lines.len(), 4, "{out}");
    assert_gone_or_itself(&lines[0], 0);
    for (i, line) in lines.iter().enumerate().skip(1) {
        assert_reveals(line, i);
    }
    drop(server);
}

#[test]
fn a_torn_last_frame_is_cut_off_and_the_server_starts_with_the_tokens_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();
    let log = tmp.path().join("server.log");
    let wal = data.join("store").join("fieldvault.wal");

    let server = start_dev(&data, &log).unwrap();
    let tokens: Vec<String> = PHONES[..3]
        .iter()
        .map(|p| tokenize(&server.addr, data_s, p))
        .collect();
    server.kill9();
    // The last frame cut short, as a crash during its write leaves it
    // (its caller was never answered in real life).
    let bytes = std::fs::read(&wal).unwrap();
    let torn = bytes.len() - 7;
    std::fs::write(&wal, &bytes[..torn]).unwrap();

    let server = start_dev(&data, &log).unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("interrupted write"), "{logs}");
    let (lines, out) = detokenize(&server.addr, data_s, &tokens);
    assert_eq!(lines.len(), 3, "{out}");
    assert_reveals(&lines[0], 0);
    assert_reveals(&lines[1], 1);
    assert_gone_or_itself(&lines[2], 2);
}
