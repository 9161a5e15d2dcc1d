//! Group commit: one thread makes every queued write durable together, so
//! concurrent writers share one sync instead of paying for one each.
//!
//! Protocol: a writer hands its write to [`GroupCommit::submit`]. The commit
//! thread takes every write queued so far and hands them, in queue order,
//! to [`Committer::commit`], which makes them all durable with one sync;
//! only then are they answered. No write is answered before it is on disk.
//!
//! Why the writes themselves run on the commit thread, not only the sync:
//! one writer never waits on another writer's lock or flush, and
//! check-then-insert steps (deterministic tokens) need no transaction to be
//! race-free.
//!
//! A failed write or sync is fatal: that batch and every later write get
//! an error and [`GroupCommit::failure`] reports it (the server then reports
//! unhealthy). Nothing is retried: after a failed fsync the kernel may have
//! dropped the dirty pages, so a later "successful" fsync proves nothing.

use super::worker::Worker;
use super::StoreError;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The backend side of group commit, run on the commit thread.
pub(crate) trait Committer: Send + 'static {
    type Write: Send + 'static;
    type Output: Send + 'static;

    /// Makes `writes` durable, in order, and returns one outcome per write,
    /// in the same order. A write that fails leaves nothing of itself
    /// behind. `Err` means the storage failed (a write or sync error): the
    /// whole batch fails and no later write is accepted.
    fn commit(
        &mut self,
        writes: Vec<Self::Write>,
    ) -> Result<Vec<Result<Self::Output, StoreError>>, String>;

    /// Called once when the store closes, after the last commit.
    fn close(&mut self) {}
}

struct Job<C: Committer> {
    write: C::Write,
    reply: oneshot::Sender<Result<C::Output, StoreError>>,
}

pub(crate) struct GroupCommit<C: Committer> {
    queue: Option<mpsc::Sender<Job<C>>>,
    failure: Arc<Mutex<Option<String>>>,
    thread: Worker,
}

fn lock(m: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    // The lock only guards an Option<String>; a panic while holding it
    // cannot leave it half-written.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn refused(e: &str) -> StoreError {
    StoreError::WritesStopped(e.to_owned())
}

impl<C: Committer> GroupCommit<C> {
    /// Starts the commit thread, which owns `committer` from now on.
    pub(crate) fn start(committer: C) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Job<C>>();
        let failure = Arc::new(Mutex::new(None));
        let thread_failure = failure.clone();
        let thread = Worker::spawn(
            "fieldvault-commit",
            move || run(rx, committer, &thread_failure),
            || {},
        )?;
        Ok(Self {
            queue: Some(tx),
            failure,
            thread,
        })
    }

    /// The error that stopped writes, if any.
    pub(crate) fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Hands `write` to the commit thread; resolves once it is durable.
    pub(crate) async fn submit(&self, write: C::Write) -> Result<C::Output, StoreError> {
        if let Some(e) = self.failure() {
            return Err(refused(&e));
        }
        let (reply, rx) = oneshot::channel();
        self.queue
            .as_ref()
            .ok_or_else(|| StoreError::Backend("store is closing".into()))?
            .send(Job { write, reply })
            .map_err(|_| StoreError::Backend("commit thread is gone".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Backend("commit thread is gone".into())))
    }
}

fn run<C: Committer>(
    rx: mpsc::Receiver<Job<C>>,
    mut committer: C,
    failure: &Mutex<Option<String>>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        // Bind first: a guard in the match scrutinee would live through the
        // arms and deadlock the lock below.
        let earlier = lock(failure).clone();
        if let Some(e) = earlier {
            for job in jobs {
                let _ = job.reply.send(Err(refused(&e)));
            }
            continue;
        }
        let (writes, replies): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|j| (j.write, j.reply)).unzip();
        let mut outcomes = match committer.commit(writes) {
            Ok(outcomes) => outcomes.into_iter(),
            Err(e) => {
                tracing::error!(error = %e, "storage write failed: refusing writes from now on");
                *lock(failure) = Some(e.clone());
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(e.clone())));
                }
                continue;
            }
        };
        for reply in replies {
            let outcome = outcomes.next().unwrap_or_else(|| {
                Err(StoreError::Backend(
                    "the backend returned fewer outcomes than writes".into(),
                ))
            });
            // A caller that gave up waiting is fine to skip.
            let _ = reply.send(outcome);
        }
    }
    committer.close();
}

impl<C: Committer> Drop for GroupCommit<C> {
    fn drop(&mut self) {
        // Closing the queue ends the thread; joining it releases the
        // database handles it holds before the store counts as closed.
        self.queue.take();
        self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Applies writes to a Vec, then "syncs" by copying it to `durable`;
    /// counts syncs and can be told to fail one.
    struct Fake {
        applied: Vec<u32>,
        durable: Arc<Mutex<Vec<u32>>>,
        syncs: Arc<AtomicUsize>,
        fail_sync: Option<usize>,
    }

    impl Committer for Fake {
        type Write = u32;
        type Output = u32;

        fn commit(&mut self, writes: Vec<u32>) -> Result<Vec<Result<u32, StoreError>>, String> {
            let outcomes = writes
                .into_iter()
                .map(|w| {
                    if w == 0 {
                        return Err(StoreError::AlreadyExists("zero"));
                    }
                    self.applied.push(w);
                    Ok(w * 10)
                })
                .collect();
            let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(std::time::Duration::from_millis(2));
            if Some(n) == self.fail_sync {
                return Err("fdatasync: EIO".into());
            }
            *self.durable.lock().unwrap_or_else(|p| p.into_inner()) = self.applied.clone();
            Ok(outcomes)
        }
    }

    fn fake(fail_sync: Option<usize>) -> (Fake, Arc<Mutex<Vec<u32>>>, Arc<AtomicUsize>) {
        let durable = Arc::new(Mutex::new(Vec::new()));
        let syncs = Arc::new(AtomicUsize::new(0));
        let f = Fake {
            applied: Vec::new(),
            durable: durable.clone(),
            syncs: syncs.clone(),
            fail_sync,
        };
        (f, durable, syncs)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_share_syncs_and_are_durable_when_answered() {
        let (f, durable, syncs) = fake(None);
        let gc = Arc::new(GroupCommit::start(f).unwrap_or_else(|e| panic!("{e}")));
        let mut tasks = Vec::new();
        for i in 1..=64u32 {
            let gc = gc.clone();
            let durable = durable.clone();
            tasks.push(tokio::spawn(async move {
                let out = gc.submit(i).await;
                let on_disk = durable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&i);
                (out.ok(), on_disk, i)
            }));
        }
        for t in tasks {
            let (out, on_disk, i) = t.await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(out, Some(i * 10), "each write gets its own outcome");
            assert!(on_disk, "write {i} was answered before its sync");
        }
        let n = syncs.load(Ordering::SeqCst);
        assert!((1..64).contains(&n), "64 writes took {n} syncs");
    }

    #[tokio::test]
    async fn a_failed_write_keeps_its_own_error() {
        let (f, _, _) = fake(None);
        let gc = GroupCommit::start(f).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            gc.submit(0).await,
            Err(StoreError::AlreadyExists("zero"))
        ));
        assert_eq!(gc.submit(3).await.ok(), Some(30));
    }

    #[tokio::test]
    async fn a_failed_sync_fails_its_batch_and_every_later_write() {
        let (f, _, syncs) = fake(Some(2));
        let gc = GroupCommit::start(f).unwrap_or_else(|e| panic!("{e}"));
        assert!(gc.submit(1).await.is_ok());
        assert!(matches!(gc.submit(2).await, Err(StoreError::Backend(_))));
        assert!(
            matches!(gc.submit(3).await, Err(StoreError::WritesStopped(e)) if e == "fdatasync: EIO"),
            "no retry after a failed sync"
        );
        assert_eq!(
            syncs.load(Ordering::SeqCst),
            2,
            "nothing synced after the failure"
        );
        assert_eq!(gc.failure().as_deref(), Some("fdatasync: EIO"));
    }
}
