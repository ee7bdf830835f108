//! Issuance pressure per entry: how many issuances of it are under way, and how many started in
//! the current minute. A legacy app that polls a file cannot mint thousands of leases a minute.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use super::table::Usage;
use crate::config::Defaults;
use crate::error::{ErrorKind, LeaseError};
use tokio::time::Instant;

struct Load {
    in_flight: u32,
    window: Instant,
    started: u32,
}

#[derive(Default)]
pub struct Pressure {
    entries: Mutex<HashMap<String, Load>>,
}

/// One admitted issuance; it stops counting as under way when dropped.
pub struct Admitted<'a> {
    pressure: &'a Pressure,
    path: String,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.pressure.entries.lock().get_mut(&self.path) {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
    }
}

impl Pressure {
    /// Admits one more issuance of `path`, or says which bound it would cross (0: no bound).
    pub fn admit(&self, path: &str, max_concurrent: u32, per_minute: u32) -> Result<Admitted<'_>, String> {
        let now = Instant::now();
        let mut g = self.entries.lock();
        let l = g.entry(path.to_string()).or_insert(Load { in_flight: 0, window: now, started: 0 });
        if now.duration_since(l.window) >= Duration::from_secs(60) {
            l.window = now;
            l.started = 0;
        }
        if max_concurrent > 0 && l.in_flight >= max_concurrent {
            return Err(format!("{} issuances of this entry are under way (max_concurrent_issuances)", l.in_flight));
        }
        if per_minute > 0 && l.started >= per_minute {
            let wait = Duration::from_secs(60).saturating_sub(now.duration_since(l.window));
            return Err(format!(
                "{} issuances of this entry this minute (max_issues_per_minute); next in {}s",
                l.started,
                wait.as_secs().max(1)
            ));
        }
        l.in_flight += 1;
        l.started += 1;
        Ok(Admitted { pressure: self, path: path.to_string() })
    }
}

/// Whether `uid`, holding `usage`, may hold one more lease (`max_leases_per_uid`,
/// `max_lease_bytes_per_uid`); `EDQUOT` if not.
pub fn within_quota(usage: Usage, uid: u32, d: &Defaults) -> Result<(), LeaseError> {
    if usage.leases < d.max_leases_per_uid && usage.bytes < d.max_lease_bytes_per_uid {
        return Ok(());
    }
    Err(LeaseError::new(
        ErrorKind::Quota,
        format!(
            "uid {uid} holds {} leases ({} bytes); the bound is {} leases, {} bytes (max_leases_per_uid, max_lease_bytes_per_uid)",
            usage.leases, usage.bytes, d.max_leases_per_uid, d.max_lease_bytes_per_uid
        ),
    ))
}
