//! File modes: what the server refuses to read and what it creates.
//!
//! - Files that steer the server (policy, client CA, server certificate)
//!   are refused when group or others can write them; key files (server
//!   key, master key) also when group or others can read them. Each is
//!   opened once and checked with `fstat` on that handle, and read from the
//!   same handle where the server reads it here (policy, master key), so
//!   the file checked is the file read.
//! - Everything the server creates is owner-only: [`restrict_umask`] sets
//!   the process umask to 077 (sled creates its own files and snapshots),
//!   the data dir and the store dir are created 0700 (and tightened to 0700
//!   if they exist with more: the data dir only when it is plainly
//!   fieldvault's, see [`ensure_private_dir`]), and [`tighten_tree`] makes every file under
//!   the store 0600 and every directory 0700, for stores written by an
//!   earlier version under a looser umask.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Who may touch a file besides its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Group and others may read but not write: policy, CA, certificates.
    NoOtherWrites,
    /// Key files (server key, master key): owner only, or also readable
    /// (and nothing more) by the file's group when that group is one this
    /// process runs in (its effective or a supplementary group) and the
    /// owner is root or this process's user: a Kubernetes Secret mounted
    /// with `fsGroup` is root-owned, mode 0440, its group the pod's
    /// `fsGroup`. Others may never read; group may never write. See
    /// [`check_key_file`].
    OwnerOnly,
}

#[derive(Debug, thiserror::Error)]
pub enum PermError {
    /// `policy_file /etc/x/policy.toml: mode 0664 is writable by group; chmod g-w,o-w /etc/x/policy.toml`
    #[error(
        "{setting} {path}: mode {mode:04o} is {access} by {who}; run: chmod {fix} {path}{hint}"
    )]
    Mode {
        setting: &'static str,
        path: String,
        mode: u32,
        access: &'static str,
        who: &'static str,
        fix: &'static str,
        /// More ways to fix it (key files: the group-readable form).
        hint: &'static str,
    },
    /// A key file its group may read, where that group is not one this
    /// process runs in: other users may be in it.
    #[error(
        "{setting} {path}: mode {mode:04o} lets group {gid} read it, and this server runs in \
         no such group (its groups: {groups}); run: chgrp GROUP {path} with GROUP one of \
         those (as a Kubernetes fsGroup does), or chmod 400 {path} and chown it to the \
         server's user"
    )]
    KeyGroup {
        setting: &'static str,
        path: String,
        mode: u32,
        gid: u32,
        groups: String,
    },
    /// A group-readable key file owned by a user other than root or this
    /// process's: that user could read it and change who else may.
    #[error(
        "{setting} {path}: mode {mode:04o} lets its group read it, and it is owned by uid \
         {owner}, neither root nor this server's user (uid {me}); run: chown root {path} \
         (or chown {me}), or make it owner-only: chmod 400 {path}"
    )]
    KeyGroupOwner {
        setting: &'static str,
        path: String,
        mode: u32,
        owner: u32,
        me: u32,
    },
    /// The file is fine, but anyone who can write its directory can put
    /// another file in its place before the next start (or reload).
    #[error(
        "{setting} {path}: its directory {dir} (mode {mode:04o}) lets group or others replace \
         the file; run: chmod g-w,o-w {dir} (or set the sticky bit, chmod +t)"
    )]
    Directory {
        setting: &'static str,
        path: String,
        dir: String,
        mode: u32,
    },
    /// A directory, a FIFO, a device or a socket where a file belongs:
    /// refused before anything is read (a FIFO would block the reader).
    #[error("{setting} {path}: is {kind}, not a regular file")]
    NotAFile {
        setting: &'static str,
        path: String,
        kind: &'static str,
    },
    /// A key file another user owns (who could read or replace it).
    #[error(
        "{setting} {path}: owned by uid {owner}, not by this server's user (uid {me}) or root"
    )]
    Owner {
        setting: &'static str,
        path: String,
        owner: u32,
        me: u32,
    },
    /// A directory above a key file that another user owns (who could
    /// replace what it holds).
    #[error(
        "{setting} {path}: its directory {dir} is owned by uid {owner}, not by this server's \
         user (uid {me}) or root"
    )]
    DirectoryOwner {
        setting: &'static str,
        path: String,
        dir: String,
        owner: u32,
        me: u32,
    },
    #[error("{setting} {path}: {source}")]
    Io {
        setting: &'static str,
        path: String,
        source: std::io::Error,
    },
}

fn io_error(setting: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PermError {
    let path = path.display().to_string();
    move |source| PermError::Io {
        setting,
        path,
        source,
    }
}

/// Checks `mode` (the permission bits of `path`, named by config setting
/// `setting`) against `access`.
pub fn check_mode(
    setting: &'static str,
    path: &Path,
    mode: u32,
    access: Access,
) -> Result<(), PermError> {
    let mode = mode & 0o7777;
    let forbidden = match access {
        Access::NoOtherWrites => 0o022,
        Access::OwnerOnly => 0o077,
    };
    let bad = mode & forbidden;
    if bad == 0 {
        return Ok(());
    }
    let (readable, writable) = (bad & 0o044 != 0, bad & 0o022 != 0);
    let access_words = match (readable, writable) {
        (true, true) => "readable and writable",
        (true, false) => "readable",
        (false, true) => "writable",
        (false, false) => "accessible",
    };
    let who = match (bad & 0o070 != 0, bad & 0o007 != 0) {
        (true, true) => "group and others",
        (true, false) => "group",
        _ => "others",
    };
    Err(PermError::Mode {
        setting,
        path: path.display().to_string(),
        mode,
        access: access_words,
        who,
        fix: match access {
            Access::NoOtherWrites => "g-w,o-w",
            Access::OwnerOnly => "600",
        },
        hint: "",
    })
}

/// The ids a key file is checked against: this process's effective user,
/// effective group and supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessIds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl ProcessIds {
    /// This process's. A failed getgroups(2) counts as no supplementary
    /// group (stricter, never looser).
    pub fn current() -> Self {
        Self {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            groups: rustix::process::getgroups()
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
        }
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// What a key file may be ([`Access::OwnerOnly`]): `mode`, `owner` and
/// `group` are the file's, `me` this process's ids.
///
/// - Nothing for others, nothing for group but read: else refused as by
///   [`check_mode`] (`chmod 600`, or the group-readable form).
/// - Group-readable (0440, 0640): only when the file's group is one `me`
///   runs in (so no user outside the server's own groups gains the key),
///   and its owner is root or `me` (so no third user can read it or
///   loosen it).
pub fn check_key_file(
    setting: &'static str,
    path: &Path,
    mode: u32,
    owner: u32,
    group: u32,
    me: &ProcessIds,
) -> Result<(), PermError> {
    let mode = mode & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if mode & 0o077 != 0o040 {
        return check_mode(setting, path, mode, Access::OwnerOnly).map_err(|e| match e {
            PermError::Mode {
                setting,
                path,
                mode,
                access,
                who,
                fix,
                ..
            } => PermError::Mode {
                setting,
                path,
                mode,
                access,
                who,
                fix,
                hint: KEY_FILE_HINT,
            },
            other => other,
        });
    }
    if !me.in_group(group) {
        let mut groups: Vec<u32> = std::iter::once(me.gid).chain(me.groups.clone()).collect();
        groups.sort_unstable();
        groups.dedup();
        return Err(PermError::KeyGroup {
            setting,
            path: path.display().to_string(),
            mode,
            gid: group,
            groups: groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if owner != 0 && owner != me.uid {
        return Err(PermError::KeyGroupOwner {
            setting,
            path: path.display().to_string(),
            mode,
            owner,
            me: me.uid,
        });
    }
    Ok(())
}

/// The other accepted form of a key file, after `chmod 600 PATH`.
const KEY_FILE_HINT: &str = " (or 400; or 440 with the file's group one the server runs in and \
     its owner root or the server's user, as a Kubernetes Secret mounted with fsGroup is)";

/// Opens `path` once and checks the mode of that open file (no window
/// between the check and the read). Read it from the returned handle.
/// The directory the file is named in must not let group or others
/// replace it (writable without the sticky bit).
pub fn open_checked(setting: &'static str, path: &Path, access: Access) -> Result<File, PermError> {
    // Non-blocking, so that a FIFO with no writer cannot hold the opener
    // (the file type is checked next, before any read).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io_error(setting, path))?;
    let meta = file.metadata().map_err(io_error(setting, path))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        return Err(PermError::NotAFile {
            setting,
            path: path.display().to_string(),
            kind: if kind.is_dir() {
                "a directory"
            } else if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "a device"
            },
        });
    }
    match access {
        Access::OwnerOnly => check_key_file(
            setting,
            path,
            meta.mode(),
            meta.uid(),
            meta.gid(),
            &ProcessIds::current(),
        )?,
        Access::NoOtherWrites => check_mode(setting, path, meta.mode(), access)?,
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    check_dir(setting, path, dir)?;
    // Named through a link, the file lives in another directory, which
    // must not let others replace it either.
    if let Ok(target) = std::fs::canonicalize(path) {
        if let Some(real_dir) = target.parent() {
            if std::fs::canonicalize(dir).ok().as_deref() != Some(real_dir) {
                check_dir(setting, path, real_dir)?;
            }
        }
    }
    Ok(file)
}

/// `dir` (holding `path`) must not let group or others replace what it
/// holds: not writable by them, or sticky.
fn check_dir(setting: &'static str, path: &Path, dir: &Path) -> Result<(), PermError> {
    let mode = std::fs::metadata(dir)
        .map_err(io_error(setting, dir))?
        .mode()
        & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(PermError::Directory {
            setting,
            path: path.display().to_string(),
            dir: dir.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// [`open_checked`], and stricter, for a key file named at run time (a new
/// master key): it must be owned by this process's user or root, and no
/// directory above it, as named or where its links lead, may be owned by
/// another user or let group or others replace what it holds (writable
/// without the sticky bit), up to the root.
pub fn open_checked_strict(setting: &'static str, path: &Path) -> Result<File, PermError> {
    let file = open_checked(setting, path, Access::OwnerOnly)?;
    let owner = file.metadata().map_err(io_error(setting, path))?.uid();
    let me = rustix::process::geteuid().as_raw();
    if owner != me && owner != 0 {
        return Err(PermError::Owner {
            setting,
            path: path.display().to_string(),
            owner,
            me,
        });
    }
    // The directories of the path as given and of where it leads (links
    // resolved): a link must not lead the check around an open directory.
    let resolved = std::fs::canonicalize(path).map_err(io_error(setting, path))?;
    for start in [path, resolved.as_path()] {
        let mut dir = start.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            let meta = std::fs::metadata(d).map_err(io_error(setting, d))?;
            let mode = meta.mode() & 0o7777;
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(PermError::Directory {
                    setting,
                    path: path.display().to_string(),
                    dir: d.display().to_string(),
                    mode,
                });
            }
            if meta.uid() != me && meta.uid() != 0 {
                return Err(PermError::DirectoryOwner {
                    setting,
                    path: path.display().to_string(),
                    dir: d.display().to_string(),
                    owner: meta.uid(),
                    me,
                });
            }
            dir = d.parent();
        }
    }
    Ok(file)
}

/// [`open_checked`], then the whole file as UTF-8 from the same handle.
pub fn read_checked(
    setting: &'static str,
    path: &Path,
    access: Access,
) -> Result<String, PermError> {
    let mut text = String::new();
    open_checked(setting, path, access)?
        .read_to_string(&mut text)
        .map_err(io_error(setting, path))?;
    Ok(text)
}

/// What marks a data dir as fieldvault's: its store, or the dev setup.
const DATA_DIR_MARKERS: &[&str] = &["store", "dev"];

/// What the server does before it opens anything: umask 077, the TLS
/// files checked, the data dir and the store dir owner-only (created 0700,
/// or tightened to 0700). The policy file and the master key are checked
/// where they are read ([`read_checked`], `MasterKey::from_file`).
pub fn prepare_for_start(config: &crate::config::Config) -> Result<(), PermError> {
    restrict_umask();
    let tls = &config.tls;
    for (setting, path, access) in [
        ("tls.cert", &tls.cert, Access::NoOtherWrites),
        ("tls.key", &tls.key, Access::OwnerOnly),
        ("tls.client_ca", &tls.client_ca, Access::NoOtherWrites),
    ] {
        open_checked(setting, path, access)?;
    }
    ensure_private_dir("data_dir", &config.data_dir, DATA_DIR_MARKERS)?;
    ensure_private_dir("data_dir", &config.store_dir(), &[])
}

/// Sets the process umask to 077, so every file the server (and sled,
/// which opens its files itself) creates from now on is owner-only,
/// whatever umask the server was started with. Returns the old umask.
pub fn restrict_umask() -> u32 {
    use rustix::fs::Mode;
    rustix::process::umask(Mode::from_raw_mode(0o077)).bits()
}

/// Creates `dir` (and missing parents) 0700, or tightens an existing `dir`
/// to 0700 if group or others have any access to it. The directories
/// fieldvault owns (the data dir, the store) hold ciphertext, wrapped keys
/// and the blind index: nobody else needs to list them.
///
/// An existing directory is only changed when it is plainly fieldvault's:
/// empty, or already holding one of `markers` (for the data dir: the store,
/// or the dev setup); no markers means the directory is always fieldvault's. Anything else (a data
/// dir pointed at a shared directory by mistake) is refused with the
/// `chmod` to run, rather than changed under other programs' feet.
pub fn ensure_private_dir(
    setting: &'static str,
    dir: &Path,
    markers: &[&str],
) -> Result<(), PermError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(setting, dir))?;
    let mode = std::fs::metadata(dir)
        .map_err(io_error(setting, dir))?
        .mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let ours = markers.is_empty()
        || markers.iter().any(|m| dir.join(m).is_dir())
        || std::fs::read_dir(dir)
            .map_err(io_error(setting, dir))?
            .next()
            .is_none();
    let refused = || {
        check_mode(setting, dir, mode, Access::OwnerOnly).map_err(|e| match e {
            PermError::Mode {
                setting,
                path,
                mode,
                access,
                who,
                ..
            } => PermError::Mode {
                setting,
                path,
                mode,
                access,
                who,
                fix: "700",
                hint: "",
            },
            other => other,
        })
    };
    if !ours {
        return refused();
    }
    if std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).is_err() {
        // Not ours to change (another owner): say what to run.
        return refused();
    }
    tracing::warn!(
        setting,
        path = %dir.display(),
        old_mode = format_args!("{:04o}", mode & 0o7777),
        "directory was open to group or others; set it to 0700"
    );
    Ok(())
}

/// Makes every directory under `root` (itself included) 0700 and every
/// regular file 0600. Symbolic links are neither followed nor changed.
/// Returns how many entries were changed.
pub fn tighten_tree(setting: &'static str, root: &Path) -> Result<usize, PermError> {
    let mut changed = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        changed += tighten(setting, &dir, 0o700)?;
        for entry in std::fs::read_dir(&dir).map_err(io_error(setting, &dir))? {
            let entry = entry.map_err(io_error(setting, &dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_error(setting, &path))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                changed += tighten(setting, &path, 0o600)?;
            }
        }
    }
    if changed > 0 {
        tracing::warn!(
            setting,
            path = %root.display(),
            changed,
            "files or directories were open to group or others; made them owner-only"
        );
    }
    Ok(changed)
}

/// Clears the group and other bits of `path` if any are set; `mode` is
/// what it becomes then. Returns 1 if it changed.
fn tighten(setting: &'static str, path: &Path, mode: u32) -> Result<usize, PermError> {
    let meta = std::fs::symlink_metadata(path).map_err(io_error(setting, path))?;
    if meta.mode() & 0o077 == 0 {
        return Ok(0);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_error(setting, path))?;
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<(), PermError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_group_writable_policy_is_named_with_its_mode_and_the_fix() {
        let p = Path::new("/etc/x/policy.toml");
        assert_eq!(
            msg(check_mode(
                "policy_file",
                p,
                0o100664,
                Access::NoOtherWrites
            )),
            "policy_file /etc/x/policy.toml: mode 0664 is writable by group; \
             run: chmod g-w,o-w /etc/x/policy.toml"
        );
        assert!(check_mode("policy_file", p, 0o644, Access::NoOtherWrites).is_ok());
        assert!(check_mode("policy_file", p, 0o600, Access::NoOtherWrites).is_ok());
        assert!(
            msg(check_mode("policy_file", p, 0o602, Access::NoOtherWrites))
                .contains("writable by others")
        );
    }

    #[test]
    fn a_key_readable_by_anyone_but_its_owner_is_refused() {
        let p = Path::new("/k/server.key");
        assert_eq!(
            msg(check_mode("tls.key", p, 0o644, Access::OwnerOnly)),
            "tls.key /k/server.key: mode 0644 is readable by group and others; \
             run: chmod 600 /k/server.key"
        );
        assert!(msg(check_mode("tls.key", p, 0o660, Access::OwnerOnly))
            .contains("readable and writable by group;"));
        for ok in [0o600, 0o400, 0o700] {
            assert!(check_mode("tls.key", p, ok, Access::OwnerOnly).is_ok());
        }
    }

    /// A server running as uid 10001, primary group 10001, in the pod's
    /// fsGroup 2000 as a supplementary group.
    fn server_ids() -> ProcessIds {
        ProcessIds {
            uid: 10001,
            gid: 10001,
            groups: vec![2000],
        }
    }

    #[test]
    fn a_key_file_only_its_owner_can_read_is_accepted_whoever_its_group() {
        let p = Path::new("/etc/fieldvault/master.key");
        for mode in [0o400, 0o600, 0o100600] {
            assert!(check_key_file("master_key.file", p, mode, 10001, 4242, &server_ids()).is_ok());
        }
    }

    #[test]
    fn a_root_owned_key_file_its_group_may_read_is_accepted_when_the_group_is_a_supplementary_one_of_the_server(
    ) {
        // A Kubernetes Secret mounted with fsGroup: root:2000, 0440.
        let p = Path::new("/etc/fieldvault/secret/master.key");
        assert!(check_key_file("master_key.file", p, 0o440, 0, 2000, &server_ids()).is_ok());
        // The same owned by the server's user, or in its primary group.
        assert!(check_key_file("master_key.file", p, 0o440, 10001, 2000, &server_ids()).is_ok());
        assert!(check_key_file("master_key.file", p, 0o640, 0, 10001, &server_ids()).is_ok());
    }

    #[test]
    fn a_group_readable_key_file_of_a_group_the_server_is_not_in_is_refused_naming_the_groups() {
        let p = Path::new("/k/master.key");
        assert_eq!(
            msg(check_key_file(
                "master_key.file",
                p,
                0o440,
                0,
                100,
                &server_ids()
            )),
            "master_key.file /k/master.key: mode 0440 lets group 100 read it, and this server \
             runs in no such group (its groups: 2000, 10001); run: chgrp GROUP /k/master.key \
             with GROUP one of those (as a Kubernetes fsGroup does), or chmod 400 \
             /k/master.key and chown it to the server's user"
        );
    }

    #[test]
    fn a_group_readable_key_file_owned_by_a_third_user_is_refused_naming_the_owner() {
        let p = Path::new("/k/master.key");
        assert_eq!(
            msg(check_key_file(
                "master_key.file",
                p,
                0o440,
                1000,
                2000,
                &server_ids()
            )),
            "master_key.file /k/master.key: mode 0440 lets its group read it, and it is owned \
             by uid 1000, neither root nor this server's user (uid 10001); run: chown root \
             /k/master.key (or chown 10001), or make it owner-only: chmod 400 /k/master.key"
        );
    }

    #[test]
    fn a_key_file_others_may_read_or_its_group_may_write_is_refused_even_in_the_servers_group() {
        let p = Path::new("/k/master.key");
        for (mode, what) in [
            (0o444, "readable by group and others"),
            (0o404, "readable by others"),
            (0o460, "readable and writable by group"),
            (0o420, "writable by group"),
            (0o450, "readable by group"),
            (0o402, "writable by others"),
        ] {
            assert_eq!(
                msg(check_key_file(
                    "master_key.file",
                    p,
                    mode,
                    0,
                    2000,
                    &server_ids()
                )),
                format!(
                    "master_key.file /k/master.key: mode {mode:04o} is {what}; run: chmod 600 \
                     /k/master.key{KEY_FILE_HINT}"
                ),
                "{mode:o}"
            );
        }
        assert!(KEY_FILE_HINT.contains("440") && KEY_FILE_HINT.contains("fsGroup"));
    }

    #[test]
    fn a_real_key_file_readable_by_the_servers_own_group_opens_and_one_readable_by_others_does_not()
    {
        // A new file takes this process's effective group (no setgid
        // directory here) and its user.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("master.key");
        std::fs::write(&path, "k").unwrap_or_else(|e| panic!("{e}"));
        let set = |m| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        for ok in [0o400, 0o440, 0o640] {
            set(ok);
            assert!(
                open_checked("master_key.file", &path, Access::OwnerOnly).is_ok(),
                "{ok:o}"
            );
        }
        for bad in [0o444, 0o460] {
            set(bad);
            assert!(
                open_checked("master_key.file", &path, Access::OwnerOnly).is_err(),
                "{bad:o}"
            );
        }
    }

    #[test]
    fn a_file_in_a_directory_others_can_write_is_refused_unless_the_directory_is_sticky() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("conf");
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("policy.toml");
        std::fs::write(&path, "version = 1\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let set_dir = |m| {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(m))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        for bad in [0o777, 0o775, 0o757] {
            set_dir(bad);
            let err = read_checked("policy_file", &path, Access::NoOtherWrites)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains(&format!(
                    "its directory {} (mode {bad:04o}) lets group or others replace the file",
                    dir.display()
                )),
                "{err}"
            );
        }
        for fine in [0o755, 0o700, 0o1777] {
            set_dir(fine);
            assert!(read_checked("policy_file", &path, Access::NoOtherWrites).is_ok());
        }
    }

    #[test]
    fn a_file_named_through_a_link_is_refused_when_its_own_directory_lets_others_replace_it() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let open_dir = tmp.path().join("open");
        let safe_dir = tmp.path().join("safe");
        for d in [&open_dir, &safe_dir] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
        }
        let real = open_dir.join("policy.toml");
        std::fs::write(&real, "version = 1\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let link = safe_dir.join("policy.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = read_checked("policy_file", &link, Access::NoOtherWrites)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(&format!("its directory {} (mode 0777)", open_dir.display())),
            "{err}"
        );
        // A link into a directory only its owner writes (a Kubernetes
        // volume's `..data`) is fine.
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(read_checked("policy_file", &link, Access::NoOtherWrites).is_ok());
    }

    #[test]
    fn a_checked_file_is_read_through_the_handle_that_was_checked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "version = 1\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = read_checked("policy_file", &path, Access::NoOtherWrites)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("mode 0664 is writable by group"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let text = read_checked("policy_file", &path, Access::NoOtherWrites)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, "version = 1\n");
    }

    #[test]
    fn a_data_dir_is_tightened_when_it_is_fieldvaults_and_refused_otherwise() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.mode() & 0o777)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        // Missing: created 0700 (parents too).
        let new = tmp.path().join("a/b");
        assert!(ensure_private_dir("data_dir", &new, DATA_DIR_MARKERS).is_ok());
        assert_eq!(mode(&new), 0o700);
        // Empty, or holding a store: tightened.
        set(&new, 0o755);
        assert!(ensure_private_dir("data_dir", &new, DATA_DIR_MARKERS).is_ok());
        assert_eq!(mode(&new), 0o700);
        std::fs::create_dir(new.join("store")).unwrap_or_else(|e| panic!("{e}"));
        set(&new, 0o750);
        assert!(ensure_private_dir("data_dir", &new, DATA_DIR_MARKERS).is_ok());
        assert_eq!(mode(&new), 0o700);
        // Holding something else: refused, untouched.
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(shared.join("other"), b"x").unwrap_or_else(|e| panic!("{e}"));
        set(&shared, 0o755);
        let err = ensure_private_dir("data_dir", &shared, DATA_DIR_MARKERS)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("mode 0755 is readable by group and others; run: chmod 700"),
            "{err}"
        );
        assert_eq!(mode(&shared), 0o755);
    }

    #[test]
    fn tightening_a_tree_makes_files_0600_and_directories_0700() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path().join("store");
        let sub = root.join("blobs");
        std::fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("{e}"));
        for (path, mode) in [(&root, 0o755), (&sub, 0o775)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let file = sub.join("1");
        std::fs::write(&file, b"x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tighten_tree("data_dir", &root).ok(), Some(3));
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.mode() & 0o777)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(
            (mode(&root), mode(&sub), mode(&file)),
            (0o700, 0o700, 0o600)
        );
        assert_eq!(tighten_tree("data_dir", &root).ok(), Some(0));
    }
}
