//! The one clock every graphfeed function and the Graph simulator read time through.
//!
//! Production uses [`SystemClock`]. Tests use an [`OffsetClock`] (real time plus an offset that
//! a test can move forward) and hand a clone of it to graphfeed and to the simulator, so both
//! jump 90 days together without sleeping. Real time still flows underneath, so deadlines that
//! other services enforce in real time (moto's visibility timeouts, HTTP timeouts) keep working.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// A clock shared by every component of one process.
pub type SharedClock = Arc<dyn Clock>;

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Real time plus an offset that only moves forward. Clones share the offset.
#[derive(Debug, Default, Clone)]
pub struct OffsetClock {
    offset_ms: Arc<AtomicI64>,
}

impl OffsetClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves this clock (and every clone of it) forward by `by`. Negative durations are ignored:
    /// time never runs backwards for the code under test.
    pub fn advance(&self, by: Duration) {
        let ms = by.num_milliseconds();
        if ms > 0 {
            self.offset_ms.fetch_add(ms, Ordering::SeqCst);
        }
    }

    /// The total amount this clock is ahead of real time.
    pub fn offset(&self) -> Duration {
        Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset()
    }
}

/// The wall clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// An invocation's deadline (the Lambda runtime gives epoch milliseconds, by the wall clock) as
/// an `Instant`.
pub fn deadline_from_epoch_ms(deadline_ms: u64) -> std::time::Instant {
    let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
    std::time::Instant::now() + std::time::Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_clock_moves_forward_for_every_clone() {
        let clock = OffsetClock::new();
        let twin = clock.clone();
        let before = twin.now();
        clock.advance(Duration::days(90));
        let after = twin.now();
        assert!(after - before >= Duration::days(90));
        assert!(after - before < Duration::days(90) + Duration::seconds(5));
    }

    #[test]
    fn an_offset_clock_never_runs_backwards() {
        let clock = OffsetClock::new();
        clock.advance(Duration::hours(1));
        clock.advance(Duration::hours(-5));
        assert_eq!(clock.offset(), Duration::hours(1));
    }
}
