//! Exponential backoff with jitter, so many retries do not arrive in lockstep.

use std::time::Duration;

/// Delay before attempt `attempt + 1`: `initial · 2^(attempt-1)`, capped at `max`,
/// then drawn uniformly from its upper half ("equal jitter": never near zero).
pub fn delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    let full = initial.saturating_mul(1u32 << exp).min(max);
    let half = full / 2;
    half + full.mul_f64(fastrand::f64()) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubles_and_caps() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(10);
        for (attempt, lo, hi) in [
            (1, 50, 100),
            (2, 100, 200),
            (3, 200, 400),
            (8, 5_000, 10_000),
            (40, 5_000, 10_000),
        ] {
            for _ in 0..50 {
                let d = delay(attempt, i, m).as_millis();
                assert!(
                    (lo..=hi).contains(&d),
                    "attempt {attempt}: {d}ms not in {lo}..={hi}"
                );
            }
        }
    }
}
