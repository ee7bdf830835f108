//! Waiting before trying again: the jittered exponential backoff of revocations and of OpenBao
//! rounds.

use std::time::Duration;

/// Backoff before attempt `attempt + 1`: 1 s, 2 s, 4 s … at most 60 s, each ±25 % so that a fleet
/// that lost its issuer at once does not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60));
    let mut r = [0u8; 2];
    // Without the OS random source (never seen on Linux), no jitter rather than a panic.
    let unit = match getrandom::fill(&mut r) {
        Ok(()) => f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX), // 0..=1
        Err(_) => 0.5,
    };
    base.mul_f64(0.75 + unit / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_within_a_quarter_either_way() {
        for (attempt, secs) in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (6, 60.0), (40, 60.0)] {
            let w = backoff(attempt).as_secs_f64();
            assert!(w >= secs * 0.75 && w <= secs * 1.25, "attempt {attempt}: {w} s");
        }
    }
}
