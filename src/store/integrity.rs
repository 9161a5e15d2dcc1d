//! The integrity check: do the record trees agree with each other?

use super::layout::{
    backend, counter_name, decode_canary, decode_counter, decode_freeze, decode_record,
    encoded_record_version, expiry_from, freeze_caller, record_id_from, record_key, CANARY_PREFIX,
    COUNTER_PREFIX, FREEZE_PREFIX,
};
use super::writer::Trees;
use super::{IntegrityReport, KeyUsage, StoreError};
use crate::crypto::{KeyPurpose, KeyVersion};
use crate::domain::RecordId;
use std::collections::{HashMap, HashSet};

/// Checks that every record decodes, lies below the sequence's durable
/// `ceiling`, is of one of the recorded `epochs`, and has exactly one
/// index entry (a blind-index entry, or for
/// a deterministic record its deterministic mapping), and that every index
/// entry and mapping points at an existing record. Reads every tree: call
/// it once every acknowledged write is applied.
pub(super) fn check(
    trees: &Trees,
    ceiling: u64,
    epochs: &HashSet<u64>,
) -> Result<IntegrityReport, StoreError> {
    let mut report = IntegrityReport::default();
    // record -> number of index entries naming it
    let mut indexed: HashMap<RecordId, u32> = HashMap::new();
    // record -> its expiry, for records with one
    let mut expiring: HashMap<RecordId, u64> = HashMap::new();
    for entry in trees.records.iter() {
        let (key, value) = entry.map_err(backend)?;
        report.records += 1;
        match record_id_from(&key) {
            Ok(id) => {
                match decode_record(&value) {
                    Err(_) => report.problems.push(format!("{id} does not decode")),
                    Ok(r) => {
                        if let Some(at) = r.expires_unix_ms() {
                            expiring.insert(id, at);
                        }
                    }
                }
                if id.seq >= ceiling {
                    report.problems.push(format!(
                        "{id} is at or above the sequence ceiling ({ceiling})"
                    ));
                }
                if !epochs.contains(&id.epoch) {
                    report
                        .problems
                        .push(format!("{id} is of an epoch the store never recorded"));
                }
                indexed.insert(id, 0);
            }
            Err(_) => report
                .problems
                .push("a record key is not a record id".into()),
        }
    }
    for key in trees.blind_index.iter().keys() {
        let key = key.map_err(backend)?;
        report.index_entries += 1;
        match key.get(36..).map(record_id_from) {
            Some(Ok(id)) => match indexed.get_mut(&id) {
                Some(n) => *n += 1,
                None => report
                    .problems
                    .push(format!("blind index names {id}, which does not exist")),
            },
            _ => report
                .problems
                .push("a blind-index key is malformed".into()),
        }
    }
    for entry in trees.deterministic.iter() {
        let (_, id) = entry.map_err(backend)?;
        report.deterministic_entries += 1;
        match record_id_from(&id) {
            Ok(id) => match indexed.get_mut(&id) {
                Some(n) => *n += 1,
                None => report.problems.push(format!(
                    "deterministic entry names {id}, which does not exist"
                )),
            },
            Err(_) => report
                .problems
                .push("a deterministic entry is malformed".into()),
        }
    }
    for key in trees.expiry.iter().keys() {
        let key = key.map_err(backend)?;
        match expiry_from(&key) {
            Ok((at, id)) => match expiring.remove(&id) {
                Some(expires) if expires == at => {}
                Some(_) => report.problems.push(format!(
                    "the expiry entry of {id} disagrees with its record"
                )),
                None => report.problems.push(format!(
                    "expiry entry names {id}, which does not exist or never expires"
                )),
            },
            Err(_) => report.problems.push("an expiry key is malformed".into()),
        }
    }
    let mut unlisted: Vec<RecordId> = expiring.into_keys().collect();
    unlisted.sort_unstable();
    for id in unlisted {
        report
            .problems
            .push(format!("{id} expires but has no expiry entry"));
    }
    let mut miscounted: Vec<(RecordId, u32)> = indexed
        .iter()
        .filter(|(_, n)| **n != 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    miscounted.sort_unstable();
    for (id, n) in miscounted {
        report.problems.push(format!("{id} has {n} index entries"));
    }
    Ok(report)
}

/// Problems with the abuse-control entries of `meta`: a counter, freeze or
/// canary that does not decode, and a canary whose id is also a record's
/// (it would turn that record's reveals into freezes). Names counters,
/// callers and record ids, never a value.
pub(super) fn check_abuse_controls(
    meta: &sled::Tree,
    trees: &Trees,
) -> Result<Vec<String>, StoreError> {
    let mut problems = Vec::new();
    for entry in meta.scan_prefix(COUNTER_PREFIX) {
        let (key, value) = entry.map_err(backend)?;
        let name = counter_name(&key).unwrap_or_else(|_| "(not UTF-8)".to_owned());
        if let Err(e) = decode_counter(&value) {
            problems.push(format!("counter {name:?}: {e}"));
        }
    }
    for entry in meta.scan_prefix(FREEZE_PREFIX) {
        let (key, value) = entry.map_err(backend)?;
        match freeze_caller(&key) {
            Ok(caller) => {
                if let Err(e) = decode_freeze(caller.clone(), &value) {
                    problems.push(format!("the freeze of {caller:?}: {e}"));
                }
            }
            Err(e) => problems.push(format!("a freeze's caller: {e}")),
        }
    }
    for entry in meta.scan_prefix(super::grant_layout::GRANT_PREFIX) {
        let (key, value) = entry.map_err(backend)?;
        if let Err(e) = super::grant_layout::decode_grant(&key, &value) {
            problems.push(format!("a grant: {e}"));
        }
    }
    for entry in meta.scan_prefix(CANARY_PREFIX) {
        let (key, value) = entry.map_err(backend)?;
        match decode_canary(&key, &value) {
            Ok(canary) => {
                if trees
                    .records
                    .contains_key(record_key(canary.id))
                    .map_err(backend)?
                {
                    problems.push(format!("canary {} is also a record", canary.id));
                }
            }
            Err(e) => problems.push(format!("a canary: {e}")),
        }
    }
    Ok(problems)
}

/// What [`remove_partial_entries`] removed, and what it found and kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartialEntries {
    /// Blind-index entries naming a record that does not exist: removed.
    pub index_entries: u64,
    /// Deterministic mappings naming a record that does not exist: removed.
    pub deterministic_entries: u64,
    /// Expiry entries naming a record that does not exist: removed.
    pub expiry_entries: u64,
    /// Records that have no index entry (blind-index entry or
    /// deterministic mapping), by id: kept. A frame is applied index entry
    /// first, record second, so a partly stored frame never leaves one of
    /// these; a lost index entry (damage
    /// elsewhere) does, and the record still decrypts: deleting it would
    /// destroy a value nobody can restore.
    pub unindexed_records: Vec<RecordId>,
}

impl PartialEntries {
    pub fn is_empty(&self) -> bool {
        self.unindexed_records.is_empty()
            && self.index_entries == 0
            && self.deterministic_entries == 0
            && self.expiry_entries == 0
    }
}

/// Counts the records of each data-key version and the index entries of
/// each index-key version, by reading every tree: for a store of an
/// earlier build, and after an operator's empty log or a salvage, when the
/// stored counters may be behind the trees.
pub(super) fn count_usage(trees: &Trees) -> Result<KeyUsage, StoreError> {
    let mut usage = KeyUsage::new();
    for value in trees.records.iter().values() {
        let value = value.map_err(backend)?;
        let version = encoded_record_version(&value);
        *usage.entry((KeyPurpose::Data, version)).or_default() += 1;
    }
    for tree in [&trees.blind_index, &trees.deterministic] {
        for key in tree.iter().keys() {
            let key = key.map_err(backend)?;
            if let Some(v) = key.get(..4) {
                let version = KeyVersion(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
                *usage.entry((KeyPurpose::Index, version)).or_default() += 1;
            }
        }
    }
    Ok(usage)
}

/// `data v1: 3, index v1: 3`, for reports.
pub(super) fn describe_usage(usage: &KeyUsage) -> String {
    let parts: Vec<String> = usage
        .iter()
        .map(|((purpose, version), n)| {
            let purpose = match purpose {
                KeyPurpose::Data => "data",
                KeyPurpose::Index => "index",
                KeyPurpose::Token => "token",
                KeyPurpose::Audit => "audit",
            };
            format!("{purpose} v{}: {n}", version.0)
        })
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Removes what a write-ahead-log frame leaves behind when it is dropped
/// (salvage) after sled had stored part of it on its own (its background
/// flush writes the trees between checkpoints): index entries and
/// deterministic mappings without their record. A frame sled holds whole
/// stays. Records without their index entry are reported, not removed
/// (see [`PartialEntries::unindexed_records`]). Offline only: the caller holds the store with no writes
/// in flight, and makes the removals durable (a checkpoint) afterwards.
pub(super) fn remove_partial_entries(trees: &Trees) -> Result<PartialEntries, StoreError> {
    let mut removed = PartialEntries::default();
    let mut records: HashSet<RecordId> = HashSet::new();
    for key in trees.records.iter().keys() {
        let key = key.map_err(backend)?;
        if let Ok(id) = record_id_from(&key) {
            records.insert(id);
        }
    }
    let mut indexed: HashSet<RecordId> = HashSet::new();
    for key in trees.blind_index.iter().keys() {
        let key = key.map_err(backend)?;
        let Some(Ok(id)) = key.get(36..).map(record_id_from) else {
            continue;
        };
        if records.contains(&id) {
            indexed.insert(id);
        } else {
            trees.blind_index.remove(&key).map_err(backend)?;
            removed.index_entries += 1;
        }
    }
    for entry in trees.deterministic.iter() {
        let (prefix, id) = entry.map_err(backend)?;
        let Ok(id) = record_id_from(&id) else {
            continue;
        };
        if records.contains(&id) {
            indexed.insert(id);
        } else {
            trees.deterministic.remove(&prefix).map_err(backend)?;
            removed.deterministic_entries += 1;
        }
    }
    for key in trees.expiry.iter().keys() {
        let key = key.map_err(backend)?;
        if let Ok((_, id)) = expiry_from(&key) {
            if !records.contains(&id) {
                trees.expiry.remove(&key).map_err(backend)?;
                removed.expiry_entries += 1;
            }
        }
    }
    removed
        .unindexed_records
        .extend(records.difference(&indexed).copied());
    removed.unindexed_records.sort();
    Ok(removed)
}
