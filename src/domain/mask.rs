//! Masked renderings of canonical values. A mask shows a fixed amount of the
//! value and nothing about the length of what it hides.

use super::{FieldKind, Plaintext};
use zeroize::Zeroizing;

/// What replaces the hidden part of a value.
pub const HIDDEN: &str = "***";

/// Masks a canonical value of `kind`:
/// - phone: `***` and the last 4 digits (`***0142`);
/// - address: `***, ` and the last comma-separated part (`***, ZZ 00000`),
///   or `***` alone when the address has no comma;
/// - national ID: `***` and the last 4 characters (`***1120`).
pub fn mask(kind: FieldKind, value: &Plaintext) -> Plaintext {
    let v = value.expose();
    // The shown part is itself a piece of the value: keep it in wiped memory.
    let shown: Zeroizing<String> = Zeroizing::new(match kind {
        FieldKind::Phone => last_n(v.chars().filter(char::is_ascii_digit), 4),
        FieldKind::Address => {
            return Plaintext::new(match v.rsplit_once(',') {
                Some((_, last)) if !last.trim().is_empty() => {
                    format!("{HIDDEN}, {}", last.trim())
                }
                _ => HIDDEN.to_owned(),
            })
        }
        FieldKind::NationalId => last_n(v.chars(), 4),
    });
    Plaintext::new(format!("{HIDDEN}{}", shown.as_str()))
}

/// The last `n` characters, or nothing when there are not more than `n`
/// (showing all of a short value would reveal it).
fn last_n(chars: impl Iterator<Item = char> + Clone, n: usize) -> String {
    let count = chars.clone().count();
    if count > n {
        chars.skip(count - n).collect()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: FieldKind, v: &str) -> String {
        mask(kind, &Plaintext::new(v.to_owned()))
            .expose()
            .to_owned()
    }

    #[test]
    fn phone_shows_only_the_last_four_digits() {
        assert_eq!(m(FieldKind::Phone, "+12025550142"), "***0142");
        assert_eq!(m(FieldKind::Phone, "+442079460018"), "***0018");
    }

    #[test]
    fn address_shows_only_the_last_part() {
        assert_eq!(
            m(FieldKind::Address, "1 Example Way, Springfield, ZZ 00000"),
            "***, ZZ 00000"
        );
        assert_eq!(m(FieldKind::Address, "1 Example Way"), "***");
        assert_eq!(m(FieldKind::Address, "1 Example Way,"), "***");
    }

    #[test]
    fn national_id_shows_only_the_last_four_characters() {
        assert_eq!(m(FieldKind::NationalId, "078051120"), "***1120");
        assert_eq!(m(FieldKind::NationalId, "1234"), "***");
    }

    #[test]
    fn masks_do_not_reveal_the_length() {
        assert_eq!(
            m(FieldKind::Phone, "+861381234567"),
            m(FieldKind::Phone, "2025554567")
        );
    }
}
