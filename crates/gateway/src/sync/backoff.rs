//! Exponential backoff with full jitter: the n-th wait is uniform in `[0, min(cap, base·2ⁿ)]`.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The ceiling of the next wait.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait, drawn with full jitter; each call doubles the ceiling up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut ceilings = vec![];
        for _ in 0..12 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling);
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(&ceilings[..4], &[100, 200, 400, 800]);
        assert_eq!(*ceilings.last().unwrap(), 30_000);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        // Jitter: many draws are not all equal.
        let draws: std::collections::HashSet<_> = (0..20)
            .map(|_| {
                b.reset();
                b.next_delay()
            })
            .collect();
        assert!(draws.len() > 1);
        // Far past 2^31 attempts nothing overflows.
        b.attempt = u32::MAX;
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }
}
