//! A named background thread of the store (the commit thread, the apply
//! thread): spawned once, joined when dropped, and a panic reported instead
//! of leaving its waiters hanging.

use super::{StorageFailure, StoreError};
use std::thread::JoinHandle;

pub(super) struct Worker {
    name: &'static str,
    thread: Option<JoinHandle<()>>,
}

/// Runs `on_panic` if the thread unwinds through it.
struct PanicGuard<P: FnOnce()>(Option<P>);

impl<P: FnOnce()> Drop for PanicGuard<P> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(on_panic) = self.0.take() {
                on_panic();
            }
        }
    }
}

impl Worker {
    /// Starts `body` on a thread called `name`. If `body` panics,
    /// `on_panic` runs on that thread while it unwinds, so whoever waits on
    /// the thread can be told instead of waiting forever.
    pub(super) fn spawn<B, P>(name: &'static str, body: B, on_panic: P) -> Result<Self, StoreError>
    where
        B: FnOnce() + Send + 'static,
        P: FnOnce() + Send + 'static,
    {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _guard = PanicGuard(Some(on_panic));
                body();
            })
            .map_err(|e| {
                StoreError::Backend(StorageFailure::io(
                    format!("starting the {name} thread"),
                    &e,
                ))
            })?;
        Ok(Self {
            name,
            thread: Some(thread),
        })
    }

    /// Waits for the thread to end (close its queue first). A panic was
    /// already reported through `on_panic`; it is logged here too.
    pub(super) fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(thread = self.name, "a storage thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_panicking_body_runs_its_panic_report_and_join_returns() {
        let reported = Arc::new(AtomicBool::new(false));
        let flag = reported.clone();
        let mut worker = Worker::spawn(
            "fieldvault-test",
            || panic!("expected in this test"),
            move || flag.store(true, Ordering::SeqCst),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        worker.join();
        assert!(reported.load(Ordering::SeqCst));
    }

    #[test]
    fn a_body_that_returns_reports_no_panic() {
        let reported = Arc::new(AtomicBool::new(false));
        let flag = reported.clone();
        let mut worker = Worker::spawn(
            "fieldvault-test",
            || {},
            move || flag.store(true, Ordering::SeqCst),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        worker.join();
        assert!(!reported.load(Ordering::SeqCst));
    }
}
