//! The compliance report over a period: who saw what, how much, why, what
//! was refused, which keys were operated on, and whether the trail that
//! says so verified. `fieldvault audit report` prints it as Markdown (to
//! hand to an auditor as is), CSV (one row shape, below) or JSON
//! ([`Report`] as serialized).
//!
//! What is counted, from the events whose time is in `[since, until)`:
//! - **reveals**: in `detokenize` events the vault allowed, each item whose
//!   outcome is a reveal level (`full`, `masked`, `none`), by caller,
//!   purpose, field kind and level. A *value revealed* is a `full` or
//!   `masked` item (`none` shows the caller that the token exists, and
//!   nothing of its value).
//! - **tokenized**: in `tokenize` events the vault allowed, each item
//!   `stored`, by caller, purpose and field kind.
//! - **refused calls**: events `denied` (for who asked) or `rejected` (for
//!   what was asked), by caller, purpose, action, decision, code and
//!   reason; with how many tokens they asked for. Their items are not
//!   counted again as refused items.
//! - **refused items**: in calls the vault carried out (`allowed`), each
//!   item whose outcome is an error code (`permission_denied`,
//!   `not_found`, …), by caller, purpose, action, field kind and code.
//! - **failed calls** (`failed`: the vault could not answer) are counted by
//!   action, not as refusals.
//! - **key operations**: every `keys.*` event except the read-only
//!   `keys.get_*`, allowed or not, one row each.
//! - **busiest callers**: the ten callers with the most values revealed.
//! - **trail events**: every `audit.*` event (a new chain and why, a new
//!   file, the sink recovering), one row each.
//! - **grants**: every grant an event of the period names (`grant` in its
//!   details), in the order they first appear: its workflow, who requested
//!   it, its approvers (who approved it in the period, then those later
//!   events name), its state changes in the period (allowed `grant.*`
//!   events: `requested`, `approved`, `active` when an approval made it
//!   so, `rejected`, `revoked`; `exhausted` when a reveal used its last
//!   unit), the values revealed under it (the `grant_units` of allowed
//!   `detokenize` events naming it) in how many calls, its count after the
//!   last of them (`grant_used`), and the `detokenize` calls naming it that
//!   were refused (denied or rejected: a pending, exhausted, revoked or
//!   expired grant, too few units left, another caller's grant).
//!
//! CSV: a header and one row shape for every section,
//! `section,time,caller,purpose,action,kind,outcome,code,reason,count`,
//! with the sections `period_start` and `period_end` (time), `verification`
//! (outcome `verified` or `broken`, reason, count = events verified),
//! `calls` (action, outcome = decision, count), `reveal` (caller, purpose,
//! action, kind, outcome = level, count), `tokenize` (caller, purpose,
//! action, kind, outcome `stored`, count), `refused_call` (caller, purpose,
//! action, outcome = decision, code, reason, count = calls),
//! `refused_item` (caller, purpose, action, kind, code, count = items),
//! `key_operation` (time, caller, action, outcome = decision, code, reason,
//! count 1), `busiest_caller` (caller, count = values revealed, in rank
//! order), `trail` (time, action, reason, count 1), `grant` (caller = the
//! workflow, purpose, action `detokenize`, outcome = its last state in the
//! period, reason = the grant id, count = values revealed under it),
//! `grant_refused` (the same, count = refused detokenize calls, when there
//! were some) and
//! `grant_change` (time, caller = who, purpose, action = the `grant.*`
//! event, outcome = the state, reason = the grant id, count 1). A missing
//! caller or purpose is empty.

use super::event::{Decision, Event};
use super::verify::{FileSummary, TrailBreak};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Reveal levels, in the order the report shows them.
pub const LEVELS: [&str; 3] = ["full", "masked", "none"];
/// How many callers "busiest callers" lists.
pub const BUSIEST: usize = 10;

/// Whether the trail verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verification {
    /// Every event of every file is intact and in order.
    Verified {
        files: usize,
        /// Events in the files (start events included).
        events: u64,
        first_seq: u64,
        last_seq: u64,
        first_time: String,
        last_time: String,
        /// Files that begin a new chain, and why (from their first event).
        new_chains: Vec<NewChain>,
        /// Whether the first file begins a chain (event 0); when not, the
        /// events before `first_seq` are in files not given.
        from_chain_start: bool,
    },
    /// The first place the trail stops verifying.
    Broken {
        file: String,
        line: Option<usize>,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewChain {
    pub file: String,
    pub time: String,
    pub reason: String,
}

impl Verification {
    /// From the result of [`super::verify::verify_files`]. With
    /// `whole_trail` (every file of the trail, not a chosen few), a trail
    /// whose first file does not begin a chain has lost its first files:
    /// that is a break.
    pub fn of(result: Result<Vec<FileSummary>, TrailBreak>, whole_trail: bool) -> Self {
        let files = match result {
            Ok(files) => files,
            Err(b) => return Self::broken(&b),
        };
        let (Some(first), Some(last)) = (files.first(), files.last()) else {
            return Verification::Broken {
                file: String::new(),
                line: None,
                reason: "the trail has no files".into(),
            };
        };
        let from_chain_start = first.new_chain.is_some();
        if whole_trail && !from_chain_start {
            return Self::broken(&TrailBreak {
                path: first.path.clone(),
                line: Some(1),
                reason: format!(
                    "the oldest file of the trail begins at event {} and does not start a \
                     chain: events 0..{} are missing (files deleted or moved away; give them \
                     too if they were archived)",
                    first.start.next_seq,
                    first.start.next_seq.saturating_sub(1)
                ),
            });
        }
        Verification::Verified {
            files: files.len(),
            events: files.iter().map(FileSummary::events).sum(),
            first_seq: first.start.next_seq,
            last_seq: last.end.next_seq.saturating_sub(1),
            first_time: first.first_time.clone(),
            last_time: last.last_time.clone(),
            new_chains: files
                .iter()
                .filter_map(|f| {
                    f.new_chain.as_ref().map(|reason| NewChain {
                        file: f.path.display().to_string(),
                        time: f.first_time.clone(),
                        reason: reason.clone(),
                    })
                })
                .collect(),
            from_chain_start,
        }
    }

    pub fn broken(b: &TrailBreak) -> Self {
        Verification::Broken {
            file: b.path.display().to_string(),
            line: b.line,
            reason: b.reason.clone(),
        }
    }

    pub fn is_verified(&self) -> bool {
        matches!(self, Verification::Verified { .. })
    }

    /// One sentence.
    pub fn sentence(&self) -> String {
        match self {
            Verification::Verified {
                files,
                events,
                first_seq,
                last_seq,
                first_time,
                last_time,
                new_chains,
                from_chain_start,
            } => {
                let mut s = format!(
                    "the chain verified: {events} event{} (sequence {first_seq} to {last_seq}) \
                     in {files} file{}, from {first_time} to {last_time}, every one intact and \
                     in order",
                    plural(*events),
                    plural(*files as u64)
                );
                if !from_chain_start {
                    s.push_str(&format!(
                        "; the events before {first_seq} are in files not given"
                    ));
                }
                if new_chains.len() > 1 {
                    s.push_str(&format!(
                        "; {} new chains were started (see Trail events)",
                        new_chains.len() - 1
                    ));
                }
                s
            }
            Verification::Broken { file, line, reason } => format!(
                "the chain DOES NOT VERIFY: {file}{}: {reason}",
                line.map(|l| format!(", line {l}")).unwrap_or_default()
            ),
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallCount {
    pub action: String,
    pub allowed: u64,
    pub denied: u64,
    pub rejected: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealCount {
    pub caller: Option<String>,
    pub purpose: Option<String>,
    pub kind: Option<String>,
    pub level: String,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeCount {
    pub caller: Option<String>,
    pub purpose: Option<String>,
    pub kind: Option<String>,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedCall {
    pub caller: Option<String>,
    pub purpose: Option<String>,
    pub action: String,
    /// `denied` or `rejected`.
    pub decision: Decision,
    pub code: String,
    pub reason: Option<String>,
    pub calls: u64,
    /// Tokens these calls asked for.
    pub tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedItem {
    pub caller: Option<String>,
    pub purpose: Option<String>,
    pub action: String,
    pub kind: Option<String>,
    pub code: String,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyOperation {
    pub time: String,
    pub caller: Option<String>,
    pub action: String,
    pub decision: Decision,
    pub code: String,
    pub reason: Option<String>,
    pub details: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusyCaller {
    pub caller: Option<String>,
    /// `full` and `masked` items.
    pub values_revealed: u64,
    pub full: u64,
    pub masked: u64,
    pub none: u64,
    /// Allowed detokenize calls.
    pub calls: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailEvent {
    pub time: String,
    pub action: String,
    pub reason: Option<String>,
}

/// One state change of a grant: who made it and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantChange {
    pub time: String,
    /// `requested`, `approved`, `active`, `rejected`, `revoked` or
    /// `exhausted`.
    pub state: String,
    /// The caller of the event that made it (for `exhausted`, the workflow
    /// whose reveal used the last unit).
    pub by: Option<String>,
    /// The event's action (`grant.approve`, `detokenize`, …).
    pub action: String,
}

/// A grant the period's events name, and its use in the period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantUse {
    pub grant: String,
    /// The workflow identity that may use it.
    pub caller: Option<String>,
    pub purpose: Option<String>,
    pub requested_by: Option<String>,
    /// Distinct approvers, in the order they approved (those approving
    /// before the period are read from later events).
    pub approvers: Vec<String>,
    pub max_reveals: Option<u64>,
    /// In the period, in order.
    pub changes: Vec<GrantChange>,
    /// Values revealed under it in the period (`grant_units` of allowed
    /// detokenize events naming it).
    pub values_revealed: u64,
    /// Allowed detokenize calls naming it.
    pub calls: u64,
    /// Its count after the last of those calls (`grant_used`).
    pub last_used: Option<u64>,
    /// Detokenize calls naming it that were refused (denied or rejected).
    pub refused_calls: u64,
}

impl GrantUse {
    /// Its last state change in the period, if any.
    pub fn last_state(&self) -> Option<&str> {
        self.changes.last().map(|c| c.state.as_str())
    }
}

/// The report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// RFC 3339; `since` included, `until` excluded.
    pub since: String,
    pub until: String,
    /// The files read, in chain order.
    pub files: Vec<String>,
    pub verification: Verification,
    /// Events in the period, of every action.
    pub events: u64,
    /// Events read whose time does not read (in no period).
    pub undated_events: u64,
    /// Lines of the files that are not events (torn or damaged).
    pub skipped_lines: u64,
    pub calls: Vec<CallCount>,
    pub reveals: Vec<RevealCount>,
    pub tokenized: Vec<TokenizeCount>,
    pub refused_calls: Vec<RefusedCall>,
    pub refused_items: Vec<RefusedItem>,
    pub key_operations: Vec<KeyOperation>,
    pub busiest_callers: Vec<BusyCaller>,
    pub trail_events: Vec<TrailEvent>,
    /// Grants named in the period, in the order they first appear (absent
    /// from reports made before grants existed).
    #[serde(default)]
    pub grants: Vec<GrantUse>,
}

/// Counts by reveal level, in the order of [`LEVELS`].
type Levels = [u64; 3];
/// Caller, purpose and field kind.
type RevealKey<'a> = (&'a Option<String>, &'a Option<String>, &'a Option<String>);
/// Caller and purpose.
type Who = (Option<String>, Option<String>);
type RefusedCallKey = (Who, String, Decision, String, Option<String>);

/// Counts events one at a time; [`Tally::report`] makes the report.
#[derive(Debug, Default)]
pub struct Tally {
    events: u64,
    calls: BTreeMap<String, CallCount>,
    reveals: BTreeMap<(Who, Option<String>, String), u64>,
    tokenized: BTreeMap<(Who, Option<String>), u64>,
    /// (calls, tokens asked) by who, action, decision, code, reason.
    refused_calls: BTreeMap<RefusedCallKey, (u64, u64)>,
    refused_items: BTreeMap<(Who, String, Option<String>, String), u64>,
    key_operations: Vec<KeyOperation>,
    busy: BTreeMap<Option<String>, BusyCaller>,
    trail_events: Vec<TrailEvent>,
    grants: Vec<GrantUse>,
    /// Grant id -> its index in `grants`.
    grant_index: BTreeMap<String, usize>,
}

fn is_level(outcome: &str) -> bool {
    LEVELS.contains(&outcome)
}

impl Tally {
    /// Counts `event` (the caller keeps only events in the period).
    pub fn add(&mut self, e: &Event) {
        self.events += 1;
        let who: Who = (e.caller.clone(), e.purpose.clone());
        if e.action.starts_with("audit.") {
            self.trail_events.push(TrailEvent {
                time: e.time.clone(),
                action: e.action.clone(),
                reason: e.reason.clone(),
            });
            return;
        }
        self.add_grant(e);
        let calls = self
            .calls
            .entry(e.action.clone())
            .or_insert_with(|| CallCount {
                action: e.action.clone(),
                ..CallCount::default()
            });
        match e.decision {
            Decision::Allowed => calls.allowed += 1,
            Decision::Denied => calls.denied += 1,
            Decision::Rejected => calls.rejected += 1,
            Decision::Failed => calls.failed += 1,
        }
        if let Some(op) = e.action.strip_prefix("keys.") {
            if !op.starts_with("get_") {
                self.key_operations.push(KeyOperation {
                    time: e.time.clone(),
                    caller: e.caller.clone(),
                    action: e.action.clone(),
                    decision: e.decision,
                    code: e.code.clone(),
                    reason: e.reason.clone(),
                    details: e.details.clone(),
                });
            }
        }
        match e.decision {
            Decision::Denied | Decision::Rejected => {
                let entry = self
                    .refused_calls
                    .entry((
                        who,
                        e.action.clone(),
                        e.decision,
                        e.code.clone(),
                        e.reason.clone(),
                    ))
                    .or_default();
                entry.0 += 1;
                entry.1 += e.items.iter().filter(|i| i.token.is_some()).count() as u64;
            }
            Decision::Failed => {}
            Decision::Allowed => {
                let detokenize = e.action == "detokenize";
                let tokenize = e.action == "tokenize";
                for item in &e.items {
                    let outcome = item.outcome.as_str();
                    if detokenize && is_level(outcome) {
                        *self
                            .reveals
                            .entry((who.clone(), item.kind.clone(), outcome.to_owned()))
                            .or_default() += 1;
                        let busy = self.busy_mut(&e.caller);
                        match outcome {
                            "full" => busy.full += 1,
                            "masked" => busy.masked += 1,
                            _ => busy.none += 1,
                        }
                    } else if tokenize && outcome == "stored" {
                        *self
                            .tokenized
                            .entry((who.clone(), item.kind.clone()))
                            .or_default() += 1;
                    } else if !is_level(outcome) && outcome != "stored" {
                        *self
                            .refused_items
                            .entry((
                                who.clone(),
                                e.action.clone(),
                                item.kind.clone(),
                                outcome.to_owned(),
                            ))
                            .or_default() += 1;
                    }
                }
                if detokenize {
                    self.busy_mut(&e.caller).calls += 1;
                }
            }
        }
    }

    /// What `e` says of the grant it names, if it names one.
    fn add_grant(&mut self, e: &Event) {
        let Some(id) = e.details.get("grant").and_then(|g| g.as_str()) else {
            return;
        };
        let text = |name: &str| {
            e.details
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let number = |name: &str| e.details.get(name).and_then(serde_json::Value::as_u64);
        let index = match self.grant_index.get(id) {
            Some(i) => *i,
            None => {
                self.grants.push(GrantUse {
                    grant: id.to_owned(),
                    ..GrantUse::default()
                });
                self.grant_index
                    .insert(id.to_owned(), self.grants.len() - 1);
                self.grants.len() - 1
            }
        };
        let g = &mut self.grants[index];
        let grant_op = e.action.strip_prefix("grant.");
        let detokenize = e.action == "detokenize";
        // Its workflow: named by grant events, or the caller of a reveal
        // under it that the vault carried out.
        if let Some(workflow) = text("grant_caller") {
            g.caller = Some(workflow);
        } else if detokenize && e.decision == Decision::Allowed && g.caller.is_none() {
            g.caller = e.caller.clone();
        }
        if grant_op.is_some() || (detokenize && e.decision == Decision::Allowed) {
            if let Some(purpose) = &e.purpose {
                g.purpose = Some(purpose.clone());
            }
        }
        if let Some(by) = text("grant_requested_by") {
            g.requested_by = Some(by);
        }
        if let Some(max) = number("grant_max_reveals") {
            g.max_reveals = Some(max);
        }
        let mut approver = |name: &str| {
            if !g.approvers.iter().any(|a| a == name) {
                g.approvers.push(name.to_owned());
            }
        };
        if let Some(serde_json::Value::Array(named)) = e.details.get("grant_approvers") {
            for a in named.iter().filter_map(|a| a.as_str()) {
                approver(a);
            }
        }
        if grant_op == Some("approve") && e.decision == Decision::Allowed {
            if let Some(caller) = &e.caller {
                approver(caller);
            }
        }
        let change = |g: &mut GrantUse, state: &str| {
            g.changes.push(GrantChange {
                time: e.time.clone(),
                state: state.to_owned(),
                by: e.caller.clone(),
                action: e.action.clone(),
            })
        };
        match (grant_op, e.decision) {
            (Some("request"), Decision::Allowed) => change(g, "requested"),
            (Some("approve"), Decision::Allowed) => {
                change(g, "approved");
                if text("grant_state").as_deref() == Some("active") {
                    change(g, "active");
                }
            }
            (Some("reject"), Decision::Allowed) => change(g, "rejected"),
            (Some("revoke"), Decision::Allowed) => change(g, "revoked"),
            (None, Decision::Allowed) if detokenize => {
                let units = number("grant_units").unwrap_or(0);
                g.calls += 1;
                g.values_revealed += units;
                if let Some(used) = number("grant_used") {
                    g.last_used = Some(used);
                    if units > 0 && g.max_reveals == Some(used) {
                        change(g, "exhausted");
                    }
                }
            }
            (None, Decision::Denied | Decision::Rejected) if detokenize => g.refused_calls += 1,
            _ => {}
        }
    }

    fn busy_mut(&mut self, caller: &Option<String>) -> &mut BusyCaller {
        self.busy
            .entry(caller.clone())
            .or_insert_with(|| BusyCaller {
                caller: caller.clone(),
                values_revealed: 0,
                full: 0,
                masked: 0,
                none: 0,
                calls: 0,
            })
    }

    /// The report for `[since_ms, until_ms)` over `files` (in chain order).
    pub fn report(
        self,
        since_ms: u64,
        until_ms: u64,
        files: Vec<String>,
        verification: Verification,
        read: &super::search::ReadStats,
    ) -> Report {
        let mut busiest: Vec<BusyCaller> = self
            .busy
            .into_values()
            .map(|mut b| {
                b.values_revealed = b.full + b.masked;
                b
            })
            .filter(|b| b.values_revealed > 0)
            .collect();
        busiest.sort_by(|a, b| {
            b.values_revealed
                .cmp(&a.values_revealed)
                .then_with(|| a.caller.cmp(&b.caller))
        });
        busiest.truncate(BUSIEST);
        // In the map's order: caller, purpose, kind, then level, whose
        // names sort as LEVELS does (full, masked, none).
        let reveals: Vec<RevealCount> = self
            .reveals
            .into_iter()
            .map(|(((caller, purpose), kind, level), count)| RevealCount {
                caller,
                purpose,
                kind,
                level,
                count,
            })
            .collect();
        Report {
            since: super::search::format_ms(since_ms),
            until: super::search::format_ms(until_ms),
            files,
            verification,
            events: self.events,
            undated_events: read.undated,
            skipped_lines: read.skipped_lines,
            calls: self.calls.into_values().collect(),
            reveals,
            tokenized: self
                .tokenized
                .into_iter()
                .map(|(((caller, purpose), kind), count)| TokenizeCount {
                    caller,
                    purpose,
                    kind,
                    count,
                })
                .collect(),
            refused_calls: self
                .refused_calls
                .into_iter()
                .map(
                    |(((caller, purpose), action, decision, code, reason), (calls, tokens))| {
                        RefusedCall {
                            caller,
                            purpose,
                            action,
                            decision,
                            code,
                            reason,
                            calls,
                            tokens,
                        }
                    },
                )
                .collect(),
            refused_items: self
                .refused_items
                .into_iter()
                .map(
                    |(((caller, purpose), action, kind, code), count)| RefusedItem {
                        caller,
                        purpose,
                        action,
                        kind,
                        code,
                        count,
                    },
                )
                .collect(),
            key_operations: self.key_operations,
            busiest_callers: busiest,
            trail_events: self.trail_events,
            grants: self.grants,
        }
    }
}

/// Reads the events of `files` (in chain order), counts those in
/// `[since_ms, until_ms)`, and makes the report.
pub fn build(
    files: &[std::path::PathBuf],
    since_ms: u64,
    until_ms: u64,
    verification: Verification,
) -> Result<Report, super::search::ReadError> {
    let filter = super::search::Filter {
        since_ms: Some(since_ms),
        until_ms: Some(until_ms),
        ..Default::default()
    };
    let mut tally = Tally::default();
    let read = super::search::search(files, &filter, |found| tally.add(&found.event))?;
    Ok(tally.report(
        since_ms,
        until_ms,
        files.iter().map(|p| p.display().to_string()).collect(),
        verification,
        &read,
    ))
}

/// A cell of a Markdown table: what Markdown or HTML would read as markup
/// escaped, control characters escaped, `-` for nothing.
fn md(text: Option<&str>) -> String {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return "-".into();
    };
    let mut out = String::with_capacity(text.len());
    for c in super::search::printable(text).chars() {
        if matches!(c, '\\' | '|' | '<' | '>' | '[' | ']' | '`' | '*' | '&') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The files, all of them up to [`FILES_LISTED`], else the first ones,
/// an ellipsis and the last (the JSON form lists every one).
fn file_list(files: &[String]) -> String {
    let cells: Vec<String> = files.iter().map(|f| md(Some(f))).collect();
    if cells.len() <= FILES_LISTED {
        return cells.join(", ");
    }
    format!(
        "{}, …, {}",
        cells[..FILES_LISTED - 1].join(", "),
        cells[cells.len() - 1]
    )
}

/// How many files the Markdown report names in full.
const FILES_LISTED: usize = 5;

fn mdo(text: &Option<String>) -> String {
    md(text.as_deref())
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>], empty: &str) {
    if rows.is_empty() {
        out.push_str(empty);
        out.push_str("\n\n");
        return;
    }
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    let rule: Vec<&str> = header
        .iter()
        .map(|h| {
            if h.ends_with('#') || h.starts_with("Calls") || is_count_header(h) {
                "---:"
            } else {
                "---"
            }
        })
        .collect();
    out.push_str(&format!("|{}|\n", rule.join("|")));
    for row in rows {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out.push('\n');
}

fn is_count_header(h: &str) -> bool {
    matches!(
        h,
        "Allowed"
            | "Denied"
            | "Rejected"
            | "Failed"
            | "Full"
            | "Masked"
            | "None"
            | "Values revealed"
            | "Stored"
            | "Tokens asked"
            | "Items"
            | "Detokenize calls"
            | "Max reveals"
            | "Used"
            | "Refused calls"
    )
}

impl Report {
    /// The report in Markdown, to be read on its own.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("# fieldvault audit report\n\n");
        out.push_str(&format!(
            "- **Period:** {} to {} (the end excluded)\n",
            self.since, self.until
        ));
        out.push_str(&format!(
            "- **Trail:** {} file{}: {}\n",
            self.files.len(),
            plural(self.files.len() as u64),
            file_list(&self.files)
        ));
        out.push_str(&format!(
            "- **Integrity:** {}.\n",
            md(Some(&self.verification.sentence()))
        ));
        if !self.verification.is_verified() {
            out.push_str(
                "  Events from the break on may have been altered, removed or added; the \
                 counts below are what the files say, not a verified record.\n",
            );
        }
        let trail = self.trail_events.len() as u64;
        out.push_str(&format!(
            "- **Events in the period:** {} ({} call{}, {trail} recorded by the trail itself)\n",
            self.events,
            self.events - trail,
            plural(self.events - trail),
        ));
        if self.undated_events > 0 || self.skipped_lines > 0 {
            out.push_str(&format!(
                "- **Not counted:** {} event{} without a readable time, {} line{} that {} not \
                 an audit event (torn or damaged)\n",
                self.undated_events,
                plural(self.undated_events),
                self.skipped_lines,
                plural(self.skipped_lines),
                if self.skipped_lines == 1 { "is" } else { "are" }
            ));
        }
        out.push('\n');

        out.push_str("## Calls\n\n");
        let rows: Vec<Vec<String>> = self
            .calls
            .iter()
            .map(|c| {
                vec![
                    md(Some(&c.action)),
                    c.allowed.to_string(),
                    c.denied.to_string(),
                    c.rejected.to_string(),
                    c.failed.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["Action", "Allowed", "Denied", "Rejected", "Failed"],
            &rows,
            "No calls in this period.",
        );

        out.push_str("## Reveals by caller and purpose\n\n");
        out.push_str(
            "Items of allowed Detokenize calls, by the reveal level the policy gave. A value \
             is revealed at level full or masked; none reveals nothing of it.\n\n",
        );
        let mut pivot: BTreeMap<RevealKey<'_>, Levels> = BTreeMap::new();
        for r in &self.reveals {
            let slot = pivot.entry((&r.caller, &r.purpose, &r.kind)).or_default();
            if let Some(i) = LEVELS.iter().position(|l| *l == r.level) {
                slot[i] += r.count;
            }
        }
        let rows: Vec<Vec<String>> = pivot
            .iter()
            .map(|((caller, purpose, kind), n)| {
                vec![
                    mdo(caller),
                    mdo(purpose),
                    mdo(kind),
                    n[0].to_string(),
                    n[1].to_string(),
                    n[2].to_string(),
                    (n[0] + n[1]).to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "Caller",
                "Purpose",
                "Field kind",
                "Full",
                "Masked",
                "None",
                "Values revealed",
            ],
            &rows,
            "No value was revealed in this period.",
        );

        out.push_str("## Tokenized values\n\n");
        let rows: Vec<Vec<String>> = self
            .tokenized
            .iter()
            .map(|t| {
                vec![
                    mdo(&t.caller),
                    mdo(&t.purpose),
                    mdo(&t.kind),
                    t.count.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["Caller", "Purpose", "Field kind", "Stored"],
            &rows,
            "No value was tokenized in this period.",
        );

        out.push_str("## Denials by reason\n\n");
        out.push_str("### Refused calls\n\n");
        out.push_str(
            "Calls refused as a whole: denied for who asked (policy, identity), rejected for \
             what was asked (arguments, state).\n\n",
        );
        let rows: Vec<Vec<String>> = self
            .refused_calls
            .iter()
            .map(|r| {
                vec![
                    mdo(&r.caller),
                    mdo(&r.purpose),
                    md(Some(&r.action)),
                    r.decision.as_str().to_owned(),
                    md(Some(&r.code)),
                    mdo(&r.reason),
                    r.calls.to_string(),
                    r.tokens.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "Caller",
                "Purpose",
                "Action",
                "Decision",
                "Code",
                "Reason",
                "Calls",
                "Tokens asked",
            ],
            &rows,
            "No call was refused in this period.",
        );
        out.push_str("### Refused items\n\n");
        out.push_str(
            "Items that got an error within calls the vault carried out, by error code \
             (permission_denied: the policy refused it; not_found, not_issued: no such token; \
             invalid_argument: malformed).\n\n",
        );
        let rows: Vec<Vec<String>> = self
            .refused_items
            .iter()
            .map(|r| {
                vec![
                    mdo(&r.caller),
                    mdo(&r.purpose),
                    md(Some(&r.action)),
                    mdo(&r.kind),
                    md(Some(&r.code)),
                    r.count.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["Caller", "Purpose", "Action", "Field kind", "Code", "Items"],
            &rows,
            "No item was refused in this period.",
        );

        out.push_str("## Key operations\n\n");
        let rows: Vec<Vec<String>> = self
            .key_operations
            .iter()
            .map(|k| {
                let details: Vec<String> = k
                    .details
                    .iter()
                    .map(|(name, v)| match v {
                        serde_json::Value::String(s) => format!("{name}={s}"),
                        other => format!("{name}={other}"),
                    })
                    .collect();
                vec![
                    md(Some(&k.time)),
                    mdo(&k.caller),
                    md(Some(&k.action)),
                    k.decision.as_str().to_owned(),
                    md(Some(&k.code)),
                    md(Some(&details.join(", "))),
                    mdo(&k.reason),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "Time",
                "Caller",
                "Operation",
                "Decision",
                "Code",
                "Details",
                "Reason",
            ],
            &rows,
            "No key operation in this period.",
        );

        out.push_str(&format!(
            "## Busiest callers\n\nBy values revealed (full or masked), the top {BUSIEST}.\n\n"
        ));
        let rows: Vec<Vec<String>> = self
            .busiest_callers
            .iter()
            .enumerate()
            .map(|(i, b)| {
                vec![
                    (i + 1).to_string(),
                    mdo(&b.caller),
                    b.values_revealed.to_string(),
                    b.full.to_string(),
                    b.masked.to_string(),
                    b.calls.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "#",
                "Caller",
                "Values revealed",
                "Full",
                "Masked",
                "Detokenize calls",
            ],
            &rows,
            "No value was revealed in this period.",
        );

        out.push_str("## Grants\n\n");
        out.push_str(
            "Approved-workflow grants the period's events name: who requested and approved \
             each, its state changes in the period, the values revealed under it (Calls: \
             reveals carried out under it; Used: its count after the last of them) and the \
             reveals naming it that were refused.\n\n",
        );
        let rows: Vec<Vec<String>> = self
            .grants
            .iter()
            .map(|g| {
                let changes: Vec<String> = g
                    .changes
                    .iter()
                    .map(|c| match &c.by {
                        Some(by) => format!("{} by {by} at {}", c.state, c.time),
                        None => format!("{} at {}", c.state, c.time),
                    })
                    .collect();
                vec![
                    md(Some(&g.grant)),
                    mdo(&g.caller),
                    mdo(&g.purpose),
                    mdo(&g.requested_by),
                    md(Some(&g.approvers.join(", "))),
                    md(Some(&changes.join("; "))),
                    g.max_reveals.map_or("-".into(), |m| m.to_string()),
                    g.values_revealed.to_string(),
                    g.calls.to_string(),
                    g.last_used.map_or("-".into(), |u| u.to_string()),
                    g.refused_calls.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "Grant",
                "Workflow",
                "Purpose",
                "Requested by",
                "Approvers",
                "State changes",
                "Max reveals",
                "Values revealed",
                "Calls",
                "Used",
                "Refused calls",
            ],
            &rows,
            "No grant was named in this period.",
        );

        out.push_str("## Trail events\n\n");
        out.push_str(
            "What the trail recorded about itself: a new chain (and why), a new file, the \
             audit sink recovering from an outage.\n\n",
        );
        let rows: Vec<Vec<String>> = self
            .trail_events
            .iter()
            .map(|t| vec![md(Some(&t.time)), md(Some(&t.action)), mdo(&t.reason)])
            .collect();
        table(
            &mut out,
            &["Time", "Event", "Reason"],
            &rows,
            "None in this period.",
        );
        out
    }

    /// The report as CSV (the row shape is in the module documentation).
    pub fn csv(&self) -> String {
        let mut out = String::from(CSV_HEADER);
        out.push('\n');
        let mut row = |cells: [&str; 10]| {
            let cells: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        };
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        row(["period_start", &self.since, "", "", "", "", "", "", "", ""]);
        row(["period_end", &self.until, "", "", "", "", "", "", "", ""]);
        let (outcome, events) = match &self.verification {
            Verification::Verified { events, .. } => ("verified", events.to_string()),
            Verification::Broken { .. } => ("broken", String::new()),
        };
        row([
            "verification",
            "",
            "",
            "",
            "",
            "",
            outcome,
            "",
            &self.verification.sentence(),
            &events,
        ]);
        for c in &self.calls {
            for (decision, n) in [
                ("allowed", c.allowed),
                ("denied", c.denied),
                ("rejected", c.rejected),
                ("failed", c.failed),
            ] {
                if n > 0 {
                    row([
                        "calls",
                        "",
                        "",
                        "",
                        &c.action,
                        "",
                        decision,
                        "",
                        "",
                        &n.to_string(),
                    ]);
                }
            }
        }
        for r in &self.reveals {
            row([
                "reveal",
                "",
                &o(&r.caller),
                &o(&r.purpose),
                "detokenize",
                &o(&r.kind),
                &r.level,
                "",
                "",
                &r.count.to_string(),
            ]);
        }
        for t in &self.tokenized {
            row([
                "tokenize",
                "",
                &o(&t.caller),
                &o(&t.purpose),
                "tokenize",
                &o(&t.kind),
                "stored",
                "",
                "",
                &t.count.to_string(),
            ]);
        }
        for r in &self.refused_calls {
            row([
                "refused_call",
                "",
                &o(&r.caller),
                &o(&r.purpose),
                &r.action,
                "",
                r.decision.as_str(),
                &r.code,
                &o(&r.reason),
                &r.calls.to_string(),
            ]);
        }
        for r in &self.refused_items {
            row([
                "refused_item",
                "",
                &o(&r.caller),
                &o(&r.purpose),
                &r.action,
                &o(&r.kind),
                "",
                &r.code,
                "",
                &r.count.to_string(),
            ]);
        }
        for k in &self.key_operations {
            row([
                "key_operation",
                &k.time,
                &o(&k.caller),
                "",
                &k.action,
                "",
                k.decision.as_str(),
                &k.code,
                &o(&k.reason),
                "1",
            ]);
        }
        for b in &self.busiest_callers {
            row([
                "busiest_caller",
                "",
                &o(&b.caller),
                "",
                "",
                "",
                "",
                "",
                "",
                &b.values_revealed.to_string(),
            ]);
        }
        for g in &self.grants {
            let last = g.last_state().unwrap_or_default();
            let counts = [
                ("grant", g.values_revealed),
                ("grant_refused", g.refused_calls),
            ];
            // A grant row always; a refused row when some were refused.
            for (section, count) in counts
                .into_iter()
                .filter(|(section, n)| *section == "grant" || *n > 0)
            {
                row([
                    section,
                    "",
                    &o(&g.caller),
                    &o(&g.purpose),
                    "detokenize",
                    "",
                    last,
                    "",
                    &g.grant,
                    &count.to_string(),
                ]);
            }
            for c in &g.changes {
                row([
                    "grant_change",
                    &c.time,
                    &o(&c.by),
                    &o(&g.purpose),
                    &c.action,
                    "",
                    &c.state,
                    "",
                    &g.grant,
                    "1",
                ]);
            }
        }
        for t in &self.trail_events {
            row([
                "trail",
                &t.time,
                "",
                "",
                &t.action,
                "",
                "",
                "",
                &o(&t.reason),
                "1",
            ]);
        }
        out
    }

    /// The report as one JSON object (pretty-printed).
    pub fn json(&self) -> String {
        // Strings, numbers, maps of JSON values: serializing cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }
}

/// The CSV header (every row has these ten cells).
pub const CSV_HEADER: &str = "section,time,caller,purpose,action,kind,outcome,code,reason,count";

/// A CSV cell (RFC 4180): quoted when it holds a comma, a quote or a line
/// break. A cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`
/// first) gets a leading `'` (an identity comes from a certificate and may
/// hold anything).
fn csv_cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::super::chain::ChainState;
    use super::super::event::Item;
    use super::super::search::tests::{at, item, key, sealed};
    use super::super::verify::{verify_files, CHAIN_START, FILE_START};
    use super::*;

    const SUPPORT: &str = "spiffe://dev.fieldvault.local/support";
    const COURIER: &str = "spiffe://dev.fieldvault.local/courier";
    const ROTATOR: &str = "spiffe://dev.fieldvault.local/rotator";
    const ANALYST: &str = "spiffe://dev.fieldvault.local/analyst";

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn call(time: &str, action: &str, caller: &str, purpose: Option<&str>) -> Event {
        let mut e = at(time, action);
        e.caller = Some(caller.into());
        e.purpose = purpose.map(Into::into);
        e
    }

    /// A known sequence of calls on 2026-11-27, with one before and one
    /// after that day.
    pub(crate) fn known_calls() -> Vec<Event> {
        let mut v = Vec::new();
        // Before the period: not counted.
        let mut e = call(
            "2026-11-26T23:59:59.999Z",
            "detokenize",
            SUPPORT,
            Some("callback"),
        );
        e.items = vec![item("fv1_old", "phone", "full")];
        v.push(e);
        // Tokenize: 3 phones and an address by support, 1 failed.
        let mut e = call("2026-11-27T08:00:00.000Z", "tokenize", SUPPORT, None);
        e.items = vec![
            item("fv1_p1", "phone", "stored"),
            item("fv1_p2", "phone", "stored"),
            item("fv1_a1", "address", "stored"),
            Item {
                token: None,
                kind: Some("phone".into()),
                outcome: "invalid_argument".into(),
                rule: None,
            },
        ];
        v.push(e);
        let mut e = call("2026-11-27T08:00:01.000Z", "tokenize", SUPPORT, None);
        e.items = vec![item("fv1_p3", "phone", "stored")];
        v.push(e);
        // Support reveals: 2 full phones, 1 masked phone, 1 masked
        // address, 1 not found.
        let mut e = call(
            "2026-11-27T09:00:00.000Z",
            "detokenize",
            SUPPORT,
            Some("callback"),
        );
        e.items = vec![
            item("fv1_p1", "phone", "full"),
            item("fv1_a1", "address", "masked"),
            item("fv1_zz", "phone", "not_found"),
        ];
        v.push(e);
        let mut e = call(
            "2026-11-27T09:05:00.000Z",
            "detokenize",
            SUPPORT,
            Some("callback"),
        );
        e.items = vec![
            item("fv1_p2", "phone", "full"),
            item("fv1_p3", "phone", "masked"),
        ];
        v.push(e);
        // Support, another purpose: a phone at level none.
        let mut e = call(
            "2026-11-27T09:10:00.000Z",
            "detokenize",
            SUPPORT,
            Some("fraud"),
        );
        e.items = vec![item("fv1_p3", "phone", "none")];
        v.push(e);
        // An analyst whose reveals show nothing: not among the busiest.
        let mut e = call(
            "2026-11-27T09:20:00.000Z",
            "detokenize",
            ANALYST,
            Some("fraud"),
        );
        e.items = vec![item("fv1_p3", "phone", "none")];
        v.push(e);
        // Courier: 3 masked addresses, one item permission_denied.
        let mut e = call(
            "2026-11-27T10:00:00.000Z",
            "detokenize",
            COURIER,
            Some("delivery"),
        );
        e.items = vec![
            item("fv1_a1", "address", "masked"),
            item("fv1_a1", "address", "masked"),
            item("fv1_a1", "address", "masked"),
            item("fv1_p1", "phone", "permission_denied"),
        ];
        v.push(e);
        // Courier denied twice for an unknown purpose (2 and 1 tokens).
        for (t, n) in [
            ("2026-11-27T10:01:00.000Z", 2),
            ("2026-11-27T10:02:00.000Z", 1),
        ] {
            let mut e = call(t, "detokenize", COURIER, Some("marketing"));
            e.decision = Decision::Denied;
            e.code = "permission_denied".into();
            e.reason = Some("unknown purpose".into());
            e.items = (0..n)
                .map(|i| item(&format!("fv1_d{i}"), "phone", "permission_denied"))
                .collect();
            v.push(e);
        }
        // A malformed request, rejected; an outage, failed.
        let mut e = call("2026-11-27T10:03:00.000Z", "detokenize", COURIER, None);
        e.decision = Decision::Rejected;
        e.code = "invalid_argument".into();
        e.reason = Some("purpose: is required".into());
        v.push(e);
        let mut e = call(
            "2026-11-27T10:04:00.000Z",
            "detokenize",
            SUPPORT,
            Some("callback"),
        );
        e.decision = Decision::Failed;
        e.code = "unavailable".into();
        e.items = vec![item("fv1_p1", "phone", "unavailable")];
        v.push(e);
        // Key operations: a rotation, a refused retire, a status read.
        let mut e = call(
            "2026-11-27T11:00:00.000Z",
            "keys.rotate_data_key",
            ROTATOR,
            None,
        );
        e.details
            .insert("new_version".into(), serde_json::Value::from(2));
        v.push(e);
        let mut e = call(
            "2026-11-27T11:01:00.000Z",
            "keys.retire_key_version",
            SUPPORT,
            None,
        );
        e.decision = Decision::Denied;
        e.code = "permission_denied".into();
        e.reason = Some("no rule allows keys".into());
        v.push(e);
        v.push(call(
            "2026-11-27T11:02:00.000Z",
            "keys.get_key_status",
            ROTATOR,
            None,
        ));
        let mut e = at("2026-11-27T12:00:00.000Z", "audit.sink_recovered");
        e.reason = Some("the audit file is writable again".into());
        v.push(e);
        // At the end of the period: not counted.
        let mut e = call(
            "2026-11-28T00:00:00.000Z",
            "detokenize",
            COURIER,
            Some("delivery"),
        );
        e.items = vec![item("fv1_a1", "address", "full")];
        v.push(e);
        v
    }

    fn known_report() -> (Report, tempfile::TempDir) {
        let dir = ok(tempfile::tempdir());
        let calls = known_calls();
        let (first, state) = sealed(ChainState::GENESIS, CHAIN_START, &calls[..6]);
        let (second, _) = sealed(state, FILE_START, &calls[6..]);
        let paths = vec![dir.path().join("audit.log.1"), dir.path().join("audit.log")];
        ok(std::fs::write(&paths[0], first));
        ok(std::fs::write(&paths[1], second));
        let verification = Verification::of(verify_files(&key(), &paths), true);
        let since = ok(super::super::search::parse_time("2026-11-27"));
        let until = ok(super::super::search::parse_time("2026-11-28"));
        (ok(build(&paths, since, until, verification)), dir)
    }

    fn reveal(caller: &str, purpose: &str, kind: &str, level: &str, count: u64) -> RevealCount {
        RevealCount {
            caller: Some(caller.into()),
            purpose: Some(purpose.into()),
            kind: Some(kind.into()),
            level: level.into(),
            count,
        }
    }

    #[test]
    fn a_report_over_a_known_sequence_of_calls_gives_exactly_the_expected_counts() {
        let (r, _dir) = known_report();
        assert_eq!(r.since, "2026-11-27T00:00:00.000Z");
        assert_eq!(r.until, "2026-11-28T00:00:00.000Z");
        // 15 calls in the day and the start events of the two files
        // (00:00:00 on the 27th); not the two calls outside it.
        assert_eq!(r.events, 17);
        assert_eq!(
            r.reveals,
            vec![
                reveal(ANALYST, "fraud", "phone", "none", 1),
                reveal(COURIER, "delivery", "address", "masked", 3),
                reveal(SUPPORT, "callback", "address", "masked", 1),
                reveal(SUPPORT, "callback", "phone", "full", 2),
                reveal(SUPPORT, "callback", "phone", "masked", 1),
                reveal(SUPPORT, "fraud", "phone", "none", 1),
            ]
        );
        assert_eq!(
            r.tokenized,
            vec![
                TokenizeCount {
                    caller: Some(SUPPORT.into()),
                    purpose: None,
                    kind: Some("address".into()),
                    count: 1
                },
                TokenizeCount {
                    caller: Some(SUPPORT.into()),
                    purpose: None,
                    kind: Some("phone".into()),
                    count: 3
                },
            ]
        );
        assert_eq!(
            r.refused_calls,
            vec![
                RefusedCall {
                    caller: Some(COURIER.into()),
                    purpose: None,
                    action: "detokenize".into(),
                    decision: Decision::Rejected,
                    code: "invalid_argument".into(),
                    reason: Some("purpose: is required".into()),
                    calls: 1,
                    tokens: 0,
                },
                RefusedCall {
                    caller: Some(COURIER.into()),
                    purpose: Some("marketing".into()),
                    action: "detokenize".into(),
                    decision: Decision::Denied,
                    code: "permission_denied".into(),
                    reason: Some("unknown purpose".into()),
                    calls: 2,
                    tokens: 3,
                },
                RefusedCall {
                    caller: Some(SUPPORT.into()),
                    purpose: None,
                    action: "keys.retire_key_version".into(),
                    decision: Decision::Denied,
                    code: "permission_denied".into(),
                    reason: Some("no rule allows keys".into()),
                    calls: 1,
                    tokens: 0,
                },
            ]
        );
        let refused_item =
            |caller: &str, purpose: Option<&str>, action: &str, kind: &str, code: &str| {
                RefusedItem {
                    caller: Some(caller.into()),
                    purpose: purpose.map(Into::into),
                    action: action.into(),
                    kind: Some(kind.into()),
                    code: code.into(),
                    count: 1,
                }
            };
        assert_eq!(
            r.refused_items,
            vec![
                refused_item(
                    COURIER,
                    Some("delivery"),
                    "detokenize",
                    "phone",
                    "permission_denied"
                ),
                refused_item(SUPPORT, None, "tokenize", "phone", "invalid_argument"),
                refused_item(
                    SUPPORT,
                    Some("callback"),
                    "detokenize",
                    "phone",
                    "not_found"
                ),
            ]
        );
        let ops: Vec<(&str, &str, Decision)> = r
            .key_operations
            .iter()
            .map(|k| (k.time.as_str(), k.action.as_str(), k.decision))
            .collect();
        assert_eq!(
            ops,
            vec![
                (
                    "2026-11-27T11:00:00.000Z",
                    "keys.rotate_data_key",
                    Decision::Allowed
                ),
                (
                    "2026-11-27T11:01:00.000Z",
                    "keys.retire_key_version",
                    Decision::Denied
                ),
            ]
        );
        assert_eq!(r.key_operations[0].caller.as_deref(), Some(ROTATOR));
        assert_eq!(
            r.busiest_callers,
            // The analyst revealed nothing (level none only).
            vec![
                BusyCaller {
                    caller: Some(SUPPORT.into()),
                    values_revealed: 4,
                    full: 2,
                    masked: 2,
                    none: 1,
                    calls: 3,
                },
                BusyCaller {
                    caller: Some(COURIER.into()),
                    values_revealed: 3,
                    full: 0,
                    masked: 3,
                    none: 0,
                    calls: 1,
                },
            ]
        );
        let calls: Vec<(&str, [u64; 4])> = r
            .calls
            .iter()
            .map(|c| {
                (
                    c.action.as_str(),
                    [c.allowed, c.denied, c.rejected, c.failed],
                )
            })
            .collect();
        assert_eq!(
            calls,
            vec![
                ("detokenize", [5, 2, 1, 1]),
                ("keys.get_key_status", [1, 0, 0, 0]),
                ("keys.retire_key_version", [0, 1, 0, 0]),
                ("keys.rotate_data_key", [1, 0, 0, 0]),
                ("tokenize", [2, 0, 0, 0]),
            ]
        );
        let trail: Vec<&str> = r.trail_events.iter().map(|t| t.action.as_str()).collect();
        assert_eq!(
            trail,
            [
                "audit.chain_start",
                "audit.file_start",
                "audit.sink_recovered"
            ]
        );
        assert!(
            matches!(
                r.verification,
                Verification::Verified {
                    files: 2,
                    events: 19,
                    first_seq: 0,
                    last_seq: 18,
                    from_chain_start: true,
                    ..
                }
            ),
            "{:?}",
            r.verification
        );
    }

    #[test]
    fn the_markdown_report_reads_on_its_own_with_every_section() {
        let (r, _dir) = known_report();
        let md = r.markdown();
        assert!(md.starts_with("# fieldvault audit report\n"), "{md}");
        for needle in [
            "**Period:** 2026-11-27T00:00:00.000Z to 2026-11-28T00:00:00.000Z",
            "**Integrity:** the chain verified: 19 events (sequence 0 to 18) in 2 files",
            "**Events in the period:** 17 (14 calls, 3 recorded by the trail itself)",
            "## Reveals by caller and purpose",
            "| spiffe://dev.fieldvault.local/support | callback | phone | 2 | 1 | 0 | 3 |",
            "| spiffe://dev.fieldvault.local/courier | delivery | address | 0 | 3 | 0 | 3 |",
            "| spiffe://dev.fieldvault.local/support | - | phone | 3 |",
            "| spiffe://dev.fieldvault.local/courier | marketing | detokenize | denied | permission_denied | unknown purpose | 2 | 3 |",
            "| 2026-11-27T11:00:00.000Z | spiffe://dev.fieldvault.local/rotator | keys.rotate_data_key | allowed | ok | new_version=2 | - |",
            "| 1 | spiffe://dev.fieldvault.local/support | 4 | 2 | 2 | 3 |",
            "| 2 | spiffe://dev.fieldvault.local/courier | 3 | 0 | 3 | 1 |",
            "| detokenize | 5 | 2 | 1 | 1 |",
            "audit.sink_recovered | the audit file is writable again |",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
    }

    #[test]
    fn a_broken_trail_is_said_at_the_top_of_every_form() {
        let (mut r, _dir) = known_report();
        r.verification = Verification::Broken {
            file: "audit.log".into(),
            line: Some(4),
            reason: "event 3 does not verify".into(),
        };
        let md = r.markdown();
        assert!(
            md.contains("**Integrity:** the chain DOES NOT VERIFY: audit.log, line 4: event 3 does not verify."),
            "{md}"
        );
        assert!(r.csv().contains("verification,,,,,,broken,,"));
        assert!(r.json().contains("\"status\": \"broken\""));
    }

    #[test]
    fn the_csv_report_has_one_row_shape_and_exact_counts() {
        let (r, _dir) = known_report();
        let csv = r.csv();
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some(CSV_HEADER));
        for needle in [
            "period_start,2026-11-27T00:00:00.000Z,,,,,,,,",
            "reveal,,spiffe://dev.fieldvault.local/support,callback,detokenize,phone,full,,,2",
            "reveal,,spiffe://dev.fieldvault.local/courier,delivery,detokenize,address,masked,,,3",
            "tokenize,,spiffe://dev.fieldvault.local/support,,tokenize,phone,stored,,,3",
            "refused_call,,spiffe://dev.fieldvault.local/courier,marketing,detokenize,,denied,permission_denied,unknown purpose,2",
            "refused_call,,spiffe://dev.fieldvault.local/courier,,detokenize,,rejected,invalid_argument,purpose: is required,1",
            "refused_item,,spiffe://dev.fieldvault.local/support,callback,detokenize,phone,,not_found,,1",
            "key_operation,2026-11-27T11:00:00.000Z,spiffe://dev.fieldvault.local/rotator,,keys.rotate_data_key,,allowed,ok,,1",
            "busiest_caller,,spiffe://dev.fieldvault.local/courier,,,,,,,3",
            "calls,,,,detokenize,,failed,,,1",
        ] {
            assert!(csv.lines().any(|l| l == needle), "missing {needle:?} in\n{csv}");
        }
        // Every row has the header's ten cells (no cell above holds a comma).
        assert!(csv
            .lines()
            .filter(|l| !l.starts_with("verification"))
            .all(|l| l.split(',').count() == 10));
    }

    #[test]
    fn lines_and_events_that_cannot_be_counted_are_said() {
        let dir = ok(tempfile::tempdir());
        let mut undated = at("sometime", "detokenize");
        undated.caller = Some(SUPPORT.into());
        let (mut text, _) = sealed(ChainState::GENESIS, CHAIN_START, &known_calls()[1..3]);
        let (line, _) = super::super::chain::seal_line(
            &key(),
            ChainState {
                next_seq: 3,
                head: [0; 32],
            },
            &undated.to_json(),
        );
        text.push_str(&line);
        text.push_str("{\"seq\":4,\"prev\n");
        let path = dir.path().join("audit.log");
        ok(std::fs::write(&path, text));
        let since = ok(super::super::search::parse_time("2026-11-27"));
        let until = ok(super::super::search::parse_time("2026-11-28"));
        let broken = Verification::Broken {
            file: "audit.log".into(),
            line: Some(4),
            reason: "r".into(),
        };
        let r = ok(build(&[path], since, until, broken));
        assert_eq!((r.events, r.undated_events, r.skipped_lines), (3, 1, 1));
        let md = r.markdown();
        assert!(
            md.contains(
                "- **Not counted:** 1 event without a readable time, 1 line that is not an audit \
                 event (torn or damaged)\n"
            ),
            "{md}"
        );
    }

    #[test]
    fn the_markdown_names_five_files_at_most() {
        let files: Vec<String> = (0..7).map(|i| format!("audit.log.{i}")).collect();
        assert_eq!(
            file_list(&files),
            "audit.log.0, audit.log.1, audit.log.2, audit.log.3, …, audit.log.6"
        );
        assert_eq!(file_list(&files[..5]).matches(", ").count(), 4);
    }

    #[test]
    fn reveal_levels_sort_by_name_as_they_are_listed() {
        let mut sorted = LEVELS;
        sorted.sort();
        assert_eq!(sorted, LEVELS);
    }

    #[test]
    fn csv_cells_are_quoted_and_defused_and_markdown_cells_escaped() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_cell("-1,2"), "\"'-1,2\"");
        assert_eq!(md(Some("a|b <script>")), "a\\|b \\<script\\>");
        assert_eq!(md(Some("x\u{1b}y")), "x\\\\u{1b}y");
        assert_eq!(md(None), "-");
    }

    #[test]
    fn the_json_report_round_trips() {
        let (r, _dir) = known_report();
        let back: Report = ok(serde_json::from_str(&r.json()));
        assert_eq!(back, r);
    }

    const FULFILMENT: &str = "spiffe://dev.fieldvault.local/fulfilment";
    const ADMIN: &str = "spiffe://dev.fieldvault.local/admin";
    const APPROVER1: &str = "spiffe://dev.fieldvault.local/approver1";
    const APPROVER2: &str = "spiffe://dev.fieldvault.local/approver2";
    const G1: &str = "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab";
    const G2: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

    /// An event of `action` by `caller` naming `grant`, with `details`.
    fn grant_event(
        time: &str,
        action: &str,
        caller: &str,
        grant: &str,
        details: &[(&str, serde_json::Value)],
    ) -> Event {
        let mut e = call(time, action, caller, Some("shipping"));
        e.details.insert("grant".into(), grant.into());
        for (name, value) in details {
            e.details.insert((*name).into(), value.clone());
        }
        e
    }

    fn approvers(names: &[&str]) -> serde_json::Value {
        names.iter().map(|n| serde_json::Value::from(*n)).collect()
    }

    /// G1: requested by admin for fulfilment in the period, approved twice
    /// (after the requester's own approval was refused), 5 values revealed
    /// in two calls (the second uses its last unit), then a reveal refused.
    /// G2: requested and approved before the period; a reveal under it,
    /// its revocation and a reveal refused after it. Then a detokenize that
    /// names no grant, and a grant event outside the period.
    fn grant_calls() -> Vec<Event> {
        let facts = |state: &str, approved: &[&str], used: u64| {
            vec![
                ("grant_caller", FULFILMENT.into()),
                ("grant_requested_by", ADMIN.into()),
                ("grant_approvers", approvers(approved)),
                ("grant_state", state.into()),
                ("grant_used", used.into()),
                ("grant_max_reveals", 5.into()),
            ]
        };
        let mut v = vec![grant_event(
            "2026-11-27T08:00:00.000Z",
            "grant.request",
            ADMIN,
            G1,
            &facts("pending", &[], 0),
        )];
        let mut refused = grant_event(
            "2026-11-27T08:01:00.000Z",
            "grant.approve",
            ADMIN,
            G1,
            &facts("pending", &[], 0),
        );
        refused.decision = Decision::Denied;
        refused.code = "permission_denied".into();
        v.push(refused);
        v.push(grant_event(
            "2026-11-27T08:02:00.000Z",
            "grant.approve",
            APPROVER1,
            G1,
            &facts("pending", &[APPROVER1], 0),
        ));
        v.push(grant_event(
            "2026-11-27T08:03:00.000Z",
            "grant.approve",
            APPROVER2,
            G1,
            &facts("active", &[APPROVER1, APPROVER2], 0),
        ));
        let under = |time: &str, grant: &str, units: u64, used: u64, who: &[&str]| {
            let mut e = grant_event(
                time,
                "detokenize",
                FULFILMENT,
                grant,
                &[
                    ("grant_requested_by", ADMIN.into()),
                    ("grant_approvers", approvers(who)),
                    ("grant_units", units.into()),
                    ("grant_used", used.into()),
                ],
            );
            e.items = (0..units)
                .map(|i| item(&format!("fv1_a{i}"), "address", "full"))
                .collect();
            e
        };
        v.push(under(
            "2026-11-27T09:00:00.000Z",
            G1,
            3,
            3,
            &[APPROVER1, APPROVER2],
        ));
        v.push(under(
            "2026-11-27T09:01:00.000Z",
            G1,
            2,
            5,
            &[APPROVER1, APPROVER2],
        ));
        let mut exhausted = grant_event(
            "2026-11-27T09:02:00.000Z",
            "detokenize",
            FULFILMENT,
            G1,
            &[("grant_requested_by", ADMIN.into())],
        );
        exhausted.decision = Decision::Rejected;
        exhausted.code = "failed_precondition".into();
        exhausted.reason = Some("grant is exhausted (5 of 5 reveals used)".into());
        exhausted.items = vec![item("fv1_a0", "address", "refused")];
        v.push(exhausted);
        // G2, approved before the period by approver2 and approver1.
        v.push(under(
            "2026-11-27T10:00:00.000Z",
            G2,
            1,
            41,
            &[APPROVER2, APPROVER1],
        ));
        let revoke = grant_event(
            "2026-11-27T10:05:00.000Z",
            "grant.revoke",
            APPROVER1,
            G2,
            &[
                ("grant_caller", FULFILMENT.into()),
                ("grant_requested_by", FULFILMENT.into()),
                ("grant_approvers", approvers(&[APPROVER2, APPROVER1])),
                ("grant_state", "revoked".into()),
                ("grant_used", 41.into()),
                ("grant_max_reveals", 100.into()),
            ],
        );
        v.push(revoke);
        for minute in ["06", "07"] {
            let mut refused = grant_event(
                &format!("2026-11-27T10:{minute}:00.000Z"),
                "detokenize",
                FULFILMENT,
                G2,
                &[("grant_requested_by", FULFILMENT.into())],
            );
            refused.decision = Decision::Rejected;
            refused.code = "failed_precondition".into();
            v.push(refused);
        }
        let mut plain = call(
            "2026-11-27T11:00:00.000Z",
            "detokenize",
            SUPPORT,
            Some("callback"),
        );
        plain.items = vec![item("fv1_p1", "phone", "full")];
        v.push(plain);
        // The next day: not counted.
        v.push(under(
            "2026-11-28T00:00:00.000Z",
            G1,
            1,
            6,
            &[APPROVER1, APPROVER2],
        ));
        v
    }

    fn grant_report() -> (Report, tempfile::TempDir) {
        let dir = ok(tempfile::tempdir());
        let (text, _) = sealed(ChainState::GENESIS, CHAIN_START, &grant_calls());
        let path = dir.path().join("audit.log");
        ok(std::fs::write(&path, text));
        let verification =
            Verification::of(verify_files(&key(), std::slice::from_ref(&path)), true);
        let since = ok(super::super::search::parse_time("2026-11-27"));
        let until = ok(super::super::search::parse_time("2026-11-28"));
        (ok(build(&[path], since, until, verification)), dir)
    }

    fn change(time: &str, state: &str, by: &str, action: &str) -> GrantChange {
        GrantChange {
            time: format!("2026-11-27T{time}:00.000Z"),
            state: state.into(),
            by: Some(by.into()),
            action: action.into(),
        }
    }

    #[test]
    fn the_report_shows_each_grant_with_its_approvers_state_changes_and_use() {
        let (r, _dir) = grant_report();
        assert_eq!(
            r.grants,
            vec![
                GrantUse {
                    grant: G1.into(),
                    caller: Some(FULFILMENT.into()),
                    purpose: Some("shipping".into()),
                    requested_by: Some(ADMIN.into()),
                    approvers: vec![APPROVER1.into(), APPROVER2.into()],
                    max_reveals: Some(5),
                    changes: vec![
                        change("08:00", "requested", ADMIN, "grant.request"),
                        change("08:02", "approved", APPROVER1, "grant.approve"),
                        change("08:03", "approved", APPROVER2, "grant.approve"),
                        change("08:03", "active", APPROVER2, "grant.approve"),
                        change("09:01", "exhausted", FULFILMENT, "detokenize"),
                    ],
                    values_revealed: 5,
                    calls: 2,
                    last_used: Some(5),
                    refused_calls: 1,
                },
                GrantUse {
                    grant: G2.into(),
                    caller: Some(FULFILMENT.into()),
                    purpose: Some("shipping".into()),
                    requested_by: Some(FULFILMENT.into()),
                    approvers: vec![APPROVER2.into(), APPROVER1.into()],
                    max_reveals: Some(100),
                    changes: vec![change("10:05", "revoked", APPROVER1, "grant.revoke")],
                    values_revealed: 1,
                    calls: 1,
                    last_used: Some(41),
                    refused_calls: 2,
                },
            ]
        );
        // The grant events count as calls too; the refused approval as a
        // refused call.
        assert!(r
            .refused_calls
            .iter()
            .any(|c| c.action == "grant.approve" && c.caller.as_deref() == Some(ADMIN)));
        assert!(r
            .calls
            .iter()
            .any(|c| c.action == "grant.approve" && (c.allowed, c.denied) == (2, 1)));
    }

    #[test]
    fn the_grants_section_reads_in_every_form() {
        let (r, _dir) = grant_report();
        let md = r.markdown();
        let g1_row = format!(
            "| {G1} | {FULFILMENT} | shipping | {ADMIN} | {APPROVER1}, {APPROVER2} | requested by \
             {ADMIN} at 2026-11-27T08:00:00.000Z; approved by {APPROVER1} at \
             2026-11-27T08:02:00.000Z; approved by {APPROVER2} at 2026-11-27T08:03:00.000Z; \
             active by {APPROVER2} at 2026-11-27T08:03:00.000Z; exhausted by {FULFILMENT} at \
             2026-11-27T09:01:00.000Z | 5 | 5 | 2 | 5 | 1 |"
        );
        let g2_row = format!(
            "| {G2} | {FULFILMENT} | shipping | {FULFILMENT} | {APPROVER2}, {APPROVER1} | revoked \
             by {APPROVER1} at 2026-11-27T10:05:00.000Z | 100 | 1 | 1 | 41 | 2 |"
        );
        for needle in [
            "## Grants\n",
            "| Grant | Workflow | Purpose | Requested by | Approvers | State changes | Max reveals \
             | Values revealed | Calls | Used | Refused calls |",
            "|---|---|---|---|---|---|---:|---:|---:|---:|---:|",
            &g1_row,
            &g2_row,
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        let csv = r.csv();
        for needle in [
            format!("grant,,{FULFILMENT},shipping,detokenize,,exhausted,,{G1},5"),
            format!("grant_refused,,{FULFILMENT},shipping,detokenize,,exhausted,,{G1},1"),
            format!(
                "grant_change,2026-11-27T08:03:00.000Z,{APPROVER2},shipping,grant.approve,,active,,{G1},1"
            ),
            format!("grant,,{FULFILMENT},shipping,detokenize,,revoked,,{G2},1"),
            format!("grant_refused,,{FULFILMENT},shipping,detokenize,,revoked,,{G2},2"),
            format!(
                "grant_change,2026-11-27T10:05:00.000Z,{APPROVER1},shipping,grant.revoke,,revoked,,{G2},1"
            ),
        ] {
            assert!(csv.lines().any(|l| l == needle), "missing {needle:?} in\n{csv}");
        }
        assert!(
            csv.lines()
                .filter(|l| !l.starts_with("verification"))
                .all(|l| l.split(',').count() == 10),
            "{csv}"
        );
        let json: serde_json::Value = ok(serde_json::from_str(&r.json()));
        assert_eq!(json["grants"][0]["grant"], G1);
        assert_eq!(json["grants"][0]["values_revealed"], 5);
        assert_eq!(json["grants"][1]["changes"][0]["state"], "revoked");
        let back: Report = ok(serde_json::from_str(&r.json()));
        assert_eq!(back, r);
    }

    #[test]
    fn a_report_without_grant_events_says_so_and_reads_older_json() {
        let (r, _dir) = known_report();
        assert!(r.grants.is_empty());
        assert!(r
            .markdown()
            .contains("## Grants\n\nApproved-workflow grants"));
        assert!(r.markdown().contains("No grant was named in this period."));
        // A report serialized before grants existed still reads.
        let mut json: serde_json::Value = ok(serde_json::from_str(&r.json()));
        json.as_object_mut().map(|o| o.remove("grants"));
        let back: Report = ok(serde_json::from_value(json));
        assert_eq!(back, r);
    }

    #[test]
    fn a_whole_trail_that_lost_its_first_file_does_not_verify() {
        let dir = ok(tempfile::tempdir());
        let calls = known_calls();
        let (_, state) = sealed(ChainState::GENESIS, CHAIN_START, &calls[..3]);
        let (second, _) = sealed(state, FILE_START, &calls[3..]);
        let path = dir.path().join("audit.log");
        ok(std::fs::write(&path, second));
        let whole = Verification::of(verify_files(&key(), std::slice::from_ref(&path)), true);
        assert!(
            matches!(&whole, Verification::Broken { line: Some(1), reason, .. }
                if reason.contains("events 0..3 are missing")),
            "{whole:?}"
        );
        let chosen = Verification::of(verify_files(&key(), &[path]), false);
        assert!(
            matches!(
                &chosen,
                Verification::Verified {
                    first_seq: 4,
                    from_chain_start: false,
                    ..
                }
            ),
            "{chosen:?}"
        );
        assert!(chosen
            .sentence()
            .contains("before 4 are in files not given"));
    }
}
