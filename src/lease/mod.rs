//! The lease manager — one owner, in rooms, like Vault's expiration manager: issuance
//! (`issue.rs`), the table and reuse (`table.rs`), one deadline queue for expiry and renewal
//! (`deadline.rs`), revocation (`revoke.rs`), base secrets (`bases.rs`) and the journal.

pub mod bases;
pub mod cgroup;
pub mod deadline;
pub mod issue;
pub mod journal;
mod open;
pub mod pressure;
pub mod revoke;
pub mod rotate;
pub mod table;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, Event, EventKind, Outcome};
use crate::clock::Clock;
use crate::defaults::Defaults;
pub use crate::error::LeaseError;
use crate::issuer::registry::Issuers;
use crate::metrics::{Gauges, Metrics};
use crate::policy::IssuerKind;
use crate::render::rfc3339;
use crate::requester::Requester;
use crate::secret::SecretMeta;
use crate::source::Source;
use deadline::{Action, Deadlines};
use journal::{Journal, Record};
use revoke::{Engine, Job};
use table::Table;
pub use table::{EndReason, Lease, LeaseInfo, LeaseState, OpenRequest, Origin};

pub struct LeaseManager {
    defaults: Defaults,
    clock: Clock,
    audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    table: Table,
    deadlines: Arc<Deadlines>,
    engine: Arc<Engine>,
    /// Issuances under way: shutdown waits for them so that none escapes revocation.
    in_flight: TaskTracker,
    serving: AtomicBool,
    /// Opens that may share a lease (same path and binding) queue here for one issuance.
    turns: table::Turns,
    /// Issuances under way and per minute, by entry.
    pressure: pressure::Pressure,
    /// Told the id of each lease that ends (pages of its bytes must leave the page cache).
    ended_hook: std::sync::OnceLock<EndedHook>,
}

type EndedHook = Box<dyn Fn(&str) + Send + Sync>;

/// The audit log's outcome of a lease ended for this reason.
fn outcome_of(why: EndReason) -> Outcome {
    match why {
        EndReason::Expire => Outcome::Expire,
        EndReason::Revoke => Outcome::Revoke,
        EndReason::Close => Outcome::Close,
        EndReason::Shutdown => Outcome::Shutdown,
        EndReason::Cgroup => Outcome::Cgroup,
    }
}

/// A fresh lease id: 128 random bits, hex; an error if the OS random source fails.
pub fn new_lease_id() -> Result<String, LeaseError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| LeaseError::failed(format!("no lease id: the OS random source failed: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl LeaseManager {
    /// A manager; `clock` is `Clock::System` but in tests (tokio's paused clock).
    pub fn new(
        issuers: Issuers,
        journal: Option<Arc<Journal>>,
        defaults: Defaults,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Arc<Self> {
        let timeout = defaults.issue_timeout.0;
        let bases = Arc::new(bases::Bases::new(defaults.cache_ttl.0, timeout));
        let engine = Engine::new(
            issuers,
            bases,
            journal,
            audit.clone(),
            metrics.clone(),
            clock.clone(),
            timeout,
            defaults.irrevocable_after.0,
        );
        Arc::new(LeaseManager {
            defaults,
            clock,
            audit,
            metrics,
            table: Table::default(),
            deadlines: Arc::default(),
            engine: Arc::new(engine),
            in_flight: TaskTracker::new(),
            serving: AtomicBool::new(false),
            turns: table::Turns::default(),
            pressure: pressure::Pressure::default(),
            ended_hook: std::sync::OnceLock::new(),
        })
    }

    /// Called with the id of every lease that ends, so that the filesystem drops its pages.
    pub fn on_end(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.ended_hook.set(Box::new(f));
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn live(&self) -> usize {
        self.table.len()
    }

    pub fn pending_revocations(&self) -> usize {
        self.engine.pending()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Lease>> {
        self.table.get(id)
    }

    /// Whether an issuer of this kind answers without I/O (an open may then finish in place).
    pub fn is_inline(&self, kind: IssuerKind) -> bool {
        self.engine.is_inline(kind)
    }

    /// Live leases, then irrevocable ones: metadata only.
    pub fn list(&self) -> Vec<LeaseInfo> {
        let mut v = self.table.list(self.clock.now());
        v.extend(self.engine.irrevocable());
        v
    }

    pub fn irrevocable(&self) -> Vec<LeaseInfo> {
        self.engine.irrevocable()
    }

    /// Journal records of a previous run that name no configured base: reported, never run.
    pub fn unresolved_orphans(&self) -> Vec<revoke::Unresolved> {
        self.engine.unresolved()
    }

    /// The gauges `/.leasefs/metrics` shows.
    pub fn gauges(&self, open_handles: usize) -> Gauges {
        Gauges {
            live_leases: self.live(),
            pending_revocations: self.pending_revocations(),
            irrevocable_leases: self.engine.irrevocable().len(),
            open_handles,
        }
    }

    fn audit(&self, kind: EventKind, lease: &Lease, outcome: Outcome, who: Option<&Requester>) {
        self.audit.record(&Event::new(kind, lease.path(), outcome).lease(&lease.id, lease.issuer()), who);
    }

    /// Queues a lease's expiry (and, for a renewable one, its renewal at 2/3 of what is left).
    fn schedule(self: &Arc<Self>, lease: &Arc<Lease>) {
        let exp = lease.expires_at();
        self.deadlines.push(exp, lease, Action::Expire);
        if lease.renew_while_open && exp < lease.cap {
            let now = self.clock.now();
            if exp > now {
                self.deadlines.push(now + (exp - now) * 2 / 3, lease, Action::Renew);
            }
        }
        if let Some(at) = lease.rotate.as_ref().map(|r| r.at) {
            let when = lease.issued_at + (exp - lease.issued_at) * at as i32 / 1000;
            self.deadlines.push(when, lease, Action::Rotate);
        }
        if !self.serving.swap(true, Ordering::SeqCst) {
            let me: Weak<dyn deadline::OnDeadline> = Arc::downgrade(self) as Weak<dyn deadline::OnDeadline>;
            tokio::spawn(deadline::serve(me, self.deadlines.clone(), self.clock.clone()));
        }
    }

    fn spawn_renewal(self: &Arc<Self>, lease: Arc<Lease>) {
        let me = self.clone();
        tokio::spawn(async move {
            let old = lease.expires_at();
            match me.engine.renew(&lease).await {
                Ok(Some(new)) if new > old && lease.is_live() => {
                    lease.set_expiry(new.min(lease.cap));
                    me.deadlines.forget(&lease);
                    me.schedule(&lease);
                    me.audit(EventKind::Renew, &lease, Outcome::Ok, None);
                    tracing::info!(lease = %lease.id, path = %lease.path(), expires_at = %rfc3339(lease.expires_at()), "renewed");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(lease = %lease.id, path = %lease.path(), error = %e, "renewal failed; the lease ends at its expiry")
                }
            }
        });
    }

    /// One more handle on a live lease (a view of it opened again).
    pub fn hold(&self, lease: &Lease) {
        lease.hold();
    }

    /// A handle on the lease was closed. With none left, a lease that nobody may share has bytes
    /// nobody can read again: they are zeroized now (the lease stays live until its expiry, and
    /// no longer counts against its uid's bound); `revoke_on_close` ends it.
    pub fn closed(self: &Arc<Self>, lease: &Arc<Lease>) {
        if lease.release() > 0 || !lease.is_live() {
            return;
        }
        if lease.revoke_on_close {
            self.end(lease, EndReason::Close, None);
        } else if !lease.reusable {
            let n = lease.held();
            lease.zeroize();
            self.table.uncharge(lease, n);
        }
    }

    /// Ends a lease once: zeroizes its bytes (open handles then read EKEYEXPIRED), removes it from
    /// the table, and revokes it at its issuer in the background. `who` asked for it, if anyone
    /// did (recorded in the audit log).
    pub fn end(
        self: &Arc<Self>,
        lease: &Arc<Lease>,
        why: EndReason,
        who: Option<&Requester>,
    ) -> Option<JoinHandle<()>> {
        if !lease.mark_ended() {
            return None;
        }
        let n = lease.held();
        lease.zeroize();
        self.table.uncharge(lease, n);
        self.table.remove(&lease.id);
        if let Some(f) = self.ended_hook.get() {
            f(&lease.id);
        }
        if why != EndReason::Expire {
            self.deadlines.forget(lease);
        }
        let kind = if why == EndReason::Expire { EventKind::Expire } else { EventKind::Revoke };
        self.audit(kind, lease, outcome_of(why), who);
        tracing::info!(lease = %lease.id, path = %lease.path(), reason = why.as_str(), "lease ended; revoking");
        Some(self.engine.spawn(Job {
            lease_id: lease.id.clone(),
            origin: lease.origin.clone(),
            revocation: lease.revocation.clone(),
            expires_at: Some(lease.expires_at()),
            info: lease.info(self.clock.now()),
            journaled: lease.journaled,
        }))
    }

    /// Revokes one lease by id (`/.leasefs/revoke`, `leasefs revoke`), on behalf of `who`. An
    /// irrevocable lease (one that ended but whose issuer keeps refusing) is tried again now.
    pub fn revoke(self: &Arc<Self>, id: &str, who: Option<&Requester>) -> bool {
        match self.get(id) {
            Some(l) => {
                self.end(&l, EndReason::Revoke, who);
                true
            }
            None => self.engine.retry(id),
        }
    }

    /// Revokes every live lease, on behalf of `who` if anyone asked.
    pub fn revoke_all(self: &Arc<Self>, why: EndReason, who: Option<&Requester>) -> Vec<JoinHandle<()>> {
        self.table.all().iter().filter_map(|l| self.end(l, why, who)).collect()
    }

    /// At shutdown: revoke live leases (`revoke`) and unfinished issuances; wait for it (bounded).
    pub async fn shutdown(self: &Arc<Self>, revoke: bool) {
        self.engine.shut_down();
        // Let issuances under way finish (each is bounded by issue_timeout), so that their leases
        // are in the table when it is revoked, and those that fail are revoked (SPEC §10.4).
        self.in_flight.close();
        let limit = self.defaults.issue_timeout.0 + Duration::from_secs(1);
        let _ = tokio::time::timeout(limit, self.in_flight.wait()).await;
        let mut handles = if revoke { self.revoke_all(EndReason::Shutdown, None) } else { Vec::new() };
        let n = handles.len();
        handles.extend(self.engine.take_undone());
        let limit = self.defaults.issue_timeout.0 * 3 + Duration::from_secs(5);
        let all = async {
            for h in handles {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!(
                "some revocations did not finish before shutdown; they stay in the journal for the next start"
            );
        } else if n > 0 {
            tracing::info!(count = n, "revoked live leases at shutdown");
        }
    }

    /// At start: revokes what a previous run left in the journal (see `Engine::recover`). Waits
    /// for the first attempt of each; failures keep retrying in the background.
    pub async fn recover(
        self: &Arc<Self>,
        pending: Vec<Record>,
        resolve: impl Fn(&str, &str) -> Option<(Arc<SecretMeta>, Arc<dyn Source>)>,
    ) {
        let mut handles = self.engine.recover(pending, &resolve);
        let limit = self.defaults.issue_timeout.0 + Duration::from_secs(2);
        let _ = tokio::time::timeout(limit, async {
            for h in handles.iter_mut() {
                let _ = h.await;
            }
        })
        .await;
    }
}

impl deadline::OnDeadline for LeaseManager {
    fn due(self: Arc<Self>, lease: Arc<Lease>, action: Action, now: chrono::DateTime<chrono::Utc>) {
        if !lease.is_live() {
            return;
        }
        match action {
            // A lease renewed since has a later expiry deadline of its own.
            Action::Expire if lease.expires_at() <= now => {
                self.metrics.expired();
                self.end(&lease, EndReason::Expire, None);
            }
            Action::Expire => {}
            Action::Renew if lease.open_handles() > 0 => self.spawn_renewal(lease),
            Action::Renew => {}
            Action::Rotate => {
                let (audit, metrics) = (self.audit.clone(), self.metrics.clone());
                let (trust, timeout) = (self.engine.trust(), self.defaults.issue_timeout.0);
                rotate::rotate(&rotate::Rotator { audit, metrics, trust, timeout }, &lease)
            }
            Action::Cgroup if cgroup::emptied(&lease) => {
                self.end(&lease, EndReason::Cgroup, None);
            }
            Action::Cgroup => {
                self.deadlines.push(self.clock.now() + cgroup::POLL, &lease, Action::Cgroup);
            }
        }
    }
}

#[cfg(test)]
mod tests;
