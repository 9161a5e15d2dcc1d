//! Re-reading files on a timer and at once on SIGHUP: the policy file and
//! the TLS files share the schedule.

use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{Interval, MissedTickBehavior};

/// A timer of `every` and the SIGHUP stream (if it can be had; `what` names
/// the files in the warning when it cannot). Call within the runtime:
/// SIGHUP is listened for from this call on.
pub struct Reread {
    tick: Interval,
    hangup: Option<Signal>,
}

impl Reread {
    pub fn new(every: Duration, what: &str) -> Self {
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; {what} still re-read when changed");
                None
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { tick, hangup }
    }

    /// Waits for the first tick only (at once): for a reader that has just
    /// read its files. A SIGHUP meanwhile is kept for [`Reread::next`].
    pub async fn skip_first_tick(&mut self) {
        self.tick.tick().await;
    }

    /// Waits for the next tick (false) or SIGHUP (true: a forced re-read).
    pub async fn next(&mut self) -> bool {
        let hangup = &mut self.hangup;
        tokio::select! {
            _ = self.tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        }
    }
}
