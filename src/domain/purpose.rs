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
    #[error("may not hold invisible, formatting, private-use or unassigned characters (Unicode default-ignorable code points such as U+200B, U+202A-U+202E, U+2066-U+2069, U+FEFF, tag characters; format characters; U+E000-U+F8FF; noncharacters) or line and paragraph separators (U+2028, U+2029)")]
    FormatCharacters,
}

/// Characters that reorder how text is displayed or hide in it, so a
/// value, a mailbox or an audit line could show as something it is not
/// ("Trojan Source", "ASCII smuggling" with tag characters), and two
/// values that look the same would get two deterministic tokens: every
/// Unicode Default_Ignorable_Code_Point (the bidirectional overrides and
/// isolates, zero-width space, soft hyphen, variation selectors, tag
/// characters, Hangul fillers, …), every other format character
/// (General_Category Cf, such as U+FFF9–U+FFFB), and private-use and
/// unassigned code points (noncharacters included).
///
/// Outside `strict` text (addresses, justifications: ordinary writing in
/// any script) these stay allowed, because scripts need them: the
/// bidirectional marks U+061C, U+200E, U+200F (right-to-left text), the
/// zero-width (non-)joiners U+200C, U+200D (Indic scripts, Persian, emoji
/// sequences), the emoji presentation selectors U+FE0E, U+FE0F (phone
/// keyboards add them), and the Mongolian variation selectors and vowel
/// separator U+180B–U+180F. A `strict` text (a mailbox name) refuses them
/// too.
/// Whether `c` could change how a log or audit line reads: a control
/// character, a line separator, or an invisible or bidirectional
/// formatting character (the strict set). Operator-given text written to
/// those lines (a freeze reason, a rule name, a key file path) refuses it.
pub(crate) fn breaks_a_line(c: char) -> bool {
    c.is_control() || is_format_character(c, true) || matches!(c, '\u{2028}' | '\u{2029}')
}

pub(crate) fn is_format_character(c: char, strict: bool) -> bool {
    match c {
        '\u{061C}'
        | '\u{200C}'..='\u{200F}'
        | '\u{FE0E}'..='\u{FE0F}'
        | '\u{180B}'..='\u{180F}' => strict,
        _ => is_default_ignorable(c) || is_format_private_or_unassigned(c),
    }
}

fn is_format_private_or_unassigned(c: char) -> bool {
    use icu_properties::props::GeneralCategory;
    use icu_properties::CodePointMapData;
    matches!(
        CodePointMapData::<GeneralCategory>::new().get(c),
        GeneralCategory::Format | GeneralCategory::PrivateUse | GeneralCategory::Unassigned
    )
}

/// Unicode's Default_Ignorable_Code_Point property, from ICU4X's compiled
/// Unicode data (`icu_properties`, already in the tree through `idna`).
fn is_default_ignorable(c: char) -> bool {
    use icu_properties::props::{BinaryProperty, DefaultIgnorableCodePoint};
    DefaultIgnorableCodePoint::for_char(c)
}

/// Why a text with [`is_format_character`] is refused.
pub(crate) fn format_character_reason(strict: bool) -> &'static str {
    if strict {
        "holds invisible, formatting, private-use or unassigned characters (Unicode default-ignorable code points such as U+00AD, U+200B-U+200F, U+202A-U+202E, U+2060-U+206F, U+FE00-U+FE0F, U+FEFF, tag characters; format characters; U+E000-U+F8FF; noncharacters) or bidirectional formatting"
    } else {
        "holds invisible, formatting, private-use or unassigned characters or bidirectional overrides or isolates (U+202A-U+202E, U+2066-U+2069, and other Unicode default-ignorable code points such as U+00AD, U+200B, U+FEFF, tag characters; format characters; U+E000-U+F8FF; noncharacters; the marks U+200E, U+200F, U+061C, the joiners U+200C, U+200D, the emoji selectors U+FE0E, U+FE0F and the Mongolian U+180B-U+180F are fine)"
    }
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
        // It is written to the audit log as it is: nothing in it may change
        // how the audit line reads (ordinary writing in any script may).
        if s.chars()
            .any(|c| is_format_character(c, false) || matches!(c, '\u{2028}' | '\u{2029}'))
        {
            return Err(TextError::FormatCharacters);
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
    fn a_justification_cannot_reorder_or_hide_text_in_the_audit_line() {
        assert!(Justification::parse("SUP-1234, customer asked").is_ok());
        // Ordinary writing in right-to-left and joining scripts is fine.
        assert!(Justification::parse("\u{05E9}\u{05D9}\u{05D7}\u{05D4}\u{200F} SUP-1").is_ok());
        assert!(Justification::parse(
            "\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}"
        )
        .is_ok());
        for c in ['\u{202E}', '\u{2067}', '\u{200B}', '\u{FEFF}'] {
            assert_eq!(
                Justification::parse(&format!("SUP-1{c}234")),
                Err(TextError::FormatCharacters),
                "U+{:04X}",
                c as u32
            );
        }
        assert_eq!(
            Justification::parse("SUP-1\u{85}234"),
            Err(TextError::ControlCharacters)
        );
    }

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
