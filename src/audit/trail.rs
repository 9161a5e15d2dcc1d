//! The files of a trail on disk: the active file (`audit_log` in the
//! config) and the files size-based rotation moved aside beside it,
//! `<name>.<UTC time>-<first sequence number>` (for `audit.log`,
//! `audit.log.20261127T121500Z-000000004096`; the sequence number is
//! zero-padded so that names sort in chain order). Files moved aside because they did
//! not verify at start (`<name>.broken-<time>`) or were written before the
//! chained trail (`<name>.unchained-<time>`) are not part of it.

use std::path::{Path, PathBuf};

/// How [`open`] opens a file of the trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    Read,
    /// Read and write; created (0600) when missing.
    Write,
    /// Read and write; it must not exist yet.
    New,
}

/// Opens a file of the trail (an audit file, its head record): never
/// through a symbolic link (whoever can write the audit directory must not
/// make the server write elsewhere), never blocking on a FIFO, and only a
/// regular file.
pub fn open(path: &Path, how: Open) -> std::io::Result<std::fs::File> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32);
    match how {
        Open::Read => {}
        Open::Write => {
            options.write(true).create(true).truncate(false).mode(0o600);
        }
        Open::New => {
            options.write(true).create_new(true).mode(0o600);
        }
    }
    let file = options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            std::io::Error::other(
                "is a symbolic link: the audit trail's files must be regular files (give \
                 audit_log the real path)",
            )
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    // A second name for a file (a hard link to the master key, say) must
    // not make the server write it.
    if how != Open::Read && std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
        return Err(std::io::Error::other(
            "has another hard link: the audit trail's files must be the server's own",
        ));
    }
    if !kind.is_file() {
        return Err(std::io::Error::other(if kind.is_dir() {
            "is a directory, not an audit file"
        } else {
            "is not a regular file (a FIFO, a socket or a device), not an audit file"
        }));
    }
    Ok(file)
}

/// The whole content of a file of the trail, opened as [`open`] does.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open(path, Open::Read)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The name a rotation gives the active file whose first event is
/// `first_seq`, at `unix_ms`.
pub fn rotated_name(audit_log: &Path, unix_ms: u64, first_seq: u64) -> PathBuf {
    sibling(
        audit_log,
        &format!("{}-{first_seq:012}", compact_time(unix_ms)),
    )
}

/// The name a file moved aside gets: `<name>.<why>-<UTC time>`, with
/// `-2`, `-3`, … when that is taken (a file moved aside is never written
/// over).
pub fn aside_name(audit_log: &Path, why: &str, unix_ms: u64) -> PathBuf {
    let base = format!("{why}-{}", compact_time(unix_ms));
    let mut candidate = sibling(audit_log, &base);
    let mut n = 2;
    while std::fs::symlink_metadata(&candidate).is_ok() {
        candidate = sibling(audit_log, &format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

fn sibling(audit_log: &Path, suffix: &str) -> PathBuf {
    let mut name = audit_log.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    audit_log.with_file_name(name)
}

/// `20261127T121500Z`.
fn compact_time(unix_ms: u64) -> String {
    crate::domain::time::rfc3339(unix_ms)
        .replace(['-', ':'], "")
        .to_string()
}

/// Whether `suffix` (what follows `<name>.`) names a rotated file.
fn is_rotated_suffix(suffix: &str) -> bool {
    let Some((time, seq)) = suffix.split_once('-') else {
        return false;
    };
    let time = time.as_bytes();
    time.len() == 16
        && time[8] == b'T'
        && time[15] == b'Z'
        && time[..8].iter().all(u8::is_ascii_digit)
        && time[9..15].iter().all(u8::is_ascii_digit)
        && !seq.is_empty()
        && seq.bytes().all(|b| b.is_ascii_digit())
}

/// The files beside the trail named `<name>.<suffix>`: each suffix and path.
fn siblings(audit_log: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let dir = match audit_log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!(
        "{}.",
        audit_log.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let file_name = entry?.file_name();
        if let Some(suffix) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) {
            out.push((suffix.to_owned(), audit_log.with_file_name(&file_name)));
        }
    }
    Ok(out)
}

/// Whether `suffix` names a file the server keeps beside the trail that is
/// not an audit file of it: the key file, the record of the end, the files
/// it moved aside.
fn is_kept_beside(suffix: &str) -> bool {
    matches!(suffix, "key" | "key.tmp" | "head")
        || ["broken-", "unchained-", "altered-"]
            .iter()
            .any(|p| suffix.starts_with(p))
}

/// The trail's files: the rotated ones (oldest first) and then the active
/// file, those that exist.
pub fn files_of(audit_log: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut rotated: Vec<PathBuf> = siblings(audit_log)?
        .into_iter()
        .filter(|(suffix, _)| is_rotated_suffix(suffix))
        .map(|(_, path)| path)
        .collect();
    rotated.sort();
    if audit_log.exists() {
        rotated.push(audit_log.to_path_buf());
    }
    Ok(rotated)
}

/// The trail's files as the offline commands read them: [`files_of`], and
/// the files an operator's log rotation numbered beside them
/// (`audit.log.1`, `audit.log.2`: digits only, whose first line is a
/// chained event). Not copies (`audit.log.bak`) nor the files the server
/// moved aside. Unordered: the readers put them in chain order.
pub fn readable_files_of(audit_log: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = files_of(audit_log)?;
    for (suffix, path) in siblings(audit_log)? {
        let numbered = !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit());
        if numbered && first_line_is_chained(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

/// Whether the file's first line is a chained audit event.
fn first_line_is_chained(path: &Path) -> bool {
    use std::io::BufRead;
    let Ok(file) = open(path, Open::Read) else {
        return false;
    };
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(std::io::Read::take(file, 1 << 20));
    reader.read_line(&mut line).is_ok() && super::verify::parse_line(line.trim_end()).is_some()
}

/// Every file the server keeps for the trail at `audit_log`: its files,
/// the wrapped audit key beside them (and its temporary file), the record
/// of its end and the files moved aside (what `serve --dev --reset`
/// deletes).
pub fn everything_of(audit_log: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = files_of(audit_log)?;
    out.extend(
        siblings(audit_log)?
            .into_iter()
            .filter(|(suffix, _)| is_kept_beside(suffix))
            .map(|(_, path)| path),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_or_a_fifo_is_never_opened_as_a_file_of_the_trail() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let victim = dir.path().join("master.key");
        std::fs::write(&victim, "keep").unwrap_or_else(|e| panic!("{e}"));
        let link = dir.path().join("audit.log.head");
        std::os::unix::fs::symlink(&victim, &link).unwrap_or_else(|e| panic!("{e}"));
        for how in [Open::Read, Open::Write, Open::New] {
            let e = open(&link, how).err().map(|e| e.to_string());
            assert!(e.is_some(), "{how:?} opened a link");
        }
        let e = open(&link, Open::Write).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("symbolic link")),
            "{e:?}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap_or_default(), "keep");
        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.path().join("audit.log");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = read(&fifo).err().map(|e| e.to_string());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("not a regular file")),
                "{e:?}"
            );
        }
    }

    #[test]
    fn rotated_files_are_found_beside_the_active_one_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("audit.log");
        let r1 = rotated_name(&log, 1_795_600_246_999, 0);
        let r2 = rotated_name(&log, 1_795_600_300_000, 4096);
        assert_eq!(
            r1.file_name().and_then(|n| n.to_str()),
            Some("audit.log.20261125T095046Z-000000000000")
        );
        for p in [
            &log,
            &r1,
            &r2,
            &aside_name(&log, "broken", 1),
            &log.with_extension("log.key"),
        ] {
            std::fs::write(p, "x").unwrap_or_else(|e| panic!("{e}"));
        }
        let files = files_of(&log).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(files, vec![r1, r2, log]);
    }
}
