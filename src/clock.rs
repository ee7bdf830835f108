//! Time as the lease manager sees it: the wall clock in production, tokio's pausable clock in tests.

use chrono::{DateTime, Utc};

/// Where "now" comes from. Deadlines are wall-clock times (credentials expire at the issuer by
/// the wall clock); waits are tokio sleeps that re-check the clock, so a clock step or a suspended
/// machine is noticed within [`Clock::MAX_WAIT`].
#[derive(Clone, Debug)]
pub enum Clock {
    /// `Utc::now()`.
    System,
    /// A wall clock that advances with tokio's clock: under `tokio::time::pause()` tests move
    /// time with `advance` and nothing sleeps for real.
    Tokio { wall: DateTime<Utc>, at: tokio::time::Instant },
}

impl Clock {
    /// The longest single wait before the clock is read again.
    pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

    /// A clock that follows tokio's time, starting at the current wall time.
    pub fn tokio() -> Clock {
        Clock::Tokio { wall: Utc::now(), at: tokio::time::Instant::now() }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { wall, at } => {
                *wall + chrono::Duration::from_std(at.elapsed()).unwrap_or(chrono::Duration::zero())
            }
        }
    }

    /// How long until `t` (zero if it has passed).
    pub fn until(&self, t: DateTime<Utc>) -> std::time::Duration {
        (t - self.now()).to_std().unwrap_or_default()
    }

    /// Sleeps until `t` or at most `MAX_WAIT`, whichever comes first.
    pub async fn sleep_toward(&self, t: DateTime<Utc>) {
        tokio::time::sleep(self.until(t).min(Self::MAX_WAIT)).await
    }
}
