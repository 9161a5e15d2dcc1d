//! `fieldvault audit verify|search|report` as a user runs them: the real
//! binary on synthetic trails in a temporary directory, sealed under an
//! audit key that is kept beside the trail wrapped under a master key, as
//! the server keeps it. (The end-to-end tests against a real server are in
//! the server's audit tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use fieldvault::audit::chain::{seal_line, AuditKey, ChainState};
use fieldvault::audit::event::{Decision, Event, Item};
use fieldvault::audit::search::format_ms;
use fieldvault::audit::verify::{CHAIN_START, CHAIN_STARTED, FILE_START, KEY_ID};
use fieldvault::crypto::{Keyring, MasterKey};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fieldvault");
const DEADLINE: Duration = Duration::from_secs(30);

const SUPPORT: &str = "spiffe://dev.fieldvault.local/support";
const COURIER: &str = "spiffe://dev.fieldvault.local/courier";
const ROTATOR: &str = "spiffe://dev.fieldvault.local/rotator";
/// 2026-11-27T09:00:00Z.
const NINE: u64 = 1_795_770_000_000;

/// Runs the binary; kills it past [`DEADLINE`].
fn run(args: &[&str]) -> Output {
    run_in(args, None)
}

/// [`run`] with FIELDVAULT_DATA_DIR set to `data_dir`, or unset.
fn run_in(args: &[&str], data_dir: Option<&Path>) -> Output {
    let mut command = Command::new(BIN);
    match data_dir {
        Some(dir) => command.env("FIELDVAULT_DATA_DIR", dir),
        None => command.env_remove("FIELDVAULT_DATA_DIR"),
    };
    command.args(args);
    output_within(command)
}

/// Runs `command` to its end; kills it past [`DEADLINE`].
fn output_within(command: Command) -> Output {
    common::process::output_within(command, DEADLINE)
}

#[track_caller]
fn run_to_exit(code: i32, args: &[&str]) -> (String, String) {
    let out = run(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "fieldvault {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// A vault's keys and config in a temporary directory: a master key file,
/// the audit key beside `audit_log` wrapped under it, a config naming both.
struct Vault {
    dir: tempfile::TempDir,
    key: AuditKey,
    log: PathBuf,
    config: PathBuf,
}

fn write_private(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The master key at `master_path` and the audit key beside `log`.
fn make_keys(master_path: &Path, log: &Path) -> AuditKey {
    let master = MasterKey::generate();
    write_private(master_path, master.to_hex().as_bytes());
    let (ring, _) = Keyring::create(&master).unwrap();
    let (ring, _) = ring.with_audit_key().unwrap().unwrap();
    let key = ring.audit_key().unwrap();
    let wrapped = ring.wrapped_audit_key().unwrap().unwrap();
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    fieldvault::audit::keyfile::save(log, &key, &wrapped, master.fingerprint()).unwrap();
    key
}

impl Vault {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/audit.log");
        let key = make_keys(&dir.path().join("keys/master.key"), &log);
        let config = dir.path().join("fieldvault.toml");
        let toml = format!(
            "listen = \"127.0.0.1:50051\"\ndata_dir = \"{d}/data\"\npolicy_file = \
             \"{d}/policy.toml\"\naudit_log = \"{log}\"\n[tls]\ncert = \"s.pem\"\nkey = \
             \"s.key\"\nclient_ca = \"ca.pem\"\n[master_key]\nfile = \"{d}/keys/master.key\"\n",
            d = dir.path().display(),
            log = log.display()
        );
        std::fs::write(&config, toml).unwrap();
        Self {
            dir,
            key,
            log,
            config,
        }
    }

    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }

    /// Writes the trail: one file per entry of `files` (the events after
    /// its start event), rotated files named as rotation names them, the
    /// last one the active file. Returns the paths, oldest first.
    fn write_trail(&self, files: &[Vec<Event>]) -> Vec<PathBuf> {
        write_trail(&self.key, &self.log, files)
    }
}

fn write_trail(key: &AuditKey, log: &Path, files: &[Vec<Event>]) -> Vec<PathBuf> {
    let mut state = ChainState::GENESIS;
    let mut paths = Vec::new();
    for (i, events) in files.iter().enumerate() {
        let mut start = Event::new(if i == 0 { CHAIN_START } else { FILE_START });
        start.time = "2026-11-27T00:00:00.000Z".into();
        start.reason = (i == 0).then(|| "a new audit trail".to_owned());
        start.details.insert(KEY_ID.into(), Value::String(key.id()));
        start.details.insert(
            CHAIN_STARTED.into(),
            Value::String("2026-11-27T00:00:00.000Z".into()),
        );
        let first_seq = state.next_seq;
        let (mut text, next) = seal_line(key, state, &start.to_json());
        state = next;
        for e in events {
            let (line, next) = seal_line(key, state, &e.to_json());
            text.push_str(&line);
            state = next;
        }
        let path = if i + 1 == files.len() {
            log.to_path_buf()
        } else {
            fieldvault::audit::trail::rotated_name(log, NINE + i as u64 * 1000, first_seq)
        };
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    // Where the trail ends, as the server records it beside the trail.
    std::fs::write(
        fieldvault::audit::head::path_for(log),
        fieldvault::audit::head::encode(key, state),
    )
    .unwrap();
    paths
}

fn item(token: &str, kind: &str, outcome: &str) -> Item {
    Item {
        token: Some(token.into()),
        kind: Some(kind.into()),
        outcome: outcome.into(),
        rule: None,
    }
}

fn call(minute: u64, action: &str, caller: &str, purpose: Option<&str>) -> Event {
    let mut e = Event::new(action);
    e.time = format_ms(NINE + minute * 60_000);
    e.caller = Some(caller.into());
    e.purpose = purpose.map(Into::into);
    e.request_id = Some(format!("req-{minute}"));
    e
}

/// A reveal by support at `minute`.
fn reveal(minute: u64) -> Event {
    let mut e = call(minute, "detokenize", SUPPORT, Some("callback"));
    e.items = vec![item(&format!("fv1_support{minute:03}"), "phone", "full")];
    e.settle();
    e
}

/// Three files of three reveals each: events 0..3, 4..7, 8..11.
fn three_files() -> Vec<Vec<Event>> {
    (0..3)
        .map(|f| (0..3).map(|i| reveal(f * 3 + i)).collect())
        .collect()
}

/// The lines of `path` (with their newlines), changed by `change`.
fn edit_lines(path: &Path, change: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    change(&mut lines);
    std::fs::write(path, lines.concat()).unwrap();
}

#[test]
fn verify_passes_on_an_intact_trail_across_rotated_files() {
    let v = Vault::new();
    v.write_trail(&three_files());
    let (out, _) = run_to_exit(0, &["audit", "verify", "--config", v.config()]);
    assert!(
        out.starts_with(
            "intact: 3 files, 12 events (sequence 0 to 11), 2026-11-27T00:00:00.000Z to \
             2026-11-27T09:08:00.000Z\n"
        ),
        "{out}"
    );
    assert!(out.contains("events 0 to 3"), "{out}");
    assert!(out.contains("events 8 to 11"), "{out}");
    assert!(out.contains("a new chain (a new audit trail)"), "{out}");
    assert!(out.ends_with("new chains: 1\n"), "{out}");
}

#[test]
fn a_file_an_operators_log_rotation_renamed_is_still_part_of_the_trail() {
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    // logrotate's names: audit.log.1 the newer, audit.log.2 the older.
    std::fs::rename(&paths[1], v.log.with_file_name("audit.log.1")).unwrap();
    std::fs::rename(&paths[0], v.log.with_file_name("audit.log.2")).unwrap();
    let (out, _) = run_to_exit(0, &["audit", "verify", "--config", v.config()]);
    assert!(out.starts_with("intact: 3 files, 12 events"), "{out}");
    let (out, _) = run_to_exit(0, &["audit", "search", "--config", v.config(), "--json"]);
    assert_eq!(out.lines().count(), 12, "{out}");
    // A copy is not read as part of the trail; a numbered one is, and is
    // named as a second copy of the same events.
    std::fs::copy(&v.log, v.log.with_file_name("audit.log.bak")).unwrap();
    let (out, _) = run_to_exit(0, &["audit", "verify", "--config", v.config()]);
    assert!(out.starts_with("intact: 3 files, 12 events"), "{out}");
    std::fs::copy(
        v.log.with_file_name("audit.log.2"),
        v.log.with_file_name("audit.log.3"),
    )
    .unwrap();
    let out = broken(&v);
    assert!(out.contains("begins the same chain"), "{out}");
}

#[test]
fn verify_passes_on_a_dev_data_dir_and_on_files_named_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = data.join("audit.log");
    let key = make_keys(&data.join("dev/master.key"), &log);
    let paths = write_trail(&key, &log, &three_files());
    let data_arg = data.to_str().unwrap();
    run_to_exit(0, &["audit", "verify", "--data-dir", data_arg]);
    // FIELDVAULT_DATA_DIR, as `serve --dev` reads it.
    let out = run_in(&["audit", "verify"], Some(&data));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The two newest files, given newest first: they verify, and the
    // summary says the events before them are elsewhere.
    let (out, _) = run_to_exit(
        0,
        &[
            "audit",
            "verify",
            "--data-dir",
            data_arg,
            paths[2].to_str().unwrap(),
            paths[1].to_str().unwrap(),
        ],
    );
    assert!(
        out.starts_with("intact: 2 files, 8 events (sequence 4 to 11)"),
        "{out}"
    );
    assert!(
        out.contains("the events before 4 are in files not given"),
        "{out}"
    );
}

/// Verifies `v`'s whole trail, expecting a break; its output.
#[track_caller]
fn broken(v: &Vault) -> String {
    let (out, _) = run_to_exit(1, &["audit", "verify", "--config", v.config()]);
    assert!(out.starts_with("BROKEN: "), "{out}");
    out
}

#[test]
fn verify_names_an_edited_event() {
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    edit_lines(&paths[2], |l| {
        l[2] = l[2].replace("fv1_support", "fv1_courier0")
    });
    let out = broken(&v);
    let want = format!(
        "BROKEN: {}, line 3: event 10 does not verify: edited, or made under another audit key\n",
        paths[2].display()
    );
    assert!(out.starts_with(&want), "{out}");
    // The event at fault is shown (its token as now written).
    assert!(
        out.contains("  the event there: 2026-11-27T09:07:00.000Z #10 detokenize allowed"),
        "{out}"
    );
}

#[test]
fn verify_names_a_line_made_binary() {
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    let mut bytes = std::fs::read(&paths[1]).unwrap();
    let third = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .unwrap()
        .0;
    bytes[third + 20] = 0xff;
    std::fs::write(&paths[1], bytes).unwrap();
    let out = broken(&v);
    assert!(
        out.starts_with(&format!(
            "BROKEN: {}, line 3: is not UTF-8 text: edited or damaged\n",
            paths[1].display()
        )),
        "{out}"
    );
}

#[test]
fn verify_names_an_edited_event_in_a_rotated_file() {
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    edit_lines(&paths[0], |l| l[1] = l[1].replace("callback", "marketing"));
    let out = broken(&v);
    assert!(
        out.starts_with(&format!(
            "BROKEN: {}, line 2: event 1 does not verify",
            paths[0].display()
        )),
        "{out}"
    );
}

#[test]
fn verify_names_a_deleted_event() {
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    edit_lines(&paths[1], |l| {
        l.remove(2);
    });
    let out = broken(&v);
    assert!(
        out.starts_with(&format!(
            "BROKEN: {}, line 3: event 7 where event 6 was due: events were deleted, inserted \
             or reordered",
            paths[1].display()
        )),
        "{out}"
    );
}

#[test]
fn verify_names_an_inserted_event() {
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    // A properly sealed event of the same chain, replayed.
    let replay = std::fs::read_to_string(&paths[0]).unwrap();
    let replay = replay.split_inclusive('\n').nth(2).unwrap().to_owned();
    edit_lines(&paths[2], |l| l.insert(2, replay));
    let out = broken(&v);
    assert!(
        out.starts_with(&format!(
            "BROKEN: {}, line 3: event 2 where event 10 was due",
            paths[2].display()
        )),
        "{out}"
    );
}

#[test]
fn verify_names_a_swap_of_two_events() {
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    edit_lines(&paths[2], |l| l.swap(1, 2));
    let out = broken(&v);
    assert!(
        out.starts_with(&format!(
            "BROKEN: {}, line 2: event 10 where event 9 was due",
            paths[2].display()
        )),
        "{out}"
    );
}

#[test]
fn verify_names_a_truncation_mid_line() {
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    let text = std::fs::read(&paths[2]).unwrap();
    std::fs::write(&paths[2], &text[..text.len() - 40]).unwrap();
    let out = broken(&v);
    assert!(
        out.starts_with(&format!(
            "BROKEN: {}, line 4: is cut short (no newline): a write was torn, or the file \
             truncated",
            paths[2].display()
        )),
        "{out}"
    );
    // The first line cut short, the rest intact: a break too, not "not a
    // trail".
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    edit_lines(&paths[0], |l| l[0] = format!("{}\n", &l[0][..30]));
    let out = broken(&v);
    assert!(
        out.starts_with(&format!(
            "BROKEN: {}, line 1: is not a chained audit event",
            paths[0].display()
        )),
        "{out}"
    );
}

#[test]
fn verify_names_events_cut_off_the_end_of_a_rotated_file_or_its_start_event_deleted() {
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    edit_lines(&paths[0], |l| {
        l.pop();
    });
    let out = broken(&v);
    assert!(
        out.starts_with(&format!(
            "BROKEN: {}, line 1: begins at event 4 but {} ends at event 2: events 3..3 are \
             missing (a file deleted, or events cut off the end of the one before)",
            paths[1].display(),
            paths[0].display()
        )),
        "{out}"
    );
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    edit_lines(&paths[1], |l| {
        l.remove(0);
    });
    let out = broken(&v);
    assert!(
        out.starts_with(&format!(
            "BROKEN: {}, line 1: its first event is `detokenize`, not the start of a file",
            paths[1].display()
        )),
        "{out}"
    );
}

#[test]
fn verify_names_whole_events_cut_off_the_end_of_the_active_file_from_the_servers_record() {
    let v = Vault::new();
    v.write_trail(&three_files());
    // Where the server recorded the end: after the last event.
    let text = std::fs::read_to_string(&v.log).unwrap();
    let state = fieldvault::audit::verify::verify_files(&v.key, std::slice::from_ref(&v.log))
        .unwrap()[0]
        .end;
    std::fs::write(
        fieldvault::audit::head::path_for(&v.log),
        fieldvault::audit::head::encode(&v.key, state),
    )
    .unwrap();
    run_to_exit(0, &["audit", "verify", "--config", v.config()]);
    // Two whole events cut off: the chain left is valid, the record says
    // it is short.
    let cut: String = text.split_inclusive('\n').take(2).collect();
    std::fs::write(&v.log, cut).unwrap();
    let out = broken(&v);
    assert!(out.contains("events 10..11 were cut off its end"), "{out}");
    // A record edited to hide it does not verify.
    std::fs::write(fieldvault::audit::head::path_for(&v.log), "{}").unwrap();
    let out = broken(&v);
    assert!(
        out.contains("record of where the trail ends is damaged"),
        "{out}"
    );
}

#[test]
fn verify_waits_for_a_line_being_written_instead_of_calling_it_cut_short() {
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    let whole = std::fs::read(&paths[2]).unwrap();
    let (head, tail) = whole.split_at(whole.len() - 40);
    std::fs::write(&paths[2], head).unwrap();
    let mut command = Command::new(BIN);
    command.args(["audit", "verify", "--config", v.config()]);
    let path = paths[2].clone();
    let tail = tail.to_vec();
    let writer = std::thread::spawn(move || {
        // Well within the second verify waits for an unfinished line.
        std::thread::sleep(Duration::from_millis(100));
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(&tail).unwrap();
    });
    let out = output_within(command);
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn verify_names_a_missing_rotated_file() {
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    std::fs::remove_file(&paths[1]).unwrap();
    let out = broken(&v);
    assert!(
        out.starts_with(&format!(
            "BROKEN: {}, line 1: begins at event 8 but {} ends at event 3: events 4..7 are \
             missing",
            paths[2].display(),
            paths[0].display()
        )),
        "{out}"
    );
    // The oldest file gone: the trail no longer begins with a chain.
    let v = Vault::new();
    let paths = v.write_trail(&three_files());
    std::fs::remove_file(&paths[0]).unwrap();
    let out = broken(&v);
    assert!(
        out.starts_with(&format!(
            "BROKEN: {}, line 1: the oldest file of the trail begins at event 4 and does not \
             start a chain: events 0..3 are missing",
            paths[1].display()
        )),
        "{out}"
    );
}

#[test]
fn verify_says_precisely_what_an_empty_foreign_or_other_vaults_file_is() {
    let v = Vault::new();
    v.write_trail(&three_files());
    let verify_file = |path: &Path| {
        let (out, err) = run_to_exit(
            2,
            &[
                "audit",
                "verify",
                "--config",
                v.config(),
                path.to_str().unwrap(),
            ],
        );
        assert!(out.is_empty(), "{out}");
        err
    };
    let empty = v.dir.path().join("empty.log");
    std::fs::write(&empty, "").unwrap();
    let err = verify_file(&empty);
    assert!(
        err.contains(&format!(
            "{}: the file is empty: it holds no audit event",
            empty.display()
        )),
        "{err}"
    );
    let other = v.dir.path().join("notes.txt");
    std::fs::write(&other, "listen = \"127.0.0.1:1\"\n[tls]\n").unwrap();
    let err = verify_file(&other);
    assert!(
        err.contains("not a fieldvault audit trail: none of its lines is a chained audit event"),
        "{err}"
    );
    let old = v.dir.path().join("old.log");
    std::fs::write(
        &old,
        format!("{{\"unix_ms\":1,\"caller\":\"{SUPPORT}\",\"action\":\"detokenize\"}}\n"),
    )
    .unwrap();
    assert!(verify_file(&old).contains("an unchained audit log"));
    let binary = v.dir.path().join("random.bin");
    std::fs::write(&binary, [0xff, 0xfe, 0, 1, 2, b'\n', 0x80]).unwrap();
    assert!(verify_file(&binary).contains("not a fieldvault audit trail"));

    // Another vault's trail, given to this vault's config.
    let w = Vault::new();
    let theirs = w.write_trail(&three_files());
    let err = verify_file(&theirs[2]);
    assert!(
        err.contains(&format!(
            "{}: a trail of another vault: written under audit key {}, and this vault's audit key \
             is {}",
            theirs[2].display(),
            w.key.id(),
            v.key.id()
        )),
        "{err}"
    );
    let err = verify_file(&v.dir.path().join("nowhere.log"));
    assert!(err.contains("nowhere.log: cannot read it"), "{err}");
}

#[test]
fn verify_takes_the_master_key_from_the_environment_variable_the_config_names() {
    let v = Vault::new();
    v.write_trail(&three_files());
    let hex = std::fs::read_to_string(v.dir.path().join("keys/master.key")).unwrap();
    let text = std::fs::read_to_string(&v.config).unwrap();
    let file_line = format!("file = \"{}/keys/master.key\"", v.dir.path().display());
    assert!(text.contains(&file_line));
    std::fs::write(
        &v.config,
        text.replace(&file_line, "env = \"AUDIT_CLI_TEST_MASTER_KEY\""),
    )
    .unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["audit", "verify", "--config", v.config()])
        .env("AUDIT_CLI_TEST_MASTER_KEY", hex.trim());
    let out = output_within(command);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let (_, err) = run_to_exit(2, &["audit", "verify", "--config", v.config()]);
    assert!(
        err.contains("master_key.env: environment variable AUDIT_CLI_TEST_MASTER_KEY is not set"),
        "{err}"
    );
}

#[test]
fn verify_without_the_right_key_fails_before_verifying_anything() {
    let v = Vault::new();
    v.write_trail(&three_files());
    // Another master key: the audit key does not unwrap.
    write_private(
        &v.dir.path().join("keys/master.key"),
        MasterKey::generate().to_hex().as_bytes(),
    );
    let (_, err) = run_to_exit(2, &["audit", "verify", "--config", v.config()]);
    assert!(
        err.contains("does not unwrap under this master key"),
        "{err}"
    );
    // No key file beside the trail.
    std::fs::remove_file(fieldvault::audit::keyfile::path_for(&v.log)).unwrap();
    let (_, err) = run_to_exit(2, &["audit", "verify", "--config", v.config()]);
    assert!(err.contains("audit.log.key"), "{err}");
    assert!(
        err.contains("the server writes the wrapped audit key there"),
        "{err}"
    );
    // A directory that is no dev setup.
    let (_, err) = run_to_exit(
        2,
        &[
            "audit",
            "verify",
            "--data-dir",
            v.dir.path().to_str().unwrap(),
        ],
    );
    assert!(err.contains("no dev master key there"), "{err}");
    // A config whose trail does not exist.
    let w = Vault::new();
    let (_, err) = run_to_exit(2, &["audit", "verify", "--config", w.config()]);
    assert!(err.contains("no audit trail there"), "{err}");
}

#[test]
fn verify_help_names_what_each_exit_code_means() {
    let (out, _) = run_to_exit(0, &["audit", "verify", "--help"]);
    assert!(
        out.contains("Exit codes: 0 the trail is intact; 1 it is not"),
        "{out}"
    );
    assert!(out.contains("2 nothing could be verified"), "{out}");
    let (_, err) = run_to_exit(
        2,
        &["audit", "verify", "--config", "a.toml", "--data-dir", "d"],
    );
    assert!(err.contains("--data-dir"), "{err}");
}

/// A day of calls: reveals, refusals, tokenize, key operations.
fn a_day() -> Vec<Vec<Event>> {
    let mut first = Vec::new();
    let mut e = call(0, "tokenize", SUPPORT, None);
    e.items = vec![
        item("fv1_p1", "phone", "stored"),
        item("fv1_p2", "phone", "stored"),
        item("fv1_a1", "address", "stored"),
    ];
    e.settle();
    first.push(e);
    let mut e = call(10, "detokenize", SUPPORT, Some("callback"));
    e.items = vec![
        item("fv1_p1", "phone", "full"),
        item("fv1_p2", "phone", "full"),
        item("fv1_zz", "phone", "not_found"),
    ];
    e.settle();
    first.push(e);
    let mut e = call(20, "detokenize", COURIER, Some("delivery"));
    e.items = vec![item("fv1_a1", "address", "masked")];
    e.settle();
    first.push(e);
    let mut second = Vec::new();
    let mut e = call(70, "detokenize", COURIER, Some("marketing"));
    e.decision = Decision::Denied;
    e.code = "permission_denied".into();
    e.reason = Some("no rule allows purpose marketing".into());
    e.items = vec![item("fv1_p1", "phone", "permission_denied")];
    second.push(e);
    let mut e = call(80, "keys.rotate_data_key", ROTATOR, None);
    e.details.insert("new_version".into(), Value::from(2));
    second.push(e);
    second.push(call(81, "keys.get_key_status", ROTATOR, None));
    // The next day.
    let mut e = call(24 * 60, "detokenize", SUPPORT, Some("callback"));
    e.items = vec![item("fv1_p1", "phone", "full")];
    second.push(e);
    vec![first, second]
}

fn lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

#[test]
fn search_filters_by_caller_token_action_decision_purpose_and_time() {
    let v = Vault::new();
    v.write_trail(&a_day());
    let search = |args: &[&str]| {
        let mut all = vec!["audit", "search", "--config", v.config()];
        all.extend_from_slice(args);
        run_to_exit(0, &all).0
    };
    assert_eq!(lines(&search(&[])).len(), 9);
    let out = search(&["--caller", COURIER]);
    assert_eq!(lines(&out).len(), 2, "{out}");
    assert!(out.starts_with(
        "2026-11-27T09:20:00.000Z #3 detokenize allowed caller=spiffe://dev.fieldvault.local/courier \
         purpose=delivery request=req-20 items=[fv1_a1/address:masked]\n"
    ), "{out}");
    let out = search(&["--request-id", "req-20"]);
    assert_eq!(lines(&out).len(), 1, "{out}");
    assert!(out.contains(" #3 "), "{out}");
    let out = search(&["--token", "fv1_p1"]);
    let seqs: Vec<&str> = lines(&out)
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(seqs, ["#1", "#2", "#5", "#8"], "{out}");
    let out = search(&["--action", "keys.*"]);
    assert_eq!(lines(&out).len(), 2, "{out}");
    assert_eq!(
        lines(&search(&["--action", "keys.rotate_data_key"])).len(),
        1
    );
    assert_eq!(lines(&search(&["--action", "audit.*"])).len(), 2);
    let out = search(&["--decision", "denied"]);
    assert!(
        out.contains(
            "(permission_denied) caller=spiffe://dev.fieldvault.local/courier purpose=marketing"
        ) && out.contains("reason=\"no rule allows purpose marketing\""),
        "{out}"
    );
    assert_eq!(lines(&search(&["--purpose", "callback"])).len(), 2);
    let out = search(&["--since", "2026-11-27T09:10:00Z", "--until", "2026-11-28"]);
    assert_eq!(lines(&out).len(), 5, "{out}");
    let out = search(&[
        "--since",
        "2026-11-27T10:10:00+01:00",
        "--until",
        "2026-11-27T09:20:00.001Z",
        "--caller",
        COURIER,
    ]);
    assert_eq!(lines(&out).len(), 1, "{out}");
    assert!(search(&["--caller", "spiffe://dev.fieldvault.local/nobody"]).is_empty());
}

#[test]
fn search_json_prints_one_event_object_a_line() {
    let v = Vault::new();
    let paths = v.write_trail(&a_day());
    let (out, _) = run_to_exit(
        0,
        &[
            "audit",
            "search",
            "--config",
            v.config(),
            "--json",
            "--decision",
            "allowed",
            "--action",
            "detokenize",
        ],
    );
    let objects: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 3, "{out}");
    assert_eq!(objects[0]["seq"], 2);
    assert_eq!(objects[0]["line"], 3);
    assert_eq!(objects[0]["file"], paths[0].to_str().unwrap());
    assert_eq!(objects[0]["event"]["caller"], SUPPORT);
    assert_eq!(objects[0]["event"]["items"][2]["outcome"], "not_found");
    let event: Event = serde_json::from_value(objects[2]["event"].clone()).unwrap();
    assert_eq!(event.time, "2026-11-28T09:00:00.000Z");
    // Needs no key: with the key file gone, the search still runs.
    std::fs::remove_file(fieldvault::audit::keyfile::path_for(&v.log)).unwrap();
    run_to_exit(0, &["audit", "search", "--config", v.config(), "--json"]);
}

#[test]
fn search_refuses_a_bad_time_or_decision_naming_the_flag() {
    let v = Vault::new();
    v.write_trail(&a_day());
    for (flag, value, expected) in [
        (
            "--since",
            "yesterday",
            "invalid value for --since: expected an RFC 3339 time",
        ),
        (
            "--until",
            "2026-11-27T10:00:00",
            "invalid value for --until: no time zone",
        ),
        (
            "--decision",
            "maybe",
            "invalid value for --decision: expected one of: allowed, denied, rejected, failed",
        ),
    ] {
        let args = ["audit", "search", "--config", v.config(), flag, value];
        let (_, err) = run_to_exit(2, &args);
        assert!(err.contains(expected), "{err}");
    }
    let (_, err) = run_to_exit(
        2,
        &[
            "audit",
            "search",
            "--config",
            v.config(),
            "--since",
            "2026-11-28",
            "--until",
            "2026-11-27",
        ],
    );
    assert!(err.contains("--since must be before --until"), "{err}");
    // With --json, the error is a JSON object on stdout.
    let (out, _) = run_to_exit(
        2,
        &[
            "audit",
            "search",
            "--config",
            v.config(),
            "--json",
            "--since",
            "nope",
        ],
    );
    let error: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(error["error"]["code"], "INVALID_ARGUMENT");
}

#[test]
fn report_gives_exact_counts_in_every_format() {
    let v = Vault::new();
    v.write_trail(&a_day());
    let report = |format: &str| {
        run_to_exit(
            0,
            &[
                "audit",
                "report",
                "--config",
                v.config(),
                "--since",
                "2026-11-27",
                "--until",
                "2026-11-28",
                "--format",
                format,
            ],
        )
        .0
    };
    let csv = report("csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "section,time,caller,purpose,action,kind,outcome,code,reason,count"
    );
    let expected = [
        "period_start,2026-11-27T00:00:00.000Z,,,,,,,,",
        "period_end,2026-11-28T00:00:00.000Z,,,,,,,,",
        "calls,,,,detokenize,,allowed,,,2",
        "calls,,,,detokenize,,denied,,,1",
        "calls,,,,keys.get_key_status,,allowed,,,1",
        "calls,,,,keys.rotate_data_key,,allowed,,,1",
        "calls,,,,tokenize,,allowed,,,1",
        "reveal,,spiffe://dev.fieldvault.local/courier,delivery,detokenize,address,masked,,,1",
        "reveal,,spiffe://dev.fieldvault.local/support,callback,detokenize,phone,full,,,2",
        "tokenize,,spiffe://dev.fieldvault.local/support,,tokenize,address,stored,,,1",
        "tokenize,,spiffe://dev.fieldvault.local/support,,tokenize,phone,stored,,,2",
        "refused_call,,spiffe://dev.fieldvault.local/courier,marketing,detokenize,,denied,permission_denied,no rule allows purpose marketing,1",
        "refused_item,,spiffe://dev.fieldvault.local/support,callback,detokenize,phone,,not_found,,1",
        "key_operation,2026-11-27T10:20:00.000Z,spiffe://dev.fieldvault.local/rotator,,keys.rotate_data_key,,allowed,ok,,1",
        "busiest_caller,,spiffe://dev.fieldvault.local/support,,,,,,,2",
        "busiest_caller,,spiffe://dev.fieldvault.local/courier,,,,,,,1",
        "trail,2026-11-27T00:00:00.000Z,,,audit.chain_start,,,,a new audit trail,1",
        "trail,2026-11-27T00:00:00.000Z,,,audit.file_start,,,,,1",
    ];
    let verification = rows[3];
    assert!(
        verification.starts_with("verification,,,,,,verified,,"),
        "{csv}"
    );
    assert!(verification.ends_with(",9"), "{csv}");
    let mut got: Vec<&str> = rows.clone();
    got.remove(3);
    got.remove(0);
    assert_eq!(got, expected, "{csv}");

    let json: Value = serde_json::from_str(&report("json")).unwrap();
    assert_eq!(json["events"], 8);
    assert_eq!(json["verification"]["status"], "verified");
    assert_eq!(json["refused_calls"][0]["tokens"], 1);
    assert_eq!(json["busiest_callers"][0]["values_revealed"], 2);
    assert_eq!(json["key_operations"].as_array().unwrap().len(), 1);

    let md = report("md");
    assert!(md.starts_with("# fieldvault audit report\n"), "{md}");
    assert!(
        md.contains("**Integrity:** the chain verified: 9 events (sequence 0 to 8) in 2 files"),
        "{md}"
    );
    assert!(
        md.contains("| spiffe://dev.fieldvault.local/support | callback | phone | 2 | 0 | 0 | 2 |"),
        "{md}"
    );
}

#[test]
fn report_over_a_broken_trail_says_so_and_exits_1() {
    let v = Vault::new();
    let paths = v.write_trail(&a_day());
    edit_lines(&paths[1], |l| l[1] = l[1].replace("marketing", "callback!"));
    let (md, _) = run_to_exit(
        1,
        &[
            "audit",
            "report",
            "--config",
            v.config(),
            "--since",
            "2026-11-27",
            "--until",
            "2026-11-28",
        ],
    );
    assert!(
        md.contains(&format!(
            "**Integrity:** the chain DOES NOT VERIFY: {}, line 2: event 5 does not verify",
            paths[1].display()
        )),
        "{md}"
    );
    // The counts are still what the files say.
    assert!(md.contains("| callback! | detokenize | denied |"), "{md}");
    let (_, err) = run_to_exit(
        2,
        &[
            "audit",
            "report",
            "--config",
            v.config(),
            "--since",
            "2026-11-27",
        ],
    );
    assert!(err.contains("--until"), "{err}");
}
