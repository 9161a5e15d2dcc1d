use super::FieldKind;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::fmt;
use std::str::FromStr;

/// How tokens are issued for a field kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenMode {
    /// A new token on every call, even for a value seen before.
    #[default]
    Random,
    /// One token per canonical value, found through the blind index: the
    /// same value always yields the same token (joins, dedup).
    Deterministic,
}

/// The token mode of each field kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenModes {
    pub phone: TokenMode,
    pub address: TokenMode,
    pub national_id: TokenMode,
    pub email: TokenMode,
}

impl TokenModes {
    pub fn for_kind(&self, kind: FieldKind) -> TokenMode {
        match kind {
            FieldKind::Phone => self.phone,
            FieldKind::Address => self.address,
            FieldKind::NationalId => self.national_id,
            FieldKind::Email => self.email,
        }
    }
}

/// Every token starts with this prefix: it names the token format version so
/// a later format can coexist with this one.
pub const TOKEN_PREFIX: &str = "fv1_";

/// A token as callers see it: 16 opaque bytes, on the wire `fv1_` followed
/// by the bytes in unpadded URL-safe base64 (26 characters in all).
///
/// The bytes are one AES-256 block encryption, under the vault's token key,
/// of the record's [`RecordId`] and fixed format bits (see
/// `crypto::TokenCipher`). Parsing checks only the syntax; whether this
/// vault issued the token is known once the token key has decrypted it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId([u8; 16]);

impl TokenId {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(TOKEN_PREFIX)?;
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

/// Tokens are not secret, but `Debug` shows the wire form for log lines.
impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

/// The identity of a stored record: its place in the store's 64-bit
/// sequence, and the *epoch* of the store process that handed it out.
///
/// Sequence numbers are handed out by the store, ascending, and never
/// reused by one store. The epoch is a random 56-bit value each process
/// that opens the store draws (and logs before handing out any number), so
/// that a store restored from a backup, or copied to a second vault, hands
/// out ids that differ from the ones issued after the copy was taken even
/// where the sequence numbers repeat: a token issued after a backup never
/// comes to stand for another value once the backup is restored.
///
/// The token of a record is the encryption of its id. The id shows the
/// order of creation, so it stays inside the vault: callers see tokens,
/// operators' tools may see ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pub seq: u64,
    pub epoch: u64,
}

impl RecordId {
    /// Epochs are below 2^56 (they fill 7 bytes of a token block).
    pub const EPOCH_LIMIT: u64 = 1 << 56;

    pub fn new(seq: u64, epoch: u64) -> Self {
        Self { seq, epoch }
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record #{} (epoch {:014x})", self.seq, self.epoch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    #[error("token is empty")]
    Empty,
    #[error("token does not start with the '{TOKEN_PREFIX}' format prefix")]
    UnknownFormat,
    #[error(
        "token is {0} characters long; a token is {TOKEN_LEN} ('{TOKEN_PREFIX}' and {BODY_LEN} more)"
    )]
    WrongLength(usize),
    #[error(
        "token has a character other than A-Z, a-z, 0-9, '-' and '_' at position {0} \
         (counting from 1)"
    )]
    BadCharacter(usize),
    #[error("token's last character is not one a token ends with (mistyped?)")]
    NotCanonical,
}

/// Characters after the prefix: 16 bytes in unpadded base64.
const BODY_LEN: usize = 22;
/// A token's length in characters.
const TOKEN_LEN: usize = TOKEN_PREFIX.len() + BODY_LEN;

impl FromStr for TokenId {
    type Err = TokenParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(TokenParseError::Empty);
        }
        let body = s
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenParseError::UnknownFormat)?;
        if let Some(i) = body
            .chars()
            .position(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(TokenParseError::BadCharacter(TOKEN_PREFIX.len() + i + 1));
        }
        // Only ASCII from here: bytes are characters.
        if body.len() != BODY_LEN {
            return Err(TokenParseError::WrongLength(
                TOKEN_PREFIX.len() + body.len(),
            ));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenParseError::NotCanonical)?;
        let bytes: [u8; 16] = bytes
            .try_into()
            .map_err(|_| TokenParseError::WrongLength(s.len()))?;
        let id = Self(bytes);
        // Reject non-canonical encodings (base64 slack bits), so one record
        // has exactly one token string.
        if id.to_string() != s {
            return Err(TokenParseError::NotCanonical);
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Arbitrary token bytes (the tests here check syntax, not issuance).
    fn token(n: u8) -> TokenId {
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = n.wrapping_mul(97).wrapping_add(i as u8).wrapping_mul(31);
        }
        TokenId::from_bytes(bytes)
    }

    #[test]
    fn a_token_is_short_url_safe_and_round_trips() {
        for n in 0..=255u8 {
            let t = token(n);
            let s = t.to_string();
            assert_eq!(s.len(), 26);
            assert!(s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
            assert_eq!(s.parse::<TokenId>(), Ok(t));
        }
    }

    #[test]
    fn malformed_tokens_are_rejected_with_the_reason() {
        assert_eq!("".parse::<TokenId>(), Err(TokenParseError::Empty));
        assert_eq!(
            "tok_AAAAAAAAAAAAAAAAAAAAAA".parse::<TokenId>(),
            Err(TokenParseError::UnknownFormat)
        );
        assert_eq!(
            "fv1_abc".parse::<TokenId>(),
            Err(TokenParseError::WrongLength(7))
        );
        assert_eq!(
            "fv1_!!!!!!!!!!!!!!!!!!!!!!".parse::<TokenId>(),
            Err(TokenParseError::BadCharacter(5))
        );
        // Syntax only: whether the vault issued it is decided with its key.
        assert_eq!(
            "fv1_AAAAAAAAAAAAAAAAAAAAAA".parse::<TokenId>(),
            Ok(TokenId::from_bytes([0; 16]))
        );
    }

    #[test]
    fn a_malformed_token_says_why_in_a_short_message_that_quotes_nothing() {
        let t = token(7).to_string();
        let cases = [
            (
                format!("{t}x"),
                "token is 27 characters long; a token is 26 ('fv1_' and 22 more)",
            ),
            (
                t[..25].to_owned(),
                "token is 25 characters long; a token is 26 ('fv1_' and 22 more)",
            ),
            (
                format!("{}.{}", &t[..10], &t[11..]),
                "token has a character other than A-Z, a-z, 0-9, '-' and '_' at position 11 \
                 (counting from 1)",
            ),
            (
                "tok_AAAAAAAAAAAAAAAAAAAAAA".to_owned(),
                "token does not start with the 'fv1_' format prefix",
            ),
        ];
        for (input, message) in cases {
            let got = input
                .parse::<TokenId>()
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert_eq!(got, message, "{input}");
            assert!(got.len() < 100, "{got}");
        }
        // 16 bytes end in 4 slack bits: the final base64 character of a
        // canonical token is one of 'A', 'Q', 'g', 'w'.
        let mut chars: Vec<char> = t.chars().collect();
        let last = chars.len() - 1;
        chars[last] = match chars[last] {
            'A' => 'B',
            'Q' => 'R',
            'g' => 'h',
            _ => 'x',
        };
        let bumped: String = chars.into_iter().collect();
        assert_eq!(
            bumped.parse::<TokenId>(),
            Err(TokenParseError::NotCanonical)
        );
    }
}
