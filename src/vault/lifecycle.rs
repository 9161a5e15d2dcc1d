//! Data lifecycle: token metadata, deleting tokens, erasing and exporting
//! every token of a value, and the sweeper that deletes expired tokens.
//!
//! A value lives in one place, its record, and is found from its value
//! through the blind index. So a value is erased by deleting every record
//! its blind index names (under every index-key version: during an index
//! rebuild an entry may sit under either), and a token is deleted by
//! opening its record to learn its value's blind indexes: the store keeps
//! no map from record to index entry. Deletes go through the store's log
//! and overlay like every write (tombstones): a deleted token never comes
//! back.

use super::{unavailable, Call, FieldInput, ItemError, Vault, VaultError};
use crate::audit::event::{Event, Item};
use crate::audit::now_unix_ms;
use crate::crypto::{BlindIndex, CryptoError, KeyPurpose, Keyring, SealedRecord};
use crate::domain::policy::Action;
use crate::domain::value::canonicalise;
use crate::domain::{CallerId, FieldKind, Plaintext, Purpose, RecordId, TokenId, TokenMode};
use crate::store::{Deletion, StoreError};
use std::time::Instant;

/// What the vault holds about one token, never its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub token: TokenId,
    pub kind: FieldKind,
    /// `None` for a record stored before records carried their creation
    /// time.
    pub created_unix_ms: Option<u64>,
    /// `None`: never expires.
    pub expires_unix_ms: Option<u64>,
    /// The data-key version the value is sealed under now.
    pub key_version: u32,
    /// `None` for a record stored before records carried their mode.
    pub mode: Option<TokenMode>,
}

/// The most records one durable write of an erasure deletes.
const ERASE_BATCH: usize = 1000;

/// How often a deletion is tried again when an index key was added while
/// it was being prepared (each try computes the indexes afresh).
const DELETE_TRIES: usize = 3;

/// A token as parsed for a per-token call: its record id, or the item's
/// error (with the token when it parsed).
type Parsed = Result<(TokenId, RecordId), (Option<TokenId>, ItemError)>;

/// The path of a field error in an erase or export request
/// (`field.value`, …): the value's own errors name its part.
fn field_path(part: &'static str) -> &'static str {
    match part {
        "value" => "field.value",
        "region" => "field.region",
        "scheme" => "field.scheme",
        "address" => "field.address",
        "kind" => "field.kind",
        "ttl" => "field.ttl",
        _ => "field",
    }
}

impl Vault {
    /// Deletes each token's record and index entries, durably (policy
    /// action `delete`, per token kind). Per item: the deleted token's
    /// kind, or `NotFound` (never issued, deleted already, or of a kind the
    /// caller may not delete: answered alike unless the deployment asks
    /// for explicit denials; an expired token too, which the sweeper
    /// deletes), or `InvalidArgument` (not a token). Audited (action
    /// `delete`, one item per token).
    pub async fn delete_tokens(
        &self,
        call: impl Into<Call>,
        tokens: Vec<String>,
    ) -> Result<Vec<Result<FieldKind, ItemError>>, VaultError> {
        let call = call.into();
        let mut event = self.per_token_event(&call, Action::Delete, &tokens);
        let result = self.delete_audited(&call, &mut event, tokens).await;
        self.record_call(event, result).await
    }

    async fn delete_audited(
        &self,
        call: &Call,
        event: &mut Event,
        tokens: Vec<String>,
    ) -> Result<Vec<Result<FieldKind, ItemError>>, VaultError> {
        let (caller, ring, parsed) = self.per_token_call(call, Action::Delete, &tokens).await?;
        let policy = self.policy();
        let records = self.read_parsed(&parsed, "nothing was deleted").await?;
        self.trip_canaries(call, &caller, event, &parsed, &records, Action::Delete)
            .await?;
        let now = now_unix_ms();
        // Per item: the record to delete and its value's indexes, or the
        // item's error.
        let mut outcomes: Vec<Result<FieldKind, ItemError>> = Vec::with_capacity(parsed.len());
        let mut wanted: Vec<(usize, RecordId, SealedRecord)> = Vec::new();
        for (at, (p, record)) in parsed.iter().zip(records).enumerate() {
            let item = &mut event.items[at];
            let outcome = p.clone().map_err(|(_, e)| e).and_then(|(_, id)| {
                let record = record?;
                item.kind = Some(record.kind.as_str().to_owned());
                // Unknown already, as for every call; the sweeper deletes it.
                if record.is_expired(now) {
                    return Err(ItemError::Expired);
                }
                let grant = policy
                    .decide(&caller, Action::Delete, record.kind, None, None)
                    .map_err(ItemError::PermissionDenied)?;
                item.rule = Some(grant.rule);
                let kind = record.kind;
                wanted.push((at, id, record));
                Ok(kind)
            });
            outcomes.push(outcome);
        }
        let deleted = self.delete_records(ring.clone(), &wanted).await?;
        for ((at, _, _), result) in wanted.iter().zip(deleted) {
            if let Err(e) = result {
                outcomes[*at] = Err(e);
            }
        }
        for (item, outcome) in event.items.iter_mut().zip(&outcomes) {
            item.outcome = match outcome {
                Ok(_) => "deleted",
                Err(e) => e.audit_code(),
            }
            .into();
        }
        let deleted = outcomes.iter().filter(|o| o.is_ok()).count();
        tracing::debug!(caller = caller.as_str(), request_id = %call.request_id, items = outcomes.len(), deleted, "delete");
        Ok(outcomes.into_iter().map(|o| self.as_answered(o)).collect())
    }

    /// Each token's metadata (policy action `inspect`, per token kind);
    /// per item `NotFound` as for deletes (an expired token too). The
    /// record is opened to check that its metadata is authentic (bound to
    /// it by its associated data); its value never leaves this function.
    /// Audited (action `inspect`).
    pub async fn token_info(
        &self,
        call: impl Into<Call>,
        tokens: Vec<String>,
    ) -> Result<Vec<Result<TokenInfo, ItemError>>, VaultError> {
        let call = call.into();
        let mut event = self.per_token_event(&call, Action::Inspect, &tokens);
        let result = self.info_audited(&call, &mut event, tokens).await;
        self.record_call(event, result).await
    }

    async fn info_audited(
        &self,
        call: &Call,
        event: &mut Event,
        tokens: Vec<String>,
    ) -> Result<Vec<Result<TokenInfo, ItemError>>, VaultError> {
        let (caller, ring, parsed) = self.per_token_call(call, Action::Inspect, &tokens).await?;
        let policy = self.policy();
        let records = self.read_parsed(&parsed, "nothing was inspected").await?;
        self.trip_canaries(call, &caller, event, &parsed, &records, Action::Inspect)
            .await?;
        let now = now_unix_ms();
        let mut outcomes = Vec::with_capacity(parsed.len());
        for ((p, record), item) in parsed.iter().zip(records).zip(event.items.iter_mut()) {
            let outcome = p.clone().map_err(|(_, e)| e).and_then(|(token, id)| {
                let record = record?;
                item.kind = Some(record.kind.as_str().to_owned());
                if record.is_expired(now) {
                    return Err(ItemError::Expired);
                }
                let grant = policy
                    .decide(&caller, Action::Inspect, record.kind, None, None)
                    .map_err(ItemError::PermissionDenied)?;
                item.rule = Some(grant.rule);
                info_of(&ring, token, id, &record)
            });
            item.outcome = match &outcome {
                Ok(_) => "inspected",
                Err(e) => e.audit_code(),
            }
            .into();
            outcomes.push(self.as_answered(outcome));
        }
        Ok(outcomes)
    }

    /// Deletes every token of the field's canonical value (random and
    /// deterministic, under every index-key version): policy action
    /// `erase` for the field's kind. The value is validated like
    /// Tokenize's (`InvalidArgument` naming `field.…`; a field the wire
    /// could not decode comes in as its error, to be audited). Returns the
    /// tokens erased, in id order (empty when there were none). Audited
    /// (kind and tokens, never the value).
    pub async fn erase_value(
        &self,
        call: impl Into<Call>,
        field: Result<FieldInput, ItemError>,
    ) -> Result<Vec<TokenId>, VaultError> {
        let call = call.into();
        let mut event = call.event(Action::Erase.as_str());
        if let Ok(f) = &field {
            event.kinds = vec![f.kind.as_str().to_owned()];
        }
        let result = self.erase_audited(&call, &mut event, field).await;
        self.record_call(event, result).await
    }

    async fn erase_audited(
        &self,
        call: &Call,
        event: &mut Event,
        field: Result<FieldInput, ItemError>,
    ) -> Result<Vec<TokenId>, VaultError> {
        let caller = call.caller()?;
        let policy = self.policy_for_call().await;
        self.admit(caller, &policy).await?;
        let field = field.map_err(field_refused)?;
        let kind = field.kind;
        let grant = policy
            .decide(caller, Action::Erase, kind, None, None)
            .map_err(VaultError::PermissionDenied)?;
        let canonical = self.canonical_of(&field)?;
        self.audit_ready()?;
        let mut erased = Vec::new();
        let mut finished = false;
        let mut failed = None;
        for _ in 0..DELETE_TRIES {
            let ring = self.keyring();
            let indexes = indexes_of(&ring, kind, &canonical).map_err(|e| crypto_failed(&e))?;
            let ids = self
                .records_of_value(&indexes, "nothing was erased")
                .await?;
            if ids.is_empty() {
                finished = true;
                break;
            }
            // In durable writes of at most ERASE_BATCH records, so that a
            // value with very many tokens does not make one huge write; an
            // erasure cut short (a crash, a failed write) has deleted whole
            // batches, and erasing again finishes it.
            let mut changed = false;
            for chunk in ids.chunks(ERASE_BATCH) {
                let deletions = chunk
                    .iter()
                    .map(|id| Deletion {
                        id: *id,
                        indexes: indexes.clone(),
                    })
                    .collect();
                match self.store.delete_records(deletions).await {
                    Ok(done) => erased.extend(
                        chunk
                            .iter()
                            .zip(done)
                            .filter(|(_, d)| *d)
                            .map(|(id, _)| (*id, ring.token_of(*id))),
                    ),
                    Err(StoreError::KeysChanged) => {
                        changed = true;
                        break;
                    }
                    Err(e) => {
                        failed = Some(self.delete_failed(e));
                        break;
                    }
                }
            }
            if failed.is_some() {
                break;
            }
            if !changed {
                finished = true;
                break;
            }
        }
        // The trail names what was erased, also when the erasure stops
        // short.
        erased.sort_by_key(|(id, _)| *id);
        event.items = erased
            .iter()
            .map(|(_, token)| Item {
                token: Some(token.to_string()),
                kind: Some(kind.as_str().to_owned()),
                outcome: "erased".into(),
                rule: Some(grant.rule.clone()),
            })
            .collect();
        if let Some(e) = failed {
            return Err(e);
        }
        if !finished {
            return Err(VaultError::Unavailable(format!(
                "the index keys kept changing during the erasure; {} tokens were erased, \
                 erase again to finish",
                erased.len()
            )));
        }
        tracing::debug!(caller = caller.as_str(), request_id = %call.request_id, kind = %kind, erased = erased.len(), "erase");
        Ok(erased.into_iter().map(|(_, t)| t).collect())
    }

    /// Every unexpired token of the field's canonical value with its
    /// metadata (subject access), in id order: policy action `export` for
    /// the field's kind and `purpose` (required). Audited (kind, purpose
    /// and tokens, never the value).
    pub async fn export_value(
        &self,
        call: impl Into<Call>,
        purpose: &str,
        field: Result<FieldInput, ItemError>,
    ) -> Result<Vec<TokenInfo>, VaultError> {
        let call = call.into();
        let mut event = call.event(Action::Export.as_str());
        if let Ok(f) = &field {
            event.kinds = vec![f.kind.as_str().to_owned()];
        }
        event.purpose = Purpose::parse(purpose).ok().map(|p| p.to_string());
        let result = self.export_audited(&call, &mut event, purpose, field).await;
        self.record_call(event, result).await
    }

    async fn export_audited(
        &self,
        call: &Call,
        event: &mut Event,
        purpose: &str,
        field: Result<FieldInput, ItemError>,
    ) -> Result<Vec<TokenInfo>, VaultError> {
        let caller = call.caller()?;
        let policy = self.policy_for_call().await;
        self.admit(caller, &policy).await?;
        let purpose = Purpose::parse(purpose).map_err(|e| VaultError::InvalidArgument {
            field: "purpose",
            reason: format!("{e}; export needs a purpose a policy rule lists"),
        })?;
        let field = field.map_err(field_refused)?;
        let kind = field.kind;
        let grant = policy
            .decide(caller, Action::Export, kind, Some(&purpose), None)
            .map_err(VaultError::PermissionDenied)?;
        let canonical = self.canonical_of(&field)?;
        self.audit_ready()?;
        let ring = self.keyring();
        let indexes = indexes_of(&ring, kind, &canonical).map_err(|e| crypto_failed(&e))?;
        let ids = self
            .records_of_value(&indexes, "nothing was exported")
            .await?;
        let read = if ids.is_empty() {
            Vec::new()
        } else {
            self.store.get_records(ids.clone()).await.map_err(|e| {
                tracing::error!(error = %e, "reading records failed");
                unavailable(&e, "nothing was exported")
            })?
        };
        let now = now_unix_ms();
        let mut found = Vec::with_capacity(ids.len());
        for (id, record) in ids.into_iter().zip(read) {
            let token = ring.token_of(id);
            let record = match record {
                Ok(Some(r)) if !r.is_expired(now) => r,
                // Deleted or expired meanwhile: not held any more.
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(token = %token, error = %e, "a record of the value cannot be read");
                    return Err(VaultError::Unavailable(format!(
                        "a record of the value cannot be read ({e}); nothing was exported"
                    )));
                }
            };
            let info = info_of(&ring, token, id, &record).map_err(|e| {
                VaultError::Unavailable(format!(
                    "a record of the value cannot be read ({e}); nothing was exported"
                ))
            })?;
            found.push(info);
        }
        event.items = found
            .iter()
            .map(|i| Item {
                token: Some(i.token.to_string()),
                kind: Some(kind.as_str().to_owned()),
                outcome: "exported".into(),
                rule: Some(grant.rule.clone()),
            })
            .collect();
        tracing::debug!(caller = caller.as_str(), request_id = %call.request_id, kind = %kind, tokens = found.len(), "export");
        Ok(found)
    }

    /// Deletes expired records until none is left (at most
    /// `sweep_batch` per durable write, at most `sweep_rate` a second: it
    /// pauses between batches); returns how many it deleted. Each batch is
    /// one audit event (`sweep`, the tokens deleted). A record that cannot
    /// be opened is left (logged): its index entry cannot be found without
    /// its value.
    pub async fn sweep_expired(&self) -> Result<u64, VaultError> {
        let batch = self.settings.retention.sweep_batch.max(1);
        let rate = f64::from(self.settings.retention.sweep_rate.max(1));
        let now = now_unix_ms();
        let started = Instant::now();
        let mut after = None;
        let mut total = 0u64;
        loop {
            // The pace: `total` records deleted may not be ahead of
            // `rate` per second since the pass began.
            if total > 0 {
                self.pause_until(started + std::time::Duration::from_secs_f64(total as f64 / rate))
                    .await;
            }
            if self.stopping() {
                return Ok(total);
            }
            let due = self
                .store
                .expired_records(now, after, batch)
                .await
                .map_err(|e| unavailable(&e, "nothing was swept"))?;
            let Some(last) = due.last().copied() else {
                return Ok(total);
            };
            after = Some(last);
            let ids: Vec<RecordId> = due.iter().map(|(_, id)| *id).collect();
            let read = self
                .store
                .get_records(ids.clone())
                .await
                .map_err(|e| unavailable(&e, "nothing was swept"))?;
            let ring = self.keyring();
            let mut wanted = Vec::with_capacity(ids.len());
            for (at, (id, record)) in ids.into_iter().zip(read).enumerate() {
                match record {
                    Ok(Some(r)) if r.is_expired(now) => wanted.push((at, id, r)),
                    // Deleted meanwhile (its entry leaves with it).
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(token = %ring.token_of(id), error = %e, "sweep: an expired record cannot be read; left in place")
                    }
                }
            }
            if wanted.is_empty() {
                continue;
            }
            let deleted = self.delete_records(ring.clone(), &wanted).await?;
            let mut event = Event::new("sweep");
            for ((_, id, record), done) in wanted.iter().zip(&deleted) {
                if done.is_ok() {
                    event.items.push(Item {
                        token: Some(ring.token_of(*id).to_string()),
                        kind: Some(record.kind.as_str().to_owned()),
                        outcome: "expired".into(),
                        rule: None,
                    });
                }
            }
            let n = event.items.len() as u64;
            total += n;
            if n > 0 {
                self.record_happened(event).await;
            }
        }
    }

    /// Runs [`Vault::sweep_expired`] every `sweep_interval` until the
    /// server stops.
    pub(super) async fn run_sweeper(&self) {
        let every = self.settings.retention.sweep_interval;
        loop {
            if self.stopping() {
                return;
            }
            let started = Instant::now();
            match self.sweep_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    deleted = n,
                    ms = started.elapsed().as_millis() as u64,
                    "sweep: expired tokens deleted"
                ),
                Err(e) => tracing::warn!(error = %e, "sweep: stopped early; trying again later"),
            }
            self.pause_until(Instant::now() + every).await;
        }
    }

    /// A per-token call's event: its items are the tokens asked for (a
    /// string that is not a token is not copied), `refused` until decided.
    fn per_token_event(&self, call: &Call, action: Action, tokens: &[String]) -> Event {
        let mut event = call.event(action.as_str());
        event.items = tokens
            .iter()
            .take(self.settings.max_batch_items)
            .map(|t| Item {
                token: t.parse::<TokenId>().ok().map(|_| t.clone()),
                outcome: "refused".into(),
                ..Item::default()
            })
            .collect();
        event
    }

    /// The checks of a per-token call before any read: identity, batch
    /// size, deny list and freeze, a rule for the action at all, a
    /// working trail; then each token parsed (a token the token key did
    /// not make is answered without a store read).
    async fn per_token_call(
        &self,
        call: &Call,
        action: Action,
        tokens: &[String],
    ) -> Result<(CallerId, std::sync::Arc<Keyring>, Vec<Parsed>), VaultError> {
        let caller = call.caller()?;
        self.check_batch(tokens.len(), "tokens")?;
        let policy = self.policy_for_call().await;
        self.admit(caller, &policy).await?;
        policy
            .check_call(caller, action, None, None)
            .map_err(VaultError::PermissionDenied)?;
        self.audit_ready()?;
        let ring = self.keyring();
        let parsed = tokens
            .iter()
            .map(|t| {
                let token = t.parse::<TokenId>().map_err(|e| {
                    (
                        None,
                        ItemError::InvalidArgument {
                            field: None,
                            reason: e.to_string(),
                        },
                    )
                })?;
                match ring.record_of(&token) {
                    Some(id) if self.store.knows_epoch(id.epoch) => Ok((token, id)),
                    _ => Err((Some(token), ItemError::NotIssued)),
                }
            })
            .collect();
        Ok((caller.clone(), ring, parsed))
    }

    /// The record of each parsed token, in order (an item that did not
    /// parse gets `NotFound`, never used): `NotFound` when absent,
    /// `DataLoss` or `Unavailable` when it cannot be read.
    async fn read_parsed(
        &self,
        parsed: &[Parsed],
        what: &str,
    ) -> Result<Vec<Result<SealedRecord, ItemError>>, VaultError> {
        let ids: Vec<RecordId> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|(_, id)| *id))
            .collect();
        let read = if ids.is_empty() {
            Vec::new()
        } else {
            self.store.get_records(ids).await.map_err(|e| {
                tracing::error!(error = %e, "reading records failed");
                unavailable(&e, what)
            })?
        };
        let mut read = read.into_iter();
        Ok(parsed
            .iter()
            .map(|p| {
                if p.is_err() {
                    return Err(ItemError::NotFound);
                }
                match read.next() {
                    Some(Ok(Some(record))) => Ok(record),
                    Some(Ok(None)) | None => Err(ItemError::NotFound),
                    Some(Err(e)) if e.is_corruption() => {
                        tracing::error!(error = %e, "stored record is corrupt");
                        Err(ItemError::DataLoss)
                    }
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "stored record cannot be read now");
                        Err(ItemError::Unavailable)
                    }
                }
            })
            .collect())
    }

    /// A canary among the tokens of a per-token call (those with no
    /// record) freezes the caller, as a detokenize of it does: a stolen
    /// token list checked through inspect or delete rights is caught too.
    async fn trip_canaries(
        &self,
        call: &Call,
        caller: &CallerId,
        event: &mut Event,
        parsed: &[Parsed],
        records: &[Result<SealedRecord, ItemError>],
        action: Action,
    ) -> Result<(), VaultError> {
        let missing: Vec<RecordId> = parsed
            .iter()
            .zip(records)
            .filter_map(|(p, r)| match (p, r) {
                (Ok((_, id)), Err(ItemError::NotFound)) => Some(*id),
                _ => None,
            })
            .collect();
        let canaries = self.canaries_among(&missing).await?;
        if canaries.iter().any(Option::is_some) {
            super::mark_canaries(event, parsed, &missing, &canaries);
            return Err(self.canary_tripped(call, caller, event, action).await);
        }
        Ok(())
    }

    /// Deletes records whose values are found by opening them; per record
    /// in order, `Ok` when deleted, `NotFound` when it was gone already,
    /// `DataLoss` when it does not open (left in place). Tried again when an
    /// index key is added meanwhile.
    async fn delete_records(
        &self,
        ring: std::sync::Arc<Keyring>,
        wanted: &[(usize, RecordId, SealedRecord)],
    ) -> Result<Vec<Result<(), ItemError>>, VaultError> {
        let mut ring = ring;
        for _ in 0..DELETE_TRIES {
            let mut outcomes: Vec<Result<(), ItemError>> = Vec::with_capacity(wanted.len());
            let mut deletions = Vec::with_capacity(wanted.len());
            for (_, id, record) in wanted {
                match deletion_of(&ring, *id, record) {
                    Ok(d) => {
                        deletions.push(d);
                        outcomes.push(Ok(()));
                    }
                    Err(e) => {
                        tracing::error!(token = %ring.token_of(*id), error = %e, "a record to delete does not open; left in place");
                        outcomes.push(Err(ItemError::DataLoss));
                    }
                }
            }
            if deletions.is_empty() {
                return Ok(outcomes);
            }
            match self.store.delete_records(deletions).await {
                Ok(done) => {
                    let mut done = done.into_iter();
                    for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                        if done.next() != Some(true) {
                            *o = Err(ItemError::NotFound);
                        }
                    }
                    return Ok(outcomes);
                }
                Err(StoreError::KeysChanged) => ring = self.keyring(),
                Err(e) => return Err(self.delete_failed(e)),
            }
        }
        Err(VaultError::Unavailable(
            "the index keys kept changing while the deletion was prepared; nothing was \
             deleted, try again"
                .into(),
        ))
    }

    /// Every record the value's indexes name.
    async fn records_of_value(
        &self,
        indexes: &[BlindIndex],
        what: &str,
    ) -> Result<Vec<RecordId>, VaultError> {
        let mut ids = Vec::new();
        for index in indexes {
            let found = self.store.records_by_index(*index).await.map_err(|e| {
                tracing::error!(error = %e, "reading the blind index failed");
                unavailable(&e, what)
            })?;
            ids.extend(found);
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The field's canonical value, validated like Tokenize's.
    fn canonical_of(&self, field: &FieldInput) -> Result<Plaintext, VaultError> {
        canonicalise(field, self.settings.default_region).map_err(|e| {
            let path = field_path(e.field);
            VaultError::InvalidArgument {
                field: path,
                reason: if path == "field" {
                    format!("{}: {}", e.field, e.reason)
                } else {
                    e.reason
                },
            }
        })
    }

    fn delete_failed(&self, e: StoreError) -> VaultError {
        match e {
            StoreError::WritesStopped(_) => {
                tracing::debug!(error = %e, "deletion refused; nothing deleted")
            }
            _ => tracing::error!(error = %e, "deleting records failed; nothing deleted"),
        }
        unavailable(&e, "nothing was deleted")
    }

    /// An item's outcome as the caller gets it: the audit item keeps the
    /// truth; a kind the caller may not act on, a token this vault never
    /// issued and an expired one are answered as unknown.
    fn as_answered<T>(&self, outcome: Result<T, ItemError>) -> Result<T, ItemError> {
        match outcome {
            Err(ItemError::PermissionDenied(_)) if !self.settings.explicit_kind_denials => {
                Err(ItemError::NotFound)
            }
            Err(ItemError::NotIssued | ItemError::Expired) => Err(ItemError::NotFound),
            other => other,
        }
    }
}

/// A value's blind index under every live index-key version.
fn indexes_of(
    ring: &Keyring,
    kind: FieldKind,
    canonical: &Plaintext,
) -> Result<Vec<BlindIndex>, CryptoError> {
    ring.versions(KeyPurpose::Index)
        .into_iter()
        .map(|v| ring.blind_index_under(v, kind, canonical))
        .collect()
}

/// The deletion of a record: its value's indexes, learnt by opening it.
fn deletion_of(
    ring: &Keyring,
    id: RecordId,
    record: &SealedRecord,
) -> Result<Deletion, CryptoError> {
    let canonical = ring.open(id, record)?;
    Ok(Deletion {
        id,
        indexes: indexes_of(ring, record.kind, &canonical)?,
    })
}

/// A record's metadata, once the record opens (its associated data binds
/// the metadata: an edited expiry or mode fails here).
fn info_of(
    ring: &Keyring,
    token: TokenId,
    id: RecordId,
    record: &SealedRecord,
) -> Result<TokenInfo, ItemError> {
    ring.open(id, record).map_err(|e| {
        tracing::error!(token = %token, error = %e, "stored record failed authentication");
        ItemError::DataLoss
    })?;
    Ok(TokenInfo {
        token,
        kind: record.kind,
        created_unix_ms: record.meta.map(|m| m.created_unix_ms),
        expires_unix_ms: record.expires_unix_ms(),
        key_version: record.key_version.0,
        mode: record.meta.map(|m| {
            if m.deterministic {
                TokenMode::Deterministic
            } else {
                TokenMode::Random
            }
        }),
    })
}

/// A field the wire could not decode, as the call's error.
fn field_refused(e: ItemError) -> VaultError {
    match e {
        ItemError::InvalidArgument {
            field: Some(part),
            reason,
        } => {
            let path = field_path(part);
            VaultError::InvalidArgument {
                field: path,
                reason: if path == "field" {
                    format!("{part}: {reason}")
                } else {
                    reason
                },
            }
        }
        ItemError::InvalidArgument {
            field: None,
            reason,
        } => VaultError::InvalidArgument {
            field: "field",
            reason,
        },
        other => VaultError::Unavailable(other.to_string()),
    }
}

fn crypto_failed(e: &CryptoError) -> VaultError {
    tracing::error!(error = %e, "computing a blind index failed");
    VaultError::Unavailable(
        "the vault could not compute the value's index; nothing was done".into(),
    )
}
