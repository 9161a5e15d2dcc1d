//! The integrity check: do the record trees agree with each other?

use super::layout::{backend, decode_record, token_from};
use super::writer::Trees;
use super::{IntegrityReport, StoreError};
use crate::domain::TokenId;
use std::collections::HashMap;

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
