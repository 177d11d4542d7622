//! Jittered, capped exponential backoff, shared by the event stream (reconnects) and the
//! controller (failed reads).
use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff: between reconnects of the event stream, between failed reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Where in the backoff sequence we are.
#[derive(Debug, Clone)]
pub struct BackoffState {
    cfg: Backoff,
    attempt: u32,
}

impl BackoffState {
    pub fn new(cfg: Backoff) -> Self {
        Self { cfg, attempt: 0 }
    }

    /// The next delay: `initial * 2^attempt` capped at `max`, then drawn uniformly from its upper
    /// half, so that many balancers restarted together do not reconnect in lock-step while each
    /// still waits at least half the nominal delay.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        let nominal = self.cfg.initial.saturating_mul(factor).min(self.cfg.max);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(nominal.as_nanos()).unwrap_or(u64::MAX);
        if nanos < 2 {
            return nominal;
        }
        Duration::from_nanos(rng.random_range(nanos / 2..=nanos))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn backoff_grows_caps_and_stays_in_jitter_bounds() {
        let cfg = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut state = BackoffState::new(cfg);
            for attempt in 0..40u32 {
                let nominal = Duration::from_millis(100)
                    .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
                    .min(cfg.max);
                let d = state.next_delay(&mut rng);
                assert!(
                    d >= nominal / 2 && d <= nominal,
                    "attempt {attempt}: {d:?} outside [{:?}, {nominal:?}]",
                    nominal / 2
                );
                assert!(d <= cfg.max, "never above the cap");
            }
            state.reset();
            assert!(
                state.next_delay(&mut rng) <= cfg.initial,
                "reset starts over"
            );
        }
    }

    #[test]
    fn backoff_with_zero_durations() {
        let mut state = BackoffState::new(Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(state.next_delay(&mut rng), Duration::ZERO);
    }
}
