//! The node-wide budget of request bytes in flight: every request body is charged as it is
//! read and released when the request is done with it, so a burst of large bodies cannot
//! take the node's memory; a request that would go past the budget is answered 503 at once
//! (the client retries) instead of queueing while holding what it already sent.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shared by every I/O thread. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    bytes: Arc<Semaphore>,
}

/// Bytes a request holds of the budget; given back when dropped.
#[derive(Debug, Default)]
pub(crate) struct Held(Option<OwnedSemaphorePermit>);

impl Budget {
    pub(crate) fn new(bytes: usize) -> Budget {
        Budget {
            bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Adds `n` bytes to what `held` holds; `false` (holding nothing more) when the budget
    /// has not that many left.
    pub(crate) fn take(&self, held: &mut Held, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        match Arc::clone(&self.bytes).try_acquire_many_owned(n) {
            Ok(permit) => {
                match &mut held.0 {
                    Some(p) => p.merge(permit),
                    None => held.0 = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Bytes left (for tests and the log).
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_charged_and_given_back() {
        let budget = Budget::new(100);
        let mut a = Held::default();
        assert!(budget.take(&mut a, 60));
        assert!(budget.take(&mut a, 30));
        let mut b = Held::default();
        assert!(!budget.take(&mut b, 20), "only 10 left");
        assert!(budget.take(&mut b, 10));
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 90);
        drop(b);
        assert_eq!(budget.available(), 100);
    }
}
