//! What the client commands read: standard input line by line (bounded in
//! memory, every line kept, blank ones too) and structured addresses as
//! JSON objects with the proto's field names.

use fieldvault::grpc::pb;
use std::io::BufRead;
use tokio::sync::mpsc;

/// One input line, without its line ending (`\n` or `\r\n`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    Text(String),
    /// Longer than the cap; its bytes were read and dropped, not kept.
    TooLong,
    NotUtf8,
}

/// How many lines may wait between the reader thread and the calls: with
/// the per-line cap this bounds the memory input takes.
const QUEUE_LINES: usize = 1024;

/// Reads standard input on its own thread, one [`Line`] per input line, in
/// order, each at most `max_line_bytes` kept. A read error ends the stream
/// with `Err`.
pub(crate) fn stdin_lines(max_line_bytes: usize) -> mpsc::Receiver<Result<Line, String>> {
    let (tx, rx) = mpsc::channel(QUEUE_LINES);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut reader = stdin.lock();
        let mut first = true;
        loop {
            let next = match read_line(&mut reader, max_line_bytes) {
                Ok(Some(line)) if std::mem::take(&mut first) => Ok(without_bom(line)),
                Ok(Some(line)) => Ok(line),
                Ok(None) => break,
                Err(e) => Err(format!("reading standard input: {e}")),
            };
            let stop = next.is_err();
            if tx.blocking_send(next).is_err() || stop {
                break;
            }
        }
    });
    rx
}

/// The first line without a UTF-8 byte-order mark (Windows editors
/// write one): it belongs to no value.
pub(crate) fn without_bom(line: Line) -> Line {
    match line {
        Line::Text(t) => match t.strip_prefix('\u{feff}') {
            Some(rest) => Line::Text(rest.to_owned()),
            None => Line::Text(t),
        },
        other => other,
    }
}

/// Reads one line of at most `max` bytes (line ending excluded) from `r`;
/// `None` at the end of input. A longer line is consumed without being kept.
pub(crate) fn read_line(r: &mut impl BufRead, max: usize) -> std::io::Result<Option<Line>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut too_long = false;
    let mut any = false;
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            if !any {
                return Ok(None);
            }
            break;
        }
        any = true;
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        // One byte of slack for a '\r' before the '\n'.
        if !too_long && buf.len() + chunk.len() <= max + 1 {
            buf.extend_from_slice(chunk);
        } else {
            too_long = true;
            buf.clear();
        }
        let used = done.unwrap_or(available.len());
        r.consume(used);
        if done.is_some() {
            break;
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    if too_long || buf.len() > max {
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(match String::from_utf8(buf) {
        Ok(s) => Line::Text(s),
        Err(_) => Line::NotUtf8,
    }))
}

/// The fields of a `PostalAddress` (proto/fieldvault/v1/vault.proto).
const ADDRESS_FIELDS: &str =
    "country, region, city, district, street_lines, postal_code, recipient";

/// Reads a structured address: a JSON object with the proto's field names,
/// each a string (`street_lines` an array of strings), all optional here
/// (the server says what is missing). The reason never quotes a value.
pub(crate) fn parse_address(json: &str) -> Result<pb::PostalAddress, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        format!(
            "is not valid JSON ({} at column {})",
            match e.classify() {
                serde_json::error::Category::Eof => "it ends too early",
                _ => "syntax error",
            },
            e.column()
        )
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(format!(
            "must be a JSON object with the fields {ADDRESS_FIELDS}"
        ));
    };
    // serde_json keeps the last of repeated keys; a field given twice is
    // refused instead of one of its values silently dropped.
    if let Ok(ObjectKeys(keys)) = serde_json::from_str::<ObjectKeys>(json) {
        if keys.len() != map.len() {
            return Err("holds a field twice".into());
        }
    }
    let mut a = pb::PostalAddress::default();
    for (key, v) in map {
        let slot = match key.as_str() {
            "country" => &mut a.country,
            "region" => &mut a.region,
            "city" => &mut a.city,
            "district" => &mut a.district,
            "postal_code" => &mut a.postal_code,
            "recipient" => &mut a.recipient,
            "street_lines" => {
                let serde_json::Value::Array(items) = v else {
                    return Err("street_lines must be an array of strings".into());
                };
                for item in items {
                    let serde_json::Value::String(s) = item else {
                        return Err("street_lines must be an array of strings".into());
                    };
                    a.street_lines.push(s);
                }
                continue;
            }
            // Not quoted: a key may hold an address (`{"17 Fakestreet
            // Lane": …}`).
            _ => {
                return Err(format!(
                    "has an unknown field (the fields are {ADDRESS_FIELDS})"
                ))
            }
        };
        match v {
            serde_json::Value::String(s) => *slot = s,
            serde_json::Value::Null => {}
            _ => return Err(format!("{key} must be a string")),
        }
    }
    Ok(a)
}

/// The keys of a JSON object, in order, repeats included.
struct ObjectKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for ObjectKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = ObjectKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ObjectKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, serde::de::IgnoredAny)) = map.next_entry::<String, _>()? {
                    keys.push(k);
                }
                Ok(ObjectKeys(keys))
            }
        }
        d.deserialize_map(Keys)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut r = std::io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        while let Some(line) = read_line(&mut r, max).unwrap() {
            out.push(line);
        }
        out
    }

    #[test]
    fn every_line_is_kept_blank_ones_too_and_line_endings_are_dropped() {
        let got = lines(b"a\n\nbb\r\n   \nlast", 10);
        let text = |s: &str| Line::Text(s.to_owned());
        assert_eq!(
            got,
            vec![text("a"), text(""), text("bb"), text("   "), text("last")]
        );
        assert_eq!(lines(b"", 10), vec![]);
        assert_eq!(lines(b"\n", 10), vec![text("")]);
    }

    #[test]
    fn a_byte_order_mark_is_dropped_from_the_first_line() {
        let got = lines(b"\xef\xbb\xbf+1 202-555-0101\n", 100);
        assert_eq!(
            without_bom(got.into_iter().next().unwrap()),
            Line::Text("+1 202-555-0101".into())
        );
        assert_eq!(without_bom(Line::Text("a".into())), Line::Text("a".into()));
    }

    #[test]
    fn an_overlong_line_is_dropped_whole_and_the_next_line_is_read() {
        let got = lines(b"0123456789\n0123456789ab\nok\n\xff\n", 10);
        assert_eq!(
            got,
            vec![
                Line::Text("0123456789".into()),
                Line::TooLong,
                Line::Text("ok".into()),
                Line::NotUtf8
            ]
        );
    }

    #[test]
    fn a_field_given_twice_is_refused_not_half_dropped() {
        let e = parse_address(
            r#"{"street_lines":["1 Main"],"street_lines":["202-555-0175"],"country":"US"}"#,
        )
        .unwrap_err();
        assert_eq!(e, "holds a field twice");
    }

    #[test]
    fn an_address_is_read_by_the_proto_field_names_and_errors_quote_no_value() {
        let a = parse_address(
            r#"{"country":"US","city":"Testville","street_lines":["17 Fakestreet Lane"],"postal_code":"99999"}"#,
        )
        .unwrap();
        assert_eq!(a.country, "US");
        assert_eq!(a.street_lines, vec!["17 Fakestreet Lane".to_owned()]);
        let e = parse_address(r#"{"zip":"99999"}"#).unwrap_err();
        assert!(e.contains("unknown field") && !e.contains("99999"), "{e}");
        let e = parse_address(r#"{"17 Fakestreet Lane":"x"}"#).unwrap_err();
        assert!(
            e.contains("has an unknown field") && !e.contains("Fakestreet"),
            "{e}"
        );
        let e = parse_address(r#"{"city":["Testville"]}"#).unwrap_err();
        assert!(
            e.contains("city must be a string") && !e.contains("Testville"),
            "{e}"
        );
        let e = parse_address(r#"{"city":"Testville""#).unwrap_err();
        assert!(
            e.contains("not valid JSON") && !e.contains("Testville"),
            "{e}"
        );
        assert!(parse_address("17 Fakestreet Lane").is_err());
    }
}
