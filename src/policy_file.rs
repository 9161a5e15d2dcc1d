//! The policy file, live: re-read when it changes and on SIGHUP.
//!
//! Every call asks whether the file changed ([`PolicySource::refresh`]): a
//! `stat` of the path (device, inode, size, modification and change times),
//! compared with what was last read. So a change — a deny-listed leaver, a
//! new rule — is in force from the next call after the file is written,
//! with no restart; replacing the file by a rename (an editor, a Kubernetes
//! ConfigMap's symlink swap) is seen like an edit in place.
//!
//! A file that does not parse, or that fails its permission check, is
//! rejected as a whole with an error naming the line; the policy in force
//! stays, and the server keeps serving (health says so in its log line, it
//! does not go unhealthy). The same file is not read again until it
//! changes again (or SIGHUP asks).

use crate::domain::policy::Policy;
use crate::vault::PolicySource;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What identifies one version of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

/// What a reload did, for the log and the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    /// The file is as last read.
    Unchanged,
    /// A new policy is in force.
    Applied { rules: usize },
    /// The file was rejected; the policy in force stays.
    Rejected { error: String },
}

struct Seen {
    /// The file as last looked at (read, or rejected); `None`: missing.
    fingerprint: Option<Fingerprint>,
    /// When the policy in force was loaded.
    in_force_since_ms: u64,
    /// Reloads not yet taken for the audit trail
    /// ([`PolicySource::take_reloads`]): rules in force, or the rejection.
    outcomes: Vec<Result<usize, String>>,
    /// Reloads past [`MAX_PENDING_OUTCOMES`] since the last take: counted,
    /// and audited as one event.
    not_itemised: u64,
}

/// The policy file a server was started with.
pub struct PolicyFile {
    path: PathBuf,
    seen: Mutex<Seen>,
}

/// The most outcomes kept for the audit trail between two polls.
const MAX_PENDING_OUTCOMES: usize = 64;

impl PolicyFile {
    /// Reads and parses the file (at start: an error stops the server).
    pub fn open(path: &Path) -> Result<(Self, Policy), crate::app::StartError> {
        let before = fingerprint(path);
        let policy = read(path)?;
        Ok((
            Self {
                path: path.to_owned(),
                seen: Mutex::new(Seen {
                    fingerprint: before,
                    in_force_since_ms: crate::audit::now_unix_ms(),
                    outcomes: Vec::new(),
                    not_itemised: 0,
                }),
            },
            policy,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file if it changed since it was last looked at (or
    /// always, when `forced`: SIGHUP), and returns the new policy to put in
    /// force, if any. Logs what happened.
    pub fn reload(&self, forced: bool) -> (Reload, Option<Policy>) {
        self.reload_into(forced, &|_| {})
    }

    /// [`PolicyFile::reload`], calling `install` with a new policy while
    /// no other reload can report the file unchanged.
    pub fn reload_into(&self, forced: bool, install: &dyn Fn(Policy)) -> (Reload, Option<Policy>) {
        let now = fingerprint(&self.path);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !forced && now == seen.fingerprint {
            return (Reload::Unchanged, None);
        }
        seen.fingerprint = now;
        let since = crate::domain::time::rfc3339(seen.in_force_since_ms);
        let (recorded, policy) = match read(&self.path) {
            Ok(policy) => {
                seen.in_force_since_ms = crate::audit::now_unix_ms();
                tracing::info!(
                    policy_file = %self.path.display(),
                    rules = policy.rules().len(),
                    deny = policy.deny_list().len(),
                    "policy reloaded: the new policy is in force from the next call"
                );
                (Ok(policy.rules().len()), Some(policy))
            }
            Err(e) => {
                let error = e.to_string();
                tracing::error!(
                    policy_file = %self.path.display(),
                    error = %error,
                    "health: serving with the previous policy (in force since {since}): the \
                     changed policy file was rejected; fix it and save it again (or send SIGHUP)"
                );
                (Err(error), None)
            }
        };
        let outcome = match &recorded {
            Ok(rules) => Reload::Applied { rules: *rules },
            Err(error) => Reload::Rejected {
                error: error.clone(),
            },
        };
        if seen.outcomes.len() < MAX_PENDING_OUTCOMES {
            seen.outcomes.push(recorded);
        } else {
            seen.not_itemised += 1;
        }
        if let Some(p) = &policy {
            install(p.clone());
        }
        (outcome, policy)
    }
}

impl PolicySource for PolicyFile {
    fn refresh(&self, install: &dyn Fn(Policy)) {
        self.reload_into(false, install);
    }

    fn take_reloads(&self) -> (Vec<Result<usize, String>>, u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let more = std::mem::take(&mut seen.not_itemised);
        (std::mem::take(&mut seen.outcomes), more)
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// The largest policy file read (a policy of thousands of rules is far
/// smaller; a larger file would stall the call that reads it).
pub const MAX_POLICY_BYTES: usize = 1 << 20;

fn read(path: &Path) -> Result<Policy, crate::app::StartError> {
    let text = read_text(path)?.map_err(crate::domain::policy::PolicyError::Syntax)?;
    Ok(Policy::from_toml(&text)?)
}

/// The policy file's text, read as the server reads it (its permission
/// checks first): `Err` when it cannot be read or the server would not
/// read it, `Ok(Err(why))` when it is larger than [`MAX_POLICY_BYTES`]
/// (judged from its size before it is read).
pub fn read_text(path: &Path) -> Result<Result<String, String>, crate::fsperm::PermError> {
    use std::io::Read;
    let file =
        crate::fsperm::open_checked("policy_file", path, crate::fsperm::Access::NoOtherWrites)?;
    let too_large = |bytes: u64| {
        Err(format!(
            "the file is {bytes} bytes, more than the {MAX_POLICY_BYTES} bytes a policy may be"
        ))
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > MAX_POLICY_BYTES as u64 {
        return Ok(too_large(size));
    }
    // Bounded even if it grows meanwhile.
    let mut text = String::new();
    let read = file
        .take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_string(&mut text);
    if let Err(e) = read {
        return Ok(Err(format!("the file cannot be read as UTF-8 text: {e}")));
    }
    if text.len() > MAX_POLICY_BYTES {
        return Ok(too_large(text.len() as u64));
    }
    Ok(Ok(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    const GOOD: &str =
        "version = 1\n[[rules]]\ncallers = ['orders']\naction = 'tokenize'\nkinds = ['phone']\n";

    #[test]
    fn a_changed_file_is_read_once_and_a_broken_one_keeps_the_old_policy() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("policy.toml");
        ok(std::fs::write(&path, GOOD));
        let (file, policy) = ok(PolicyFile::open(&path));
        assert_eq!(policy.rules().len(), 1);
        assert_eq!(file.reload(false).0, Reload::Unchanged);

        // Broken: rejected naming the line, nothing to put in force, and
        // not read again until it changes.
        ok(std::fs::write(
            &path,
            format!("{GOOD}\n[[rules]]\ncallers = ['x']\naction = 'obliterate'\n"),
        ));
        let (outcome, policy) = file.reload(false);
        assert!(policy.is_none());
        let Reload::Rejected { error } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(error.contains("line 9"), "{error}");
        assert_eq!(file.reload(false).0, Reload::Unchanged);

        // Fixed, by a rename over it: in force.
        let next = dir.path().join("next.toml");
        ok(std::fs::write(
            &next,
            "version = 1\ndeny = ['leaver']\n[[rules]]\ncallers = ['orders']\naction = 'tokenize'\nkinds = ['phone']\n",
        ));
        ok(std::fs::rename(&next, &path));
        let (outcome, policy) = file.reload(false);
        assert_eq!(outcome, Reload::Applied { rules: 1 });
        assert_eq!(
            policy.map(|p| p.deny_list().to_vec()),
            Some(vec!["leaver".to_owned()])
        );
        // Too large: rejected before it is parsed.
        let huge = format!("{GOOD}# {}\n", "x".repeat(MAX_POLICY_BYTES));
        ok(std::fs::write(&path, huge));
        let Reload::Rejected { error } = file.reload(false).0 else {
            panic!("a huge file was not rejected")
        };
        assert!(error.contains("more than the 1048576 bytes"), "{error}");
        ok(std::fs::write(
            &path,
            "version = 1\ndeny = ['leaver']\n[[rules]]\ncallers = ['orders']\naction = 'tokenize'\nkinds = ['phone']\n",
        ));
        assert_eq!(file.reload(false).0, Reload::Applied { rules: 1 });
        // SIGHUP reads it again even unchanged.
        assert_eq!(file.reload(true).0, Reload::Applied { rules: 1 });
        assert_eq!(file.take_reloads().0.len(), 5);
        assert!(file.take_reloads().0.is_empty());
    }
}
