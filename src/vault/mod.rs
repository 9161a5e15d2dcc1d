//! Use cases: tokenize and detokenize. Composes the domain rules, the
//! keyring, the store and the audit trail. Knows nothing of protobuf or
//! sled.

use crate::audit::event::{Event, Item};
use crate::audit::AuditSink;
use crate::crypto::{CryptoError, KeyPurpose, Keyring, MasterKey, RecordMeta};
use crate::domain::policy::{Action, Denial, Policy, RevealLevel};
use crate::domain::value::{canonicalise, render, Address, FieldInput, IdScheme, PhoneRegion};
use crate::domain::{
    FieldKind, Justification, Plaintext, Purpose, RecordId, TokenId, TokenMode, TokenModes,
};
use crate::store::{NewRecord, StorageFailure, Store, StoreError};
use std::sync::{Arc, RwLock};

pub use admin::{CallerStatus, QuotaUse, MAX_CANARIES_PER_CALL, MAX_FREEZE_REASON};
pub use audited::{new_request_id, Call};
pub use gauges::refresh_gauges;
pub use grants::{GrantRequest, GrantSettings, GrantView, DEFAULT_LIST_GRANTS, MAX_LIST_GRANTS};
pub use guard::{alert_line, FreezeTrigger, ALERT_TARGET};
pub use keys::{
    JobState, JobStatus, KeySettings, KeyState, KeyStatus, KeyVersionStatus, DEFAULT_REWRAP_RATE,
    MAX_FAILED_TOKENS, MAX_REWRAP_RATE,
};
pub use lifecycle::TokenInfo;

mod admin;
mod audited;
mod backup;
mod gauges;
#[cfg(test)]
mod grant_tests;
mod grants;
mod guard;
use guard::RuleUse;
#[cfg(test)]
mod key_tests;
mod keys;
mod lifecycle;
#[cfg(test)]
mod lifecycle_tests;
#[cfg(test)]
mod storage_failure_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod token_tests;

/// What a deployment sets.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The most items (fields or tokens) one call may carry.
    pub max_batch_items: usize,
    /// Reads national-format phone numbers sent without a region.
    pub default_region: Option<PhoneRegion>,
    pub token_modes: TokenModes,
    /// Whether detokenize tells a caller that a token exists but holds a
    /// kind it may not see (PERMISSION_DENIED naming the kind). Off by
    /// default: such a token is answered exactly as an unknown one, and only
    /// the audit log records the truth.
    pub explicit_kind_denials: bool,
    /// Key rotation, rewrap and retirement.
    pub keys: KeySettings,
    /// Tokens' time to live and the sweeper.
    pub retention: crate::domain::Retention,
    /// The ceilings of grants.
    pub grants: GrantSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_batch_items: 1000,
            default_region: None,
            token_modes: TokenModes::default(),
            explicit_kind_denials: false,
            keys: KeySettings::default(),
            retention: crate::domain::Retention::default(),
            grants: GrantSettings::default(),
        }
    }
}

/// A call-level failure: nothing in the batch was done.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    PermissionDenied(Denial),
    /// The client certificate proved no identity (why).
    #[error("{0}")]
    Unauthenticated(String),
    /// Storage or audit is failing; retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// What the call names does not exist (a key version).
    #[error("{0}")]
    NotFound(String),
    /// The call cannot be done in the current state (retiring a key
    /// version records still use; a second master-key rotation).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller is frozen: every call from it is refused until an
    /// operator unfreezes it.
    #[error("caller '{caller}' frozen since {}, reason: {reason}; every call is refused until an operator unfreezes it", crate::domain::time::rfc3339(*since_unix_ms))]
    Frozen {
        caller: String,
        since_unix_ms: u64,
        reason: String,
    },
    /// A limit of the server's (not a rule's quota) is reached for now:
    /// nothing was done; the message says when it resets.
    #[error("{message}")]
    LimitReached {
        message: String,
        resets_at_unix_ms: u64,
    },
    /// A quota of the rule that would reveal the values is used up; nothing
    /// was revealed.
    #[error(
        "quota exceeded: rule '{rule}' allows caller '{caller}' {} values per {}; {used} \
         revealed in this {}, this call asks {asked}; resets at {}; nothing was revealed",
        quota.limit, quota.per.as_str(), quota.per.as_str(), crate::domain::time::rfc3339(*resets_at_unix_ms)
    )]
    QuotaExceeded {
        caller: String,
        rule: String,
        quota: crate::domain::policy::Quota,
        used: u64,
        asked: u64,
        resets_at_unix_ms: u64,
    },
}

/// A failure of one item of a batch. `field` names the part of the item
/// that is wrong (`value`, `kind`), or `None` when the item is a scalar
/// (a token); the wire layer adds the item's index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("{reason}")]
    InvalidArgument {
        field: Option<&'static str>,
        reason: String,
    },
    #[error("no record for this token")]
    NotFound,
    /// The token key did not make this token (guessed, garbled, or from
    /// another vault): known without reading the store. Audited as such;
    /// callers are answered exactly as for [`ItemError::NotFound`].
    #[error("no record for this token")]
    NotIssued,
    /// The token's time to live has passed: answered exactly as
    /// [`ItemError::NotFound`] (its record is gone or about to be), audited
    /// as such, and not counted as an unknown token (a service may well
    /// hold tokens that expired).
    #[error("no record for this token")]
    Expired,
    #[error("{0}")]
    PermissionDenied(Denial),
    /// The stored record failed its integrity check; nothing is revealed.
    #[error("stored record failed its integrity check; nothing revealed")]
    DataLoss,
    /// Storage could not read the record now (an I/O failure, not bad
    /// data); a retry after the disk is fixed may succeed.
    #[error("storage could not read this record now; nothing revealed; retry later")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl ItemError {
    fn audit_code(&self) -> &'static str {
        match self {
            ItemError::InvalidArgument { .. } => "invalid_argument",
            ItemError::NotFound => "not_found",
            ItemError::NotIssued => "not_issued",
            ItemError::Expired => "expired",
            ItemError::PermissionDenied(_) => "permission_denied",
            ItemError::DataLoss => "data_loss",
            ItemError::Unavailable => "unavailable",
            ItemError::Internal => "internal",
        }
    }
}

#[derive(Debug)]
pub struct Revealed {
    pub kind: FieldKind,
    pub reveal: RevealLevel,
    /// Empty for `RevealLevel::None`.
    pub value: Plaintext,
    pub scheme: Option<IdScheme>,
    /// Structured addresses only.
    pub address: Option<Address>,
}

/// Unlocks the stored keys with `master`, or, on a store that was never
/// used, creates the data, index and token keys and stores them wrapped.
/// A store that holds records (or handed out ids) but no keys lost them:
/// it is refused, never given new keys (every earlier token would then
/// silently read as one this vault never issued).
pub async fn open_keyring(
    store: &dyn Store,
    master: &MasterKey,
) -> Result<Keyring, KeyringSetupError> {
    let wrapped = store.keys().await?;
    if !wrapped.is_empty() {
        return match Keyring::unlock(master, &wrapped) {
            Err(e @ CryptoError::Unwrap(_)) => {
                // Say so when this is a master key a rotation replaced.
                let catalog = store.key_catalog().await?;
                let fingerprint = master.fingerprint();
                match catalog
                    .replaced_masters
                    .iter()
                    .find(|(fp, _)| *fp == fingerprint)
                {
                    Some((_, at)) => Err(KeyringSetupError::ReplacedMaster {
                        at: crate::domain::time::rfc3339(*at),
                        new_key_file: catalog
                            .master_key_file
                            .unwrap_or_else(|| "the file given to rotate-master".into()),
                    }),
                    None => Err(e.into()),
                }
            }
            other => Ok(other?),
        };
    }
    if !store.is_unused().await? {
        return Err(KeyringSetupError::KeysMissing);
    }
    let (keyring, first) = Keyring::create(master)?;
    store.insert_keys(first).await?;
    tracing::info!(
        version = keyring.active_version().0,
        "created the first data key, blind-index key and token key"
    );
    Ok(keyring)
}

/// Gives a keyring its audit key when its store holds none yet (a new
/// store, or one made before the chained audit trail): made, stored
/// wrapped under the master key, and added. Returns the keyring and
/// whether its audit key is new (no trail is expected yet).
pub async fn ensure_audit_key(
    store: &dyn Store,
    keyring: Keyring,
) -> Result<(Keyring, bool), KeyringSetupError> {
    let Some((with_key, wrapped)) = keyring.with_audit_key()? else {
        return Ok((keyring, false));
    };
    store
        .change_keys(crate::store::KeyChange::Add {
            keys: vec![wrapped],
            at_unix_ms: crate::audit::now_unix_ms(),
        })
        .await?;
    tracing::info!("created the audit key (it chains the audit trail)");
    Ok((with_key, true))
}

#[derive(Debug, thiserror::Error)]
pub enum KeyringSetupError {
    #[error(
        "keyring: the store holds records or has handed out tokens, but has no keys (its \
         keys were lost or damaged); new keys would make every earlier token unreadable, so \
         none are made: restore the store from a backup"
    )]
    KeysMissing,
    #[error(
        "keyring: this master key was replaced by `fieldvault keys rotate-master` at {at}: the \
         store's keys are wrapped by the new one only, read from {new_key_file}; start with that \
         key (point master_key at it, or move it over this key file)"
    )]
    ReplacedMaster { at: String, new_key_file: String },
    #[error("keyring: {0}")]
    Crypto(#[from] CryptoError),
    #[error("keyring: {0}")]
    Store(#[from] StoreError),
}

impl KeyringSetupError {
    /// Whether the stored keys did not unwrap: the master key is not the
    /// one they were wrapped with.
    pub fn is_wrong_master_key(&self) -> bool {
        matches!(self, Self::Crypto(CryptoError::Unwrap(_)))
    }

    /// The file the new master key was read from, when the master key
    /// given was replaced by a rotation.
    pub fn replaced_by(&self) -> Option<&str> {
        match self {
            Self::ReplacedMaster { new_key_file, .. } => Some(new_key_file),
            _ => None,
        }
    }

    /// Whether the store was made by a development build before tokens
    /// encrypted a sequence number (its message says what to do).
    pub fn is_old_format(&self) -> bool {
        matches!(self, Self::Crypto(CryptoError::TokenKey))
    }
}

/// A storage failure as callers see it: its kind ("storage full", "I/O
/// error (os error 5)"), never a value or a path.
pub(super) fn unavailable(e: &StoreError, what: &str) -> VaultError {
    let cause = e
        .failure()
        .map_or_else(|| "storage error".to_owned(), |f| f.cause.to_string());
    VaultError::Unavailable(format!("storage is unavailable ({cause}); {what}"))
}

/// A token of a detokenize call: its record id, or its error (with the
/// token itself when it parsed, for the audit trail).
type ParsedToken = Result<(TokenId, RecordId), (Option<TokenId>, ItemError)>;

/// Where a live policy comes from (the policy file): asked on every call
/// whether it changed.
pub trait PolicySource: Send + Sync {
    /// Calls `install` with the new policy when the source changed since
    /// it was last asked and holds a valid one (before any other caller
    /// learns that it changed); otherwise the policy in force stays.
    /// Cheap when nothing changed: it is on every call's path.
    fn refresh(&self, install: &dyn Fn(Policy));

    /// The reloads since the last take, for the audit trail (each the
    /// number of rules now in force, or why the source was rejected), and
    /// how many more there were than are kept one by one.
    fn take_reloads(&self) -> (Vec<Result<usize, String>>, u64);

    /// What the source is, for the audit trail (a file's path).
    fn name(&self) -> String;
}

/// Marks the audit items of the canary tokens among `ids` (whose canaries
/// are `canaries`, in order).
impl Vault {
    /// What a detokenize refused before reading any record answers: a
    /// canary among its tokens freezes the caller whatever refused the call
    /// (the policy, an unusable grant); else `refusal`.
    async fn refusal_or_canary(
        &self,
        call: &Call,
        caller: &crate::domain::CallerId,
        event: &mut Event,
        (parsed, ids): (&[ParsedToken], &[RecordId]),
        refusal: VaultError,
    ) -> VaultError {
        let canaries = match self.canaries_among(ids).await {
            Ok(canaries) => canaries,
            Err(e) => return e,
        };
        if canaries.iter().any(Option::is_some) {
            mark_canaries(event, parsed, ids, &canaries);
            return self
                .canary_tripped(call, caller, event, Action::Detokenize)
                .await;
        }
        refusal
    }
}

fn mark_canaries(
    event: &mut Event,
    parsed: &[ParsedToken],
    ids: &[RecordId],
    canaries: &[Option<crate::store::Canary>],
) {
    let canary_ids: Vec<RecordId> = ids
        .iter()
        .zip(canaries)
        .filter(|(_, c)| c.is_some())
        .map(|(id, _)| *id)
        .collect();
    for (item, p) in event.items.iter_mut().zip(parsed) {
        if let Ok((_, id)) = p {
            if canary_ids.contains(id) {
                item.outcome = "canary".into();
            }
        }
    }
}

/// The vault. Cheap to share behind an `Arc`.
pub struct Vault {
    store: Arc<dyn Store>,
    /// Swapped whole by key rotation ([`Vault::keyring`]).
    keyring: RwLock<Arc<Keyring>>,
    policy: RwLock<Arc<Policy>>,
    /// Checked for a new policy at every call, once set.
    policy_source: std::sync::OnceLock<Arc<dyn PolicySource>>,
    audit: Arc<dyn AuditSink>,
    settings: Settings,
    key_jobs: keys::KeyJobs,
    /// Refused calls whose events the trail could not take, logged instead.
    unrecorded_log: crate::limits::RefusalLog,
    /// One backup at a time: its permit lives as long as its stream.
    backups: Arc<tokio::sync::Semaphore>,
}

impl Vault {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Keyring,
        policy: Policy,
        audit: Arc<dyn AuditSink>,
        settings: Settings,
    ) -> Self {
        Self {
            store,
            keyring: RwLock::new(Arc::new(keyring)),
            policy: RwLock::new(Arc::new(policy)),
            policy_source: std::sync::OnceLock::new(),
            audit,
            settings,
            key_jobs: keys::KeyJobs::default(),
            unrecorded_log: crate::limits::RefusalLog::new(60),
            backups: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The policy in force. Swapped whole by [`Vault::replace_policy`], so a
    /// call sees one consistent policy.
    pub fn policy(&self) -> Arc<Policy> {
        if let Some(source) = self.policy_source.get() {
            source.refresh(&|new| self.replace_policy(new));
        }
        // A poisoned lock only means a writer panicked between two whole
        // assignments; the Arc inside is still a complete policy.
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The keys in force. Swapped whole by a key change, so a call sees
    /// one consistent keyring.
    pub(crate) fn keyring(&self) -> Arc<Keyring> {
        // As for the policy: the Arc inside a poisoned lock is whole.
        match self.keyring.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace_keyring(&self, keyring: Keyring) {
        match self.keyring.write() {
            Ok(mut k) => *k = Arc::new(keyring),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keyring),
        }
    }

    /// Why storage refuses writes, if it does (see [`Store::failure`]).
    pub fn storage_failure(&self) -> Option<StorageFailure> {
        self.store.failure()
    }

    /// The policy in force for a call: first, reloads of the policy that
    /// are not audited yet are (so the trail has a reload before the calls
    /// it decided).
    async fn policy_for_call(&self) -> Arc<Policy> {
        let policy = self.policy();
        self.audit_policy_reloads().await;
        policy
    }

    /// Audits the reloads of the policy source not audited yet
    /// (`policy.reload` events).
    pub async fn audit_policy_reloads(&self) {
        let Some(source) = self.policy_source.get() else {
            return;
        };
        let (reloads, more) = source.take_reloads();
        if reloads.is_empty() && more == 0 {
            return;
        }
        let name = source.name();
        let event = || {
            let mut event = Event::new("policy.reload");
            event.details.insert("file".into(), name.as_str().into());
            event
        };
        for result in reloads {
            let mut e = event();
            match result {
                Ok(rules) => {
                    e.details.insert("rules".into(), rules.into());
                }
                Err(why) => {
                    e.decision = crate::audit::event::Decision::Rejected;
                    e.code = "invalid_argument".into();
                    e.reason = Some(why);
                }
            }
            self.record_happened(e).await;
        }
        // A flood faster than the trail takes them: counted.
        if more > 0 {
            let mut e = event();
            e.details.insert("reloads_not_itemised".into(), more.into());
            self.record_happened(e).await;
        }
    }

    /// Makes every call first ask `source` whether the policy changed
    /// (once; a second source is ignored).
    pub fn watch_policy(&self, source: Arc<dyn PolicySource>) {
        let _ = self.policy_source.set(source);
    }

    pub fn replace_policy(&self, policy: Policy) {
        match self.policy.write() {
            Ok(mut p) => *p = Arc::new(policy),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(policy),
        }
    }

    /// A failed allocation or insert as the caller sees it: nothing was
    /// stored.
    fn write_failed(&self, e: StoreError) -> VaultError {
        if let StoreError::TooLarge { bytes, limit } = e {
            return VaultError::InvalidArgument {
                field: "fields",
                reason: format!(
                    "the batch is {bytes} bytes once sealed, more than the {limit} \
                     bytes one call may store; split it into smaller batches"
                ),
            };
        }
        match e {
            // Reported at ERROR once, when writes stopped; one line per
            // refused call after that would only flood the log.
            StoreError::WritesStopped(_) => {
                tracing::debug!(error = %e, "write refused; nothing acknowledged")
            }
            _ => tracing::error!(error = %e, "storing records failed; nothing acknowledged"),
        }
        unavailable(&e, "nothing was stored")
    }

    fn check_batch(&self, len: usize, field: &'static str) -> Result<(), VaultError> {
        if len == 0 {
            return Err(VaultError::InvalidArgument {
                field,
                reason: "must hold at least one item".into(),
            });
        }
        if len > self.settings.max_batch_items {
            return Err(VaultError::InvalidArgument {
                field,
                reason: crate::domain::batch::too_many_items(len, self.settings.max_batch_items),
            });
        }
        Ok(())
    }

    /// The records to store for canonical values and their ids, sealed
    /// (the associated data binds the id) and indexed with `ring`; per
    /// value, the position of its record or its error.
    fn seal_all(
        &self,
        ring: &Keyring,
        prepared: &[(FieldKind, Plaintext, Option<u64>)],
        ids: &[RecordId],
        now_unix_ms: u64,
    ) -> (Vec<Result<usize, ItemError>>, Vec<NewRecord>) {
        let internal = |e: CryptoError| {
            tracing::error!(error = %e, "sealing failed");
            ItemError::Internal
        };
        let index_versions = ring.versions(KeyPurpose::Index);
        let active_index = ring.active_index_version();
        let mut to_store = Vec::with_capacity(prepared.len());
        let sealed = prepared
            .iter()
            .zip(ids)
            .map(|((kind, canonical, expires), id)| {
                let deterministic =
                    self.settings.token_modes.for_kind(*kind) == TokenMode::Deterministic;
                let index = ring.blind_index(*kind, canonical).map_err(internal)?;
                // During an index rebuild a value may be known only under an
                // older index key: a deterministic lookup consults them too.
                let older_indexes = if deterministic {
                    index_versions
                        .iter()
                        .filter(|v| **v != active_index)
                        .map(|v| ring.blind_index_under(*v, *kind, canonical))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(internal)?
                } else {
                    Vec::new()
                };
                let meta = RecordMeta {
                    created_unix_ms: now_unix_ms,
                    expires_unix_ms: *expires,
                    deterministic,
                };
                let record = ring.seal(*id, *kind, canonical, meta).map_err(internal)?;
                to_store.push(NewRecord {
                    id: *id,
                    record,
                    index,
                    deterministic,
                    older_indexes,
                });
                Ok(to_store.len() - 1)
            })
            .collect();
        (sealed, to_store)
    }

    /// Stores each valid, allowed item under a new token. Returns only once
    /// every stored record is durable. An item that already failed to decode
    /// at the edge is passed in as its error, so the batch limit counts it
    /// and the result still has one entry per item, in order.
    ///
    /// Audited like every call; it fails closed like a reveal: while the
    /// trail refuses events nothing is stored, and a call whose event does
    /// not become durable is answered UNAVAILABLE (its records, stored but
    /// never handed out, stay unreachable: their tokens were never sent).
    pub async fn tokenize(
        &self,
        call: impl Into<Call>,
        purpose: Option<&str>,
        items: Vec<Result<FieldInput, ItemError>>,
    ) -> Result<Vec<Result<TokenId, ItemError>>, VaultError> {
        let call = call.into();
        let mut event = call.event(Action::Tokenize.as_str());
        let result = self
            .tokenize_audited(&call, &mut event, purpose, items)
            .await;
        self.record_call(event, result).await
    }

    async fn tokenize_audited(
        &self,
        call: &Call,
        event: &mut Event,
        purpose: Option<&str>,
        items: Vec<Result<FieldInput, ItemError>>,
    ) -> Result<Vec<Result<TokenId, ItemError>>, VaultError> {
        // The kinds asked for are in the event even when the call is
        // refused before they are looked at.
        event.kinds = items
            .iter()
            .take(self.settings.max_batch_items)
            .filter_map(|i| i.as_ref().ok().map(|f| f.kind.as_str().to_owned()))
            .collect();
        event.purpose = purpose
            .and_then(|p| Purpose::parse(p).ok())
            .map(|p| p.to_string());
        let caller = call.caller()?;
        self.check_batch(items.len(), "fields")?;
        let purpose = purpose
            .map(|p| {
                Purpose::parse(p).map_err(|e| VaultError::InvalidArgument {
                    field: "purpose",
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        event.purpose = purpose.as_ref().map(|p| p.to_string());
        let policy = self.policy_for_call().await;
        self.admit(caller, &policy).await?;
        policy
            .check_call(caller, Action::Tokenize, purpose.as_ref(), None)
            .map_err(VaultError::PermissionDenied)?;
        self.audit_ready()?;

        // One creation time for the call's records.
        let now = crate::audit::now_unix_ms();
        // Per item: Ok(index into `prepared`) or the item's error.
        let mut slots: Vec<Result<usize, ItemError>> = Vec::with_capacity(items.len());
        let mut prepared = Vec::with_capacity(items.len());
        for item in items {
            let mut audited = Item::default();
            let ready = item.and_then(|item| {
                audited.kind = Some(item.kind.as_str().to_owned());
                let grant = policy
                    .decide(caller, Action::Tokenize, item.kind, purpose.as_ref(), None)
                    .map_err(ItemError::PermissionDenied)?;
                audited.rule = Some(grant.rule);
                let canonical = canonicalise(&item, self.settings.default_region).map_err(|e| {
                    ItemError::InvalidArgument {
                        field: Some(e.field),
                        reason: e.reason,
                    }
                })?;
                let expires = self
                    .settings
                    .retention
                    .expiry(item.kind, item.ttl, now)
                    .map_err(|e| ItemError::InvalidArgument {
                        field: Some("ttl"),
                        reason: e.to_string(),
                    })?;
                Ok((item.kind, canonical, expires))
            });
            slots.push(ready.map(|ready| {
                prepared.push(ready);
                prepared.len() - 1
            }));
            event.items.push(audited);
        }
        let ids = if prepared.is_empty() {
            Vec::new()
        } else {
            self.store
                .allocate(prepared.len())
                .await
                .map_err(|e| self.write_failed(e))?
        };
        // A key version retired between sealing and storing (a rotation
        // and a finished rewrap) is refused by the store: seal again with
        // the keys now in force, once.
        let mut ring = self.keyring();
        let mut retried = false;
        let (sealed, stored) = loop {
            let (sealed, to_store) = self.seal_all(&ring, &prepared, &ids, now);
            if to_store.is_empty() {
                break (sealed, Vec::new());
            }
            match self.store.insert_records(to_store).await {
                Ok(stored) => break (sealed, stored),
                Err(StoreError::StaleKey { .. }) if !retried => {
                    retried = true;
                    ring = self.keyring();
                }
                Err(e) => return Err(self.write_failed(e)),
            }
        };
        let results: Vec<Result<TokenId, ItemError>> = slots
            .into_iter()
            .map(|slot| {
                let at =
                    slot.and_then(|i| sealed.get(i).cloned().unwrap_or(Err(ItemError::Internal)))?;
                let id = stored.get(at).copied().ok_or(ItemError::Internal)?;
                Ok(ring.token_of(id))
            })
            .collect();
        for (item, result) in event.items.iter_mut().zip(&results) {
            match result {
                Ok(token) => {
                    item.token = Some(token.to_string());
                    item.outcome = "stored".into();
                }
                Err(e) => item.outcome = e.audit_code().into(),
            }
        }
        let stored = results.iter().filter(|r| r.is_ok()).count();
        tracing::debug!(caller = caller.as_str(), request_id = %call.request_id, items = results.len(), stored, "tokenize");
        Ok(results)
    }

    /// Reveals the values behind `tokens` as the policy allows. One audit
    /// event is written for the call before anything is returned; if it
    /// cannot be written, the call fails and nothing is revealed.
    pub async fn detokenize(
        &self,
        call: impl Into<Call>,
        purpose: &str,
        justification: &str,
        tokens: Vec<String>,
    ) -> Result<Vec<Result<Revealed, ItemError>>, VaultError> {
        self.detokenize_under_grant(call, purpose, justification, "", tokens)
            .await
    }

    /// [`Vault::detokenize`] naming a grant (`grant_id`; empty: none): items
    /// it covers (its kinds, its token list) may be revealed by rules that
    /// require a grant, and each value such a rule reveals consumes one unit
    /// of it, durably, before anything is answered.
    pub async fn detokenize_under_grant(
        &self,
        call: impl Into<Call>,
        purpose: &str,
        justification: &str,
        grant_id: &str,
        tokens: Vec<String>,
    ) -> Result<Vec<Result<Revealed, ItemError>>, VaultError> {
        let call = call.into();
        let mut event = call.event(Action::Detokenize.as_str());
        // The tokens asked for, whatever happens next (a refused call's
        // items stay `refused`); a string that is not a token is not copied.
        event.items = tokens
            .iter()
            .take(self.settings.max_batch_items)
            .map(|t| Item {
                token: t.parse::<TokenId>().ok().map(|_| t.clone()),
                outcome: "refused".into(),
                ..Item::default()
            })
            .collect();
        let result = self
            .detokenize_audited(&call, &mut event, purpose, justification, grant_id, tokens)
            .await;
        self.record_call(event, result).await
    }

    async fn detokenize_audited(
        &self,
        call: &Call,
        event: &mut Event,
        purpose: &str,
        justification: &str,
        grant_id: &str,
        tokens: Vec<String>,
    ) -> Result<Vec<Result<Revealed, ItemError>>, VaultError> {
        // What the call declared is in the event even when it is refused
        // for its identity (only what parses: the refusal says the rest).
        event.purpose = Purpose::parse(purpose).ok().map(|p| p.to_string());
        event.justification = Justification::parse(justification)
            .ok()
            .map(|j| j.as_str().to_owned())
            .filter(|j| !j.is_empty());
        let caller = call.caller()?;
        self.check_batch(tokens.len(), "tokens")?;
        let purpose = Purpose::parse(purpose).map_err(|e| VaultError::InvalidArgument {
            field: "purpose",
            reason: format!("{e}; detokenize needs a purpose a policy rule lists"),
        })?;
        event.purpose = Some(purpose.to_string());
        let justification =
            Justification::parse(justification).map_err(|e| VaultError::InvalidArgument {
                field: "justification",
                reason: e.to_string(),
            })?;
        event.justification = Some(justification.as_str().to_owned()).filter(|j| !j.is_empty());
        let policy = self.policy_for_call().await;
        self.admit(caller, &policy).await?;
        let given = Some(justification.as_str()).filter(|j| !j.is_empty());
        // A named grant is checked before any record is read: it must be
        // the caller's, for this purpose, and active now. A refusal waits
        // for the canary check below (a canary trips whatever else fails).
        let grant = if grant_id.is_empty() {
            Ok(None)
        } else {
            self.usable_grant(caller, &policy, &purpose, grant_id, event)
                .await
                .map(Some)
        };

        // Syntax first, then the token key: a token it did not make is
        // answered without a store read.
        let ring = self.keyring();
        let parsed: Vec<ParsedToken> = tokens
            .iter()
            .map(|t| {
                let token = t.parse::<TokenId>().map_err(|e| {
                    let reason = e.to_string();
                    (
                        None,
                        ItemError::InvalidArgument {
                            field: None,
                            reason,
                        },
                    )
                })?;
                match ring.record_of(&token) {
                    Some(id) if self.store.knows_epoch(id.epoch) => Ok((token, id)),
                    _ => Err((Some(token), ItemError::NotIssued)),
                }
            })
            .collect();
        let ids: Vec<RecordId> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|(_, id)| *id))
            .collect();
        let grant = match grant {
            Ok(grant) => grant,
            Err(refusal) => {
                return Err(self
                    .refusal_or_canary(call, caller, event, (&parsed, &ids), refusal)
                    .await);
            }
        };
        let checked = if let Some(g) = &grant {
            policy.check_call_under_grant(
                caller,
                Action::Detokenize,
                Some(&purpose),
                given,
                &g.grant.rule,
            )
        } else {
            policy.check_call(caller, Action::Detokenize, Some(&purpose), given)
        };
        if let Err(denial) = checked {
            return Err(self
                .refusal_or_canary(
                    call,
                    caller,
                    event,
                    (&parsed, &ids),
                    VaultError::PermissionDenied(denial),
                )
                .await);
        }
        // Refused at once while the trail refuses events: no store read,
        // no wait behind a stuck trail.
        self.audit_ready()?;

        let read = if ids.is_empty() {
            Ok(Vec::new())
        } else {
            self.store.get_records(ids.clone()).await
        };
        let read = read.map_err(|e| {
            tracing::error!(error = %e, "reading records failed");
            unavailable(&e, "nothing was revealed")
        })?;
        // A canary is never a record: only tokens with no record may be one.
        let missing: Vec<RecordId> = ids
            .iter()
            .zip(&read)
            .filter(|(_, r)| matches!(r, Ok(None)))
            .map(|(id, _)| *id)
            .collect();
        let now = crate::audit::now_unix_ms();
        let canaries = self.canaries_among(&missing).await?;
        if canaries.iter().any(Option::is_some) {
            mark_canaries(event, &parsed, &missing, &canaries);
            return Err(self
                .canary_tripped(call, caller, event, Action::Detokenize)
                .await);
        }
        let mut records = read.into_iter();

        let mut results = Vec::with_capacity(parsed.len());
        let mut items = Vec::with_capacity(parsed.len());
        let mut uses: Vec<RuleUse> = Vec::new();
        // Values revealed under rules that require the grant.
        let mut grant_units: u64 = 0;
        for p in parsed {
            let mut item = Item::default();
            let outcome = p
                .map_err(|(token, e)| {
                    item.token = token.map(|t| t.to_string());
                    e
                })
                .and_then(|(token, id)| {
                item.token = Some(token.to_string());
                // `records` yields one entry per parsed token, in order.
                let record = match records.next() {
                    Some(Ok(Some(record))) if record.is_expired(now) => {
                        item.kind = Some(record.kind.as_str().to_owned());
                        return Err(ItemError::Expired);
                    }
                    Some(Ok(Some(record))) => record,
                    Some(Err(e)) if e.is_corruption() => {
                        tracing::error!(token = %token, error = %e, "stored record is corrupt");
                        return Err(ItemError::DataLoss);
                    }
                    // The disk failed to read it now (after a full disk,
                    // sled refuses reads too): nothing says it is lost.
                    Some(Err(e)) => {
                        tracing::error!(token = %token, error = %e, "stored record cannot be read now");
                        return Err(ItemError::Unavailable);
                    }
                    Some(Ok(None)) | None => return Err(ItemError::NotFound),
                };
                item.kind = Some(record.kind.as_str().to_owned());
                // The grant counts for an item it covers: its kind, and its
                // token when it lists tokens.
                let covering = grant.as_ref().filter(|g| {
                    g.grant.kinds.contains(&record.kind) && g.grant.covers_token(&token.to_string())
                });
                let ruling = match covering {
                    Some(g) => policy.decide_under_grant(caller, Action::Detokenize, record.kind, Some(&purpose), given, &g.grant.rule),
                    None => policy.decide(caller, Action::Detokenize, record.kind, Some(&purpose), given),
                }
                .map_err(ItemError::PermissionDenied)?;
                item.rule = Some(ruling.rule.clone());
                let mut reveal = ruling.reveal.ok_or(ItemError::Internal)?;
                if ruling.under_grant {
                    // Never more than the rule allowed when the grant was
                    // approved (a rule edited since does not widen it).
                    if let Some(g) = covering {
                        reveal = reveal.min(g.grant.reveal);
                    }
                }
                if reveal.shows_value() && ruling.under_grant {
                    grant_units += 1;
                }
                if reveal.shows_value() && !ruling.quotas.is_empty() {
                    match uses.iter_mut().find(|u: &&mut RuleUse| u.rule == ruling.rule) {
                        Some(u) => u.values += 1,
                        None => uses.push(RuleUse {
                            rule: ruling.rule,
                            quotas: ruling.quotas,
                            values: 1,
                        }),
                    }
                }
                let canonical = ring.open(id, &record).map_err(|e| match e {
                    CryptoError::Integrity => {
                        tracing::error!(token = %token, "stored record failed authentication");
                        ItemError::DataLoss
                    }
                    // A copy from before its key version was retired.
                    CryptoError::UnknownKeyVersion(version) => {
                        tracing::error!(token = %token, version, "stored record is sealed under a retired or unknown data-key version");
                        ItemError::DataLoss
                    }
                    other => {
                        tracing::error!(token = %token, error = %other, "opening record failed");
                        ItemError::Internal
                    }
                })?;
                let rendered = render(record.kind, &canonical, reveal).map_err(|e| {
                    tracing::error!(token = %token, error = %e, "stored value does not decode");
                    ItemError::DataLoss
                })?;
                Ok(Revealed {
                    kind: record.kind,
                    reveal,
                    value: rendered.value,
                    scheme: rendered.scheme,
                    address: rendered.address,
                })
            });
            item.outcome = match &outcome {
                Ok(r) => r.reveal.as_str(),
                Err(e) => e.audit_code(),
            }
            .into();
            items.push(item);
            // The audit item above keeps the truth (kind, permission_denied);
            // the caller learns no more than for a token that does not exist,
            // unless the deployment asks for explicit denials.
            let outcome = match outcome {
                Err(ItemError::PermissionDenied(_)) if !self.settings.explicit_kind_denials => {
                    Err(ItemError::NotFound)
                }
                Err(ItemError::NotIssued | ItemError::Expired) => Err(ItemError::NotFound),
                other => other,
            };
            results.push(outcome);
        }

        event.items = items;
        // Tokens this vault could never have issued (not a token, or not
        // made by its token key): a scan past the policy's threshold
        // freezes the caller, and this call reveals nothing. A token the
        // vault did issue is not counted when its record is gone (deleted,
        // erased, expired and swept: `not_found`, `expired`), nor when it
        // is of a kind the caller may not see (`permission_denied`): a
        // legitimate service meets those in its tables, and a caller with
        // delete rights could otherwise get another one frozen.
        let unknown = event
            .items
            .iter()
            .filter(|i| matches!(i.outcome.as_str(), "invalid_argument" | "not_issued"))
            .count();
        // Then, before any value leaves: the values are counted, durably,
        // against their rules' quotas (over one, nothing leaves), and a
        // freeze or a deny-list entry that came while this call ran (a
        // canary in a parallel call, an operator) stops it. A call stopped
        // here revealed nothing, and its items say so.
        let stopped = match self
            .count_unknown(call, caller, &policy, unknown as u64)
            .await
        {
            Err(e) => Some((e, "refused")),
            Ok(()) => match self
                .charge_quotas(
                    call,
                    caller,
                    &policy,
                    &uses,
                    grant.as_ref().map(|g| (g, grant_units)),
                    event,
                )
                .await
            {
                Err(e @ VaultError::FailedPrecondition(_)) => Some((e, "over_grant")),
                Err(e) => Some((e, "over_quota")),
                Ok(()) => match self.admit(caller, &self.policy()).await {
                    Err(e) => Some((e, "refused")),
                    // A revocation (or the deadline) that came while this
                    // call ran stops it too: the units it took stay spent.
                    Ok(()) => match grant.as_ref().filter(|_| grant_units > 0) {
                        Some(g) => self
                            .grant_still_active(g.grant.id)
                            .await
                            .err()
                            .map(|e| (e, "refused")),
                        None => None,
                    },
                },
            },
        };
        if let Some((e, outcome)) = stopped {
            for item in &mut event.items {
                if item.outcome == "full" || item.outcome == "masked" {
                    item.outcome = outcome.into();
                }
            }
            return Err(e);
        }
        if grant_units > 0 && crate::metrics::enabled() {
            let caller = crate::metrics::caller_label(&policy, Some(caller));
            metrics::counter!(crate::metrics::GRANT_REVEALS, "caller" => caller)
                .increment(grant_units);
        }
        let revealed = results.iter().filter(|r| r.is_ok()).count();
        tracing::debug!(caller = caller.as_str(), request_id = %call.request_id, purpose = %purpose, items = results.len(), revealed, "detokenize");
        Ok(results)
    }
}
