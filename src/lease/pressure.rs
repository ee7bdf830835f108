//! Issuance pressure per entry: how many issuances of it are under way, and how many started in
//! the current minute, in all and per uid (a fair share, so one uid cannot starve another); and
//! the folding of repeated denials into one audit line per (uid, entry, reason) per 10 s.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use super::table::Usage;
use crate::defaults::Defaults;
use crate::error::{ErrorKind, LeaseError};
use crate::policy::Effective;
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);
/// Denials of one (uid, entry, reason) within this span share one audit line.
pub const DENY_FOLD: Duration = Duration::from_secs(10);

#[derive(Default)]
struct UidLoad {
    in_flight: u32,
    /// Issuances this uid started in the entry's current minute.
    started: u32,
    /// When this uid last asked for an issuance of the entry (admitted or refused).
    seen: Option<Instant>,
}

struct Load {
    in_flight: u32,
    window: Instant,
    started: u32,
    uids: HashMap<u32, UidLoad>,
}

/// An entry's bounds as its policy gives them.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// 0: no bound.
    pub max_concurrent: u32,
    /// 0: no bound.
    pub per_minute: u32,
    /// The share of each bound one uid may hold while another uid uses the entry, in thousandths.
    pub share_milli: u32,
}

/// An entry's bounds from its effective policy.
pub fn bounds(p: &Effective) -> Bounds {
    Bounds {
        max_concurrent: p.max_concurrent_issuances,
        per_minute: p.max_issues_per_minute,
        share_milli: p.per_uid_share,
    }
}

/// `ceil(budget * share)`, at least 1 (0: no bound stays no bound).
pub fn share_of(budget: u32, share_milli: u32) -> u32 {
    if budget == 0 {
        return 0;
    }
    let s = (u64::from(budget) * u64::from(share_milli.min(1000))).div_ceil(1000);
    u32::try_from(s).unwrap_or(budget).clamp(1, budget)
}

#[derive(Default)]
pub struct Pressure {
    entries: Mutex<HashMap<String, Load>>,
    /// Denials audited once per (uid, entry, reason) per [`DENY_FOLD`].
    pub folds: DenyFolds,
}

/// One admitted issuance; it stops counting as under way when dropped.
pub struct Admitted<'a> {
    pressure: &'a Pressure,
    path: String,
    uid: u32,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.pressure.entries.lock().get_mut(&self.path) {
            l.in_flight = l.in_flight.saturating_sub(1);
            if let Some(u) = l.uids.get_mut(&self.uid) {
                u.in_flight = u.in_flight.saturating_sub(1);
            }
        }
    }
}

impl Pressure {
    /// Admits one more issuance of `path` for `uid`, or says which bound it would cross.
    ///
    /// The fair-share rule: while any other uid has asked for this entry in the last minute (or
    /// holds an issuance of it), `uid` may hold at most its share (`per_uid_share`, rounded up, at
    /// least 1) of each bound; a uid alone on the entry for a minute may use the whole budget.
    /// When a uid that was alone holds more than its share as another arrives, the newcomer is
    /// admitted within its share past the entry's bound, so the entry may briefly exceed a bound
    /// by one share (until the first uid's issuances end, or the minute is over).
    pub fn admit(&self, path: &str, uid: u32, b: Bounds) -> Result<Admitted<'_>, String> {
        let now = Instant::now();
        let mut g = self.entries.lock();
        let l = g.entry(path.to_string()).or_insert_with(|| Load {
            in_flight: 0,
            window: now,
            started: 0,
            uids: HashMap::new(),
        });
        if now.duration_since(l.window) >= MINUTE {
            l.window = now;
            l.started = 0;
            l.uids.values_mut().for_each(|u| u.started = 0);
        }
        // Forget uids that neither hold an issuance nor asked in the last minute.
        l.uids.retain(|_, u| u.in_flight > 0 || u.seen.is_some_and(|t| now.duration_since(t) < MINUTE));
        let shared = l.uids.iter().any(|(other, u)| {
            *other != uid && (u.in_flight > 0 || u.seen.is_some_and(|t| now.duration_since(t) < MINUTE))
        });
        let (cap_now, cap_minute) = (share_of(b.max_concurrent, b.share_milli), share_of(b.per_minute, b.share_milli));
        // Another uid holding more than its share (it was alone until now) cannot lock this one
        // out: within its own share, this uid is admitted past the entry's bound.
        let others_over = |over: &dyn Fn(&UidLoad) -> bool| l.uids.iter().any(|(o, u)| *o != uid && over(u));
        let crowded_now = cap_now > 0 && others_over(&|u| u.in_flight > cap_now);
        let crowded_minute = cap_minute > 0 && others_over(&|u| u.started > cap_minute);
        let mine = l.uids.entry(uid).or_default();
        mine.seen = Some(now);
        if shared && cap_now > 0 && mine.in_flight >= cap_now {
            return Err(format!(
                "uid {uid} has {} issuances of this entry under way, its share while others use it (max_concurrent_issuances {} × per_uid_share)",
                mine.in_flight, b.max_concurrent
            ));
        }
        if shared && cap_minute > 0 && mine.started >= cap_minute {
            return Err(format!(
                "uid {uid} started {} issuances of this entry this minute, its share while others use it (max_issues_per_minute {} × per_uid_share); next in {}s",
                mine.started,
                b.per_minute,
                wait(now, l.window)
            ));
        }
        if b.max_concurrent > 0 && l.in_flight >= b.max_concurrent && !crowded_now {
            return Err(format!("{} issuances of this entry are under way (max_concurrent_issuances)", l.in_flight));
        }
        if b.per_minute > 0 && l.started >= b.per_minute && !crowded_minute {
            return Err(format!(
                "{} issuances of this entry this minute (max_issues_per_minute); next in {}s",
                l.started,
                wait(now, l.window)
            ));
        }
        mine.in_flight += 1;
        mine.started += 1;
        l.in_flight += 1;
        l.started += 1;
        Ok(Admitted { pressure: self, path: path.to_string(), uid })
    }
}

fn wait(now: Instant, window: Instant) -> u64 {
    MINUTE.saturating_sub(now.duration_since(window)).as_secs().max(1)
}

struct Fold {
    /// When the last line for this key was written.
    written: Instant,
    /// Denials since then that were not written.
    folded: u64,
}

/// Repeated denials folded into one audit line per (uid, entry, reason) per [`DENY_FOLD`].
#[derive(Default)]
pub struct DenyFolds {
    keys: Mutex<HashMap<(u32, String, &'static str), Fold>>,
}

impl DenyFolds {
    /// Counts one denial; `Some(count)` when a line is due (this denial and those folded since
    /// the last line), `None` when it is folded into the next one.
    pub fn deny(&self, uid: u32, path: &str, reason: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut g = self.keys.lock();
        if g.len() > 4096 {
            g.retain(|_, f| now.duration_since(f.written) < DENY_FOLD);
        }
        match g.get_mut(&(uid, path.to_string(), reason)) {
            Some(f) if now.duration_since(f.written) < DENY_FOLD => {
                f.folded += 1;
                None
            }
            Some(f) => {
                let count = f.folded + 1;
                *f = Fold { written: now, folded: 0 };
                Some(count)
            }
            None => {
                g.insert((uid, path.to_string(), reason), Fold { written: now, folded: 0 });
                Some(1)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds { max_concurrent: 8, per_minute: 0, share_milli: 500 };

    #[test]
    fn a_share_is_rounded_up_and_at_least_one() {
        assert_eq!(share_of(8, 500), 4);
        assert_eq!(share_of(9, 500), 5);
        assert_eq!(share_of(1, 500), 1);
        assert_eq!(share_of(10, 1), 1);
        assert_eq!(share_of(0, 500), 0, "no bound stays no bound");
        assert_eq!(share_of(10, 1000), 10);
    }

    #[test]
    fn a_uid_alone_uses_the_whole_budget_and_a_newcomer_still_gets_its_share() {
        let p = Pressure::default();
        let a: Vec<_> = (0..8).map(|_| p.admit("e", 1, B).unwrap()).collect();
        assert!(p.admit("e", 1, B).is_err(), "the entry's bound");
        // uid 2 arrives while uid 1 holds the whole budget: admitted within its share.
        let b: Vec<_> = (0..4).map(|_| p.admit("e", 2, B).unwrap()).collect();
        let e = p.admit("e", 2, B).err().unwrap();
        assert!(e.contains("per_uid_share"), "{e}");
        // uid 1 is now held to its share: it gets nothing until it is back under 4.
        drop(a.into_iter().take(5).collect::<Vec<_>>());
        assert!(p.admit("e", 1, B).is_ok(), "3 held, its share is 4");
        drop(b);
    }

    #[test]
    fn the_per_minute_budget_is_shared_too() {
        let p = Pressure::default();
        let b = Bounds { max_concurrent: 0, per_minute: 10, share_milli: 500 };
        for _ in 0..10 {
            drop(p.admit("e", 1, b).unwrap());
        }
        assert!(p.admit("e", 1, b).is_err());
        for _ in 0..5 {
            drop(p.admit("e", 2, b).unwrap());
        }
        let e = p.admit("e", 2, b).err().unwrap();
        assert!(e.contains("max_issues_per_minute") && e.contains("per_uid_share"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn denials_are_folded_per_uid_entry_and_reason_per_ten_seconds() {
        let f = DenyFolds::default();
        assert_eq!(f.deny(1, "e", "busy"), Some(1));
        for _ in 0..99 {
            assert_eq!(f.deny(1, "e", "busy"), None);
        }
        assert_eq!(f.deny(2, "e", "busy"), Some(1), "another uid has its own line");
        assert_eq!(f.deny(1, "e", "quota"), Some(1), "another reason has its own line");
        tokio::time::advance(DENY_FOLD).await;
        assert_eq!(f.deny(1, "e", "busy"), Some(100), "this one and the 99 folded");
        assert_eq!(f.deny(1, "e", "busy"), None);
    }
}
