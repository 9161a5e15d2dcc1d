//! The gauges of the key lifecycle and of frozen callers, refreshed from
//! what KeyAdmin's GetKeyStatus reads (the key catalog and the store's
//! per-version counters: no scan of the records) and the freeze list,
//! every few seconds while a metrics listener runs.

use super::keys::{JobStatus, KeyState, KeyVersionStatus};
use super::Vault;
use crate::metrics::{
    FROZEN_CALLERS, JOB_DONE, JOB_FAILED, JOB_REMAINING, JOB_RUNNING, KEY_ACTIVE, KEY_RECORDS,
    KEY_VERSIONS,
};
use std::sync::Weak;
use std::time::Duration;

/// How often the gauges are refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Refreshes the gauges every [`REFRESH_EVERY`], the first time at once,
/// until the vault is gone (it holds the vault only while it reads).
pub fn refresh_gauges(vault: Weak<Vault>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(vault) = vault.upgrade() else {
                return;
            };
            vault.publish_gauges().await;
        }
    })
}

impl Vault {
    /// Sets the key and freeze gauges from the state now.
    pub async fn publish_gauges(&self) {
        match self.key_status_now().await {
            Ok(status) => {
                publish_keys("data", &status.data_keys);
                publish_keys("index", &status.index_keys);
                publish_job("rewrap", &status.rewrap);
                publish_job("index_rebuild", &status.index_rebuild);
            }
            Err(e) => tracing::debug!(error = %e, "metrics: no key status"),
        }
        match self.store.freezes().await {
            Ok(freezes) => metrics::gauge!(FROZEN_CALLERS).set(freezes.len() as f64),
            Err(e) => tracing::debug!(error = %e, "metrics: no freeze list"),
        }
    }
}

fn publish_keys(purpose: &'static str, versions: &[KeyVersionStatus]) {
    let mut states = [
        (KeyState::Active, 0u32),
        (KeyState::DecryptOnly, 0),
        (KeyState::Retired, 0),
    ];
    for v in versions {
        metrics::gauge!(KEY_RECORDS, "purpose" => purpose, "version" => v.version.to_string())
            .set(v.records as f64);
        if v.state == KeyState::Active {
            metrics::gauge!(KEY_ACTIVE, "purpose" => purpose).set(f64::from(v.version));
        }
        for (state, n) in &mut states {
            if *state == v.state {
                *n += 1;
            }
        }
    }
    for (state, n) in states {
        metrics::gauge!(KEY_VERSIONS, "purpose" => purpose, "state" => state.as_str())
            .set(f64::from(n));
    }
}

fn publish_job(job: &'static str, status: &JobStatus) {
    metrics::gauge!(JOB_DONE, "job" => job).set(status.done as f64);
    metrics::gauge!(JOB_REMAINING, "job" => job).set(status.remaining as f64);
    metrics::gauge!(JOB_FAILED, "job" => job).set(status.failed as f64);
    let running = status.state == super::JobState::Running;
    metrics::gauge!(JOB_RUNNING, "job" => job).set(if running { 1.0 } else { 0.0 });
}
