use std::fmt;
use zeroize::Zeroizing;

/// A sensitive value in the clear. Its memory is wiped on drop and its
/// `Debug` never shows the content, so it cannot leak through a log line, an
/// error message or a panic by accident. Read it only with [`Plaintext::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext(Zeroizing<String>);

impl Plaintext {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value itself. Every call site is a place where plaintext flows:
    /// keep them few and never format the result into a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Plaintext(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let p = Plaintext::new("+1 202-555-0142".to_owned());
        assert_eq!(format!("{p:?}"), "Plaintext(<redacted>)");
        assert!(!format!("{:?}", Some(&p)).contains("555"));
    }
}
