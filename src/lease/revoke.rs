//! The engine that talks to issuers (issuance is in `issue.rs`), and revocation: each ended lease
//! is revoked at its issuer exactly once, retried with jittered backoff; one refused for longer
//! than `irrevocable_after` is marked irrevocable (shown, counted, logged at error, kept in the
//! journal) and still retried, slowly.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinHandle;

use super::bases::Bases;
use super::journal::{Journal, Op, Record};
use super::table::{LeaseInfo, LeaseState, Origin};
use crate::audit::{Audit, Event, EventKind};
use crate::clock::Clock;
use crate::error::LeaseError;
use crate::issuer::{Issuers, RevokeRequest};
use crate::metrics::Metrics;
use crate::policy::IssuerKind;
use crate::secret::{SecretKind, SecretMeta};
use crate::source::Source;

/// One credential to revoke.
pub struct Job {
    pub lease_id: String,
    pub origin: Arc<Origin>,
    pub revocation: serde_json::Value,
    pub expires_at: Option<DateTime<Utc>>,
    /// What `leases.json` shows while it waits (metadata only).
    pub info: LeaseInfo,
}

struct Pending {
    info: LeaseInfo,
    irrevocable: bool,
}

/// Issuers, the base-secret cache and the journal, with the revocations under way.
pub struct Engine {
    pub issuers: Issuers,
    pub bases: Arc<Bases>,
    pub journal: Option<Arc<Journal>>,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub timeout: Duration,
    pub irrevocable_after: Duration,
    pub shutting_down: AtomicBool,
    pending: Mutex<HashMap<String, Pending>>,
    /// Revocations of issuances that did not finish: shutdown waits for them.
    undone: Mutex<Vec<JoinHandle<()>>>,
    /// Journal records recovery could not act on (reported, never executed).
    unresolved: Mutex<Vec<Unresolved>>,
    /// Leases revoked at their issuer whose revocation is undone later (see `revoke_again_at`).
    lifting: Mutex<HashSet<String>>,
}

/// Backoff before attempt `attempt + 1`: 1 s, 2 s, 4 s … at most 60 s, each ±25 % so that a fleet
/// that lost its issuer at once does not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60));
    let mut r = [0u8; 2];
    getrandom::fill(&mut r).expect("the OS random source");
    let unit = f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX); // 0..=1
    base.mul_f64(0.75 + unit / 2.0)
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
    if IssuerKind::parse(&r.issuer) != Some(issuer) {
        return Err(format!("the journal says issuer {:?}, the configured base is {}", r.issuer, issuer.as_str()));
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

    /// Leases whose revocation has been refused for longer than `irrevocable_after`.
    pub fn irrevocable(&self) -> Vec<LeaseInfo> {
        let mut v: Vec<LeaseInfo> =
            self.pending.lock().values().filter(|p| p.irrevocable).map(|p| p.info.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Whether leases of this issuer are journaled (issuers that cannot revoke have nothing to
    /// do after a crash).
    pub fn journals(&self, r: &Record) -> bool {
        self.journal.is_some()
            && crate::policy::IssuerKind::parse(&r.issuer)
                .and_then(|k| self.issuers.get(k))
                .is_some_and(|i| i.can_revoke())
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

    fn event(&self, kind: EventKind, job: &Job, outcome: &str, detail: Option<&str>) {
        self.audit.record(
            &Event {
                event: kind,
                path: &job.origin.path,
                lease_id: Some(&job.lease_id),
                issuer: Some(job.origin.issuer.as_str()),
                outcome,
                detail,
                count: None,
            },
            None,
        );
    }

    /// Revokes in the background until it succeeds (during shutdown: after a few attempts,
    /// leaving the rest to the journal and the next start).
    pub fn spawn(self: &Arc<Self>, job: Job) -> JoinHandle<()> {
        let me = self.clone();
        me.pending.lock().insert(job.lease_id.clone(), Pending { info: job.info.clone(), irrevocable: false });
        tokio::spawn(async move {
            let started = me.clock.now();
            let mut attempt = 0u32;
            loop {
                match me.revoke_once(&job).await {
                    Ok(()) => {
                        // The second call of a revocation undone later: no new revocation to count.
                        let lifted = me.lifting.lock().remove(&job.lease_id);
                        if !lifted && let Some(at) = me.again_at(&job) {
                            me.revoked_until(job, at);
                            return;
                        }
                        if !lifted {
                            me.metrics.revoked(job.origin.issuer.as_str());
                        }
                        let done = Record::new(
                            Op::Revoked,
                            &job.lease_id,
                            &job.origin,
                            &job.revocation,
                            job.expires_at,
                            me.clock.now(),
                        );
                        if let Err(e) = me.journal(done).await {
                            tracing::warn!(lease = %job.lease_id, error = %e, "revoked, but the journal could not say so; the next start revokes it again");
                        }
                        if !lifted {
                            me.event(EventKind::Revoke, &job, "revoked", None);
                        }
                        let was = me.pending.lock().remove(&job.lease_id);
                        if lifted {
                            tracing::info!(lease = %job.lease_id, path = %job.origin.path, "the credential has expired; its revocation at the issuer is lifted");
                        } else if was.is_some_and(|p| p.irrevocable) {
                            tracing::warn!(lease = %job.lease_id, path = %job.origin.path, "an irrevocable lease was revoked after all");
                        } else {
                            tracing::info!(lease = %job.lease_id, path = %job.origin.path, "revoked");
                        }
                        return;
                    }
                    Err(e) => {
                        me.metrics.revoke_failed(job.origin.issuer.as_str());
                        let audited = e.to_string();
                        me.event(EventKind::Error, &job, "revoke failed", Some(&audited));
                        // The daemon log also gets what the audit log must not (a script's stderr).
                        let detail = match e.log_detail() {
                            Some(d) => format!("{audited}; {d}"),
                            None => audited.clone(),
                        };
                        attempt += 1;
                        if me.shutting_down.load(Ordering::SeqCst) && attempt >= SHUTDOWN_ATTEMPTS {
                            tracing::error!(lease = %job.lease_id, path = %job.origin.path, error = %detail, "revocation failed; it stays in the journal for the next start");
                            me.pending.lock().remove(&job.lease_id);
                            return;
                        }
                        let failing_for = (me.clock.now() - started).to_std().unwrap_or_default();
                        let wait = if failing_for >= me.irrevocable_after {
                            me.mark_irrevocable(&job, &audited, &detail);
                            SLOW_RETRY
                        } else {
                            tracing::warn!(lease = %job.lease_id, path = %job.origin.path, error = %detail, attempt, "revocation failed; retrying");
                            // The last try before giving the verdict falls on the deadline itself.
                            backoff(attempt - 1).min(me.irrevocable_after - failing_for)
                        };
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        })
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
        self.event(EventKind::Revoke, &job, "revoked", None);
        self.pending.lock().remove(&job.lease_id);
        tracing::info!(lease = %job.lease_id, path = %job.origin.path, until = %at, "revoked at the issuer until the credential's own expiry");
        self.lifting.lock().insert(job.lease_id.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let wait = (at - me.clock.now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            if !me.shutting_down.load(Ordering::SeqCst) {
                me.spawn(job);
            }
        });
    }

    fn mark_irrevocable(&self, job: &Job, audited: &str, detail: &str) {
        let mut g = self.pending.lock();
        let Some(p) = g.get_mut(&job.lease_id) else { return };
        if p.irrevocable {
            return;
        }
        p.irrevocable = true;
        p.info.state = LeaseState::Irrevocable;
        drop(g);
        self.metrics.irrevocable(job.origin.issuer.as_str());
        self.event(EventKind::Irrevocable, job, "irrevocable", Some(audited));
        tracing::error!(lease = %job.lease_id, path = %job.origin.path, issuer = %job.origin.issuer, error = %detail,
            after = ?self.irrevocable_after, "lease is irrevocable: its issuer keeps refusing revocation; retrying every 5 minutes and at the next start");
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
                    tracing::error!(lease = %r.lease_id, path = %r.path, source = %r.source, base = %r.base, issuer = %r.issuer, "cannot revoke an orphaned lease: {why}; nothing is run for it, and it stays in the journal");
                    self.audit.record(
                        &Event {
                            event: EventKind::Error,
                            path: &r.path,
                            lease_id: Some(&r.lease_id),
                            issuer: None,
                            outcome: "orphan not revoked",
                            detail: Some(&why),
                            count: None,
                        },
                        None,
                    );
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
            self.audit.record(
                &Event {
                    event: EventKind::Revoke,
                    path: &r.path,
                    lease_id: Some(&r.lease_id),
                    issuer: Some(origin.issuer.as_str()),
                    outcome: "orphan",
                    detail: None,
                    count: None,
                },
                None,
            );
            let info = LeaseInfo::revoking(&r.lease_id, &origin, None, r.time, r.expires_at.unwrap_or(r.time));
            handles.push(self.spawn(Job {
                lease_id: r.lease_id.clone(),
                origin,
                revocation: r.revocation,
                expires_at: r.expires_at,
                info,
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
            issuer
                .revoke(&RevokeRequest {
                    lease_id: &job.lease_id,
                    path: &job.origin.path,
                    secret_id: &job.origin.secret_id,
                    base: &base,
                    revocation: &job.revocation,
                })
                .await
        };
        tokio::time::timeout(self.timeout, work).await.unwrap_or_else(|_| Err(LeaseError::timeout(self.timeout)))
    }
}
