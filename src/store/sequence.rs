//! The sled store's record-id sequence.
//!
//! Ids are handed out from memory, below a *ceiling* that is durable: every
//! id under it may have been handed out. When the ids below the ceiling run
//! out, the store logs a higher ceiling through the commit thread (one
//! `fdatasync`, shared with the writes of that group) before handing out
//! more. At open, the sequence starts at the durable ceiling, so no id is
//! handed out twice, not even one taken by a call that crashed before its
//! record was logged: such ids are skipped, at most [`CEILING_STEP`] per
//! restart, out of 2^64.
//!
//! Each process also draws a random *epoch* when it opens the store, logs
//! it with its first ceiling raise, and hands out every id under it. A
//! store restored from a copy goes back to the copy's ceiling, so sequence
//! numbers handed out after the copy are handed out again; the epoch
//! differs, so the ids (and tokens) do not.

use super::{StorageFailure, StoreError};
use std::sync::{Mutex, MutexGuard};

/// How far a raise lifts the ceiling beyond what is needed now.
#[cfg(not(test))]
pub(super) const CEILING_STEP: u64 = 1 << 16;
/// Small in unit tests, so the power-loss test cuts the power inside
/// ceiling raises often, not once per power cycle.
#[cfg(test)]
pub(super) const CEILING_STEP: u64 = 64;

struct State {
    next: u64,
    ceiling: u64,
}

pub(super) struct Sequence {
    /// This process's epoch.
    epoch: u64,
    state: Mutex<State>,
    /// Held while a raise is logged, so concurrent callers wait for one
    /// raise instead of logging one each.
    raising: tokio::sync::Mutex<()>,
}

fn exhausted() -> StoreError {
    StoreError::Backend(StorageFailure::internal(
        "the record-id sequence is exhausted",
    ))
}

impl Sequence {
    /// A sequence that hands out `next` first, under `epoch`, and may hand
    /// out ids below `ceiling` without logging anything.
    pub(super) fn new(next: u64, ceiling: u64, epoch: u64) -> Self {
        Self {
            epoch,
            state: Mutex::new(State {
                next,
                ceiling: ceiling.max(next),
            }),
            raising: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Two integers, updated together under the lock: a panic elsewhere
        // cannot leave them half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first of `n` consecutive ids, all below the durable ceiling, or
    /// `None` when the ceiling must rise first.
    pub(super) fn take(&self, n: u64) -> Result<Option<u64>, StoreError> {
        let mut state = self.state();
        let end = state.next.checked_add(n).ok_or_else(exhausted)?;
        if end > state.ceiling {
            return Ok(None);
        }
        let first = state.next;
        state.next = end;
        Ok(Some(first))
    }

    /// The ceiling to log before `n` more ids can be taken, or `None` when
    /// they can be taken now (another caller raised it meanwhile).
    pub(super) fn wanted_ceiling(&self, n: u64) -> Result<Option<u64>, StoreError> {
        let state = self.state();
        let end = state.next.checked_add(n).ok_or_else(exhausted)?;
        if end <= state.ceiling {
            return Ok(None);
        }
        Ok(Some(end.saturating_add(CEILING_STEP)))
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Records that `ceiling` is durable.
    pub(super) fn raised(&self, ceiling: u64) {
        let mut state = self.state();
        state.ceiling = state.ceiling.max(ceiling);
    }

    /// Taken while logging a raise.
    pub(super) async fn raising(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.raising.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T>(r: Result<T, StoreError>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn ids_are_taken_below_the_ceiling_only_and_never_twice() {
        let seq = Sequence::new(10, 20, 1);
        assert_eq!(ok(seq.take(4)), Some(10));
        assert_eq!(ok(seq.take(6)), Some(14));
        assert_eq!(ok(seq.take(1)), None, "the ceiling is reached");
        assert_eq!(ok(seq.wanted_ceiling(3)), Some(23 + CEILING_STEP));
        seq.raised(23 + CEILING_STEP);
        assert_eq!(ok(seq.wanted_ceiling(3)), None);
        assert_eq!(ok(seq.take(3)), Some(20));
        // A lower ceiling reported late does not lower it.
        seq.raised(5);
        assert_eq!(ok(seq.take(1)), Some(23));
    }

    #[test]
    fn the_end_of_the_sequence_is_an_error_not_a_wrap() {
        let seq = Sequence::new(u64::MAX - 1, u64::MAX, 1);
        assert_eq!(ok(seq.take(1)), Some(u64::MAX - 1));
        assert!(seq.take(2).is_err());
        assert!(seq.wanted_ceiling(2).is_err());
    }
}
