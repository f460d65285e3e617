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

/// Below this, a `Lambda-Runtime-Deadline-Ms` cannot be an epoch time (it would be before 2001):
/// it is the time left. `cargo lambda watch` (1.9) sends the time left (600000 for its default
/// 10 minutes), where Lambda sends the epoch deadline.
const EPOCH_MS_FLOOR: u64 = 978_307_200_000;

/// An invocation's deadline as an `Instant`. Lambda gives epoch milliseconds, by the wall clock;
/// a value too small to be one is taken as the milliseconds left (cargo-lambda's emulator), so a
/// function run under `cargo lambda watch` is not out of time before it starts.
pub fn deadline_from_epoch_ms(deadline_ms: u64) -> std::time::Instant {
    let left_ms = if deadline_ms < EPOCH_MS_FLOOR {
        deadline_ms
    } else {
        let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        deadline_ms.saturating_sub(now_ms)
    };
    std::time::Instant::now() + std::time::Duration::from_millis(left_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_an_epoch_time_from_lambda_and_the_time_left_from_cargo_lambda() {
        let in_ten_seconds = u64::try_from(Utc::now().timestamp_millis()).unwrap() + 10_000;
        let left = deadline_from_epoch_ms(in_ten_seconds) - std::time::Instant::now();
        assert!(left > std::time::Duration::from_secs(9) && left <= std::time::Duration::from_secs(10));
        // What `cargo lambda watch` sends: 600000, ten minutes left.
        let left = deadline_from_epoch_ms(600_000) - std::time::Instant::now();
        assert!(left > std::time::Duration::from_secs(599) && left <= std::time::Duration::from_secs(600));
        // An epoch deadline already past is no time at all.
        let past = u64::try_from(Utc::now().timestamp_millis()).unwrap() - 5_000;
        assert!(deadline_from_epoch_ms(past) <= std::time::Instant::now());
    }

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
