use std::fmt;
use std::str::FromStr;

/// The kind of a sensitive field. It decides validation, masking and which
/// policy rules apply. The numeric code is stored on disk and bound into the
/// ciphertext's associated data: never renumber a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldKind {
    Phone,
    Address,
    NationalId,
    Email,
}

impl FieldKind {
    pub const ALL: [FieldKind; 4] = [
        FieldKind::Phone,
        FieldKind::Address,
        FieldKind::NationalId,
        FieldKind::Email,
    ];

    /// The name used in policy files, the CLI and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldKind::Phone => "phone",
            FieldKind::Address => "address",
            FieldKind::NationalId => "national_id",
            FieldKind::Email => "email",
        }
    }

    /// The stable code stored with a record and bound into its AAD. It is the
    /// same number as the protobuf enum value.
    pub fn code(self) -> u8 {
        match self {
            FieldKind::Phone => 1,
            FieldKind::Address => 2,
            FieldKind::NationalId => 3,
            FieldKind::Email => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no field kind. The message does not quote it (it may be
/// a value given in the wrong place); the name is kept for callers that
/// know it is safe to show (a policy file's `kinds`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown field kind (expected one of: phone, address, national_id, email)")]
pub struct UnknownFieldKind(pub String);

impl FromStr for FieldKind {
    type Err = UnknownFieldKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownFieldKind(s.chars().take(32).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for kind in FieldKind::ALL {
            assert_eq!(kind.as_str().parse::<FieldKind>(), Ok(kind));
            assert_eq!(FieldKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(FieldKind::from_code(0), None);
        assert!("ssn".parse::<FieldKind>().is_err());
    }

    #[test]
    fn an_unknown_kind_is_not_quoted_in_the_message() {
        let Err(e) = "+1 202-555-0123".parse::<FieldKind>() else {
            panic!("a number parsed as a field kind");
        };
        assert!(!e.to_string().contains("202"), "{e}");
        assert!(e.to_string().contains("expected one of: phone"), "{e}");
    }
}
