//! Who may do what with which field kinds, for which purposes, how much,
//! and who may do nothing at all.
//!
//! A policy is a list of allow rules; anything no rule allows is denied
//! (default deny). A denial says which dimension failed — a deny-listed
//! caller, caller, action, kind, purpose or justification — so an operator
//! can fix the policy, and never mentions a value.
//!
//! File format (TOML):
//! ```toml
//! version = 1
//! # Refused before any rule is consulted (a leaver, a compromised workload).
//! deny = ["spiffe://fieldvault.dev/leaver"]
//!
//! # When abuse freezes a caller (these are the defaults; count = 0: never).
//! [freeze]
//! quota_hits = { count = 3, within = "1h" }       # the 3rd quota refusal
//! unknown_tokens = { count = 100, within = "1h" } # more than 100 unknown tokens
//!
//! [[rules]]
//! name = "support: phone in full for callbacks"
//! callers = ["spiffe://fieldvault.dev/support"]
//! action = "detokenize"            # "tokenize", "detokenize", "keys" or "admin"
//! kinds = ["phone"]                # phone, email, address, national_id
//! purposes = ["callback"]          # required for detokenize rules
//! reveal = "full"                  # detokenize only: "full", "masked" or "none"
//! quota = ["100/minute", "2000/day"]   # detokenize only: values revealed per caller
//! justification = "SUP-[0-9]+"     # detokenize only: the whole justification must match
//!
//! [[rules]]
//! name = "fulfilment: addresses under an approved grant"
//! callers = ["spiffe://fieldvault.dev/fulfilment"]
//! action = "detokenize"
//! kinds = ["address"]
//! purposes = ["shipping"]
//! reveal = "full"
//! requires_grant = true            # allows nothing without an active grant
//! approvals = 2                    # distinct approvals that make a grant active (default 1)
//! approvers = ["spiffe://fieldvault.dev/approver1", "spiffe://fieldvault.dev/approver2"]
//!
//! [[rules]]
//! name = "the rotation job administers keys"
//! callers = ["spiffe://fieldvault.dev/rotator"]
//! action = "keys"                  # the KeyAdmin service: no kinds, purposes or reveal
//! ```
//! When several rules allow the same detokenize, the most revealing wins
//! (among equals, the first in the file); its quota counts the values it
//! reveals. A `keys` rule allows every KeyAdmin call (rotate, rewrap,
//! retire, status) and no data; an `admin` rule allows the Admin service
//! (callers, freezes, canaries) and no data; a `grants` rule lets an
//! operator request grants on a workflow's behalf, see every grant, revoke
//! any, and approve those whose rule lists no approvers.
//!
//! A rule with `requires_grant = true` allows nothing by itself: it counts
//! only for a detokenize that names an active grant covering the item
//! ([`Policy::decide_under_grant`]); without one, the denial says a grant
//! is needed.

mod quota;
#[cfg(test)]
mod tests;

pub use quota::{window_start, FreezeRules, Period, Quota, Trigger, MAX_QUOTA};

use super::{CallerId, FieldKind, Purpose};
use serde::Deserialize;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Tokenize,
    Detokenize,
    /// Key administration (the KeyAdmin service).
    Keys,
    /// Abuse administration (the Admin service): callers, freezes, canaries.
    Admin,
    /// Deleting tokens (their records and index entries), per token kind.
    Delete,
    /// Token metadata (kind, created, expires, key version, mode), never
    /// the value, per token kind.
    Inspect,
    /// Erasing every token of a value, per field kind.
    Erase,
    /// Listing every token of a value (subject access), per field kind,
    /// for a declared purpose.
    Export,
    /// Encrypted backups of the whole store.
    Backup,
    /// Grant administration (the Grants service on a workflow's behalf).
    Grants,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::Tokenize,
        Action::Detokenize,
        Action::Keys,
        Action::Admin,
        Action::Delete,
        Action::Inspect,
        Action::Erase,
        Action::Export,
        Action::Backup,
        Action::Grants,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Tokenize => "tokenize",
            Action::Detokenize => "detokenize",
            Action::Keys => "keys",
            Action::Admin => "admin",
            Action::Delete => "delete",
            Action::Inspect => "inspect",
            Action::Erase => "erase",
            Action::Export => "export",
            Action::Backup => "backup",
            Action::Grants => "grants",
        }
    }

    /// Whether rules for this action concern field kinds (else they allow
    /// an administrative service and no data).
    pub fn is_data(self) -> bool {
        !matches!(
            self,
            Action::Keys | Action::Admin | Action::Backup | Action::Grants
        )
    }

    /// What a rule for an administrative action allows (for errors).
    fn administers(self) -> &'static str {
        match self {
            Action::Admin => "the Admin service (callers, freezes, canaries)",
            Action::Backup => "backups of the whole store",
            Action::Grants => {
                "grant administration (requesting grants for workflows, seeing and revoking \
                 every grant)"
            }
            _ => "key administration",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown action '{s}' (expected one of: {})",
                    Action::ALL.map(Action::as_str).join(", ")
                )
            })
    }
}

/// How much of a value a reveal shows. Ordered: `None < Masked < Full`.
/// `None` reveals only metadata (the kind, a national ID's scheme).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevealLevel {
    None,
    Masked,
    Full,
}

impl RevealLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            RevealLevel::None => "none",
            RevealLevel::Masked => "masked",
            RevealLevel::Full => "full",
        }
    }

    /// Whether a value leaves at this level (what a quota counts).
    pub fn shows_value(self) -> bool {
        self != RevealLevel::None
    }
}

/// A justification pattern: the whole justification must match.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

/// The longest pattern a rule may give.
pub const MAX_PATTERN_LEN: usize = 512;

impl Pattern {
    pub fn new(source: &str) -> Result<Self, String> {
        if source.is_empty() {
            return Err("must not be empty (leave the field out to require nothing)".into());
        }
        if source.len() > MAX_PATTERN_LEN {
            return Err(format!("is longer than {MAX_PATTERN_LEN} characters"));
        }
        // Whole on its own first: a pattern that closes the group it is
        // wrapped in (`x)|(?:.*`) would escape the anchors.
        regex::RegexBuilder::new(source)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("'{source}' does not compile: {}", regex_error(&e)))?;
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("'{source}' does not compile: {}", regex_error(&e)))?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, justification: &str) -> bool {
        self.regex.is_match(justification)
    }
}

/// What a regex error says is wrong, on one line (its display draws the
/// pattern with a caret over several lines).
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: ").map(str::to_owned))
        .unwrap_or_else(|| text.replace('\n', " "))
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// The line of the file where the rule starts (0 when not from a file).
    pub line: usize,
    pub callers: Vec<String>,
    pub action: Action,
    /// Empty for a keys or admin rule (it allows no data).
    pub kinds: Vec<FieldKind>,
    /// Empty for a tokenize rule means "any purpose, or none".
    pub purposes: Vec<Purpose>,
    /// Set for detokenize rules, never for tokenize rules.
    pub reveal: Option<RevealLevel>,
    /// Detokenize only: values revealed per caller under this rule.
    pub quotas: Vec<Quota>,
    /// Detokenize only: the justification a request must give.
    pub justification: Option<Pattern>,
    /// Detokenize only: the rule allows nothing without an active grant.
    pub grant: Option<GrantRule>,
}

/// What a rule that requires a grant asks of one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRule {
    /// Distinct approvals that make a grant active (1 by default).
    pub approvals: u32,
    /// Who may approve; empty: callers with a `grants` rule.
    pub approvers: Vec<String>,
}

impl Rule {
    fn names(&self, caller: &CallerId) -> bool {
        self.callers.iter().any(|c| c == caller.as_str())
    }

    /// Whether the rule allows nothing without an active grant.
    pub fn requires_grant(&self) -> bool {
        self.grant.is_some()
    }

    /// The identities that may approve its grants (none unless it
    /// requires a grant and lists them).
    pub fn approvers(&self) -> impl Iterator<Item = &String> {
        self.grant.iter().flat_map(|g| g.approvers.iter())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
    deny: Vec<String>,
    freeze: FreezeRules,
}

/// The dimension of a request that no rule matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeniedOn {
    /// The caller is on the policy's deny list.
    DenyList,
    Caller,
    Action,
    Kind,
    Purpose,
    /// A rule matched but requires a justification the request did not
    /// give (or gave malformed).
    Justification,
    /// Only a rule that requires a grant matched, and the request named no
    /// grant that covers the item.
    Grant,
}

/// Why a request was denied. Its message names the caller, the action, the
/// kind and the purpose — all non-sensitive — and the failed dimension;
/// never the justification given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub on: DeniedOn,
    message: String,
}

impl Denial {
    /// A denial decided outside the rules (a grant's terms).
    pub fn new(on: DeniedOn, message: String) -> Self {
        Self { on, message }
    }
}

/// What a matching rule allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruling {
    /// `Some` for detokenize, `None` for tokenize.
    pub reveal: Option<RevealLevel>,
    /// The name of the rule that granted it (for the audit log).
    pub rule: String,
    /// The rule's line in the policy file.
    pub line: usize,
    /// The rule's quotas (detokenize).
    pub quotas: Vec<Quota>,
    /// Whether the rule requires a grant (each value it reveals consumes a
    /// unit of the grant).
    pub under_grant: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// TOML syntax, an unknown field or a value of the wrong type; the
    /// message names the line and column.
    #[error("policy: {0}")]
    Syntax(String),
    #[error("policy: unsupported version {0} (this build reads version 1)")]
    Version(u32),
    #[error("policy: line {line}: rules[{index}].{field}: {reason}")]
    Rule {
        index: usize,
        line: usize,
        field: &'static str,
        reason: String,
    },
    /// A top-level setting (`deny`, `freeze`).
    #[error("policy: line {line}: {field}: {reason}")]
    Setting {
        line: usize,
        field: String,
        reason: String,
    },
}

type Spanned<T> = toml::Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: u32,
    #[serde(default)]
    deny: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    freeze: Option<RawFreeze>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFreeze {
    quota_hits: Option<Spanned<RawTrigger>>,
    unknown_tokens: Option<Spanned<RawTrigger>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    count: u64,
    within: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    callers: Vec<String>,
    action: Action,
    /// Required for tokenize and detokenize rules; refused for keys and
    /// admin rules.
    kinds: Option<Vec<String>>,
    /// `None` when absent, so that a keys rule with `purposes = []` is
    /// refused too.
    purposes: Option<Vec<String>>,
    reveal: Option<RevealLevel>,
    quota: Option<OneOrMany>,
    justification: Option<String>,
    requires_grant: Option<bool>,
    approvals: Option<u32>,
    approvers: Option<Vec<String>>,
}

/// What [`Policy::grant_rule`] reads of a raw rule.
struct GrantFields<'a> {
    action: Action,
    reveal: Option<RevealLevel>,
    callers: &'a [String],
    requires_grant: Option<bool>,
    approvals: Option<u32>,
    approvers: Option<&'a [String]>,
}

/// The longest rule name (it is in audit events and quota counters).
pub const MAX_RULE_NAME: usize = 200;

/// The line (1-based) of byte `at` of `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The line where `field = …` is written in the table that starts at byte
/// `span.start` of `text` (up to the next table header).
fn field_line(text: &str, span: std::ops::Range<usize>, field: &str) -> Option<usize> {
    let body = text.get(span.start..)?;
    let mut at = 0;
    for (n, l) in body.split_inclusive('\n').enumerate() {
        let trimmed = l.trim_start();
        if n > 0 && trimmed.starts_with('[') {
            return None;
        }
        if let Some(rest) = trimmed.strip_prefix(field) {
            if rest.trim_start().starts_with('=') {
                return Some(line_of(text, span.start + at));
            }
        }
        at += l.len();
    }
    None
}

impl Policy {
    /// Parses and validates a policy file. Errors name the line, the rule
    /// and the field.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().replace('\n', "; ");
            PolicyError::Syntax(match e.span() {
                Some(span) => {
                    let line = line_of(text, span.start);
                    let line_start = text[..span.start.min(text.len())]
                        .rfind('\n')
                        .map_or(0, |i| i + 1);
                    let column = text[line_start..span.start.min(text.len())].chars().count() + 1;
                    format!("line {line}, column {column}: {message}")
                }
                None => message,
            })
        })?;
        if raw.version != 1 {
            return Err(PolicyError::Version(raw.version));
        }
        let deny = match raw.deny {
            None => Vec::new(),
            Some(list) => {
                let line = line_of(text, list.span().start);
                let list = list.into_inner();
                if let Some(bad) = list.iter().find(|c| CallerId::parse(c).is_err()) {
                    return Err(PolicyError::Setting {
                        line,
                        field: "deny".into(),
                        reason: format!("'{bad}' is neither a SPIFFE ID nor a common name"),
                    });
                }
                list
            }
        };
        let mut freeze = FreezeRules::default();
        if let Some(f) = raw.freeze {
            if let Some(t) = f.quota_hits {
                freeze.quota_hits = Self::trigger(text, "freeze.quota_hits", t)?;
            }
            if let Some(t) = f.unknown_tokens {
                freeze.unknown_tokens = Self::trigger(text, "freeze.unknown_tokens", t)?;
            }
        }
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(index, r)| {
                let span = r.span();
                let line = line_of(text, span.start);
                Self::rule(index, line, r.into_inner()).map_err(|e| match e {
                    // The line of the field itself, when the rule writes it
                    // as `field = …` (else the rule's first line).
                    PolicyError::Rule {
                        index,
                        line,
                        field,
                        reason,
                    } => PolicyError::Rule {
                        index,
                        line: field_line(text, span, field).unwrap_or(line),
                        field,
                        reason,
                    },
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (index, rule) in rules.iter().enumerate() {
            if let Some(first) = rules[..index].iter().find(|r| r.name == rule.name) {
                return Err(PolicyError::Rule {
                    index,
                    line: rule.line,
                    field: "name",
                    reason: format!(
                        "'{}' is also the name of the rule at line {}; names must be unique \
                         (audit events and quota counts use them)",
                        rule.name, first.line
                    ),
                });
            }
        }
        Ok(Self {
            rules,
            deny,
            freeze,
        })
    }

    fn trigger(text: &str, field: &str, raw: Spanned<RawTrigger>) -> Result<Trigger, PolicyError> {
        let line = line_of(text, raw.span().start);
        let raw = raw.into_inner();
        let bad = |reason: String| PolicyError::Setting {
            line,
            field: field.to_owned(),
            reason,
        };
        if raw.count == 0 {
            if raw.within.is_some() {
                return Err(bad("count = 0 never freezes; leave out 'within'".into()));
            }
            return Ok(Trigger {
                count: 0,
                window_ms: 1,
            });
        }
        let within = raw
            .within
            .ok_or_else(|| bad("must say 'within', e.g. within = \"1h\"".into()))?;
        let window = humantime::parse_duration(&within)
            .map_err(|e| bad(format!("within = '{within}': {e}")))?;
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        if !(1_000..=7 * 86_400_000).contains(&window_ms) || window_ms % 1_000 != 0 {
            return Err(bad(format!(
                "within = '{within}': must be whole seconds, from 1s to 7d"
            )));
        }
        if raw.count > MAX_QUOTA {
            return Err(bad(format!("count must be at most {MAX_QUOTA}")));
        }
        Ok(Trigger {
            count: raw.count,
            window_ms,
        })
    }

    fn rule(index: usize, line: usize, r: RawRule) -> Result<Rule, PolicyError> {
        let bad = |field: &'static str, reason: String| PolicyError::Rule {
            index,
            line,
            field,
            reason,
        };
        let named = r.name.is_some();
        let name = r.name.unwrap_or_else(|| format!("rules[{index}]"));
        if name.is_empty() || name.len() > MAX_RULE_NAME || name.chars().any(super::breaks_a_line) {
            return Err(bad(
                "name",
                format!(
                    "must be 1 to {MAX_RULE_NAME} bytes, without control, format or \
                     line-separator characters"
                ),
            ));
        }
        if r.callers.is_empty() {
            return Err(bad("callers", "must name at least one caller".into()));
        }
        if let Some(c) = r.callers.iter().find(|c| CallerId::parse(c).is_err()) {
            return Err(bad(
                "callers",
                format!("'{c}' is neither a SPIFFE ID nor a common name"),
            ));
        }
        if !r.action.is_data() {
            // Administration concerns no field kind, purpose or reveal:
            // a rule that names one was meant as something else.
            let action = r.action;
            let refuse = |field: &'static str| {
                bad(
                    field,
                    format!(
                        "a{} {action} rule allows {} only and takes no kinds, purposes, \
                         reveal, quota or justification",
                        if action == Action::Admin { "n" } else { "" },
                        action.administers()
                    ),
                )
            };
            for (field, set) in [
                ("kinds", r.kinds.is_some()),
                ("purposes", r.purposes.is_some()),
                ("reveal", r.reveal.is_some()),
                ("quota", r.quota.is_some()),
                ("justification", r.justification.is_some()),
                ("requires_grant", r.requires_grant.is_some()),
                ("approvals", r.approvals.is_some()),
                ("approvers", r.approvers.is_some()),
            ] {
                if set {
                    return Err(refuse(field));
                }
            }
            return Ok(Rule {
                name,
                line,
                callers: r.callers,
                action: r.action,
                kinds: Vec::new(),
                purposes: Vec::new(),
                reveal: None,
                quotas: Vec::new(),
                justification: None,
                grant: None,
            });
        }
        let grant = Self::grant_rule(
            GrantFields {
                action: r.action,
                reveal: r.reveal,
                callers: &r.callers,
                requires_grant: r.requires_grant,
                approvals: r.approvals,
                approvers: r.approvers.as_deref(),
            },
            named,
        )
        .map_err(|(field, reason)| bad(field, reason))?;
        let kinds = r.kinds.unwrap_or_default();
        if kinds.is_empty() {
            return Err(bad("kinds", "must name at least one field kind".into()));
        }
        let kinds = kinds
            .iter()
            .map(|k| k.parse::<FieldKind>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("kinds", format!("'{}': {e}", e.0)))?;
        let purposes = r
            .purposes
            .unwrap_or_default()
            .iter()
            .map(|p| Purpose::parse(p).map_err(|e| bad("purposes", format!("'{p}' {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let quota_texts = match r.quota {
            None => Vec::new(),
            Some(OneOrMany::One(q)) => vec![q],
            Some(OneOrMany::Many(q)) => {
                if q.is_empty() {
                    return Err(bad("quota", "is empty (leave it out for no quota)".into()));
                }
                q
            }
        };
        let mut quotas: Vec<Quota> = Vec::with_capacity(quota_texts.len());
        for text in &quota_texts {
            let q: Quota = text.parse().map_err(|e| bad("quota", e))?;
            if quotas.iter().any(|o| o.per == q.per) {
                return Err(bad(
                    "quota",
                    format!("two limits per {}; give one", q.per.as_str()),
                ));
            }
            quotas.push(q);
        }
        quotas.sort_by_key(|q| q.per);
        let justification = r
            .justification
            .as_deref()
            .map(Pattern::new)
            .transpose()
            .map_err(|e| bad("justification", e))?;
        match r.action {
            Action::Detokenize => {
                if purposes.is_empty() {
                    return Err(bad(
                        "purposes",
                        "a detokenize rule must list its purposes".into(),
                    ));
                }
                if r.reveal.is_none() {
                    return Err(bad(
                        "reveal",
                        "a detokenize rule must say 'full', 'masked' or 'none'".into(),
                    ));
                }
                if r.reveal == Some(RevealLevel::None) && !quotas.is_empty() {
                    return Err(bad(
                        "quota",
                        "a quota counts values revealed, and a reveal = 'none' rule reveals \
                         none"
                            .into(),
                    ));
                }
            }
            // These calls declare no purpose: a rule listing purposes
            // could never apply.
            Action::Delete | Action::Inspect | Action::Erase if !purposes.is_empty() => {
                return Err(bad(
                    "purposes",
                    format!(
                        "a {} rule takes no purposes (the call declares none)",
                        r.action
                    ),
                ));
            }
            Action::Export if purposes.is_empty() => {
                return Err(bad(
                    "purposes",
                    "an export rule must list its purposes (subject access is asked for one)"
                        .into(),
                ));
            }
            Action::Tokenize
            | Action::Delete
            | Action::Inspect
            | Action::Erase
            | Action::Export => {
                for (field, set) in [
                    ("reveal", r.reveal.is_some()),
                    ("quota", !quotas.is_empty()),
                    ("justification", justification.is_some()),
                    ("requires_grant", r.requires_grant.is_some()),
                ] {
                    if set {
                        return Err(bad(field, format!("only detokenize rules take {field}")));
                    }
                }
            }
            // Handled above.
            Action::Keys | Action::Admin | Action::Backup | Action::Grants => {}
        }
        if !quotas.is_empty() && !named {
            return Err(bad(
                "name",
                "a rule with a quota needs a name: its counts are kept under it".into(),
            ));
        }
        Ok(Rule {
            name,
            line,
            callers: r.callers,
            action: r.action,
            kinds,
            purposes,
            reveal: r.reveal,
            quotas,
            justification,
            grant,
        })
    }

    /// A data rule's `requires_grant`, `approvals` and `approvers`.
    fn grant_rule(
        r: GrantFields<'_>,
        named: bool,
    ) -> Result<Option<GrantRule>, (&'static str, String)> {
        if r.requires_grant != Some(true) {
            for (field, set) in [
                ("approvals", r.approvals.is_some()),
                ("approvers", r.approvers.is_some()),
            ] {
                if set {
                    return Err((
                        field,
                        "only a rule with requires_grant = true takes approvals and approvers"
                            .into(),
                    ));
                }
            }
            return Ok(None);
        }
        if r.action != Action::Detokenize {
            return Err((
                "requires_grant",
                "only detokenize rules take requires_grant".into(),
            ));
        }
        if r.reveal == Some(RevealLevel::None) {
            return Err((
                "requires_grant",
                "a grant counts values revealed, and a reveal = 'none' rule reveals none".into(),
            ));
        }
        if !named {
            return Err((
                "name",
                "a rule that requires a grant needs a name: grants are requested under it".into(),
            ));
        }
        let approvals = r.approvals.unwrap_or(1);
        if !(1..=crate::domain::grant::MAX_APPROVALS).contains(&approvals) {
            return Err((
                "approvals",
                format!("must be from 1 to {}", crate::domain::grant::MAX_APPROVALS),
            ));
        }
        let approvers = r.approvers.unwrap_or_default().to_vec();
        if r.approvers.is_some() && approvers.is_empty() {
            return Err((
                "approvers",
                "is empty (leave it out to let callers with a grants rule approve)".into(),
            ));
        }
        for (i, a) in approvers.iter().enumerate() {
            if CallerId::parse(a).is_err() {
                return Err((
                    "approvers",
                    format!("'{a}' is neither a SPIFFE ID nor a common name"),
                ));
            }
            if approvers[..i].contains(a) {
                return Err(("approvers", format!("'{a}' is listed twice")));
            }
            if r.callers.contains(a) {
                return Err((
                    "approvers",
                    format!(
                        "'{a}' is also one of the rule's callers; a workflow never approves its \
                         own grants"
                    ),
                ));
            }
        }
        if !approvers.is_empty() && approvals as usize > approvers.len() {
            return Err((
                "approvals",
                format!(
                    "asks {approvals} approvals of {} approvers: no grant could become active",
                    approvers.len()
                ),
            ));
        }
        Ok(Some(GrantRule {
            approvals,
            approvers,
        }))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The identities refused before any rule is consulted.
    pub fn deny_list(&self) -> &[String] {
        &self.deny
    }

    pub fn freeze_rules(&self) -> FreezeRules {
        self.freeze
    }

    /// Every identity a rule or the deny list names, once, in order.
    pub fn identities(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for c in self
            .rules
            .iter()
            .flat_map(|r| r.callers.iter().chain(r.approvers()))
            .chain(&self.deny)
        {
            if !all.contains(c) {
                all.push(c.clone());
            }
        }
        all
    }

    /// Whether any rule names `caller` (for any action, or as an
    /// approver) and the deny list does not: any other caller is refused
    /// every call.
    pub fn names(&self, caller: &CallerId) -> bool {
        !self.is_denied(caller)
            && self
                .rules
                .iter()
                .any(|r| r.names(caller) || r.approvers().any(|a| a == caller.as_str()))
    }

    /// Whether `caller` has a `grants` rule (and is not deny-listed).
    pub fn administers_grants(&self, caller: &CallerId) -> bool {
        !self.is_denied(caller)
            && self
                .rules
                .iter()
                .any(|r| r.action == Action::Grants && r.names(caller))
    }

    /// Whether some rule that requires a grant lists `caller` as an
    /// approver.
    pub fn is_approver(&self, caller: &CallerId) -> bool {
        self.rules
            .iter()
            .any(|r| r.approvers().any(|a| a == caller.as_str()))
    }

    /// The rule that would reveal each of `kinds` to `caller` for
    /// `purpose` under a grant: one rule that requires a grant for all of
    /// them (the most revealing for each kind, the first among equals).
    /// Errors say which kind no such rule covers (`kinds`), or that no such
    /// rule lists the purpose (`purpose`), or that the kinds need different
    /// rules (`kinds`).
    pub fn grant_rule_for(
        &self,
        caller: &CallerId,
        kinds: &[FieldKind],
        purpose: &Purpose,
    ) -> Result<&Rule, (&'static str, String)> {
        let mut chosen: Option<&Rule> = None;
        for &kind in kinds {
            let for_kind: Vec<&Rule> = self
                .rules
                .iter()
                .filter(|r| {
                    r.action == Action::Detokenize
                        && r.requires_grant()
                        && r.names(caller)
                        && r.kinds.contains(&kind)
                })
                .collect();
            if for_kind.is_empty() {
                return Err((
                    "kinds",
                    format!(
                        "no policy rule that requires a grant reveals field kind '{kind}' to \
                         caller '{caller}'"
                    ),
                ));
            }
            let mut best: Option<&Rule> = None;
            for r in for_kind.iter().filter(|r| r.purposes.contains(purpose)) {
                if best.is_none_or(|b| r.reveal > b.reveal) {
                    best = Some(r);
                }
            }
            let Some(best) = best else {
                return Err((
                    "purpose",
                    format!(
                        "no policy rule that requires a grant reveals field kind '{kind}' to \
                         caller '{caller}' for purpose '{purpose}'"
                    ),
                ));
            };
            match chosen {
                Some(c) if c.name != best.name => {
                    return Err((
                        "kinds",
                        format!(
                            "the field kinds asked for are revealed under different rules \
                             ('{}' and '{}'); request one grant per rule",
                            c.name, best.name
                        ),
                    ))
                }
                _ => chosen = Some(best),
            }
        }
        chosen.ok_or(("kinds", "must name at least one field kind".into()))
    }

    /// Whether `caller` is on the deny list.
    pub fn is_denied(&self, caller: &CallerId) -> bool {
        self.deny.iter().any(|c| c == caller.as_str())
    }

    /// The refusal of a deny-listed caller, before any rule.
    pub fn check_deny_list(&self, caller: &CallerId) -> Result<(), Denial> {
        if self.is_denied(caller) {
            return Err(Denial {
                on: DeniedOn::DenyList,
                message: format!("caller '{caller}' is on the policy's deny list"),
            });
        }
        Ok(())
    }

    /// Whether `caller` may perform `action` with `purpose` (and, for
    /// detokenize, `justification`; `None` for other actions) at all,
    /// before the field kinds are known. `Ok` means at least one rule could
    /// allow some kind; each item is then checked with [`Policy::decide`].
    /// For keys and admin (with no purpose) this is the whole decision:
    /// `Ok` exactly for the callers such a rule names.
    pub fn check_call(
        &self,
        caller: &CallerId,
        action: Action,
        purpose: Option<&Purpose>,
        justification: Option<&str>,
    ) -> Result<(), Denial> {
        self.check_call_under(caller, action, purpose, justification, None)
    }

    /// [`Policy::check_call`] for a call that names a grant approved under
    /// `rule`: that rule counts too (no other rule that requires a grant
    /// does: a grant allows what its own rule allows, and a rule added
    /// later does not widen it).
    pub fn check_call_under_grant(
        &self,
        caller: &CallerId,
        action: Action,
        purpose: Option<&Purpose>,
        justification: Option<&str>,
        rule: &str,
    ) -> Result<(), Denial> {
        self.check_call_under(caller, action, purpose, justification, Some(rule))
    }

    fn check_call_under(
        &self,
        caller: &CallerId,
        action: Action,
        purpose: Option<&Purpose>,
        justification: Option<&str>,
        grant: Option<&str>,
    ) -> Result<(), Denial> {
        let rules = self.for_caller_and_action(caller, action)?;
        let for_purpose: Vec<&Rule> = rules
            .into_iter()
            .filter(|r| purpose_matches(r, purpose))
            .collect();
        if for_purpose.is_empty() {
            return Err(purpose_denial(caller, action, None, purpose));
        }
        let justified: Vec<&Rule> = for_purpose
            .iter()
            .copied()
            .filter(|r| justification_matches(r, justification))
            .collect();
        if justified.is_empty() {
            return Err(justification_denial(
                caller,
                action,
                None,
                &for_purpose,
                justification,
            ));
        }
        if justified.iter().any(|r| counts_under(r, grant)) {
            Ok(())
        } else {
            Err(grant_denial(caller, action, None, justified[0]))
        }
    }

    /// The decision for one field of one request (rules that require a
    /// grant allow nothing here).
    pub fn decide(
        &self,
        caller: &CallerId,
        action: Action,
        kind: FieldKind,
        purpose: Option<&Purpose>,
        justification: Option<&str>,
    ) -> Result<Ruling, Denial> {
        self.decide_under(caller, action, kind, purpose, justification, None)
    }

    /// The decision for one item that an active grant approved under
    /// `rule` covers (its kind, its purpose, its token): that rule counts
    /// too, and the most revealing rule wins as always.
    pub fn decide_under_grant(
        &self,
        caller: &CallerId,
        action: Action,
        kind: FieldKind,
        purpose: Option<&Purpose>,
        justification: Option<&str>,
        rule: &str,
    ) -> Result<Ruling, Denial> {
        self.decide_under(caller, action, kind, purpose, justification, Some(rule))
    }

    fn decide_under(
        &self,
        caller: &CallerId,
        action: Action,
        kind: FieldKind,
        purpose: Option<&Purpose>,
        justification: Option<&str>,
        grant: Option<&str>,
    ) -> Result<Ruling, Denial> {
        let rules = self.for_caller_and_action(caller, action)?;
        let for_kind: Vec<&Rule> = rules
            .into_iter()
            .filter(|r| r.kinds.contains(&kind))
            .collect();
        if for_kind.is_empty() {
            return Err(Denial {
                on: DeniedOn::Kind,
                message: format!("caller '{caller}' may not {action} field kind '{kind}'"),
            });
        }
        let for_purpose: Vec<&Rule> = for_kind
            .into_iter()
            .filter(|r| purpose_matches(r, purpose))
            .collect();
        if for_purpose.is_empty() {
            return Err(purpose_denial(caller, action, Some(kind), purpose));
        }
        // The most revealing; among equals, the first in the file.
        let mut best: Option<&Rule> = None;
        let mut needs_grant: Option<&Rule> = None;
        for r in &for_purpose {
            if !justification_matches(r, justification) {
                continue;
            }
            if !counts_under(r, grant) {
                needs_grant = needs_grant.or(Some(r));
                continue;
            }
            if best.is_none_or(|b| r.reveal > b.reveal) {
                best = Some(r);
            }
        }
        match (best, needs_grant) {
            (Some(r), _) => Ok(Ruling {
                reveal: r.reveal,
                rule: r.name.clone(),
                line: r.line,
                quotas: r.quotas.clone(),
                under_grant: r.requires_grant(),
            }),
            (None, Some(r)) => Err(grant_denial(caller, action, Some(kind), r)),
            (None, None) => Err(justification_denial(
                caller,
                action,
                Some(kind),
                &for_purpose,
                justification,
            )),
        }
    }

    fn for_caller_and_action(
        &self,
        caller: &CallerId,
        action: Action,
    ) -> Result<Vec<&Rule>, Denial> {
        self.check_deny_list(caller)?;
        let for_caller: Vec<&Rule> = self.rules.iter().filter(|r| r.names(caller)).collect();
        if for_caller.is_empty() {
            return Err(Denial {
                on: DeniedOn::Caller,
                message: format!("no policy rule names caller '{caller}'"),
            });
        }
        let for_action: Vec<&Rule> = for_caller
            .into_iter()
            .filter(|r| r.action == action)
            .collect();
        if for_action.is_empty() {
            return Err(Denial {
                on: DeniedOn::Action,
                message: format!("caller '{caller}' has no rule allowing {action}"),
            });
        }
        Ok(for_action)
    }
}

/// Whether `rule` counts for a call under a grant approved under the rule
/// named `grant` (`None`: no grant): a rule that requires a grant counts
/// only under a grant of its own.
fn counts_under(rule: &Rule, grant: Option<&str>) -> bool {
    !rule.requires_grant() || grant == Some(rule.name.as_str())
}

fn purpose_matches(rule: &Rule, purpose: Option<&Purpose>) -> bool {
    match purpose {
        Some(p) => rule.purposes.is_empty() || rule.purposes.contains(p),
        None => rule.purposes.is_empty(),
    }
}

fn justification_matches(rule: &Rule, justification: Option<&str>) -> bool {
    match (&rule.justification, justification) {
        (None, _) => true,
        (Some(p), Some(j)) => p.matches(j),
        (Some(_), None) => false,
    }
}

/// Only `rule`, which requires a grant, would allow it, and the request
/// named none that covers it.
fn grant_denial(caller: &CallerId, action: Action, kind: Option<FieldKind>, rule: &Rule) -> Denial {
    let what = match kind {
        Some(k) => format!("{action} field kind '{k}'"),
        None => action.to_string(),
    };
    Denial {
        on: DeniedOn::Grant,
        message: format!(
            "rule '{}' allows caller '{caller}' to {what} only under an approved grant; the \
             request names no active grant that covers it (grant_id)",
            rule.name
        ),
    }
}

fn purpose_denial(
    caller: &CallerId,
    action: Action,
    kind: Option<FieldKind>,
    purpose: Option<&Purpose>,
) -> Denial {
    let what = match kind {
        Some(k) => format!("{action} field kind '{k}'"),
        None => action.to_string(),
    };
    let message = match purpose {
        Some(p) => format!("purpose '{p}' is not allowed for caller '{caller}' to {what}"),
        None => format!("caller '{caller}' must declare an allowed purpose to {what}"),
    };
    Denial {
        on: DeniedOn::Purpose,
        message,
    }
}

/// Every rule in `rules` requires a justification the request does not
/// give: the denial names the first rule's pattern, never what was given.
fn justification_denial(
    caller: &CallerId,
    action: Action,
    kind: Option<FieldKind>,
    rules: &[&Rule],
    justification: Option<&str>,
) -> Denial {
    let what = match kind {
        Some(k) => format!("{action} field kind '{k}'"),
        None => action.to_string(),
    };
    let pattern = rules
        .iter()
        .find_map(|r| r.justification.as_ref().map(|p| (r, p)));
    let (rule, pattern) = match pattern {
        Some(found) => found,
        // Unreachable: a rule without a pattern matches any justification.
        None => {
            return Denial {
                on: DeniedOn::Justification,
                message: format!(
                    "caller '{caller}' gave no justification a rule accepts to {what}"
                ),
            }
        }
    };
    let given = match justification {
        Some(_) => "the justification given does not match it",
        None => "none was given",
    };
    Denial {
        on: DeniedOn::Justification,
        message: format!(
            "rule '{}' requires a justification matching '{}' for caller '{caller}' to \
             {what}; {given}",
            rule.name,
            pattern.as_str()
        ),
    }
}
