use std::fmt;

/// Why a caller wants a value, e.g. `callback`. Lower-case ASCII letters,
/// digits, `_`, `-` and `.`, 1 to 64 characters, so purposes in policy files
/// and requests compare exactly.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Purpose(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("is required")]
    Missing,
    #[error("is longer than {0} bytes")]
    TooLong(usize),
    #[error("may only hold lower-case ASCII letters, digits, '_', '-' and '.'")]
    BadCharacters,
    #[error("may not hold control characters")]
    ControlCharacters,
}

impl Purpose {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, TextError> {
        if s.is_empty() {
            return Err(TextError::Missing);
        }
        if s.len() > Self::MAX_LEN {
            return Err(TextError::TooLong(Self::MAX_LEN));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
        {
            return Err(TextError::BadCharacters);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Free text a caller gives with a reveal (a ticket number, say). It goes to
/// the audit log, never to a log line. Optional, at most 512 bytes.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Justification(String);

impl Justification {
    pub const MAX_LEN: usize = 512;

    pub fn parse(s: &str) -> Result<Self, TextError> {
        if s.len() > Self::MAX_LEN {
            return Err(TextError::TooLong(Self::MAX_LEN));
        }
        if s.chars().any(char::is_control) {
            return Err(TextError::ControlCharacters);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_are_strict_tokens() {
        assert!(Purpose::parse("callback").is_ok());
        assert!(Purpose::parse("delivery-label.v2").is_ok());
        assert_eq!(Purpose::parse(""), Err(TextError::Missing));
        assert_eq!(Purpose::parse("Callback"), Err(TextError::BadCharacters));
        assert_eq!(Purpose::parse("call back"), Err(TextError::BadCharacters));
        assert_eq!(Purpose::parse(&"a".repeat(65)), Err(TextError::TooLong(64)));
    }

    #[test]
    fn justifications_are_bounded_single_lines() {
        assert!(Justification::parse("").is_ok());
        assert!(Justification::parse("ticket SUP-1234").is_ok());
        assert!(Justification::parse("a\nb").is_err());
        assert!(Justification::parse(&"x".repeat(513)).is_err());
    }
}
