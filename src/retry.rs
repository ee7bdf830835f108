//! Waiting before trying again: the jittered exponential backoff of revocations and of OpenBao
//! rounds, and rate limits (HTTP 429) waited out as the server says, within a deadline.

use std::time::Duration;

use tokio::time::Instant;

/// The 429 answers of one request, waited out until `deadline` (OpenBao, Graph).
pub struct Throttle {
    /// Who limits ("OpenBao", "azure: Graph"), for the log.
    who: &'static str,
    deadline: Instant,
    /// 429s waited out so far: each raises the floor of the next wait (250 ms, 500 ms … 4 s).
    waited: u32,
}

impl Throttle {
    pub fn new(who: &'static str, deadline: Instant) -> Self {
        Throttle { who, deadline, waited: 0 }
    }

    /// After a 429 from `server` (a node's address): waits as its `Retry-After` says (1 s if it says nothing) and
    /// returns true, or returns false at once when that wait would end past the deadline.
    pub async fn wait(&mut self, resp: &reqwest::Response, server: &str) -> bool {
        let wait = crate::tls::retry_after(resp, self.waited);
        self.waited += 1;
        if Instant::now() + wait >= self.deadline {
            return false;
        }
        let who = self.who;
        tracing::info!(
            server,
            wait_ms = wait.as_millis() as u64,
            "{who} rate limit (429): waiting as Retry-After says"
        );
        tokio::time::sleep(wait).await;
        true
    }
}

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
