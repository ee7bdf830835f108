//! The engine that talks to issuers (issuance is in `issue.rs`), and revocation: each ended lease
//! is revoked at its issuer exactly once, retried with jittered backoff; one refused for longer
//! than `irrevocable_after` is marked irrevocable (shown, counted, logged at error, kept in the
//! journal) and retried every 5 minutes for an hour; then abandoned: still listed and journaled,
//! retried by `leasefs revoke` and at the next start, never again on its own in this run.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::bases::Bases;
use super::journal::{Journal, Op, Record};
use super::table::{LeaseInfo, LeaseState, Origin};
use crate::audit::{Audit, Event, EventKind, Outcome};
use crate::clock::Clock;
use crate::error::LeaseError;
use crate::issuer::RevokeRequest;
use crate::issuer::registry::Issuers;
use crate::metrics::Metrics;
use crate::policy::IssuerKind;
use crate::retry::backoff;
use crate::secret::{SecretKind, SecretMeta};
use crate::source::Source;
use crate::trust::Trust;

/// One credential to revoke.
#[derive(Clone)]
pub struct Job {
    pub lease_id: String,
    pub origin: Arc<Origin>,
    pub revocation: serde_json::Value,
    pub expires_at: Option<DateTime<Utc>>,
    /// What `leases.json` shows while it waits (metadata only).
    pub info: LeaseInfo,
    /// Whether the journal may hold it (then its revocation is journaled too).
    pub journaled: bool,
}

/// Where a revocation that has not succeeded stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Retried with backoff (1 s, 2 s, 4 s … 60 s).
    Retrying,
    /// Refused for longer than `irrevocable_after`: retried every 5 minutes.
    Irrevocable,
    /// Refused through every slow retry too: no more automatic attempts in this run.
    Abandoned,
}

struct Pending {
    /// The job, kept for a retry asked for by hand (`leasefs revoke`); its `info` is the row
    /// `leases.json` shows.
    job: Job,
    stage: Stage,
    /// Cuts a wait short: `leasefs revoke` of a lease still retried tries it now.
    wake: Arc<Notify>,
}

/// Issuers, the base-secret cache and the journal, with the revocations under way. The manager
/// works with it through its methods only; `issue.rs` (issuance and renewal) is the rest of it.
pub struct Engine {
    pub(super) issuers: Issuers,
    pub(super) bases: Arc<Bases>,
    journal: Option<Arc<Journal>>,
    pub(super) audit: Arc<Audit>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) clock: Clock,
    pub(super) timeout: Duration,
    irrevocable_after: Duration,
    shutting_down: AtomicBool,
    pending: Mutex<HashMap<String, Pending>>,
    /// Revocations of issuances that did not finish: shutdown waits for them.
    undone: Mutex<Vec<JoinHandle<()>>>,
    /// Journal records recovery could not act on (reported, never executed).
    unresolved: Mutex<Vec<Unresolved>>,
    /// Leases revoked at their issuer whose revocation is undone later (see `revoke_again_at`).
    lifting: Mutex<HashSet<String>>,
}

/// Finds a base secret (by source prefix and path) in the current catalog.
pub type Resolve<'a> = dyn Fn(&str, &str) -> Option<(Arc<SecretMeta>, Arc<dyn Source>)> + 'a;

/// A journal record left by a previous run that names no base of the current configuration.
#[derive(Serialize, Clone, Debug)]
pub struct Unresolved {
    pub lease_id: String,
    pub path: String,
    pub source: String,
    pub base: String,
    pub reason: String,
}

/// Where an orphan's revocation runs: the base the record names, as the current configuration
/// has it, with the issuer that base says — never the issuer the record says.
fn origin_of(r: &Record, resolve: &Resolve<'_>) -> Result<Origin, String> {
    let (base, source) =
        resolve(&r.source, &r.base).ok_or_else(|| "its base is not in the current configuration".to_string())?;
    let SecretKind::Base { issuer, .. } = base.kind else {
        return Err("what it names is not a base secret".into());
    };
    if r.issuer.known() != Some(issuer) {
        return Err(format!("the journal says issuer {:?}, the configured base is {issuer}", r.issuer.as_str()));
    }
    Ok(Origin {
        path: r.path.clone(),
        secret_id: r.secret_id.clone(),
        issuer,
        source_key: r.source.clone(),
        base,
        source,
    })
}

/// How often an irrevocable lease is tried again.
const SLOW_RETRY: Duration = Duration::from_secs(300);
/// Slow retries of an irrevocable lease before automatic attempts stop (an hour of them).
const SLOW_RETRIES: u32 = 12;
/// During shutdown, a revocation gives up after this many attempts (the journal keeps it).
const SHUTDOWN_ATTEMPTS: u32 = 3;

impl Engine {
    #[allow(clippy::too_many_arguments)] // the rooms it works with
    pub fn new(
        issuers: Issuers,
        bases: Arc<Bases>,
        journal: Option<Arc<Journal>>,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
        clock: Clock,
        timeout: Duration,
        irrevocable_after: Duration,
    ) -> Self {
        Engine {
            issuers,
            bases,
            journal,
            audit,
            metrics,
            clock,
            timeout,
            irrevocable_after,
            shutting_down: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            undone: Mutex::new(Vec::new()),
            unresolved: Mutex::new(Vec::new()),
            lifting: Mutex::new(HashSet::new()),
        }
    }

    /// Revocations not done yet.
    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    /// Keeps the revocation of an unfinished issuance for shutdown to wait on.
    pub fn undone(&self, h: JoinHandle<()>) {
        let mut v = self.undone.lock();
        v.retain(|h| !h.is_finished());
        v.push(h);
    }

    /// The revocations of unfinished issuances still under way.
    pub fn take_undone(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.undone.lock())
    }

    /// Leases whose revocation has been refused for longer than `irrevocable_after` (abandoned
    /// ones too: they stay listed until revoked).
    pub fn irrevocable(&self) -> Vec<LeaseInfo> {
        let g = self.pending.lock();
        let mut v: Vec<LeaseInfo> =
            g.values().filter(|p| p.stage != Stage::Retrying).map(|p| p.job.info.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Whether an issuer of this kind answers without I/O (an open may then finish in place).
    pub fn is_inline(&self, kind: IssuerKind) -> bool {
        self.issuers.get(kind).is_some_and(|i| i.is_inline())
    }

    /// Who may own the programs that are run (exec scripts, `rotate_command`).
    pub fn trust(&self) -> Trust {
        self.issuers.trust
    }

    /// From now on nothing new is issued, and a failing revocation gives up after a few attempts
    /// (the journal keeps it for the next start).
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Whether leases of this issuer are journaled (issuers that cannot revoke have nothing to
    /// do after a crash).
    pub fn journals(&self, r: &Record) -> bool {
        let issuer = r.issuer.known().and_then(|k| self.issuers.get(k));
        self.journal.is_some() && issuer.is_some_and(|i| i.can_revoke())
    }

    /// Appends to the journal when the issuer can revoke.
    pub async fn journal(&self, r: Record) -> Result<(), LeaseError> {
        match &self.journal {
            Some(j) if self.journals(&r) => {
                j.append(r).await.map_err(|e| LeaseError::failed("cannot write the lease journal").caused_by(e))
            }
            _ => Ok(()),
        }
    }

    fn event(&self, kind: EventKind, job: &Job, outcome: Outcome, detail: Option<&str>) {
        let ev = Event::new(kind, &job.origin.path, outcome).lease(&job.lease_id, job.origin.issuer).detail(detail);
        self.audit.record(&ev, None);
    }

    /// Revokes in the background until it succeeds (during shutdown: after a few attempts,
    /// leaving the rest to the journal and the next start; past the slow retries of an
    /// irrevocable lease: left listed for `leasefs revoke` and the next start).
    pub fn spawn(self: &Arc<Self>, job: Job) -> JoinHandle<()> {
        let wake = Arc::new(Notify::new());
        let pending = Pending { job: job.clone(), stage: Stage::Retrying, wake: wake.clone() };
        self.pending.lock().insert(job.lease_id.clone(), pending);
        tokio::spawn(self.clone().revoke_until_done(job, wake))
    }

    async fn revoke_until_done(self: Arc<Self>, job: Job, wake: Arc<Notify>) {
        let started = self.clock.now();
        let (mut attempt, mut slow) = (0u32, 0u32);
        loop {
            let e = match self.revoke_once(&job).await {
                Ok(()) => return self.revoked(&job).await,
                Err(e) => e,
            };
            let (audited, detail) = self.failed(&job, &e);
            attempt += 1;
            if self.is_shutting_down() && attempt >= SHUTDOWN_ATTEMPTS {
                tracing::error!(lease = %job.lease_id, path = %job.origin.path, error = %detail, "revocation failed; it stays in the journal for the next start");
                self.pending.lock().remove(&job.lease_id);
                return;
            }
            let failing_for = (self.clock.now() - started).to_std().unwrap_or_default();
            let wait = if failing_for >= self.irrevocable_after {
                if slow == SLOW_RETRIES {
                    return self.abandon(&job, &audited, &detail, attempt);
                }
                slow += 1;
                self.mark_irrevocable(&job, &audited, &detail);
                SLOW_RETRY
            } else {
                tracing::warn!(lease = %job.lease_id, path = %job.origin.path, error = %detail, attempt, "revocation failed; retrying");
                // The last try before giving the verdict falls on the deadline itself.
                backoff(attempt - 1).min(self.irrevocable_after - failing_for)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = wake.notified() => {}
            }
        }
    }

    /// A revocation that succeeded: journaled, audited, counted, no longer pending (or, for one
    /// the issuer undoes later, kept in the journal until its second call).
    async fn revoked(self: &Arc<Self>, job: &Job) {
        // The second call of a revocation undone later: no new revocation to count.
        let lifted = self.lifting.lock().remove(&job.lease_id);
        if !lifted && let Some(at) = self.again_at(job) {
            self.revoked_until(job.clone(), at);
            return;
        }
        if !lifted {
            self.metrics.revoked(job.origin.issuer.as_str());
        }
        let done =
            Record::new(Op::Revoked, &job.lease_id, &job.origin, &job.revocation, job.expires_at, self.clock.now());
        if job.journaled
            && let Err(e) = self.journal(done).await
        {
            tracing::warn!(lease = %job.lease_id, error = %e, "revoked, but the journal could not say so; the next start revokes it again");
        }
        if !lifted {
            self.event(EventKind::Revoke, job, Outcome::Revoked, None);
        }
        let was = self.pending.lock().remove(&job.lease_id);
        if lifted {
            tracing::info!(lease = %job.lease_id, path = %job.origin.path, "the credential has expired; its revocation at the issuer is lifted");
        } else if was.is_some_and(|p| p.stage != Stage::Retrying) {
            tracing::warn!(lease = %job.lease_id, path = %job.origin.path, "an irrevocable lease was revoked after all");
        } else {
            tracing::info!(lease = %job.lease_id, path = %job.origin.path, "revoked");
        }
    }

    /// When the issuer wants `revoke` called again for this job, if that is still to come.
    fn again_at(&self, job: &Job) -> Option<DateTime<Utc>> {
        let at = self.issuers.get(job.origin.issuer)?.revoke_again_at(&job.revocation)?;
        (at > self.clock.now()).then_some(at)
    }

    /// Revoked now (counted, audited, no longer pending), but kept in the journal until the
    /// issuer's second call at `at` succeeds; after shutdown, the next start makes that call.
    fn revoked_until(self: &Arc<Self>, job: Job, at: DateTime<Utc>) {
        self.metrics.revoked(job.origin.issuer.as_str());
        self.event(EventKind::Revoke, &job, Outcome::Revoked, None);
        self.pending.lock().remove(&job.lease_id);
        tracing::info!(lease = %job.lease_id, path = %job.origin.path, until = %at, "revoked at the issuer until the credential's own expiry");
        self.lifting.lock().insert(job.lease_id.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let wait = (at - me.clock.now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            if !me.is_shutting_down() {
                me.spawn(job);
            }
        });
    }

    /// A failed attempt, counted and audited: what the audit log says, and what the daemon log
    /// says (also what the audit log must not hold: a script's stderr).
    fn failed(&self, job: &Job, e: &LeaseError) -> (String, String) {
        self.metrics.revoke_failed(job.origin.issuer.as_str());
        let audited = e.to_string();
        self.event(EventKind::Error, job, Outcome::RevokeFailed, Some(&audited));
        let detail = match e.log_detail() {
            Some(d) => format!("{audited}; {d}"),
            None => audited.clone(),
        };
        (audited, detail)
    }

    fn mark_irrevocable(&self, job: &Job, audited: &str, detail: &str) {
        if !self.set_stage(job, Stage::Irrevocable, LeaseState::Irrevocable) {
            return;
        }
        self.metrics.irrevocable(job.origin.issuer.as_str());
        self.event(EventKind::Irrevocable, job, Outcome::Irrevocable, Some(audited));
        tracing::error!(lease = %job.lease_id, path = %job.origin.path, issuer = %job.origin.issuer, error = %detail,
            after = ?self.irrevocable_after, "lease is irrevocable: its issuer keeps refusing revocation; retrying every 5 minutes for an hour");
    }

    /// Stops the automatic attempts of an irrevocable lease: it stays listed (`"state":
    /// "abandoned"`) and in the journal, for `leasefs revoke` and the next start.
    fn abandon(&self, job: &Job, audited: &str, detail: &str, attempts: u32) {
        if !self.set_stage(job, Stage::Abandoned, LeaseState::Abandoned) {
            return;
        }
        self.metrics.revoke_abandoned(job.origin.issuer.as_str());
        self.event(EventKind::Irrevocable, job, Outcome::RevokeAbandoned, Some(audited));
        tracing::error!(lease = %job.lease_id, path = %job.origin.path, issuer = %job.origin.issuer, error = %detail, attempts,
            "revocation abandoned: no more automatic attempts in this run; `leasefs revoke` tries again, and so does the next start (the journal keeps it)");
    }

    /// Moves a pending revocation to `stage`; false if it is there already (or gone).
    fn set_stage(&self, job: &Job, stage: Stage, state: LeaseState) -> bool {
        let mut g = self.pending.lock();
        let Some(p) = g.get_mut(&job.lease_id) else { return false };
        if p.stage == stage {
            return false;
        }
        p.stage = stage;
        p.job.info.state = state;
        true
    }

    /// `leasefs revoke` of an irrevocable lease: one still retried every 5 minutes is tried now;
    /// an abandoned one gets one more attempt. False if no revocation of that id is pending or it
    /// is not irrevocable (one under way with backoff is left to it).
    pub fn retry(self: &Arc<Self>, lease_id: &str) -> bool {
        let mut g = self.pending.lock();
        let Some(p) = g.get_mut(lease_id) else { return false };
        match p.stage {
            Stage::Retrying => return false,
            Stage::Irrevocable => {
                p.wake.notify_one();
                return true;
            }
            // Tried by hand now: a second `leasefs revoke` meanwhile finds it irrevocable and
            // starts no second attempt (a lease is revoked exactly once).
            Stage::Abandoned => p.stage = Stage::Irrevocable,
        }
        let job = p.job.clone();
        drop(g);
        tracing::info!(lease = %job.lease_id, path = %job.origin.path, "revocation asked for again: one more attempt");
        let me = self.clone();
        tokio::spawn(async move {
            match me.revoke_once(&job).await {
                Ok(()) => me.revoked(&job).await,
                Err(e) => {
                    let (_, detail) = me.failed(&job, &e);
                    me.set_stage(&job, Stage::Abandoned, LeaseState::Abandoned);
                    tracing::error!(lease = %job.lease_id, path = %job.origin.path, error = %detail, "revocation refused again; it stays abandoned");
                }
            }
        });
        true
    }

    /// Starts revoking what a previous run left in the journal; `resolve` finds a base secret
    /// (by source prefix and path) in the current catalog. The journal is data (SPEC §10.5): the
    /// lease id and revocation handle come from it, but the issuer, the base and the command that
    /// runs come from the current configuration only. A record naming a base the configuration
    /// does not have (or one whose issuer is not the base's) is reported, listed in `status.json`,
    /// kept in the journal, and never executed.
    pub fn recover(self: &Arc<Self>, pending: Vec<Record>, resolve: &Resolve<'_>) -> Vec<JoinHandle<()>> {
        if pending.is_empty() {
            return Vec::new();
        }
        tracing::warn!(count = pending.len(), "revoking leases left by a previous run");
        let mut handles = Vec::new();
        for r in pending {
            let origin = match origin_of(&r, resolve) {
                Ok(o) => Arc::new(o),
                Err(why) => {
                    tracing::error!(lease = %r.lease_id, path = %r.path, source = %r.source, base = %r.base, issuer = %r.issuer.as_str(), "cannot revoke an orphaned lease: {why}; nothing is run for it, and it stays in the journal");
                    let ev = Event::new(EventKind::Error, &r.path, Outcome::OrphanNotRevoked)
                        .lease_id(&r.lease_id)
                        .detail(why.as_str());
                    self.audit.record(&ev, None);
                    self.unresolved.lock().push(Unresolved {
                        lease_id: r.lease_id.clone(),
                        path: r.path.clone(),
                        source: r.source.clone(),
                        base: r.base.clone(),
                        reason: why,
                    });
                    continue;
                }
            };
            let ev = Event::new(EventKind::Revoke, &r.path, Outcome::Orphan).lease(&r.lease_id, origin.issuer);
            self.audit.record(&ev, None);
            let info = LeaseInfo::revoking(&r.lease_id, &origin, None, r.time, r.expires_at.unwrap_or(r.time));
            handles.push(self.spawn(Job {
                lease_id: r.lease_id.clone(),
                origin,
                revocation: r.revocation,
                expires_at: r.expires_at,
                info,
                journaled: true,
            }));
        }
        handles
    }

    /// Journal records recovery could not act on: their base is not in the configuration.
    pub fn unresolved(&self) -> Vec<Unresolved> {
        self.unresolved.lock().clone()
    }

    async fn revoke_once(&self, job: &Job) -> Result<(), LeaseError> {
        let issuer = self
            .issuers
            .get(job.origin.issuer)
            .ok_or_else(|| LeaseError::failed(format!("issuer kind {} is not available", job.origin.issuer)))?;
        let work = async {
            let base = self.bases.fields(&job.origin).await?;
            let login = job.origin.source.openbao_login();
            issuer
                .revoke(&RevokeRequest {
                    lease_id: &job.lease_id,
                    path: &job.origin.path,
                    secret_id: &job.origin.secret_id,
                    base: &base,
                    revocation: &job.revocation,
                    login: login.as_deref(),
                })
                .await
        };
        tokio::time::timeout(self.timeout, work).await.unwrap_or_else(|_| Err(LeaseError::timeout(self.timeout)))
    }
}
