//! Reading a trail back: the events of its files, in chain order, those a
//! [`Filter`] keeps. Reading needs no key: it does not check the chain
//! (`fieldvault audit verify` does); a line that is not a chained event (a
//! torn tail, a damaged line) is counted and skipped.
//!
//! Used by `fieldvault audit search` and, through [`read_events`], by the
//! compliance report ([`super::report`]).

use super::event::{Decision, Event};
use super::verify::{parse_line, CHAIN_STARTED};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// Which events to keep. Every condition given must hold; an empty filter
/// keeps every event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// The caller identity, exactly.
    pub caller: Option<String>,
    /// A token one of the event's items names (asked for or issued).
    pub token: Option<String>,
    /// The action: exact (`keys.rotate_data_key`), or a prefix ending in
    /// `.` or `*` (`keys.`, `keys.*`, `audit.*`).
    pub action: Option<String>,
    pub decision: Option<Decision>,
    /// The declared purpose, exactly.
    pub purpose: Option<String>,
    /// Events at or after this time (unix ms).
    pub since_ms: Option<u64>,
    /// Events before this time (unix ms): the end is excluded.
    pub until_ms: Option<u64>,
    /// The call's request id (the `x-request-id` its answer carried).
    pub request_id: Option<String>,
}

impl Filter {
    pub fn matches(&self, event: &Event) -> bool {
        if self
            .caller
            .as_ref()
            .is_some_and(|c| event.caller.as_ref() != Some(c))
        {
            return false;
        }
        if self
            .purpose
            .as_ref()
            .is_some_and(|p| event.purpose.as_ref() != Some(p))
        {
            return false;
        }
        if self
            .request_id
            .as_ref()
            .is_some_and(|r| event.request_id.as_ref() != Some(r))
        {
            return false;
        }
        if self.decision.is_some_and(|d| d != event.decision) {
            return false;
        }
        if self
            .action
            .as_ref()
            .is_some_and(|a| !action_matches(a, &event.action))
        {
            return false;
        }
        if let Some(token) = &self.token {
            if !event
                .items
                .iter()
                .any(|i| i.token.as_deref() == Some(token.as_str()))
            {
                return false;
            }
        }
        if self.since_ms.is_some() || self.until_ms.is_some() {
            // An event whose time does not read is in no time range.
            let Some(t) = event.unix_ms() else {
                return false;
            };
            if self.since_ms.is_some_and(|s| t < s) || self.until_ms.is_some_and(|u| t >= u) {
                return false;
            }
        }
        true
    }
}

/// `pattern` is an exact action, or a prefix ending in `.` or `*`.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        action.starts_with(prefix)
    } else if pattern.ends_with('.') {
        action.starts_with(pattern)
    } else {
        action == pattern
    }
}

/// A time given on the command line: RFC 3339 with a zone
/// (`2026-11-27T10:00:00Z`, `2026-11-27T11:00:00.5+01:00`) or a plain date
/// (`2026-11-27`, midnight UTC). Unix milliseconds, or why not.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let shape = "expected an RFC 3339 time with a zone (2026-11-27T10:00:00Z) or a date \
                 (2026-11-27, midnight UTC)";
    let is_date = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let (base, offset_secs): (String, i64) = if is_date {
        (format!("{text}T00:00:00Z"), 0)
    } else if let Some(rest) = text.strip_suffix(['Z', 'z']) {
        (format!("{rest}Z"), 0)
    } else {
        // A numeric offset, `+HH:MM` or `-HH:MM`, at the end.
        let b = text.as_bytes();
        let n = b.len();
        let offset = (n > 16
            && (b[n - 6] == b'+' || b[n - 6] == b'-')
            && b[n - 3] == b':'
            && [n - 5, n - 4, n - 2, n - 1]
                .iter()
                .all(|&i| b[i].is_ascii_digit()))
        .then(|| {
            let hours = i64::from(b[n - 5] - b'0') * 10 + i64::from(b[n - 4] - b'0');
            let minutes = i64::from(b[n - 2] - b'0') * 10 + i64::from(b[n - 1] - b'0');
            let sign = if b[n - 6] == b'-' { -1 } else { 1 };
            (hours, minutes, sign)
        });
        match offset {
            Some((hours, minutes, sign)) if hours < 24 && minutes < 60 => (
                format!("{}Z", &text[..n - 6]),
                sign * (hours * 3600 + minutes * 60),
            ),
            Some(_) => return Err(format!("the zone offset is out of range; {shape}")),
            None if text.contains('T') || text.contains(' ') => {
                return Err(format!(
                    "no time zone: add Z for UTC or an offset such as +01:00; {shape}"
                ))
            }
            None => return Err(shape.to_owned()),
        }
    };
    let local = humantime::parse_rfc3339_weak(&base).map_err(|e| format!("{e}; {shape}"))?;
    let local_ms = local
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("before 1970; {shape}"))?
        .as_millis();
    let ms = i128::try_from(local_ms).unwrap_or(i128::MAX) - i128::from(offset_secs) * 1000;
    u64::try_from(ms).map_err(|_| format!("before 1970; {shape}"))
}

/// Unix milliseconds as RFC 3339 UTC, to the millisecond.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One event read from a trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    /// Its line in the file, from 1.
    pub line: usize,
    pub seq: u64,
    pub event: Event,
}

/// What a read went through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub files: usize,
    /// Chained events read.
    pub events: u64,
    /// Lines that are not chained events (torn, damaged, foreign), skipped.
    pub skipped_lines: u64,
    /// Events whose time does not read.
    pub undated: u64,
}

/// A file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    pub reason: String,
}

/// Orders `paths` as the chain runs: by when each file's chain began,
/// then by the sequence number of its first event. A file whose first
/// line is not a chained event keeps its place after the others.
pub fn chain_order(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReadError> {
    let mut keyed = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        let file = open(path)?;
        let mut first = Vec::new();
        std::io::BufReader::new(file)
            .read_until(b'\n', &mut first)
            .map_err(|e| read_error(path, e))?;
        let key = std::str::from_utf8(&first)
            .ok()
            .and_then(|l| parse_line(l.trim_end_matches('\n')))
            .map(|(seq, _, e)| {
                let started = e
                    .details
                    .get(CHAIN_STARTED)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .unwrap_or(e.time);
                (started, seq)
            });
        keyed.push((key.is_none(), key, i, path.clone()));
    }
    keyed.sort();
    Ok(keyed.into_iter().map(|(_, _, _, p)| p).collect())
}

fn open(path: &Path) -> Result<std::fs::File, ReadError> {
    super::trail::open(path, super::trail::Open::Read).map_err(|e| read_error(path, e))
}

fn read_error(path: &Path, e: std::io::Error) -> ReadError {
    ReadError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Streams every chained event of `paths`, in the order given, to `visit`.
pub fn read_events(
    paths: &[PathBuf],
    mut visit: impl FnMut(Found),
) -> Result<ReadStats, ReadError> {
    let mut stats = ReadStats::default();
    let mut buf = Vec::new();
    for path in paths {
        let mut reader = std::io::BufReader::new(open(path)?);
        stats.files += 1;
        let mut line = 0;
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| read_error(path, e))?;
            if n == 0 {
                break;
            }
            line += 1;
            let parsed = std::str::from_utf8(&buf)
                .ok()
                .filter(|l| l.ends_with('\n'))
                .and_then(|l| parse_line(l.trim_end_matches('\n')));
            let Some((seq, _, event)) = parsed else {
                stats.skipped_lines += 1;
                continue;
            };
            stats.events += 1;
            if event.unix_ms().is_none() {
                stats.undated += 1;
            }
            visit(Found {
                path: path.clone(),
                line,
                seq,
                event,
            });
        }
    }
    Ok(stats)
}

/// Streams the events of `paths` that `filter` keeps to `visit`.
pub fn search(
    paths: &[PathBuf],
    filter: &Filter,
    mut visit: impl FnMut(Found),
) -> Result<ReadStats, ReadError> {
    read_events(paths, |found| {
        if filter.matches(&found.event) {
            visit(found);
        }
    })
}

/// `text` with control characters escaped, safe to print on a terminal
/// (an identity comes from a certificate and may hold anything).
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One event on one line, for people: time, sequence number, action,
/// decision and code, then the fields it has.
pub fn one_line(found: &Found) -> String {
    let e = &found.event;
    let mut out = format!(
        "{} #{} {} {}",
        printable(&e.time),
        found.seq,
        printable(&e.action),
        e.decision.as_str()
    );
    if e.code != "ok" {
        out.push_str(&format!(" ({})", printable(&e.code)));
    }
    let mut field = |name: &str, value: &Option<String>| {
        if let Some(v) = value {
            out.push_str(&format!(" {name}={}", quoted(v)));
        }
    };
    field("caller", &e.caller);
    field("purpose", &e.purpose);
    field("justification", &e.justification);
    field("request", &e.request_id);
    if !e.items.is_empty() {
        let items: Vec<String> = e
            .items
            .iter()
            .map(|i| {
                format!(
                    "{}{}:{}",
                    printable(i.token.as_deref().unwrap_or("-")),
                    i.kind
                        .as_deref()
                        .map(|k| format!("/{}", printable(k)))
                        .unwrap_or_default(),
                    printable(&i.outcome)
                )
            })
            .collect();
        out.push_str(&format!(" items=[{}]", items.join(",")));
    }
    if !e.rules.is_empty() {
        out.push_str(&format!(" rules={}", printable(&e.rules.join(","))));
    }
    if !e.details.is_empty() {
        let details = serde_json::to_string(&e.details).unwrap_or_default();
        out.push_str(&format!(" details={}", printable(&details)));
    }
    if let Some(reason) = &e.reason {
        out.push_str(&format!(" reason={}", quoted(reason)));
    }
    out
}

/// A value as is when it is one plain word, else in double quotes.
fn quoted(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"');
    if plain {
        v.to_owned()
    } else {
        // JSON escapes C0 controls; `printable` the rest (DEL, C1).
        printable(&serde_json::to_string(v).unwrap_or_default())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::chain::{seal_line, AuditKey, ChainState};
    use super::super::event::Item;
    use super::super::verify::{CHAIN_START, FILE_START, KEY_ID};
    use super::*;

    pub(crate) fn key() -> AuditKey {
        AuditKey::new([9; 32])
    }

    pub(crate) fn at(time: &str, action: &str) -> Event {
        let mut e = Event::new(action);
        e.time = time.into();
        e
    }

    pub(crate) fn item(token: &str, kind: &str, outcome: &str) -> Item {
        Item {
            token: Some(token.into()),
            kind: Some(kind.into()),
            outcome: outcome.into(),
            rule: None,
        }
    }

    /// A trail file: a start event, then `events`, sealed from `state`.
    pub(crate) fn sealed(state: ChainState, first: &str, events: &[Event]) -> (String, ChainState) {
        let mut start = at("2026-11-27T00:00:00.000Z", first);
        start
            .details
            .insert(KEY_ID.into(), serde_json::Value::String(key().id()));
        start.details.insert(
            CHAIN_STARTED.into(),
            serde_json::Value::String("2026-11-27T00:00:00.000Z".into()),
        );
        let (mut text, mut state) = seal_line(&key(), state, &start.to_json());
        for e in events {
            let (line, next) = seal_line(&key(), state, &e.to_json());
            text.push_str(&line);
            state = next;
        }
        (text, state)
    }

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn sample() -> Vec<Event> {
        let mut a = at("2026-11-27T10:00:00.000Z", "detokenize");
        a.caller = Some("spiffe://dev.fieldvault.local/support".into());
        a.purpose = Some("callback".into());
        a.items = vec![item("fv1_aaa", "phone", "full")];
        let mut b = at("2026-11-27T11:00:00.000Z", "detokenize");
        b.caller = Some("spiffe://dev.fieldvault.local/courier".into());
        b.purpose = Some("delivery".into());
        b.decision = Decision::Denied;
        b.code = "permission_denied".into();
        b.items = vec![item("fv1_bbb", "address", "permission_denied")];
        let mut c = at("2026-11-27T12:00:00.000Z", "keys.rotate_data_key");
        c.caller = Some("spiffe://dev.fieldvault.local/rotator".into());
        let mut d = at("2026-11-28T00:00:00.000Z", "tokenize");
        d.caller = Some("spiffe://dev.fieldvault.local/support".into());
        d.items = vec![item("fv1_aaa", "phone", "stored")];
        vec![a, b, c, d]
    }

    fn actions(filter: &Filter) -> Vec<String> {
        sample()
            .into_iter()
            .filter(|e| filter.matches(e))
            .map(|e| e.action)
            .collect()
    }

    #[test]
    fn each_condition_of_a_filter_keeps_exactly_the_events_that_meet_it() {
        assert_eq!(actions(&Filter::default()).len(), 4);
        let support = Filter {
            caller: Some("spiffe://dev.fieldvault.local/support".into()),
            ..Filter::default()
        };
        assert_eq!(actions(&support), ["detokenize", "tokenize"]);
        let token = Filter {
            token: Some("fv1_aaa".into()),
            ..Filter::default()
        };
        assert_eq!(actions(&token), ["detokenize", "tokenize"]);
        let denied = Filter {
            decision: Some(Decision::Denied),
            ..Filter::default()
        };
        assert_eq!(actions(&denied), ["detokenize"]);
        let purpose = Filter {
            purpose: Some("delivery".into()),
            ..Filter::default()
        };
        assert_eq!(sample().iter().filter(|e| purpose.matches(e)).count(), 1);
        let both = Filter {
            caller: Some("spiffe://dev.fieldvault.local/support".into()),
            token: Some("fv1_bbb".into()),
            ..Filter::default()
        };
        assert!(actions(&both).is_empty());
    }

    #[test]
    fn an_action_filter_is_exact_or_a_prefix_ending_in_a_dot_or_a_star() {
        for (pattern, want) in [
            ("keys.*", vec!["keys.rotate_data_key"]),
            ("keys.", vec!["keys.rotate_data_key"]),
            ("keys.rotate_data_key", vec!["keys.rotate_data_key"]),
            ("keys", vec![]),
            ("keys.rotate", vec![]),
            ("detokenize", vec!["detokenize", "detokenize"]),
            (
                "*",
                vec![
                    "detokenize",
                    "detokenize",
                    "keys.rotate_data_key",
                    "tokenize",
                ],
            ),
        ] {
            let f = Filter {
                action: Some(pattern.into()),
                ..Filter::default()
            };
            assert_eq!(actions(&f), want, "{pattern}");
        }
    }

    #[test]
    fn a_time_range_includes_its_start_and_excludes_its_end() {
        let f = Filter {
            since_ms: Some(ok(parse_time("2026-11-27T11:00:00Z"))),
            until_ms: Some(ok(parse_time("2026-11-28"))),
            ..Filter::default()
        };
        assert_eq!(actions(&f), ["detokenize", "keys.rotate_data_key"]);
        let mut undated = at("yesterday", "detokenize");
        assert!(!f.matches(&undated));
        undated.time = "2026-11-27T11:30:00.000Z".into();
        assert!(f.matches(&undated));
    }

    #[test]
    fn times_parse_as_rfc3339_with_a_zone_or_as_a_date_and_anything_else_is_refused() {
        let midnight = 1_795_737_600_000; // 2026-11-27T00:00:00Z
        assert_eq!(parse_time("2026-11-27"), Ok(midnight));
        assert_eq!(parse_time("2026-11-27T00:00:00Z"), Ok(midnight));
        assert_eq!(
            parse_time("2026-11-27T10:00:00.250Z"),
            Ok(midnight + 36_000_250)
        );
        assert_eq!(
            parse_time("2026-11-27T11:00:00+01:00"),
            Ok(midnight + 36_000_000)
        );
        assert_eq!(parse_time("2026-11-26T23:00:00-01:00"), Ok(midnight));
        assert_eq!(format_ms(midnight + 5), "2026-11-27T00:00:00.005Z");
        let err = |t: &str| parse_time(t).err().unwrap_or_default();
        assert!(err("2026-11-27T10:00:00").contains("no time zone"));
        assert!(err("27/11/2026").contains("expected an RFC 3339 time"));
        assert!(err("2026-13-01").contains("expected an RFC 3339 time"));
        assert!(err("2026-11-27T10:00:00+25:00").contains("out of range"));
        assert!(err("").contains("expected"));
    }

    #[test]
    fn events_stream_from_files_in_chain_order_and_torn_lines_are_counted_not_shown() {
        let dir = ok(tempfile::tempdir());
        let events = sample();
        let (first, state) = sealed(ChainState::GENESIS, CHAIN_START, &events[..2]);
        let (mut second, _) = sealed(state, FILE_START, &events[2..]);
        second.push_str("{\"seq\":7,\"prev\":\"00");
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        ok(std::fs::write(&a, first));
        ok(std::fs::write(&b, second));
        let order = ok(chain_order(&[b.clone(), a.clone()]));
        assert_eq!(order, vec![a.clone(), b.clone()]);
        let mut seen = Vec::new();
        let filter = Filter {
            caller: Some("spiffe://dev.fieldvault.local/support".into()),
            ..Filter::default()
        };
        let stats = ok(search(&order, &filter, |f| {
            seen.push((f.path.clone(), f.line, f.seq))
        }));
        assert_eq!(seen, vec![(a, 2, 1), (b.clone(), 3, 5)]);
        assert_eq!(
            stats,
            ReadStats {
                files: 2,
                events: 6,
                skipped_lines: 1,
                undated: 0
            }
        );
        let missing = search(&[dir.path().join("nope")], &filter, |_| {});
        assert!(missing.is_err_and(|e| e.path.ends_with("nope")));
    }

    #[test]
    fn one_line_shows_the_fields_an_event_has_and_escapes_control_characters() {
        let mut e = sample().remove(1);
        e.caller = Some("spiffe://x/\u{1b}[31mred".into());
        e.reason = Some("no rule allows it".into());
        e.request_id = Some("r-1".into());
        let line = one_line(&Found {
            path: "a".into(),
            line: 3,
            seq: 2,
            event: e,
        });
        assert_eq!(
            line,
            "2026-11-27T11:00:00.000Z #2 detokenize denied (permission_denied) \
             caller=\"spiffe://x/\\u001b[31mred\" purpose=delivery request=r-1 \
             items=[fv1_bbb/address:permission_denied] reason=\"no rule allows it\""
        );
        assert!(!line.contains('\u{1b}'));
    }
}
