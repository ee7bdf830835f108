//! One deadline queue for every lease: when each expires and when a renewable one is renewed.
//! One task serves it (a task per lease would cost a runtime wake-up on every issuance).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::table::Lease;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// End the lease (zeroize, revoke) unless its expiry moved later since.
    Expire,
    /// Renew it if a handle is still open.
    Renew,
    /// Signal the processes that opened it to re-read (`rotate_signal`).
    Rotate,
    /// Look whether the reader's cgroup is empty (`bind: "cgroup"`).
    Cgroup,
}

/// Deadlines that fell due, and when the next one is.
pub type Taken = (Vec<(Arc<Lease>, Action)>, Option<DateTime<Utc>>);

struct Due {
    lease: Weak<Lease>,
    action: Action,
}

/// Deadlines in time order: (milliseconds since the epoch, sequence) → what to do.
#[derive(Default)]
pub struct Deadlines {
    queue: Mutex<BTreeMap<(i64, u64), Due>>,
    seq: AtomicU64,
    /// Told when a deadline arrives before every queued one.
    sooner: tokio::sync::Notify,
}

impl Deadlines {
    /// Queues `action` for `lease` at `at`; true when it is now the first deadline (the serving
    /// task must wake up sooner).
    pub fn push(&self, at: DateTime<Utc>, lease: &Arc<Lease>, action: Action) -> bool {
        let key = (at.timestamp_millis(), self.seq.fetch_add(1, Ordering::Relaxed));
        if action == Action::Expire {
            *lease.expiry_slot.lock() = Some(key);
        }
        let mut q = self.queue.lock();
        q.insert(key, Due { lease: Arc::downgrade(lease), action });
        let first = q.first_key_value().is_some_and(|(k, _)| *k == key);
        drop(q);
        if first {
            self.sooner.notify_one();
        }
        first
    }

    /// Forgets a lease's expiry deadline (it ended early).
    pub fn forget(&self, lease: &Lease) {
        if let Some(key) = lease.expiry_slot.lock().take() {
            self.queue.lock().remove(&key);
        }
    }

    /// Takes every deadline at or before `now`; also returns when the next one is due.
    pub fn take_due(&self, now: DateTime<Utc>) -> Taken {
        let now = now.timestamp_millis();
        let mut q = self.queue.lock();
        let mut due = Vec::new();
        while let Some(e) = q.first_entry() {
            if e.key().0 > now {
                break;
            }
            let d = e.remove();
            if let Some(l) = d.lease.upgrade() {
                due.push((l, d.action));
            }
        }
        let next = q.first_key_value().and_then(|(k, _)| DateTime::from_timestamp_millis(k.0));
        (due, next)
    }

    /// Waits until told that a sooner deadline arrived.
    pub async fn sooner(&self) {
        self.sooner.notified().await
    }

    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the serving task calls for each deadline that falls due.
pub trait OnDeadline: Send + Sync {
    fn due(self: Arc<Self>, lease: Arc<Lease>, action: Action, now: DateTime<Utc>);
}

/// The one task that acts on deadlines: sleeps until the earliest (re-reading the clock at
/// least every 30 s), or until a sooner one arrives; ends when its owner is gone.
pub async fn serve(owner: Weak<dyn OnDeadline>, deadlines: Arc<Deadlines>, clock: crate::clock::Clock) {
    loop {
        let now = clock.now();
        let (due, next) = deadlines.take_due(now);
        let Some(o) = owner.upgrade() else { return };
        for (lease, action) in due {
            o.clone().due(lease, action, now);
        }
        drop(o);
        match next {
            Some(t) => {
                tokio::select! {
                    _ = clock.sleep_toward(t) => {}
                    _ = deadlines.sooner() => {}
                }
            }
            None => deadlines.sooner().await,
        }
    }
}
