//! The integrity check: do the record trees agree with each other?

use super::layout::{backend, decode_record, token_from};
use super::writer::Trees;
use super::{IntegrityReport, StoreError};
use crate::domain::TokenId;
use std::collections::{HashMap, HashSet};

/// Checks that every record decodes and has exactly one blind-index entry,
/// and that every index entry and deterministic mapping points at an
/// existing record. Reads every tree: call it once every acknowledged write
/// is applied.
pub(super) fn check(trees: &Trees) -> Result<IntegrityReport, StoreError> {
    let mut report = IntegrityReport::default();
    // token -> number of blind-index entries naming it
    let mut indexed: HashMap<[u8; 16], u32> = HashMap::new();
    for entry in trees.records.iter() {
        let (key, value) = entry.map_err(backend)?;
        report.records += 1;
        match token_from(&key) {
            Ok(token) => {
                if decode_record(&value).is_err() {
                    report
                        .problems
                        .push(format!("record {token} does not decode"));
                }
                indexed.insert(*token.as_bytes(), 0);
            }
            Err(_) => report
                .problems
                .push("a record key is not a token id".into()),
        }
    }
    for key in trees.blind_index.iter().keys() {
        let key = key.map_err(backend)?;
        report.index_entries += 1;
        match key.get(36..).map(token_from) {
            Some(Ok(token)) => match indexed.get_mut(token.as_bytes()) {
                Some(n) => *n += 1,
                None => report
                    .problems
                    .push(format!("blind index names {token}, which has no record")),
            },
            _ => report
                .problems
                .push("a blind-index key is malformed".into()),
        }
    }
    for (token, n) in &indexed {
        if *n != 1 {
            let token = TokenId::from_bytes(*token).map_or_else(|_| "?".into(), |t| t.to_string());
            report
                .problems
                .push(format!("record {token} has {n} blind-index entries"));
        }
    }
    for entry in trees.deterministic.iter() {
        let (prefix, token) = entry.map_err(backend)?;
        report.deterministic_entries += 1;
        let Ok(token) = token_from(&token) else {
            report
                .problems
                .push("a deterministic entry is malformed".into());
            continue;
        };
        let mut entry = prefix.to_vec();
        entry.extend_from_slice(token.as_bytes());
        if !indexed.contains_key(token.as_bytes()) {
            report.problems.push(format!(
                "deterministic entry names {token}, which has no record"
            ));
        } else if !trees.blind_index.contains_key(&entry).map_err(backend)? {
            report.problems.push(format!(
                "deterministic token {token} is not under the same blind index"
            ));
        }
    }
    Ok(report)
}

/// What [`remove_partial_entries`] removed, and what it found and kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartialEntries {
    /// Blind-index entries naming a token that has no record: removed.
    pub index_entries: u64,
    /// Deterministic mappings naming a token without a record and its
    /// index entry: removed.
    pub deterministic_entries: u64,
    /// Records that have no blind-index entry, by token: kept. A frame is
    /// applied mapping, index entry, record, in that order, so a partly
    /// stored frame never leaves one of these; a lost index entry (damage
    /// elsewhere) does, and the record still decrypts: deleting it would
    /// destroy a value nobody can restore.
    pub unindexed_records: Vec<TokenId>,
}

impl PartialEntries {
    pub fn is_empty(&self) -> bool {
        self.unindexed_records.is_empty()
            && self.index_entries == 0
            && self.deterministic_entries == 0
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
    let mut records: HashSet<[u8; 16]> = HashSet::new();
    for key in trees.records.iter().keys() {
        let key = key.map_err(backend)?;
        if let Ok(token) = token_from(&key) {
            records.insert(*token.as_bytes());
        }
    }
    let mut indexed: HashSet<[u8; 16]> = HashSet::new();
    for key in trees.blind_index.iter().keys() {
        let key = key.map_err(backend)?;
        let Some(Ok(token)) = key.get(36..).map(token_from) else {
            continue;
        };
        if records.contains(token.as_bytes()) {
            indexed.insert(*token.as_bytes());
        } else {
            trees.blind_index.remove(&key).map_err(backend)?;
            removed.index_entries += 1;
        }
    }
    for entry in trees.deterministic.iter() {
        let (prefix, token) = entry.map_err(backend)?;
        let Ok(token) = token_from(&token) else {
            continue;
        };
        if !indexed.contains(token.as_bytes()) {
            trees.deterministic.remove(&prefix).map_err(backend)?;
            removed.deterministic_entries += 1;
        }
    }
    for token in records.difference(&indexed) {
        if let Ok(token) = TokenId::from_bytes(*token) {
            removed.unindexed_records.push(token);
        }
    }
    removed.unindexed_records.sort();
    Ok(removed)
}
