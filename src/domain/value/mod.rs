//! Field values: validation, canonical forms and what a reveal shows.
//!
//! A value is canonicalised before it is sealed, so format variants of one
//! phone number, ID or address are one value (and one deterministic token).
//! The canonical form is encoded into the sealed plaintext:
//! - phone: E.164 (`+8613812345678`);
//! - email: `local@domain` with the domain lower-case ASCII (IDNA);
//! - national ID: `scheme:number` (`cn_ric:11010519491231002X`);
//! - address: `t:` + normalised free-form text, or `s:` + the normalised
//!   structured address as JSON.
//!
//! Errors name the field and the rule, never the value.

mod address;
mod email;
mod national_id;
mod phone;

#[cfg(test)]
pub(crate) use address::address_of;
pub use address::{Address, MAX_PART_BYTES, MAX_STREET_LINES};
pub use national_id::IdScheme;
pub use phone::PhoneRegion;

use super::policy::RevealLevel;
use super::{FieldKind, Plaintext};
use zeroize::Zeroizing;

/// The largest free-form value accepted, in bytes, for any kind.
pub const MAX_VALUE_BYTES: usize = 1024;

/// What is wrong with an input field: `field` names the part (`value`,
/// `region`, `scheme`, `address.postal_code`, …) and `reason` the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValueError {
    pub field: &'static str,
    pub reason: String,
}

impl ValueError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// One field as a caller sent it.
#[derive(Debug, Clone)]
pub struct FieldInput {
    pub kind: FieldKind,
    /// The free-form value (empty when a structured address is given).
    pub value: Plaintext,
    /// Phone only: the region to read a national-format number in.
    pub region: Option<String>,
    /// National ID only: required.
    pub scheme: Option<IdScheme>,
    /// Address only: the structured form, instead of `value`.
    pub address: Option<Address>,
    /// Tokenize only: how long the token lives (`None`: the kind's
    /// configured default, which may be forever). Checked against the
    /// kind's maximum by the vault.
    pub ttl: Option<std::time::Duration>,
}

impl FieldInput {
    /// A field with just a kind and a free-form value.
    pub fn simple(kind: FieldKind, value: &str) -> Self {
        Self {
            kind,
            value: Plaintext::new(value.to_owned()),
            region: None,
            scheme: None,
            address: None,
            ttl: None,
        }
    }
}

/// A string built in wiped memory. A `String` reallocates as it grows and
/// frees the old buffer without wiping it; this one grows by copying into a
/// new wiped buffer, so no stray copy of the value is left on the heap.
pub(super) struct WipedString(Zeroizing<String>);

impl WipedString {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self(Zeroizing::new(String::with_capacity(capacity)))
    }

    pub(super) fn push_str(&mut self, s: &str) {
        let needed = self.0.len() + s.len();
        if needed > self.0.capacity() {
            let mut bigger = Zeroizing::new(String::with_capacity(
                needed.max(self.0.capacity().saturating_mul(2)),
            ));
            bigger.push_str(&self.0);
            // The old buffer is wiped as it drops here.
            self.0 = bigger;
        }
        self.0.push_str(s);
    }

    pub(super) fn push(&mut self, c: char) {
        self.push_str(c.encode_utf8(&mut [0; 4]));
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }

    /// The string, moved out without a copy: hand it straight to a type
    /// that wipes it ([`Plaintext`], [`Address`]).
    pub(super) fn into_string(mut self) -> String {
        std::mem::take(&mut *self.0)
    }

    /// A `Zeroizing` string, moved out without a copy.
    pub(super) fn into_zeroizing(mut self) -> Zeroizing<String> {
        Zeroizing::new(std::mem::take(&mut *self.0))
    }
}

pub(super) use crate::domain::purpose::{format_character_reason, is_format_character};

fn only_for(field: &'static str, kind: &str) -> ValueError {
    ValueError::new(field, format!("applies only to {kind} fields"))
}

/// Loads the phone-number metadata now rather than on the first request
/// (it is parsed lazily and takes a noticeable moment, most of all in debug
/// builds).
pub fn warm_up() {
    let _ = phone::calling_code("+12025550100");
}

/// Checks a field and returns the canonical encoding that gets sealed.
/// `default_region` reads national-format phone numbers sent without a region.
pub fn canonicalise(
    input: &FieldInput,
    default_region: Option<PhoneRegion>,
) -> Result<Plaintext, ValueError> {
    let kind = input.kind;
    if input.region.is_some() && kind != FieldKind::Phone {
        return Err(only_for("region", "phone"));
    }
    if input.scheme.is_some() && kind != FieldKind::NationalId {
        return Err(only_for("scheme", "national_id"));
    }
    if input.address.is_some() && kind != FieldKind::Address {
        return Err(only_for("address", "address"));
    }
    let raw = input.value.expose();
    if raw.len() > MAX_VALUE_BYTES {
        return Err(ValueError::new(
            "value",
            format!("is longer than {MAX_VALUE_BYTES} bytes"),
        ));
    }
    if raw.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return Err(ValueError::new("value", "holds control characters"));
    }
    let structured = kind == FieldKind::Address && input.address.is_some();
    if raw.trim().is_empty() && !structured {
        return Err(ValueError::new("value", "is empty"));
    }
    let encoded = match kind {
        FieldKind::Phone => {
            let region = match &input.region {
                Some(r) => Some(PhoneRegion::parse(r).map_err(|e| ValueError::new("region", e))?),
                None => default_region,
            };
            phone::canonical(raw, region)?
        }
        FieldKind::Email => email::canonical(raw)?,
        FieldKind::NationalId => {
            let scheme = input
                .scheme
                .ok_or_else(|| ValueError::new("scheme", "is required for national_id fields"))?;
            let number = national_id::canonical(scheme, raw)?;
            let mut out = WipedString::with_capacity(scheme.as_str().len() + 1 + number.len());
            out.push_str(scheme.as_str());
            out.push(':');
            out.push_str(&number);
            out.into_string()
        }
        FieldKind::Address => match &input.address {
            Some(_) if !raw.trim().is_empty() => {
                return Err(ValueError::new(
                    "value",
                    "give either value or address, not both",
                ))
            }
            Some(a) => address::encode_structured(&address::canonical_structured(a)?)?,
            None => {
                let text = address::normalise_text("value", raw)?;
                let mut out = WipedString::with_capacity(2 + text.len());
                out.push_str("t:");
                out.push_str(&text);
                out.into_string()
            }
        },
    };
    Ok(Plaintext::new(encoded))
}

/// A stored value prepared for the caller at one reveal level.
#[derive(Debug)]
pub struct Rendered {
    /// Full: the canonical value (an address as one line). Masked: the
    /// masked form. None: empty.
    pub value: Plaintext,
    pub scheme: Option<IdScheme>,
    /// Structured addresses only (masked: country, region and city).
    pub address: Option<Address>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stored value does not decode")]
pub struct DecodeError;

/// Renders a canonical encoding (see the module docs) at `level`:
/// - phone masked keeps the country code and the last 4 digits (`+86 ***5678`);
/// - national ID masked keeps the last 4 characters (`***002X`);
/// - address masked keeps country, region and city of a structured address;
///   a free-form address masks to `***` (its parts cannot be told apart);
/// - email masked keeps the first character and the domain (`a***@example.com`);
/// - `none` reveals no value, only the kind (and a national ID's scheme).
pub fn render(
    kind: FieldKind,
    encoded: &Plaintext,
    level: RevealLevel,
) -> Result<Rendered, DecodeError> {
    let v = encoded.expose();
    let mut out = Rendered {
        value: Plaintext::new(String::new()),
        scheme: None,
        address: None,
    };
    match kind {
        FieldKind::Phone => {
            out.value = match level {
                RevealLevel::None => out.value,
                RevealLevel::Masked => {
                    let cc = phone::calling_code(v).ok_or(DecodeError)?;
                    let last4 = last_n(v.chars().filter(char::is_ascii_digit), 4);
                    Plaintext::new(format!("+{cc} ***{}", last4.as_str()))
                }
                RevealLevel::Full => encoded.clone(),
            }
        }
        FieldKind::Email => {
            out.value = match level {
                RevealLevel::None => out.value,
                RevealLevel::Masked => {
                    let (local, domain) = v.rsplit_once('@').ok_or(DecodeError)?;
                    let first = local.chars().next().ok_or(DecodeError)?;
                    Plaintext::new(format!("{first}***@{domain}"))
                }
                RevealLevel::Full => encoded.clone(),
            }
        }
        FieldKind::NationalId => {
            let (scheme, number) = v.split_once(':').ok_or(DecodeError)?;
            out.scheme = Some(scheme.parse().map_err(|_| DecodeError)?);
            out.value = match level {
                RevealLevel::None => out.value,
                RevealLevel::Masked => {
                    Plaintext::new(format!("***{}", last_n(number.chars(), 4).as_str()))
                }
                RevealLevel::Full => Plaintext::new(number.to_owned()),
            }
        }
        FieldKind::Address => {
            if let Some(text) = v.strip_prefix("t:") {
                out.value = match level {
                    RevealLevel::None => out.value,
                    RevealLevel::Masked => Plaintext::new("***".to_owned()),
                    RevealLevel::Full => Plaintext::new(text.to_owned()),
                }
            } else {
                let json = v.strip_prefix("s:").ok_or(DecodeError)?;
                let address: Address = serde_json::from_str(json).map_err(|_| DecodeError)?;
                let shown = match level {
                    RevealLevel::None => return Ok(out),
                    RevealLevel::Masked => address.masked(),
                    RevealLevel::Full => address,
                };
                out.value = Plaintext::new(shown.one_line());
                out.address = Some(shown);
            }
        }
    }
    Ok(out)
}

/// The last `n` characters, or nothing when there are not more than `n`
/// (showing all of a short value would reveal it). Kept in wiped memory.
fn last_n(chars: impl Iterator<Item = char> + Clone, n: usize) -> Zeroizing<String> {
    let count = chars.clone().count();
    Zeroizing::new(if count > n {
        chars.skip(count - n).collect()
    } else {
        String::new()
    })
}

#[cfg(test)]
mod tests;
