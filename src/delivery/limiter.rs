//! Client-side request budgets per notifier, so we stay under a provider's limits
//! instead of running into them (GitHub: ~80 content-creating requests a minute
//! and 5,000 requests an hour per token).
//!
//! Token buckets with the clock passed in: each refills continuously and allows a
//! burst of its whole window. While a bucket is empty, updates wait in the outbox,
//! where newer states replace older ones, so a backlog costs one write per check.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: u32, window: Duration, now: Instant) -> Self {
        let capacity = f64::from(limit.max(1));
        Bucket {
            capacity,
            tokens: capacity,
            per_second: capacity / window.as_secs_f64(),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.at = now;
    }

    /// May go below zero (a write decided after a read-back): the debt is waited out.
    fn spend(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// When one token will be available (now if it already is).
    fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }
}

/// Limits for one notifier: writes per minute and requests per hour; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub writes_per_minute: Option<u32>,
    pub requests_per_hour: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Limiter {
    writes: Option<Bucket>,
    requests: Option<Bucket>,
}

impl Limiter {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Limiter {
            writes: limits
                .writes_per_minute
                .map(|n| Bucket::new(n, Duration::from_secs(60), now)),
            requests: limits
                .requests_per_hour
                .map(|n| Bucket::new(n, Duration::from_secs(3600), now)),
        }
    }

    fn buckets(&mut self) -> impl Iterator<Item = &mut Bucket> {
        self.writes.iter_mut().chain(self.requests.iter_mut())
    }

    /// `None` if a write may go now, else when one may.
    pub fn blocked_until(&mut self, now: Instant) -> Option<Instant> {
        let at = self.buckets().map(|b| b.ready_at(now)).max()?;
        (at > now).then_some(at)
    }

    /// Spends one write's worth from every bucket.
    pub fn take(&mut self, now: Instant) {
        for b in self.buckets() {
            b.spend(now);
        }
    }

    /// Spends one read's worth: a request, but no write.
    pub fn take_read(&mut self, now: Instant) {
        if let Some(b) = &mut self.requests {
            b.spend(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_window_then_the_steady_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::new(
            Limits {
                writes_per_minute: Some(60),
                requests_per_hour: None,
            },
            t0,
        );
        for _ in 0..60 {
            assert_eq!(l.blocked_until(t0), None);
            l.take(t0);
        }
        let next = l.blocked_until(t0).expect("bucket empty");
        assert_eq!(next, t0 + Duration::from_secs(1), "60/min refills one a second");
        assert_eq!(l.blocked_until(t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn the_tightest_bucket_decides() {
        let t0 = Instant::now();
        let mut l = Limiter::new(
            Limits {
                writes_per_minute: Some(100),
                requests_per_hour: Some(2),
            },
            t0,
        );
        l.take(t0);
        l.take(t0);
        let next = l.blocked_until(t0).unwrap();
        assert_eq!(next, t0 + Duration::from_secs(1800), "2/h: one every 30 minutes");
    }

    #[test]
    fn reads_cost_requests_not_writes() {
        let t0 = Instant::now();
        let mut l = Limiter::new(
            Limits {
                writes_per_minute: Some(1),
                requests_per_hour: Some(3),
            },
            t0,
        );
        l.take_read(t0);
        l.take_read(t0);
        assert_eq!(l.blocked_until(t0), None, "the write is still there");
        l.take(t0);
        assert!(l.blocked_until(t0).is_some());
    }

    #[test]
    fn unlimited_never_blocks() {
        let t0 = Instant::now();
        let mut l = Limiter::new(
            Limits {
                writes_per_minute: None,
                requests_per_hour: None,
            },
            t0,
        );
        for _ in 0..10_000 {
            l.take(t0);
        }
        assert_eq!(l.blocked_until(t0), None);
    }
}
