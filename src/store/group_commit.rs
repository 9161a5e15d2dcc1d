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
//! A failure after a batch is durable (see [`Commit::DoneThenFailed`])
//! stops later writes only: the batch's callers get their real outcomes.
//!
//! Backpressure: at most `max_queued` writes are handed to the commit
//! thread and not yet answered, cancelled ones included; more wait in
//! [`GroupCommit::submit`] (an async wait on a semaphore, not a blocked
//! runtime thread).

use super::worker::Worker;
use super::{StorageFailure, StoreError};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// What one [`Committer::commit`] did with its batch.
pub(crate) enum Commit<O> {
    /// Every write is durable or refused on its own: one outcome per write.
    Done(Vec<Result<O, StoreError>>),
    /// The writes were made durable (the log frame is synced), then a later
    /// step failed (publishing, applying, a checkpoint). The callers get
    /// their outcomes — their writes come back at the next start — and
    /// later writes are refused with the failure.
    DoneThenFailed(Vec<Result<O, StoreError>>, StorageFailure),
    /// Storage failed before the writes were durable: every write of the
    /// batch fails, and later writes are refused.
    Failed(StorageFailure),
}

/// The backend side of group commit, run on the commit thread.
pub(crate) trait Committer: Send + 'static {
    type Write: Send + 'static;
    type Output: Send + 'static;

    /// Makes `writes` durable, in order, and reports one outcome per write,
    /// in the same order (see [`Commit`]). A write that fails leaves
    /// nothing of itself behind.
    fn commit(&mut self, writes: Vec<Self::Write>) -> Commit<Self::Output>;

    /// Called once when the store closes, after the last commit.
    fn close(&mut self) {}
}

struct Job<C: Committer> {
    write: C::Write,
    reply: oneshot::Sender<Result<C::Output, StoreError>>,
    /// Its place in the queue, given back once it is answered (not when
    /// its caller stops waiting: a cancelled call still occupies the
    /// commit thread).
    permit: OwnedSemaphorePermit,
}

/// Writes waiting for the commit thread (queued or being committed) are
/// bounded by default to this many: more wait in `submit`, without holding
/// a runtime thread, until earlier ones are answered.
pub const DEFAULT_MAX_QUEUED_WRITES: usize = 256;

pub(crate) struct GroupCommit<C: Committer> {
    queue: Option<mpsc::Sender<Job<C>>>,
    /// One permit per write handed to the commit thread and not yet
    /// answered: the bound of the queue.
    permits: Arc<Semaphore>,
    failure: Arc<Mutex<Option<StorageFailure>>>,
    thread: Worker,
}

type Failure = Mutex<Option<StorageFailure>>;

fn lock(m: &Failure) -> std::sync::MutexGuard<'_, Option<StorageFailure>> {
    // The lock only guards an Option; a panic while holding it cannot leave
    // it half-written.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<C: Committer> GroupCommit<C> {
    /// Starts the commit thread, which owns `committer` from now on. At
    /// most `max_queued` writes wait for it at once (0 counts as 1).
    pub(crate) fn start(committer: C, max_queued: usize) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Job<C>>();
        let failure = Arc::new(Mutex::new(None));
        let (thread_failure, panic_failure) = (failure.clone(), failure.clone());
        let thread = Worker::spawn(
            "fieldvault-commit",
            move || run(rx, committer, &thread_failure),
            // Later writes are refused instead of finding the queue gone.
            move || {
                lock(&panic_failure)
                    .get_or_insert(StorageFailure::internal("the commit thread panicked"));
            },
        )?;
        Ok(Self {
            queue: Some(tx),
            permits: Arc::new(Semaphore::new(max_queued.max(1))),
            failure,
            thread,
        })
    }

    /// The failure that stopped writes, if any.
    pub(crate) fn failure(&self) -> Option<StorageFailure> {
        lock(&self.failure).clone()
    }

    /// Hands `write` to the commit thread; resolves once it is durable.
    /// Waits first while the queue is full.
    pub(crate) async fn submit(&self, write: C::Write) -> Result<C::Output, StoreError> {
        let gone = || StoreError::Backend(StorageFailure::internal("the commit thread is gone"));
        if let Some(e) = self.failure() {
            return Err(StoreError::WritesStopped(e));
        }
        // The semaphore is never closed.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| gone())?;
        if let Some(e) = self.failure() {
            return Err(StoreError::WritesStopped(e));
        }
        let (reply, rx) = oneshot::channel();
        self.queue
            .as_ref()
            .ok_or_else(|| StoreError::Backend(StorageFailure::internal("the store is closing")))?
            .send(Job {
                write,
                reply,
                permit,
            })
            .map_err(|_| gone())?;
        rx.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// Answers each reply with its outcome, in order.
fn answer<O>(
    replies: Vec<oneshot::Sender<Result<O, StoreError>>>,
    outcomes: Vec<Result<O, StoreError>>,
) {
    let mut outcomes = outcomes.into_iter();
    for reply in replies {
        let outcome = outcomes.next().unwrap_or_else(|| {
            Err(StoreError::Backend(StorageFailure::internal(
                "the backend returned fewer outcomes than writes",
            )))
        });
        // A caller that gave up waiting is fine to skip.
        let _ = reply.send(outcome);
    }
}

fn run<C: Committer>(rx: mpsc::Receiver<Job<C>>, mut committer: C, failure: &Failure) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        // Bind first: a guard in the match scrutinee would live through the
        // arms and deadlock the lock below.
        let earlier = lock(failure).clone();
        if let Some(e) = earlier {
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::WritesStopped(e.clone())));
            }
            continue;
        }
        let mut permits = Vec::with_capacity(jobs.len());
        let (writes, replies): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .map(|j| {
                permits.push(j.permit);
                (j.write, j.reply)
            })
            .unzip();
        match committer.commit(writes) {
            Commit::Done(outcomes) => answer(replies, outcomes),
            Commit::DoneThenFailed(outcomes, e) => {
                tracing::error!(
                    error = %e,
                    writes = replies.len(),
                    "storage failed after a batch was logged: the batch is durable and answered; refusing writes from now on"
                );
                *lock(failure) = Some(e);
                answer(replies, outcomes);
            }
            Commit::Failed(e) => {
                tracing::error!(error = %e, "storage write failed: refusing writes from now on");
                *lock(failure) = Some(e.clone());
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(e.clone())));
                }
            }
        }
        // Answered: their places are free.
        drop(permits);
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
    use crate::store::FailureCause;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Applies writes to a Vec, then "syncs" by copying it to `durable`;
    /// counts syncs and can be told to fail one sync (before durability)
    /// or the step after one sync.
    struct Fake {
        applied: Vec<u32>,
        durable: Arc<Mutex<Vec<u32>>>,
        syncs: Arc<AtomicUsize>,
        fail_sync: Option<usize>,
        fail_after_sync: Option<usize>,
    }

    fn eio() -> StorageFailure {
        StorageFailure::io("fdatasync", &std::io::Error::from_raw_os_error(5))
    }

    fn enospc() -> StorageFailure {
        StorageFailure::io("checkpoint", &std::io::Error::from_raw_os_error(28))
    }

    impl Committer for Fake {
        type Write = u32;
        type Output = u32;

        fn commit(&mut self, writes: Vec<u32>) -> Commit<u32> {
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
                return Commit::Failed(eio());
            }
            *self.durable.lock().unwrap_or_else(|p| p.into_inner()) = self.applied.clone();
            if Some(n) == self.fail_after_sync {
                return Commit::DoneThenFailed(outcomes, enospc());
            }
            Commit::Done(outcomes)
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
            fail_after_sync: None,
        };
        (f, durable, syncs)
    }

    fn start<C: Committer>(c: C) -> GroupCommit<C> {
        GroupCommit::start(c, DEFAULT_MAX_QUEUED_WRITES).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_share_syncs_and_are_durable_when_answered() {
        let (f, durable, syncs) = fake(None);
        let gc = Arc::new(start(f));
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
        let gc = start(f);
        assert!(matches!(
            gc.submit(0).await,
            Err(StoreError::AlreadyExists("zero"))
        ));
        assert_eq!(gc.submit(3).await.ok(), Some(30));
    }

    #[tokio::test]
    async fn a_failed_sync_fails_its_batch_and_every_later_write() {
        let (f, _, syncs) = fake(Some(2));
        let gc = start(f);
        assert!(gc.submit(1).await.is_ok());
        assert!(matches!(gc.submit(2).await, Err(StoreError::Backend(e)) if e == eio()));
        assert!(
            matches!(gc.submit(3).await, Err(StoreError::WritesStopped(e)) if e == eio()),
            "no retry after a failed sync"
        );
        assert_eq!(
            syncs.load(Ordering::SeqCst),
            2,
            "nothing synced after the failure"
        );
        assert_eq!(gc.failure(), Some(eio()));
    }

    #[tokio::test]
    async fn a_failure_after_the_sync_answers_its_batch_and_refuses_later_writes() {
        let (mut f, durable, _) = fake(None);
        f.fail_after_sync = Some(2);
        let gc = start(f);
        assert_eq!(gc.submit(1).await.ok(), Some(10));
        assert_eq!(
            gc.submit(2).await.ok(),
            Some(20),
            "a durable write gets its real outcome"
        );
        let later = gc.submit(3).await;
        assert!(
            matches!(&later, Err(StoreError::WritesStopped(e)) if e.cause == FailureCause::StorageFull),
            "{later:?}"
        );
        assert_eq!(
            *durable.lock().unwrap_or_else(|p| p.into_inner()),
            vec![1, 2]
        );
        assert_eq!(
            gc.failure().map(|f| f.cause),
            Some(FailureCause::StorageFull)
        );
    }

    /// Reports each batch it is given, then waits for a go-ahead.
    struct Gated {
        entered: std::sync::mpsc::Sender<Vec<u32>>,
        go: std::sync::mpsc::Receiver<()>,
    }

    impl Committer for Gated {
        type Write = u32;
        type Output = u32;

        fn commit(&mut self, writes: Vec<u32>) -> Commit<u32> {
            let _ = self.entered.send(writes.clone());
            let _ = self.go.recv_timeout(Duration::from_secs(10));
            Commit::Done(writes.into_iter().map(Ok).collect())
        }
    }

    #[test]
    fn a_full_queue_holds_later_writes_back_until_earlier_ones_are_answered() {
        use std::future::Future;
        use std::task::{Context, Waker};
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let gc = GroupCommit::start(
            Gated {
                entered: entered_tx,
                go: go_rx,
            },
            2,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let next_batch = || {
            entered
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("no batch reached the commit thread: {e}"))
        };
        let mut cx = Context::from_waker(Waker::noop());
        let (mut w1, mut w2, mut w3) = (
            Box::pin(gc.submit(1)),
            Box::pin(gc.submit(2)),
            Box::pin(gc.submit(3)),
        );
        // Write 1 is on the commit thread, which waits.
        assert!(w1.as_mut().poll(&mut cx).is_pending());
        assert_eq!(next_batch(), vec![1]);
        // Write 2 takes the second place; write 3 finds the queue full.
        assert!(w2.as_mut().poll(&mut cx).is_pending());
        assert!(w3.as_mut().poll(&mut cx).is_pending());
        // Once write 1 is answered, the next batch holds write 2 alone:
        // write 3 was never handed over.
        let _ = go.send(());
        assert_eq!(next_batch(), vec![2]);
        let _ = go.send(());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rt.block_on(w1).ok(), Some(1));
        assert_eq!(rt.block_on(w2).ok(), Some(2));
        let _ = go.send(());
        assert_eq!(rt.block_on(w3).ok(), Some(3));
        assert_eq!(next_batch(), vec![3]);
    }
}
