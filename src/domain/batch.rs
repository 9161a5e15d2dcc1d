//! The one wording of a batch over its item limit. The server says it (the
//! codec before decoding, the vault after); the CLI reads the limit back
//! from it to shrink its chunks, so the two live together.

/// `holds 1001 items; at most 1000 are allowed per call`.
pub fn too_many_items(len: usize, max: usize) -> String {
    format!("holds {len} items; at most {max} are allowed per call")
}

/// The limit in a message that carries [`too_many_items`]'s words (after
/// any field path before them).
pub fn allowed_per_call(message: &str) -> Option<usize> {
    let rest = message.split("at most ").nth(1)?;
    let (n, tail) = rest.split_once(' ')?;
    tail.starts_with("are allowed per call")
        .then(|| n.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_read_back_from_the_words_that_state_it() {
        let said = format!("fields: {}", too_many_items(1001, 1000));
        assert_eq!(allowed_per_call(&said), Some(1000));
        assert_eq!(allowed_per_call("fields[3].value: is empty"), None);
    }
}
