//! deploy/kubernetes and the systemd unit agree with the server: every
//! manifest parses, the config and policy in the ConfigMap are ones the
//! server loads, every file they name is mounted, the probes and the jobs run
//! real `fieldvault` command lines, the key files' modes pass the key-file
//! check, and both the pod and the unit give the drain time to finish.
//!
//! YAML is read with serde_yaml_ng (the maintained fork of the archived
//! serde_yaml; multi-document files included). It reads YAML 1.2, where
//! `0440` is a string; Kubernetes reads YAML 1.1, where it is octal:
//! [`k8s_mode`] reads modes as Kubernetes does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fieldvault::config::{Config, MasterKeySource};
use fieldvault::domain::policy::Policy;
use fieldvault::fsperm::{check_key_file, ProcessIds};
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};

const KUBERNETES_DIR: &str = "deploy/kubernetes";

/// Every YAML document under deploy/kubernetes, with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(KUBERNETES_DIR)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML under {KUBERNETES_DIR}");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            if !value.is_null() {
                docs.push((file.display().to_string(), value));
            }
        }
    }
    docs
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    at(v, path)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

/// The one document of `kind` named `name`.
fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| {
            str_at(d, &["kind"]) == Some(kind) && str_at(d, &["metadata", "name"]) == Some(name)
        })
        .collect();
    assert_eq!(found.len(), 1, "{kind} {name}: expected exactly one");
    found[0]
}

fn statefulset(docs: &[(String, Value)]) -> &Value {
    find(docs, "StatefulSet", "fieldvault")
}

fn cronjob(docs: &[(String, Value)]) -> &Value {
    find(docs, "CronJob", "fieldvault-key-rotation")
}

/// A file mode as Kubernetes reads it: a number (JSON, decimal) or, in YAML
/// 1.1, digits with a leading zero (octal).
fn k8s_mode(v: &Value) -> u32 {
    match v {
        Value::Number(n) => u32::try_from(n.as_u64().unwrap()).unwrap(),
        Value::String(s) if s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()) => {
            u32::from_str_radix(s, 8).unwrap()
        }
        other => panic!("not a file mode: {other:?}"),
    }
}

/// The ConfigMap's fieldvault.toml.
fn configmap_config(docs: &[(String, Value)]) -> String {
    let cm = find(docs, "ConfigMap", "fieldvault-config");
    str_at(cm, &["data", "fieldvault.toml"]).unwrap().to_owned()
}

fn configmap_settings(docs: &[(String, Value)]) -> Config {
    let text = configmap_config(docs);
    Config::from_toml(&text, &|_| None).unwrap_or_else(|e| panic!("ConfigMap fieldvault.toml: {e}"))
}

/// The cert-manager Certificate that writes the Secret `secret`.
fn certificate_writing<'a>(docs: &'a [(String, Value)], secret: &str) -> Option<&'a Value> {
    docs.iter().map(|(_, d)| d).find(|d| {
        str_at(d, &["kind"]) == Some("Certificate")
            && str_at(d, &["spec", "secretName"]) == Some(secret)
    })
}

/// The drain deadline the ConfigMap sets, or the default.
fn configmap_drain_secs(docs: &[(String, Value)]) -> u64 {
    configmap_settings(docs).shutdown.drain_timeout.as_secs()
}

#[test]
fn every_manifest_parses_and_names_its_api_version_kind_name_and_namespace() {
    let docs = documents();
    let namespace = str_at(find(&docs, "Namespace", "vault"), &["metadata", "name"]).unwrap();
    let mut kinds = Vec::new();
    for (file, doc) in &docs {
        for field in [&["apiVersion"][..], &["kind"], &["metadata", "name"]] {
            assert!(
                str_at(doc, field).is_some_and(|s| !s.is_empty()),
                "{file}: a document without {}",
                field.join(".")
            );
        }
        let kind = str_at(doc, &["kind"]).unwrap();
        if kind != "Namespace" {
            assert_eq!(
                str_at(doc, &["metadata", "namespace"]),
                Some(namespace),
                "{file}: {kind} {} is not in namespace {namespace}",
                str_at(doc, &["metadata", "name"]).unwrap()
            );
        }
        kinds.push(kind.to_owned());
    }
    for kind in [
        "ServiceAccount",
        "Certificate",
        "ConfigMap",
        "StatefulSet",
        "Service",
        "NetworkPolicy",
        "CronJob",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} under {KUBERNETES_DIR}"
        );
    }
    // One replica: sled is a single writer.
    let sts = statefulset(&docs);
    assert_eq!(
        at(sts, &["spec", "replicas"]).and_then(Value::as_u64),
        Some(1)
    );
    assert!(!seq(sts, &["spec", "volumeClaimTemplates"]).is_empty());
}

#[test]
fn the_configmap_config_loads_with_the_servers_loader_and_its_policy_with_the_policy_parser() {
    let docs = documents();
    let config = configmap_settings(&docs);
    assert!(matches!(config.master_key, MasterKeySource::File(_)));
    let cm = find(&docs, "ConfigMap", "fieldvault-config");
    let policy = str_at(cm, &["data", "policy.toml"]).unwrap();
    let parsed = Policy::from_toml(policy).unwrap_or_else(|e| panic!("ConfigMap policy.toml: {e}"));
    assert!(!parsed.rules().is_empty());
    // One example policy to keep up to date, not two.
    assert_eq!(
        policy,
        std::fs::read_to_string("deploy/policy.toml").unwrap(),
        "the ConfigMap's policy.toml differs from deploy/policy.toml"
    );
    // The server is started with the mounted config.
    let args = container_args(&docs, "fieldvault");
    assert_eq!(args[..2], ["serve", "--config"]);
    assert!(
        mounted_file(&docs, Path::new(&args[2])).is_some(),
        "{} is not mounted",
        args[2]
    );
}

/// Where `path` comes from in the server container: the volume and the
/// mount, when a mount holds it.
fn mount_of<'a>(docs: &'a [(String, Value)], path: &Path) -> Option<(&'a Value, &'a Value)> {
    let pod = at(statefulset(docs), &["spec", "template", "spec"]).unwrap();
    let container = server_container(docs);
    seq(container, &["volumeMounts"])
        .into_iter()
        .filter(|m| path.starts_with(str_at(m, &["mountPath"]).unwrap()))
        .max_by_key(|m| str_at(m, &["mountPath"]).unwrap().len())
        .map(|m| {
            let name = str_at(m, &["name"]).unwrap();
            let volume = seq(pod, &["volumes"])
                .into_iter()
                .find(|v| str_at(v, &["name"]) == Some(name))
                .or_else(|| {
                    seq(statefulset(docs), &["spec", "volumeClaimTemplates"])
                        .into_iter()
                        .find(|t| str_at(t, &["metadata", "name"]) == Some(name))
                })
                .unwrap_or_else(|| panic!("volumeMount {name}: no such volume"));
            (volume, m)
        })
}

fn server_container(docs: &[(String, Value)]) -> &Value {
    seq(
        statefulset(docs),
        &["spec", "template", "spec", "containers"],
    )
    .into_iter()
    .find(|c| str_at(c, &["name"]) == Some("fieldvault"))
    .unwrap()
}

fn container_args(docs: &[(String, Value)], name: &str) -> Vec<String> {
    let c = seq(
        statefulset(docs),
        &["spec", "template", "spec", "containers"],
    )
    .into_iter()
    .find(|c| str_at(c, &["name"]) == Some(name))
    .unwrap();
    strings(at(c, &["args"]).unwrap())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// The keys a Secret or ConfigMap volume provides as files: its `items`,
/// else the ConfigMap's data keys, or for a Secret cert-manager writes (a
/// Certificate's secretName) tls.crt, tls.key and ca.crt.
fn volume_files(docs: &[(String, Value)], volume: &Value) -> Vec<String> {
    let source = volume
        .get("secret")
        .or_else(|| volume.get("configMap"))
        .unwrap();
    let items = seq(source, &["items"]);
    if !items.is_empty() {
        return items
            .iter()
            .map(|i| str_at(i, &["path"]).unwrap().to_owned())
            .collect();
    }
    if let Some(name) = str_at(source, &["secretName"]) {
        let by_cert_manager = docs.iter().any(|(_, d)| {
            str_at(d, &["kind"]) == Some("Certificate")
                && str_at(d, &["spec", "secretName"]) == Some(name)
        });
        assert!(
            by_cert_manager,
            "Secret {name}: no Certificate writes it; list its items"
        );
        return ["tls.crt", "tls.key", "ca.crt"].map(String::from).to_vec();
    }
    let name = str_at(source, &["name"]).unwrap();
    find(docs, "ConfigMap", name)
        .get("data")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The volume a file at `path` comes from, if a mount of a Secret or
/// ConfigMap provides that file (or, for a volume claim, the directory).
fn mounted_file<'a>(docs: &'a [(String, Value)], path: &Path) -> Option<&'a Value> {
    let (volume, mount) = mount_of(docs, path)?;
    let rel = path
        .strip_prefix(str_at(mount, &["mountPath"]).unwrap())
        .ok()?;
    if volume.get("secret").is_some() || volume.get("configMap").is_some() {
        let files = volume_files(docs, volume);
        files.iter().any(|f| Path::new(f) == rel).then_some(volume)
    } else {
        None
    }
}

#[test]
fn every_file_the_config_names_is_one_a_volume_mount_provides() {
    let docs = documents();
    let config = configmap_settings(&docs);
    let MasterKeySource::File(master) = &config.master_key else {
        panic!("the ConfigMap reads the master key from a file");
    };
    for (setting, path) in [
        ("policy_file", &config.policy_file),
        ("tls.cert", &config.tls.cert),
        ("tls.key", &config.tls.key),
        ("tls.client_ca", &config.tls.client_ca),
        ("master_key.file", master),
    ] {
        let (_, mount) = mount_of(&docs, path)
            .unwrap_or_else(|| panic!("{setting} {}: no volumeMount holds it", path.display()));
        assert!(
            mounted_file(&docs, path).is_some(),
            "{setting} {}: its mount provides no such file",
            path.display()
        );
        assert_eq!(
            at(mount, &["readOnly"]).and_then(Value::as_bool),
            Some(true),
            "{setting}: mounted writable"
        );
    }
    // What the server writes: on a volume claim (persistent), writable.
    for (setting, dir) in [
        ("data_dir", config.data_dir.as_path()),
        ("audit_log", config.audit_log.parent().unwrap()),
    ] {
        let (volume, mount) = mount_of(&docs, dir)
            .unwrap_or_else(|| panic!("{setting} {}: no volumeMount holds it", dir.display()));
        assert!(
            volume
                .get("spec")
                .is_some_and(|s| s.get("accessModes").is_some()),
            "{setting} {}: not on a volumeClaimTemplate (not persistent)",
            dir.display()
        );
        assert_ne!(
            at(mount, &["readOnly"]).and_then(Value::as_bool),
            Some(true),
            "{setting}"
        );
        // The server makes its own 0700 directory below the volume's root
        // (the kubelet owns the root's group and mode).
        assert_ne!(
            dir,
            Path::new(str_at(mount, &["mountPath"]).unwrap()),
            "{setting}"
        );
    }
    // The CRL files of the opt-in `# crls = [...]` line (commented until an
    // operator has a CRL).
    let text = configmap_config(&docs);
    let crls_line = text
        .lines()
        .find_map(|l| l.strip_prefix("# crls = "))
        .expect("the ConfigMap shows the opt-in `# crls = [...]` line");
    let crls: toml::Table = format!("crls = {crls_line}").parse().unwrap();
    for crl in crls["crls"].as_array().unwrap() {
        let crl = Path::new(crl.as_str().unwrap());
        let (volume, _) = mount_of(&docs, crl)
            .unwrap_or_else(|| panic!("tls.crls {}: not mounted", crl.display()));
        assert!(volume
            .get("configMap")
            .or_else(|| volume.get("secret"))
            .is_some());
    }
}

/// The exec command of a probe, as one line.
fn probe_command(container: &Value, probe: &str) -> String {
    strings(at(container, &[probe, "exec", "command"]).unwrap_or_else(|| panic!("no exec {probe}")))
        .join(" ")
}

/// `fieldvault ARGS --help` exits 0: clap accepts every flag in ARGS.
fn cli_accepts(args: &[String]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldvault"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fieldvault {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `fieldvault …` arguments in a command line (up to `;`).
fn fieldvault_args(line: &str) -> Vec<String> {
    let start = line
        .find("fieldvault ")
        .unwrap_or_else(|| panic!("no `fieldvault` in {line}"));
    line[start + "fieldvault ".len()..]
        .split(';')
        .next()
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("no {name} in {args:?}"));
    &args[i + 1]
}

#[test]
fn the_probes_run_fieldvault_health_over_loopback_with_a_mounted_client_certificate() {
    let docs = documents();
    let container = server_container(&docs);
    let config = configmap_settings(&docs);
    let server_cert = find(&docs, "Certificate", "fieldvault-server");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let line = probe_command(container, probe);
        assert!(line.contains("fieldvault health "), "{probe}: {line}");
        let args = fieldvault_args(&line);
        cli_accepts(&args);
        // The server's own port, on an address its certificate names.
        let addr: std::net::SocketAddr = flag(&args, "--addr").parse().unwrap();
        assert_eq!(addr.port(), config.listen.port(), "{probe}");
        assert!(
            seq(server_cert, &["spec", "ipAddresses"])
                .iter()
                .any(|ip| ip.as_str() == Some(&addr.ip().to_string())),
            "{probe}: the server certificate does not name {}",
            addr.ip()
        );
        for f in ["--ca", "--cert", "--key"] {
            let path = Path::new(flag(&args, f));
            assert!(
                mounted_file(&docs, path).is_some(),
                "{probe} {f} {}: not mounted",
                path.display()
            );
        }
        // Readiness wants SERVING (exit 0); startup and liveness only an
        // answer (exit 0 or 1, NOT_SERVING).
        let tolerates_not_serving = line.contains("test $? -le 1");
        assert_eq!(
            tolerates_not_serving,
            probe != "readinessProbe",
            "{probe}: {line}"
        );
    }
}

#[test]
fn the_key_rotation_job_runs_keys_rotate_then_rewrap_with_its_own_mounted_certificate() {
    let docs = documents();
    let spec = at(
        cronjob(&docs),
        &["spec", "jobTemplate", "spec", "template", "spec"],
    )
    .unwrap();
    let steps: Vec<&Value> = seq(spec, &["initContainers"])
        .into_iter()
        .chain(seq(spec, &["containers"]))
        .collect();
    let commands: Vec<Vec<String>> = steps
        .iter()
        .map(|c| strings(at(c, &["args"]).unwrap()))
        .collect();
    assert_eq!(
        commands
            .iter()
            .map(|a| a[..2].join(" "))
            .collect::<Vec<_>>(),
        ["keys rotate", "keys rewrap"]
    );
    // `keys rotate` makes a version each run: a failed job is never re-run.
    assert_eq!(
        at(
            cronjob(&docs),
            &["spec", "jobTemplate", "spec", "backoffLimit"]
        )
        .and_then(Value::as_u64),
        Some(0)
    );
    assert_eq!(
        str_at(cronjob(&docs), &["spec", "concurrencyPolicy"]),
        Some("Forbid")
    );
    let volumes = seq(spec, &["volumes"]);
    for (step, args) in steps.iter().zip(&commands) {
        cli_accepts(args);
        let addr = flag(args, "--addr");
        let host = addr.rsplit_once(':').unwrap().0;
        assert!(
            seq(
                find(&docs, "Certificate", "fieldvault-server"),
                &["spec", "dnsNames"]
            )
            .iter()
            .any(|n| n.as_str() == Some(host)),
            "{addr}: the server certificate does not name {host}"
        );
        let mounts = seq(step, &["volumeMounts"]);
        for f in ["--ca", "--cert", "--key"] {
            let path = Path::new(flag(args, f));
            let mount = mounts
                .iter()
                .find(|m| path.parent() == Some(Path::new(str_at(m, &["mountPath"]).unwrap())))
                .unwrap_or_else(|| panic!("{f} {}: not mounted", path.display()));
            let volume = volumes
                .iter()
                .find(|v| v.get("name") == mount.get("name"))
                .unwrap();
            let files = volume_files(&docs, volume);
            assert!(files
                .iter()
                .any(|f| Path::new(f) == path.file_name().unwrap()));
        }
    }
    // Its identity is the one the policy's "keys" rule names.
    let secret = str_at(volumes[0], &["secret", "secretName"]).unwrap();
    let cert = certificate_writing(&docs, secret).unwrap();
    let id = str_at(seq(cert, &["spec", "uris"])[0], &[]).unwrap();
    let policy = std::fs::read_to_string("deploy/policy.toml").unwrap();
    let policy: toml::Table = policy.parse().unwrap();
    assert!(
        policy["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"].as_str() == Some("keys")
                && r["callers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c.as_str() == Some(id))),
        "no rule with action \"keys\" names {id}"
    );
}

#[test]
fn the_pod_outlives_the_drain_deadline_on_termination() {
    let docs = documents();
    let drain = configmap_drain_secs(&docs);
    let grace = at(
        statefulset(&docs),
        &["spec", "template", "spec", "terminationGracePeriodSeconds"],
    )
    .and_then(Value::as_u64)
    .unwrap_or(30);
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds {grace} must exceed the drain deadline {drain}s"
    );
}

#[test]
fn every_secret_and_config_map_mount_mode_passes_the_servers_file_checks_as_the_pod_runs() {
    let docs = documents();
    for (what, pod) in [
        (
            "StatefulSet",
            at(statefulset(&docs), &["spec", "template", "spec"]).unwrap(),
        ),
        (
            "CronJob",
            at(
                cronjob(&docs),
                &["spec", "jobTemplate", "spec", "template", "spec"],
            )
            .unwrap(),
        ),
    ] {
        let ctx = pod.get("securityContext").unwrap();
        let uid = at(ctx, &["runAsUser"]).and_then(Value::as_u64).unwrap() as u32;
        let gid = at(ctx, &["runAsGroup"]).and_then(Value::as_u64).unwrap() as u32;
        let fs_group = at(ctx, &["fsGroup"])
            .and_then(Value::as_u64)
            .unwrap_or_else(|| {
                panic!("{what}: no fsGroup: a non-root server cannot read root's Secret files")
            }) as u32;
        assert!(uid != 0 && at(ctx, &["runAsNonRoot"]).and_then(Value::as_bool) == Some(true));
        let me = ProcessIds {
            uid,
            gid,
            groups: vec![fs_group],
        };
        let mut secrets = 0;
        for volume in seq(pod, &["volumes"]) {
            if let Some(cm) = volume.get("configMap") {
                // The config and policy: never writable by group or others.
                let mode = at(cm, &["defaultMode"]).map_or(0o644, k8s_mode) | 0o440;
                let name = str_at(volume, &["name"]).unwrap();
                fieldvault::fsperm::check_mode(
                    "configMap",
                    Path::new(name),
                    mode,
                    fieldvault::fsperm::Access::NoOtherWrites,
                )
                .unwrap_or_else(|e| panic!("{what}: volume {name}: {e}"));
            }
            let Some(secret) = volume.get("secret") else {
                continue;
            };
            secrets += 1;
            let default = at(secret, &["defaultMode"]).map_or(0o644, k8s_mode);
            let mut modes = vec![default];
            modes.extend(
                seq(secret, &["items"])
                    .iter()
                    .filter_map(|i| i.get("mode"))
                    .map(k8s_mode),
            );
            for mode in modes {
                // Secret files are root's; with fsGroup the kubelet makes
                // their group the fsGroup and adds group read.
                let on_disk = mode | 0o440;
                let name = str_at(volume, &["name"]).unwrap();
                check_key_file("secret", Path::new(name), on_disk, 0, fs_group, &me)
                    .unwrap_or_else(|e| panic!("{what}: volume {name}: {e}"));
            }
        }
        assert!(secrets > 0, "{what}: no Secret volume");
    }
}

/// `Key=value` lines of a systemd unit, in order.
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn unit_value<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("fieldvault.service sets no {key}="))
}

/// Seconds of a systemd time span such as `60`, `90s`, `2min`.
fn unit_seconds(span: &str) -> u64 {
    let digits: String = span.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap();
    match &span[digits.len()..] {
        "" | "s" | "sec" => n,
        "m" | "min" => n * 60,
        other => panic!("time span unit {other:?} not handled here"),
    }
}

#[test]
fn the_systemd_unit_runs_as_the_sysusers_user_and_starts_and_stops_as_the_server_expects() {
    let unit = unit_settings(&std::fs::read_to_string("deploy/fieldvault.service").unwrap());
    let sysusers = std::fs::read_to_string("deploy/fieldvault.sysusers").unwrap();
    let user = sysusers
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut w| (w.next() == Some("u")).then(|| w.next().unwrap().to_owned()))
        .expect("fieldvault.sysusers creates no user");
    // `u NAME -` makes the group NAME too.
    assert_eq!(unit_value(&unit, "User"), user);
    assert_eq!(unit_value(&unit, "Group"), user);

    // ExecStart: arguments `serve` accepts, and the example config, which
    // the unit reads from /etc/fieldvault.
    let exec: Vec<String> = unit_value(&unit, "ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(exec[0].ends_with("/fieldvault"));
    cli_accepts(&exec[1..]);
    assert_eq!(exec[1..3], ["serve", "--config"]);
    assert_eq!(exec[3], "/etc/fieldvault/fieldvault.toml");
    let pre: Vec<String> = unit_value(&unit, "ExecStartPre")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(pre[1..], ["config", "check", exec[3].as_str()]);
    cli_accepts(&pre[1..]);
    let config = Config::load(Path::new("deploy/fieldvault.toml"), &|_| None).unwrap();

    // ProtectSystem=strict: everything the server writes is listed.
    assert_eq!(unit_value(&unit, "ProtectSystem"), "strict");
    let writable: Vec<&str> = unit_value(&unit, "ReadWritePaths")
        .split_whitespace()
        .collect();
    for (setting, path) in [
        ("data_dir", config.data_dir.as_path()),
        ("audit_log", config.audit_log.as_path()),
    ] {
        assert!(
            writable.iter().any(|w| path.starts_with(w)),
            "{setting} {} is not under ReadWritePaths",
            path.display()
        );
    }
    // No capability: the ports are unprivileged.
    assert_eq!(unit_value(&unit, "CapabilityBoundingSet"), "");
    assert!(config.listen.port() >= 1024);
    // Reload is SIGHUP; stop waits out the drain.
    assert!(unit_value(&unit, "ExecReload").contains("-HUP $MAINPID"));
    let stop = unit_seconds(unit_value(&unit, "TimeoutStopSec"));
    let drain = config.shutdown.drain_timeout.as_secs();
    assert!(
        stop > drain,
        "TimeoutStopSec {stop}s must exceed the drain deadline {drain}s"
    );
}

/// The Jobs deploy/README.md gives (```yaml blocks of `kind: Job`).
fn readme_jobs() -> Vec<Value> {
    let text = std::fs::read_to_string("deploy/README.md").unwrap();
    text.split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .filter(|b| b.contains("kind: Job"))
        .map(|b| serde_yaml_ng::from_str(b).unwrap_or_else(|e| panic!("README Job: {e}\n{b}")))
        .collect()
}

/// Whether deploy/policy.toml has a rule with `action` naming `id`.
fn policy_names(action: &str, id: &str) -> bool {
    let policy: toml::Table = std::fs::read_to_string("deploy/policy.toml")
        .unwrap()
        .parse()
        .unwrap();
    policy["rules"].as_array().unwrap().iter().any(|r| {
        r["action"].as_str() == Some(action)
            && r["callers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c.as_str() == Some(id))
    })
}

#[test]
fn the_readme_jobs_run_real_command_lines_as_an_identity_the_policy_and_network_policy_admit() {
    let docs = documents();
    let jobs = readme_jobs();
    let mut ran: Vec<String> = Vec::new();
    for job in &jobs {
        let pod = at(job, &["spec", "template", "spec"]).unwrap();
        let container = seq(pod, &["containers"])[0];
        let args = strings(at(container, &["args"]).unwrap());
        // `args` alone, or one shell line after `command: [sh, -c]` (its
        // date stamp is one word to the shell).
        let args = if at(container, &["command"]).is_some() {
            fieldvault_args(&args[0].replace("$(date -u +%Y%m%dT%H%M%SZ)", "DATE"))
        } else {
            args
        };
        cli_accepts(&args);
        let (command, action) = match &args[..2] {
            [a, b] if a == "keys" && b == "rotate-master" => ("keys rotate-master", "keys"),
            [a, ..] if a == "backup" => ("backup", "backup"),
            other => panic!("README Job runs {other:?}"),
        };
        ran.push(command.into());
        // Its client certificate is a mounted cert-manager Secret whose
        // SPIFFE ID the policy names for the action.
        let cert_path = Path::new(flag(&args, "--cert"));
        let mount = seq(container, &["volumeMounts"])
            .into_iter()
            .find(|m| cert_path.parent() == Some(Path::new(str_at(m, &["mountPath"]).unwrap())))
            .unwrap_or_else(|| panic!("{command}: --cert is not mounted"));
        let volume = seq(pod, &["volumes"])
            .into_iter()
            .find(|v| v.get("name") == mount.get("name"))
            .unwrap();
        let secret = str_at(volume, &["secret", "secretName"]).unwrap();
        let cert = certificate_writing(&docs, secret)
            .unwrap_or_else(|| panic!("{command}: no Certificate writes {secret}"));
        let id = str_at(seq(cert, &["spec", "uris"])[0], &[]).unwrap();
        assert!(
            policy_names(action, id),
            "{command}: no rule with action {action:?} names {id}"
        );
        // Its pod's component label is one the server's NetworkPolicy admits.
        let component = str_at(
            job,
            &[
                "spec",
                "template",
                "metadata",
                "labels",
                "app.kubernetes.io/component",
            ],
        )
        .unwrap();
        let np = find(&docs, "NetworkPolicy", "fieldvault");
        assert!(
            seq(np, &["spec", "ingress"])
                .iter()
                .any(|rule| seq(rule, &["from"]).iter().any(|f| str_at(
                    f,
                    &["podSelector", "matchLabels", "app.kubernetes.io/component"]
                ) == Some(component))),
            "{command}: the NetworkPolicy admits no pod labelled {component}"
        );
        // rotate-master's key file is read by the server: a server mount has it.
        if action == "keys" {
            let path = Path::new(flag(&args, "--new-key-file"));
            assert!(
                mounted_file(&docs, path).is_some(),
                "{}: the server mounts no such file",
                path.display()
            );
        }
    }
    ran.sort();
    assert_eq!(ran, ["backup", "keys rotate-master"]);
}
