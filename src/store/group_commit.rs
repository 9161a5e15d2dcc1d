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
//! Backpressure: at most `max_queued` writes, and at most
//! [`MAX_QUEUED_BYTES`] of them (as [`Committer::cost`] counts), are handed
//! to the commit thread and not yet answered, cancelled ones included; more
//! wait in [`GroupCommit::submit`] (an async wait on semaphores, not a
//! blocked runtime thread).
//!
//! Group size: one group takes queued writes, in order, only while its
//! cost stays within [`MAX_GROUP_BYTES`]; the rest wait for the next group.
//! A write costing more than that forms a group of its own, and a write
//! costing more than [`MAX_WRITE_BYTES`] is refused alone (see
//! [`StoreError::TooLarge`]) before it reaches the commit thread, so no
//! group can outgrow the write-ahead log's frame bound and stop the store.

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

    /// The bytes `write` adds to a group (its share of the log frame): the
    /// group and queue bounds count this.
    fn cost(write: &Self::Write) -> usize;
}

struct Job<C: Committer> {
    write: C::Write,
    reply: oneshot::Sender<Result<C::Output, StoreError>>,
    /// Its place in the queue, given back once it is answered (not when
    /// its caller stops waiting: a cancelled call still occupies the
    /// commit thread).
    permit: OwnedSemaphorePermit,
    /// Its bytes of [`MAX_QUEUED_BYTES`], given back with `permit`.
    bytes_permit: OwnedSemaphorePermit,
    cost: usize,
}

/// Writes waiting for the commit thread (queued or being committed) are
/// bounded by default to this many: more wait in `submit`, without holding
/// a runtime thread, until earlier ones are answered.
pub const DEFAULT_MAX_QUEUED_WRITES: usize = 256;

/// One group (one log frame) holds at most this many bytes of writes,
/// unless a single write is larger (it then forms a group of its own).
pub const MAX_GROUP_BYTES: usize = 16 << 20;

/// The largest single write: half the write-ahead log's frame bound, so a
/// frame (its header included) always fits. Larger writes are refused with
/// [`StoreError::TooLarge`]; the store goes on.
pub const MAX_WRITE_BYTES: usize = super::wal::MAX_FRAME / 2;

/// Bytes of writes waiting for the commit thread (queued or being
/// committed): more wait in `submit`. A write larger than this waits until
/// the queue is empty, then takes all of it.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

pub(crate) struct GroupCommit<C: Committer> {
    queue: Option<mpsc::Sender<Job<C>>>,
    /// One permit per write handed to the commit thread and not yet
    /// answered: the bound of the queue.
    permits: Arc<Semaphore>,
    /// One permit per byte of those writes (capped at [`MAX_QUEUED_BYTES`]
    /// for one write).
    bytes: Arc<Semaphore>,
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
            bytes: Arc::new(Semaphore::new(MAX_QUEUED_BYTES)),
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
        let cost = C::cost(&write);
        if cost > MAX_WRITE_BYTES {
            return Err(StoreError::TooLarge {
                bytes: cost,
                limit: MAX_WRITE_BYTES,
            });
        }
        // The semaphores are never closed.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| gone())?;
        let queued = u32::try_from(cost.clamp(1, MAX_QUEUED_BYTES)).unwrap_or(u32::MAX);
        let bytes_permit = self
            .bytes
            .clone()
            .acquire_many_owned(queued)
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
                bytes_permit,
                cost,
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

/// The next group: `first`, then queued jobs in order while the group's
/// cost stays within `max_bytes`. The job that would pass it is left in
/// `next` to start the next group.
fn take_group<C: Committer>(
    first: Job<C>,
    rx: &mpsc::Receiver<Job<C>>,
    next: &mut Option<Job<C>>,
    max_bytes: usize,
) -> Vec<Job<C>> {
    let mut bytes = first.cost;
    let mut jobs = vec![first];
    while let Ok(job) = rx.try_recv() {
        if bytes.saturating_add(job.cost) > max_bytes {
            *next = Some(job);
            break;
        }
        bytes += job.cost;
        jobs.push(job);
    }
    jobs
}

fn run<C: Committer>(rx: mpsc::Receiver<Job<C>>, mut committer: C, failure: &Failure) {
    let mut next: Option<Job<C>> = None;
    while let Some(first) = next.take().or_else(|| rx.recv().ok()) {
        let jobs = take_group(first, &rx, &mut next, MAX_GROUP_BYTES);
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
                permits.push((j.permit, j.bytes_permit));
                (j.write, j.reply)
            })
            .unzip();
        metrics::histogram!(crate::metrics::COMMIT_BATCH).record(writes.len() as f64);
        let started = std::time::Instant::now();
        let committed = committer.commit(writes);
        metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        match committed {
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

        fn cost(_: &u32) -> usize {
            1
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

        fn cost(_: &u32) -> usize {
            1
        }
    }

    /// Writes that say their own cost; reports each group's writes, and
    /// holds the first group until told to go on.
    struct Sized {
        groups: std::sync::mpsc::Sender<Vec<(u32, usize)>>,
        first_go: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl Committer for Sized {
        type Write = (u32, usize);
        type Output = u32;

        fn commit(&mut self, writes: Vec<(u32, usize)>) -> Commit<u32> {
            let _ = self.groups.send(writes.clone());
            if let Some(go) = self.first_go.take() {
                let _ = go.recv_timeout(Duration::from_secs(10));
            }
            Commit::Done(writes.into_iter().map(|(id, _)| Ok(id)).collect())
        }

        fn cost(write: &(u32, usize)) -> usize {
            write.1
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_large_writes_are_split_into_groups_under_the_byte_cap_and_all_answered() {
        let (groups_tx, groups) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let gc = Arc::new(
            GroupCommit::start(
                Sized {
                    groups: groups_tx,
                    first_go: Some(go_rx),
                },
                DEFAULT_MAX_QUEUED_WRITES,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let big = 3 << 20;
        let first = tokio::spawn({
            let gc = gc.clone();
            async move { gc.submit((0, big)).await.ok() }
        });
        // The first group holds the commit thread while the rest queue up.
        let held = groups
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no group reached the commit thread: {e}"));
        assert_eq!(held, vec![(0, big)]);
        let mut tasks = Vec::new();
        // One write larger than a group on its own, among 3 MiB ones.
        for i in 1..=15u32 {
            let cost = if i == 7 { MAX_GROUP_BYTES + 1 } else { big };
            let gc = gc.clone();
            tasks.push(tokio::spawn(
                async move { (i, gc.submit((i, cost)).await.ok()) },
            ));
        }
        // Every write is queued before the first group is answered.
        for _ in 0..1000 {
            if gc.permits.available_permits() == DEFAULT_MAX_QUEUED_WRITES - 16 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            gc.permits.available_permits(),
            DEFAULT_MAX_QUEUED_WRITES - 16
        );
        let _ = go.send(());
        assert_eq!(first.await.ok().flatten(), Some(0));
        for t in tasks {
            let (i, out) = t.await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(out, Some(i), "write {i} gets its outcome");
        }
        let mut seen = 1;
        while let Ok(group) = groups.try_recv() {
            seen += group.len();
            let bytes: usize = group.iter().map(|w| w.1).sum();
            assert!(
                group.len() == 1 || bytes <= MAX_GROUP_BYTES,
                "a group of {} writes holds {bytes} bytes",
                group.len()
            );
        }
        assert_eq!(seen, 16, "every write was committed once");
    }

    #[tokio::test]
    async fn a_write_larger_than_a_frame_allows_is_refused_alone_and_later_writes_go_on() {
        let (groups_tx, groups) = std::sync::mpsc::channel();
        let gc = GroupCommit::start(
            Sized {
                groups: groups_tx,
                first_go: None,
            },
            DEFAULT_MAX_QUEUED_WRITES,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let refused = gc.submit((1, MAX_WRITE_BYTES + 1)).await;
        assert!(
            matches!(refused, Err(StoreError::TooLarge { bytes, limit })
                if bytes == MAX_WRITE_BYTES + 1 && limit == MAX_WRITE_BYTES),
            "{refused:?}"
        );
        assert!(gc.failure().is_none(), "the store goes on");
        assert_eq!(gc.submit((2, 100)).await.ok(), Some(2));
        assert_eq!(
            groups.try_recv().ok(),
            Some(vec![(2, 100)]),
            "the refused write never reached the commit thread"
        );
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
