//! The CPU pool for large bodies: parsing, guarding and translating a request (or a
//! translated answer) of many megabytes takes long enough to stall every other connection
//! of an I/O thread, so work on a body at least `threshold` bytes large runs on a blocking
//! thread, at most `threads` at once (node-wide); smaller work stays inline, where a thread
//! hop would cost more than the work.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Shared by every I/O thread. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Offload {
    threshold: usize,
    slots: Arc<Semaphore>,
}

impl Offload {
    pub(crate) fn new(threshold: usize, threads: usize) -> Offload {
        Offload {
            threshold,
            slots: Arc::new(Semaphore::new(threads.max(1))),
        }
    }

    /// Whether work on `size` bytes leaves the I/O thread.
    pub(crate) fn offloads(&self, size: usize) -> bool {
        size >= self.threshold
    }

    /// Runs `work` (on `size` bytes) inline when small, else on the blocking pool once one
    /// of the pool's slots is free. A panic in `work` is resumed here.
    pub(crate) async fn run<T, F>(&self, size: usize, work: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if !self.offloads(size) {
            return work();
        }
        // The semaphore is never closed: acquiring only waits.
        let slot = Arc::clone(&self.slots).acquire_owned().await;
        let handle = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        });
        match handle.await {
            Ok(value) => value,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn large_work_leaves_the_calling_thread_and_small_work_does_not() {
        let pool = Offload::new(100, 1);
        let here = std::thread::current().id();
        let small = pool.run(99, move || std::thread::current().id()).await;
        assert_eq!(small, here);
        let large = pool.run(100, move || std::thread::current().id()).await;
        assert_ne!(large, here);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn at_most_the_pools_size_runs_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = Offload::new(0, 2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs = (0..6).map(|_| {
            let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
            pool.run(1, move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        futures::future::join_all(jobs).await;
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }
}
