//! Group commit: one thread makes writes durable for every request that is
//! waiting, so concurrent writers share one flush + fsync instead of paying
//! for one each.
//!
//! Protocol: a writer first applies its write (it is then in sled's memory),
//! then calls [`GroupCommit::durable`]. The committer takes every request
//! queued so far, runs one sync, and answers them all. A sync that starts
//! after a request was queued covers that request's write, so no request is
//! answered before its write is on disk.
//!
//! A failed sync is fatal: that batch and every later request get an error
//! and [`GroupCommit::failure`] reports it (the server then reports
//! unhealthy). Nothing is retried: after a failed fsync the kernel may have
//! dropped the dirty pages, so a later "successful" fsync proves nothing.

use super::StoreError;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

type Waiter = oneshot::Sender<Result<(), String>>;

pub(crate) struct GroupCommit {
    queue: Option<mpsc::Sender<Waiter>>,
    failure: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    // The lock only guards an Option<String>; a panic while holding it
    // cannot leave it half-written.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl GroupCommit {
    /// Starts the committer thread. `sync` makes every write applied so far
    /// durable.
    pub(crate) fn start(
        sync: impl FnMut() -> Result<(), String> + Send + 'static,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let failure = Arc::new(Mutex::new(None));
        let thread_failure = failure.clone();
        let thread = std::thread::Builder::new()
            .name("fieldvault-commit".into())
            .spawn(move || run(rx, sync, &thread_failure))
            .map_err(|e| StoreError::Backend(format!("starting the commit thread: {e}")))?;
        Ok(Self {
            queue: Some(tx),
            failure,
            thread: Some(thread),
        })
    }

    /// The error that stopped writes, if any.
    pub(crate) fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Refuses new writes once a sync has failed.
    pub(crate) fn check_writable(&self) -> Result<(), StoreError> {
        match self.failure() {
            Some(e) => Err(StoreError::Backend(format!(
                "writes are refused since a sync failed ({e}); restart after fixing the disk"
            ))),
            None => Ok(()),
        }
    }

    /// Resolves once every write applied before this call is durable.
    pub(crate) async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .as_ref()
            .ok_or_else(|| StoreError::Backend("store is closing".into()))?
            .send(tx)
            .map_err(|_| StoreError::Backend("commit thread is gone".into()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Backend(e)),
            Err(_) => Err(StoreError::Backend("commit thread is gone".into())),
        }
    }
}

fn run(
    rx: mpsc::Receiver<Waiter>,
    mut sync: impl FnMut() -> Result<(), String>,
    failure: &Mutex<Option<String>>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        // Bind first: a guard in the match scrutinee would live through the
        // arms and deadlock the lock below.
        let earlier = lock(failure).clone();
        let outcome = match earlier {
            Some(e) => Err(e),
            None => sync().map_err(|e| {
                tracing::error!(error = %e, "sync failed: storage refuses writes from now on");
                *lock(failure) = Some(e.clone());
                e
            }),
        };
        for waiter in batch {
            // A caller that gave up waiting is fine to skip.
            let _ = waiter.send(outcome.clone());
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Closing the queue ends the thread; joining it releases the
        // database handles it holds before the store counts as closed.
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_share_syncs() {
        let syncs = Arc::new(AtomicUsize::new(0));
        let counter = syncs.clone();
        let gc = Arc::new(
            GroupCommit::start(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let gc = gc.clone();
            tasks.push(tokio::spawn(async move { gc.durable().await }));
        }
        for t in tasks {
            assert!(t.await.map(|r| r.is_ok()).unwrap_or(false));
        }
        let n = syncs.load(Ordering::SeqCst);
        assert!((1..64).contains(&n), "64 requests took {n} syncs");
    }

    #[tokio::test]
    async fn a_failed_sync_fails_its_batch_and_every_later_write() {
        let mut calls = 0;
        let gc = GroupCommit::start(move || {
            calls += 1;
            if calls == 2 {
                Err("fdatasync: EIO".into())
            } else {
                Ok(())
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(gc.durable().await.is_ok());
        assert!(gc.durable().await.is_err());
        assert!(gc.durable().await.is_err(), "no retry after a failed sync");
        assert!(gc.check_writable().is_err());
        assert_eq!(gc.failure().as_deref(), Some("fdatasync: EIO"));
    }
}
