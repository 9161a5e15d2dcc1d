//! What the vault's unit tests share: a small policy, its callers, and a
//! vault over a given store.

use super::*;
use crate::domain::CallerId;
use std::path::Path;

/// `orders` tokenizes, deletes and inspects phones; `support` reveals them
/// for `callback`; `rotator` administers keys; `privacy` erases and exports
/// (for `dsar`).
pub(super) const POLICY: &str = r#"
version = 1

# Tokens are probed in bulk here; the scan freeze has tests of its own
# (tests/abuse.rs).
[freeze]
unknown_tokens = { count = 0 }

[[rules]]
name = "orders tokenize"
callers = ["spiffe://t.example/orders"]
action = "tokenize"
kinds = ["phone"]

[[rules]]
name = "support phone"
callers = ["spiffe://t.example/support"]
action = "detokenize"
kinds = ["phone"]
purposes = ["callback"]
reveal = "full"

[[rules]]
name = "rotator keys"
callers = ["spiffe://t.example/rotator"]
action = "keys"

[[rules]]
name = "orders delete"
callers = ["spiffe://t.example/orders"]
action = "delete"
kinds = ["phone"]

[[rules]]
name = "orders inspect"
callers = ["spiffe://t.example/orders"]
action = "inspect"
kinds = ["phone"]

[[rules]]
name = "privacy erase"
callers = ["spiffe://t.example/privacy"]
action = "erase"
kinds = ["phone"]

[[rules]]
name = "operators back up"
callers = ["spiffe://t.example/rotator"]
action = "backup"

[[rules]]
name = "privacy export"
callers = ["spiffe://t.example/privacy"]
action = "export"
kinds = ["phone"]
purposes = ["dsar"]
"#;

pub(super) fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn caller(name: &str) -> CallerId {
    ok(CallerId::spiffe(&format!("spiffe://t.example/{name}")))
}

/// A vault over `store` (keys unlocked or made with `master`), with
/// [`POLICY`], auditing to `dir/audit.log`.
pub(super) async fn vault_over(store: Arc<dyn Store>, dir: &Path, master: &MasterKey) -> Vault {
    vault_with(store, dir, master, Settings::default()).await
}

/// [`vault_over`] with `settings`.
pub(super) async fn vault_with(
    store: Arc<dyn Store>,
    dir: &Path,
    master: &MasterKey,
    settings: Settings,
) -> Vault {
    vault_and_trail(store, dir, master, settings).await.0
}

/// [`vault_with`], and the audit trail it writes to.
pub(super) async fn vault_and_trail(
    store: Arc<dyn Store>,
    dir: &Path,
    master: &MasterKey,
    settings: Settings,
) -> (Vault, Arc<crate::audit::AuditTrail>) {
    let keyring = ok(open_keyring(store.as_ref(), master).await);
    let (keyring, key_is_new) = ok(ensure_audit_key(store.as_ref(), keyring).await);
    let trail = Arc::new(ok(crate::audit::AuditTrail::open(
        &dir.join("audit.log"),
        keyring
            .audit_key()
            .unwrap_or_else(|| panic!("no audit key")),
        &ok(keyring.wrapped_audit_key()).unwrap_or_else(|| panic!("no audit key")),
        keyring.master_fingerprint(),
        crate::audit::TrailOptions {
            max_file_bytes: crate::config::DEFAULT_AUDIT_FILE_BYTES,
            start_new_chain: false,
            key_is_new,
        },
    )
    .await));
    let vault = Vault::new(
        store,
        keyring,
        ok(Policy::from_toml(POLICY)),
        trail.clone(),
        settings,
    );
    (vault, trail)
}
