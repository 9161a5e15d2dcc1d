//! The real binary: dev mode and the CLI quickstart, kill -9 and restart,
//! and no plaintext in the data dir or the logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{cli, start_dev};
use std::path::Path;

/// A value used nowhere else, in raw and canonical form.
const PHONE: &str = "+1 202-555-0176";
const PHONE_CANONICAL: &str = "+12025550176";
const ADDRESS: &str = "17 Fakestreet Lane, Testville, ZZ 99999";

fn run_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn files_containing(dir: &Path, needles: &[&[u8]]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needles));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            for needle in needles {
                if bytes.windows(needle.len()).any(|w| w == *needle) {
                    hits.push(format!(
                        "{} holds {:?}",
                        path.display(),
                        String::from_utf8_lossy(needle)
                    ));
                }
            }
        }
    }
    hits
}

#[test]
fn dev_mode_quickstart_survives_kill_9_and_leaves_no_plaintext_on_disk_or_in_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();
    let log = tmp.path().join("server.log");

    let server = start_dev(&data, &log).unwrap();
    assert!(server.stdout.contains("created"), "{}", server.stdout);
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "master.key",
        "policy.toml",
    ] {
        assert!(data.join("dev").join(f).exists(), "{f}");
    }
    for name in ["orders", "support", "rotator", "intruder"] {
        assert!(data.join("dev").join(format!("{name}.pem")).exists());
        assert!(data.join("dev").join(format!("{name}.key")).exists());
    }
    let addr = server.addr.clone();
    let conn = |who: &'static str| {
        ["--addr", &addr, "--dev-identity", who, "--data-dir", data_s].map(str::to_owned)
    };

    let mut args = vec!["tokenize", "--kind", "phone", PHONE];
    let orders = conn("orders");
    args.extend(orders.iter().map(String::as_str));
    let phone_token = run_ok(&args).trim().to_owned();
    let mut args = vec!["tokenize", "--kind", "address", "--json", ADDRESS];
    args.extend(orders.iter().map(String::as_str));
    let json: serde_json::Value = serde_json::from_str(run_ok(&args).trim()).unwrap();
    let address_token = json["token"].as_str().unwrap().to_owned();

    // kill -9: the acknowledged tokens must survive.
    server.kill9();
    let server = start_dev(&data, &log).unwrap();
    assert!(server.stdout.contains("reusing"), "{}", server.stdout);
    let addr = server.addr.clone();
    let support = [
        "--addr",
        &addr,
        "--dev-identity",
        "support",
        "--data-dir",
        data_s,
    ];
    let mut args = vec![
        "detokenize",
        "--purpose",
        "callback",
        "--justification",
        "SUP-1",
        &phone_token,
        &address_token,
    ];
    args.extend(support);
    let out = run_ok(&args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("{phone_token}\tphone\tfull\t{PHONE_CANONICAL}")
    );
    assert_eq!(lines[1], format!("{address_token}\taddress\tmasked\t***"));

    // A refused call exits non-zero and says why.
    let mut args = vec!["detokenize", "--purpose", "marketing", &phone_token];
    args.extend(support);
    let out = cli(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    drop(server);

    let needles: [&[u8]; 5] = [
        PHONE.as_bytes(),
        PHONE_CANONICAL.as_bytes(),
        b"2025550176",
        b"Fakestreet",
        b"Testville",
    ];
    let hits = files_containing(&data, &needles);
    assert!(hits.is_empty(), "plaintext at rest: {hits:?}");
    let logs = std::fs::read(&log).unwrap();
    assert!(logs.len() > 1000, "trace logs were captured");
    let hits = files_containing(tmp.path(), &needles);
    assert!(hits.is_empty(), "plaintext in data dir or logs: {hits:?}");

    // The audit trail across the kill: it verifies, and neither a search
    // nor a report of it shows a value.
    let out = run_ok(&["audit", "verify", "--data-dir", data_s]);
    assert!(out.starts_with("intact: "), "{out}");
    let searched = run_ok(&["audit", "search", "--json", "--data-dir", data_s]);
    assert!(searched.contains(&phone_token), "{searched}");
    let report = run_ok(&[
        "audit",
        "report",
        "--since",
        "2000-01-01",
        "--until",
        "2100-01-01",
        "--data-dir",
        data_s,
    ]);
    assert!(
        report.contains("| spiffe://fieldvault.dev/support | callback | phone | 1 |"),
        "{report}"
    );
    for out in [&searched, &report] {
        for needle in needles {
            let needle = String::from_utf8_lossy(needle);
            assert!(!out.contains(needle.as_ref()), "a value in audit output");
        }
    }
}

#[test]
fn the_server_refuses_a_master_key_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    drop(start_dev(&data, &log).unwrap());
    let key = data.join("dev/master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = start_dev(&data, &log).err().unwrap();
    assert!(
        err.contains("master.key") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn the_server_refuses_the_wrong_master_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    drop(start_dev(&data, &log).unwrap());
    let key = data.join("dev/master.key");
    std::fs::write(
        &key,
        fieldvault::crypto::MasterKey::generate()
            .to_hex()
            .as_bytes(),
    )
    .unwrap();
    let err = start_dev(&data, &log).err().unwrap();
    assert!(err.contains("master key does not match"), "{err}");
}

/// Polls `keys status --json` (at most a minute) until `job` is finished.
fn wait_for_job(conn: &[String], job: &str) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let mut args = vec!["keys", "status", "--json"];
        args.extend(conn.iter().map(String::as_str));
        let status: serde_json::Value = serde_json::from_str(run_ok(&args).trim()).unwrap();
        if status[job]["state"] == "finished" {
            return status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{job} did not finish: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn rotating_every_key_leaves_no_plaintext_and_no_master_key_on_disk_or_in_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();
    let log = tmp.path().join("server.log");
    let server = start_dev(&data, &log).unwrap();
    let addr = server.addr.clone();
    let conn = |who: &'static str| {
        ["--addr", &addr, "--dev-identity", who, "--data-dir", data_s].map(str::to_owned)
    };
    let (orders, rotator) = (conn("orders"), conn("rotator"));
    let mut args = vec!["tokenize", "--kind", "phone", PHONE];
    args.extend(orders.iter().map(String::as_str));
    let phone_token = run_ok(&args).trim().to_owned();
    let mut args = vec!["tokenize", "--kind", "address", ADDRESS];
    args.extend(orders.iter().map(String::as_str));
    run_ok(&args);

    let old_master = std::fs::read_to_string(data.join("dev/master.key")).unwrap();
    let new_master = fieldvault::crypto::MasterKey::generate().to_hex();
    let new_key = tmp.path().join("new-master.key");
    std::fs::write(&new_key, new_master.as_bytes()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&new_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut outputs = String::new();
    for command in [
        vec!["keys", "rotate"],
        vec!["keys", "rewrap", "--wait"],
        vec!["keys", "retire", "1"],
        vec!["keys", "rotate-index"],
    ] {
        let mut args = command.clone();
        args.extend(rotator.iter().map(String::as_str));
        let out = cli(&args);
        assert!(out.status.success(), "{command:?}: {out:?}");
        outputs.push_str(&String::from_utf8_lossy(&out.stdout));
        outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let status = wait_for_job(&rotator, "index_rebuild");
    assert_eq!(status["index_keys"][0]["state"], "retired", "{status}");
    let mut args = vec!["keys", "rotate-master", "--new-key-file"];
    let new_key_s = new_key.to_str().unwrap();
    args.push(new_key_s);
    args.extend(rotator.iter().map(String::as_str));
    outputs.push_str(&run_ok(&args));
    server.kill9();
    // The dev setup now needs the new key.
    std::fs::rename(&new_key, data.join("dev/master.key")).unwrap();
    let server = start_dev(&data, &log).unwrap();
    let addr = server.addr.clone();
    let mut args = vec!["detokenize", "--purpose", "callback", &phone_token];
    let support = [
        "--addr",
        &addr,
        "--dev-identity",
        "support",
        "--data-dir",
        data_s,
    ];
    args.extend(support);
    assert!(run_ok(&args).contains(PHONE_CANONICAL));
    drop(server);

    let values: [&[u8]; 4] = [
        PHONE_CANONICAL.as_bytes(),
        b"2025550176",
        b"Fakestreet",
        b"Testville",
    ];
    let hits = files_containing(&data.join("store"), &values);
    assert!(hits.is_empty(), "plaintext at rest: {hits:?}");
    let hits = files_containing(tmp.path(), &values);
    assert!(
        hits.is_empty(),
        "plaintext in the data dir or logs: {hits:?}"
    );
    // Key material: only the key file itself holds the (new) master key;
    // the replaced one is nowhere (its file was overwritten).
    let keys: [&[u8]; 2] = [old_master.trim().as_bytes(), new_master.as_bytes()];
    let mut hits = files_containing(tmp.path(), &keys);
    hits.retain(|h| !h.starts_with(&data.join("dev/master.key").display().to_string()));
    assert!(hits.is_empty(), "master key material: {hits:?}");
    for key in keys {
        assert!(
            !outputs.as_bytes().windows(key.len()).any(|w| w == key),
            "a master key in the CLI's output"
        );
    }
}
