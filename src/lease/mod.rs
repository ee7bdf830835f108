//! The lease manager: issue (or reuse) on open, enforce expiry, zeroize and revoke (retried with backoff) at expiry, journal every lease.

pub mod journal;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::audit::{Audit, Event};
use crate::config::{Defaults, Reuse, parse_duration};
use crate::issuer::{IssueError, IssueRequest, Issued, Issuer, Issuers, RevokeRequest};
use crate::metrics::Metrics;
use crate::render::{Format, render};
use crate::secret::{Requester, SecretFields, SecretKind, SecretMeta, SharedBytes};
use crate::source::Source;
use journal::{Journal, Op, Record};

/// Why an open of a dynamic secret failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseError {
    #[error("issuance timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// What the filesystem hands over to open a dynamic secret.
pub struct OpenRequest {
    pub secret: Arc<SecretMeta>,
    /// Path in the mount.
    pub path: String,
    pub base: Arc<SecretMeta>,
    pub source: Arc<dyn Source>,
    /// The prefix of that source (how the journal finds the base again after a restart).
    pub source_key: String,
    pub requester: Requester,
}

/// A live credential and its rendered bytes.
pub struct Lease {
    pub id: String,
    pub path: String,
    pub secret_id: String,
    pub issuer: String,
    pub requester: Requester,
    pub issued_at: DateTime<Utc>,
    /// Milliseconds since the epoch; moves later when a renewable lease is renewed.
    expires_ms: std::sync::atomic::AtomicI64,
    pub bytes: Arc<SharedBytes>,
    revocation: serde_json::Value,
    base: Arc<SecretMeta>,
    source: Arc<dyn Source>,
    source_key: String,
    handles: AtomicUsize,
    revoke_on_close: bool,
    /// Set once: the lease has ended (expiry, revoke, close or shutdown). Revocation runs once.
    ended: AtomicBool,
    timer: Mutex<Option<JoinHandle<()>>>,
}

impl Lease {
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.expires_ms.load(Ordering::SeqCst)).unwrap_or_default()
    }
    fn set_expiry(&self, t: DateTime<Utc>) {
        self.expires_ms.store(t.timestamp_millis(), Ordering::SeqCst);
    }
    pub fn remaining(&self) -> Duration {
        (self.expires_at() - Utc::now()).to_std().unwrap_or_default()
    }
    pub fn is_live(&self) -> bool {
        !self.ended.load(Ordering::SeqCst)
    }
}

/// A lease as `leases.json` shows it: metadata only.
#[derive(Serialize)]
pub struct LeaseInfo {
    pub id: String,
    pub path: String,
    pub secret_id: String,
    pub issuer: String,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub comm: String,
    pub issued_at: String,
    pub expires_at: String,
    pub remaining_seconds: u64,
    pub open_handles: usize,
}

pub struct LeaseManager {
    issuers: Issuers,
    journal: Option<Arc<Journal>>,
    leases: Mutex<HashMap<String, Arc<Lease>>>,
    pending: AtomicUsize,
    defaults: Defaults,
    audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    shutting_down: AtomicBool,
    /// Issuances under way: shutdown waits for them so that none escapes revocation.
    in_flight: AtomicUsize,
    /// Base secrets' data by (source, path), for `cache_ttl`.
    bases: Mutex<lru::LruCache<(String, String), CachedBase>>,
    expiry: Arc<Expiry>,
}

/// Leases that are not renewed wait for their expiry in one ordered queue, served by one task:
/// a task per lease would cost a runtime wake-up on every issuance.
#[derive(Default)]
struct Expiry {
    /// (expiry in ms since the epoch, lease id) → lease.
    queue: Mutex<BTreeMap<(i64, String), std::sync::Weak<Lease>>>,
    /// Told when a lease expires before every queued one.
    sooner: tokio::sync::Notify,
    started: AtomicBool,
}

/// A base secret's data and when it was read.
type CachedBase = (Instant, Arc<SecretFields>);

/// Counts an issuance as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A fresh lease id: 128 random bits, hex.
pub fn new_lease_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Backoff between revocation attempts: 1 s, 2 s, 4 s … at most 60 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60))
}

impl LeaseManager {
    pub fn new(
        issuers: Issuers,
        journal: Option<Arc<Journal>>,
        defaults: Defaults,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(LeaseManager {
            issuers,
            journal,
            leases: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(0),
            defaults,
            audit,
            metrics,
            shutting_down: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            bases: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(256).expect("non-zero"))),
            expiry: Arc::default(),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Lease>>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn live(&self) -> usize {
        self.table().len()
    }

    pub fn pending_revocations(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Lease>> {
        self.table().get(id).cloned()
    }

    pub fn list(&self) -> Vec<LeaseInfo> {
        let mut v: Vec<LeaseInfo> = self
            .table()
            .values()
            .map(|l| LeaseInfo {
                id: l.id.clone(),
                path: l.path.clone(),
                secret_id: l.secret_id.clone(),
                issuer: l.issuer.clone(),
                uid: l.requester.uid,
                gid: l.requester.gid,
                pid: l.requester.pid,
                comm: l.requester.comm.clone(),
                issued_at: rfc3339(l.issued_at),
                expires_at: rfc3339(l.expires_at()),
                remaining_seconds: l.remaining().as_secs(),
                open_handles: l.handles.load(Ordering::SeqCst),
            })
            .collect();
        v.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then(a.id.cmp(&b.id)));
        v
    }

    fn attr_duration(meta: &SecretMeta, key: &str) -> Option<Duration> {
        meta.attr_str(key).and_then(|s| parse_duration(s).ok())
    }

    fn attr_bool(meta: &SecretMeta, key: &str) -> Option<bool> {
        meta.attributes.get(key).and_then(|v| v.as_bool())
    }

    #[allow(clippy::too_many_arguments)] // the fields of one audit event
    fn audit(
        &self,
        event: &str,
        lease: Option<&str>,
        path: &str,
        issuer: &str,
        outcome: &str,
        detail: Option<&str>,
        who: Option<&Requester>,
    ) {
        self.audit.record(&Event { event, path, lease_id: lease, issuer: Some(issuer), outcome, detail }, who);
    }

    /// Opens a dynamic secret: reuses a live lease where the policy allows, else issues a new one.
    pub async fn open(self: &Arc<Self>, req: OpenRequest) -> Result<Arc<Lease>, LeaseError> {
        let d = &self.defaults;
        let SecretKind::Base { issuer: kind, .. } = &req.base.kind else {
            return Err(LeaseError::Failed(format!(
                "{} links to {}, which is not a base secret",
                req.path,
                req.base.path()
            )));
        };
        let issuer = self
            .issuers
            .get(kind)
            .ok_or_else(|| LeaseError::Failed(format!("issuer kind {kind:?} is not available")))?;

        let reuse = req.secret.attr_str("reuse").and_then(Reuse::parse).unwrap_or(d.reuse);
        if reuse != Reuse::None {
            let min_remaining = Self::attr_duration(&req.secret, "min_remaining").unwrap_or(d.min_remaining.0);
            let found = self
                .table()
                .values()
                .filter(|l| l.path == req.path && l.is_live() && l.remaining() >= min_remaining)
                .filter(|l| match reuse {
                    Reuse::Uid => l.requester.uid == req.requester.uid,
                    Reuse::Pid => l.requester.pid == req.requester.pid,
                    Reuse::None => false,
                })
                .max_by_key(|l| l.expires_at())
                .cloned();
            if let Some(l) = found {
                l.handles.fetch_add(1, Ordering::SeqCst);
                self.metrics.reused(kind);
                self.audit("reuse", Some(&l.id), &req.path, kind, "ok", None, Some(&req.requester));
                return Ok(l);
            }
        }

        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight(&self.in_flight);
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(LeaseError::Failed("leasefs is shutting down".into()));
        }
        let max_ttl = Self::attr_duration(&req.secret, "max_ttl").unwrap_or(d.max_ttl.0).min(d.max_ttl.0);
        let ttl = Self::attr_duration(&req.secret, "ttl").unwrap_or(d.ttl.0).min(max_ttl);
        let lease_id = new_lease_id();
        let started = Instant::now();
        let result =
            tokio::time::timeout(d.issue_timeout.0, self.issue(&*issuer, &req, kind, &lease_id, ttl, max_ttl)).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(LeaseError::Timeout(d.issue_timeout.0)),
        };
        match result {
            Ok(lease) => {
                self.metrics.issued(kind, started.elapsed());
                self.audit("issue", Some(&lease.id), &req.path, kind, "ok", None, Some(&req.requester));
                tracing::info!(lease = %lease.id, path = %req.path, issuer = %kind, expires_at = %rfc3339(lease.expires_at()), uid = req.requester.uid, "issued");
                Ok(lease)
            }
            Err(e) => {
                let reason = if matches!(e, LeaseError::Timeout(_)) { "timeout" } else { "error" };
                self.metrics.failed(kind, reason);
                let detail = e.to_string();
                self.audit("error", Some(&lease_id), &req.path, kind, reason, Some(&detail), Some(&req.requester));
                tracing::warn!(lease = %lease_id, path = %req.path, issuer = %kind, error = %detail, "issuance failed");
                Err(e)
            }
        }
    }

    /// A base secret's data, cached for `cache_ttl` like static payloads (zeroized on eviction).
    async fn base_fields(&self, req: &OpenRequest) -> Result<Arc<SecretFields>, LeaseError> {
        let key = (req.source_key.clone(), req.base.path().to_string());
        let ttl = self.defaults.cache_ttl.0;
        if let Some((at, f)) = self.bases.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if at.elapsed() < ttl {
                return Ok(f.clone());
            }
        }
        let f = Arc::new(
            req.source
                .read(&req.base)
                .await
                .map_err(|e| LeaseError::Failed(format!("cannot read the base secret {}: {e}", req.base.path())))?,
        );
        self.bases.lock().unwrap_or_else(|e| e.into_inner()).put(key, (Instant::now(), f.clone()));
        Ok(f)
    }

    fn record(
        &self,
        op: Op,
        lease_id: &str,
        req: &OpenRequest,
        kind: &str,
        revocation: &serde_json::Value,
        expires_at: Option<DateTime<Utc>>,
    ) -> Record {
        Record {
            op,
            lease_id: lease_id.into(),
            path: req.path.clone(),
            secret_id: req.secret.id().into_owned(),
            issuer: kind.into(),
            source: req.source_key.clone(),
            base: req.base.path().to_string(),
            revocation: revocation.clone(),
            expires_at,
            time: Utc::now(),
        }
    }

    async fn journal(&self, r: Record) -> Result<(), LeaseError> {
        if !self.issuers.get(&r.issuer).is_some_and(|i| i.can_revoke()) {
            return Ok(());
        }
        match &self.journal {
            None => Ok(()),
            Some(j) => {
                j.append(r).await.map_err(|e| LeaseError::Failed(format!("cannot write the lease journal: {e}")))
            }
        }
    }

    async fn issue(
        self: &Arc<Self>,
        issuer: &dyn Issuer,
        req: &OpenRequest,
        kind: &str,
        lease_id: &str,
        ttl: Duration,
        max_ttl: Duration,
    ) -> Result<Arc<Lease>, LeaseError> {
        let base = self.base_fields(req).await?;
        let mut ireq = IssueRequest {
            lease_id,
            secret: &req.secret,
            path: &req.path,
            base: &base,
            requester: &req.requester,
            ttl,
            intent: None,
        };
        let intent = issuer.prepare(&ireq);
        if let Some(i) = &intent {
            self.journal(self.record(Op::Intent, lease_id, req, kind, i, None)).await?;
        }
        ireq.intent = intent.as_ref();
        // If this future is dropped (timeout), the intent stays journaled and is revoked at next start;
        // a failure below revokes it now.
        let issued: Issued = match issuer.issue(&ireq).await {
            Ok(i) => i,
            Err(e) => {
                if let Some(i) = intent {
                    self.spawn_revoke(
                        self.record(Op::Intent, lease_id, req, kind, &i, None),
                        req.base.clone(),
                        req.source.clone(),
                    );
                }
                return Err(match e {
                    IssueError::Timeout(d) => LeaseError::Timeout(d),
                    IssueError::Failed(m) => LeaseError::Failed(m),
                });
            }
        };
        let now = Utc::now();
        let cap = now + chrono::Duration::from_std(max_ttl).unwrap_or(chrono::Duration::hours(1));
        let expires_at = match issued.expires_at {
            None => now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(15)),
            Some(t) if t <= now => {
                self.spawn_revoke(
                    self.record(Op::Issued, lease_id, req, kind, &issued.revocation, Some(t)),
                    req.base.clone(),
                    req.source.clone(),
                );
                return Err(LeaseError::Failed(format!(
                    "the issuer returned a credential that expired at {}",
                    rfc3339(t)
                )));
            }
            Some(t) => t.min(cap),
        };
        let rendered = {
            let format = match req.secret.attr_str("format") {
                Some(f) => Format::parse(f).map_err(LeaseError::Failed),
                None => Ok(Format::Json),
            };
            format.and_then(|f| render(&issued.fields, &f, Some(expires_at)).map_err(LeaseError::Failed))
        };
        let record = self.record(Op::Issued, lease_id, req, kind, &issued.revocation, Some(expires_at));
        let rendered = match rendered {
            Ok(r) => r,
            Err(e) => {
                self.spawn_revoke(record, req.base.clone(), req.source.clone());
                return Err(e);
            }
        };
        // Durable before the contents are returned.
        if let Err(e) = self.journal(record.clone()).await {
            self.spawn_revoke(record, req.base.clone(), req.source.clone());
            return Err(e);
        }
        drop(issued);
        let lease = Arc::new(Lease {
            id: lease_id.to_string(),
            path: req.path.clone(),
            secret_id: req.secret.id().into_owned(),
            issuer: kind.to_string(),
            requester: req.requester.clone(),
            issued_at: now,
            expires_ms: std::sync::atomic::AtomicI64::new(expires_at.timestamp_millis()),
            bytes: Arc::new(SharedBytes::new(rendered)),
            revocation: record.revocation,
            base: req.base.clone(),
            source: req.source.clone(),
            source_key: req.source_key.clone(),
            handles: AtomicUsize::new(1),
            revoke_on_close: Self::attr_bool(&req.secret, "revoke_on_close").unwrap_or(self.defaults.revoke_on_close),
            ended: AtomicBool::new(false),
            timer: Mutex::new(None),
        });
        self.table().insert(lease.id.clone(), lease.clone());
        if Self::attr_bool(&req.secret, "renew_while_open").unwrap_or(false) {
            let cap = now + chrono::Duration::from_std(max_ttl).unwrap_or(chrono::Duration::hours(1));
            let period = (expires_at - now).to_std().unwrap_or_default();
            let timer = tokio::spawn(Self::watch(Arc::downgrade(self), Arc::downgrade(&lease), cap, period));
            *lease.timer.lock().unwrap_or_else(|e| e.into_inner()) = Some(timer);
        } else {
            self.schedule(&lease);
        }
        Ok(lease)
    }

    fn expiry_key(lease: &Lease) -> (i64, String) {
        (lease.expires_ms.load(Ordering::SeqCst), lease.id.clone())
    }

    /// Queues a lease that is not renewed for its expiry.
    fn schedule(self: &Arc<Self>, lease: &Arc<Lease>) {
        let key = Self::expiry_key(lease);
        let first = {
            let mut q = self.expiry.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.insert(key.clone(), Arc::downgrade(lease));
            q.first_key_value().is_some_and(|(k, _)| *k == key)
        };
        if !self.expiry.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(Self::expire_queued(Arc::downgrade(self), self.expiry.clone()));
        } else if first {
            self.expiry.sooner.notify_one();
        }
    }

    /// Ends queued leases as they expire: sleeps until the earliest, or until a sooner one arrives.
    async fn expire_queued(me: std::sync::Weak<Self>, ex: Arc<Expiry>) {
        loop {
            let now = Utc::now().timestamp_millis();
            let (due, next) = {
                let mut q = ex.queue.lock().unwrap_or_else(|e| e.into_inner());
                let mut due = Vec::new();
                while let Some(e) = q.first_entry() {
                    if e.key().0 > now {
                        break;
                    }
                    due.push(e.remove());
                }
                (due, q.first_key_value().map(|(k, _)| k.0))
            };
            let Some(m) = me.upgrade() else { return };
            for l in due.iter().filter_map(std::sync::Weak::upgrade) {
                m.metrics.expired();
                m.end(&l, "expire");
            }
            drop(m);
            match next {
                Some(t) => {
                    let wait = Duration::from_millis(u64::try_from(t - now).unwrap_or(0));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = ex.sooner.notified() => {}
                    }
                }
                None => ex.sooner.notified().await,
            }
        }
    }

    /// Watches a `renew_while_open` lease: renews it at 2/3 of the remaining time while a handle
    /// is open, each time by the lease's own `period`, never past `cap` (issued_at + max_ttl);
    /// then sleeps until its expiry and ends it.
    async fn watch(me: std::sync::Weak<Self>, lease: std::sync::Weak<Lease>, cap: DateTime<Utc>, period: Duration) {
        loop {
            let Some(l) = lease.upgrade() else { return };
            let exp = l.expires_at();
            let now = Utc::now();
            drop(l);
            if exp < cap && exp > now {
                let wait = ((exp - now) * 2 / 3).to_std().unwrap_or_default();
                tokio::time::sleep(wait).await;
                let (Some(m), Some(l)) = (me.upgrade(), lease.upgrade()) else { return };
                if !l.is_live() {
                    return;
                }
                if l.handles.load(Ordering::SeqCst) > 0 {
                    match m.renew_once(&l, cap, period).await {
                        Ok(Some(new)) if new > exp => {
                            l.set_expiry(new.min(cap));
                            m.audit("renew", Some(&l.id), &l.path, &l.issuer, "ok", None, None);
                            tracing::info!(lease = %l.id, path = %l.path, expires_at = %rfc3339(l.expires_at()), "renewed");
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(lease = %l.id, path = %l.path, error = %e, "renewal failed; the lease ends at its expiry")
                        }
                    }
                }
                let left = (l.expires_at() - Utc::now()).to_std().unwrap_or_default();
                drop(l);
                tokio::time::sleep(left).await;
            } else {
                tokio::time::sleep((exp - now).to_std().unwrap_or_default()).await;
            }
            if let (Some(m), Some(l)) = (me.upgrade(), lease.upgrade()) {
                if l.expires_at() > Utc::now() + chrono::Duration::milliseconds(50) {
                    continue;
                }
                m.metrics.expired();
                m.end(&l, "expire");
            }
            return;
        }
    }

    async fn renew_once(
        &self,
        lease: &Lease,
        cap: DateTime<Utc>,
        period: Duration,
    ) -> Result<Option<DateTime<Utc>>, LeaseError> {
        let issuer = self.issuers.get(&lease.issuer).ok_or_else(|| LeaseError::Failed("issuer gone".into()))?;
        let increment = (cap - Utc::now()).to_std().unwrap_or_default().min(period).max(Duration::from_secs(1));
        let work = async {
            let base = lease.source.read(&lease.base).await.map_err(|e| LeaseError::Failed(e.to_string()))?;
            let req = RevokeRequest {
                lease_id: &lease.id,
                path: &lease.path,
                secret_id: &lease.secret_id,
                base: &base,
                revocation: &lease.revocation,
            };
            issuer.renew(&req, increment).await.map_err(|e| LeaseError::Failed(e.to_string()))
        };
        tokio::time::timeout(self.defaults.issue_timeout.0, work)
            .await
            .unwrap_or(Err(LeaseError::Timeout(self.defaults.issue_timeout.0)))
    }

    /// A handle on the lease was closed.
    pub fn closed(self: &Arc<Self>, lease: &Arc<Lease>) {
        let left = lease.handles.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        if left == 0 && lease.revoke_on_close && lease.is_live() {
            self.end(lease, "close");
        }
    }

    /// Ends a lease once: zeroizes its bytes (open handles then read EKEYEXPIRED), removes it from
    /// the table, and revokes it at its issuer in the background (retried with backoff).
    pub fn end(self: &Arc<Self>, lease: &Arc<Lease>, why: &'static str) -> Option<JoinHandle<()>> {
        if lease.ended.swap(true, Ordering::SeqCst) {
            return None;
        }
        lease.bytes.expire();
        self.table().remove(&lease.id);
        if why != "expire" {
            if let Some(t) = lease.timer.lock().unwrap_or_else(|e| e.into_inner()).take() {
                t.abort();
            }
            self.expiry.queue.lock().unwrap_or_else(|e| e.into_inner()).remove(&Self::expiry_key(lease));
        }
        self.audit(
            if why == "expire" { "expire" } else { "revoke" },
            Some(&lease.id),
            &lease.path,
            &lease.issuer,
            why,
            None,
            None,
        );
        tracing::info!(lease = %lease.id, path = %lease.path, reason = why, "lease ended; revoking");
        let record = Record {
            op: Op::Issued,
            lease_id: lease.id.clone(),
            path: lease.path.clone(),
            secret_id: lease.secret_id.clone(),
            issuer: lease.issuer.clone(),
            source: lease.source_key.clone(),
            base: lease.base.path().to_string(),
            revocation: lease.revocation.clone(),
            expires_at: Some(lease.expires_at()),
            time: Utc::now(),
        };
        Some(self.spawn_revoke(record, lease.base.clone(), lease.source.clone()))
    }

    /// Revokes at the issuer until it succeeds (or, during shutdown, after 3 attempts;
    /// what is left stays in the journal and is revoked at the next start).
    fn spawn_revoke(
        self: &Arc<Self>,
        record: Record,
        base: Arc<SecretMeta>,
        source: Arc<dyn Source>,
    ) -> JoinHandle<()> {
        let me = self.clone();
        me.pending.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut attempt = 0u32;
            loop {
                match me.revoke_once(&record, &base, &*source).await {
                    Ok(()) => {
                        me.metrics.revoked(&record.issuer);
                        let _ = me.journal(Record { op: Op::Revoked, time: Utc::now(), ..record.clone() }).await;
                        me.audit("revoke", Some(&record.lease_id), &record.path, &record.issuer, "revoked", None, None);
                        tracing::info!(lease = %record.lease_id, path = %record.path, "revoked");
                        break;
                    }
                    Err(e) => {
                        me.metrics.revoke_failed(&record.issuer);
                        let detail = e.to_string();
                        me.audit(
                            "error",
                            Some(&record.lease_id),
                            &record.path,
                            &record.issuer,
                            "revoke failed",
                            Some(&detail),
                            None,
                        );
                        attempt += 1;
                        if me.shutting_down.load(Ordering::SeqCst) && attempt >= 3 {
                            tracing::error!(lease = %record.lease_id, path = %record.path, error = %detail, "revocation failed; it stays in the journal for the next start");
                            break;
                        }
                        tracing::warn!(lease = %record.lease_id, path = %record.path, error = %detail, attempt, "revocation failed; retrying");
                        tokio::time::sleep(backoff(attempt - 1)).await;
                    }
                }
            }
            me.pending.fetch_sub(1, Ordering::SeqCst);
        })
    }

    async fn revoke_once(&self, record: &Record, base: &SecretMeta, source: &dyn Source) -> Result<(), LeaseError> {
        let issuer = self
            .issuers
            .get(&record.issuer)
            .ok_or_else(|| LeaseError::Failed(format!("issuer kind {:?} is not available", record.issuer)))?;
        let timeout = self.defaults.issue_timeout.0;
        let work = async {
            let base_data: SecretFields =
                source.read(base).await.map_err(|e| LeaseError::Failed(format!("cannot read the base secret: {e}")))?;
            issuer
                .revoke(&RevokeRequest {
                    lease_id: &record.lease_id,
                    path: &record.path,
                    secret_id: &record.secret_id,
                    base: &base_data,
                    revocation: &record.revocation,
                })
                .await
                .map_err(|e| LeaseError::Failed(e.to_string()))
        };
        tokio::time::timeout(timeout, work).await.unwrap_or(Err(LeaseError::Timeout(timeout)))
    }

    /// Revokes one lease by id (`/.leasefs/revoke`, `leasefs revoke`).
    pub fn revoke(self: &Arc<Self>, id: &str) -> bool {
        match self.get(id) {
            Some(l) => {
                self.end(&l, "revoke");
                true
            }
            None => false,
        }
    }

    /// Revokes every live lease; returns how many.
    pub fn revoke_all(self: &Arc<Self>, why: &'static str) -> Vec<JoinHandle<()>> {
        let all: Vec<Arc<Lease>> = self.table().values().cloned().collect();
        all.iter().filter_map(|l| self.end(l, why)).collect()
    }

    /// At shutdown: revoke every live lease and wait (bounded) for the revocations.
    pub async fn shutdown(self: &Arc<Self>, revoke: bool) {
        self.shutting_down.store(true, Ordering::SeqCst);
        if !revoke {
            return;
        }
        // Let issuances under way finish (each is bounded by issue_timeout), so that their leases
        // are in the table when it is revoked.
        let deadline = tokio::time::Instant::now() + self.defaults.issue_timeout.0 + Duration::from_secs(1);
        while self.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let handles = self.revoke_all("shutdown");
        let n = handles.len();
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

    /// At start: revokes what a previous run left in the journal. `resolve` finds a base secret
    /// (by source prefix and path) in the current catalog. Waits for the first attempt of each;
    /// failures keep retrying in the background.
    pub async fn recover(
        self: &Arc<Self>,
        pending: Vec<Record>,
        resolve: impl Fn(&str, &str) -> Option<(Arc<SecretMeta>, Arc<dyn Source>)>,
    ) {
        if pending.is_empty() {
            return;
        }
        tracing::warn!(count = pending.len(), "revoking leases left by a previous run");
        let mut handles = Vec::new();
        for r in pending {
            match resolve(&r.source, &r.base) {
                Some((base, source)) => {
                    self.audit("revoke", Some(&r.lease_id), &r.path, &r.issuer, "orphan", None, None);
                    let h = self.spawn_revoke(r, base, source);
                    handles.push(h);
                }
                None => {
                    tracing::error!(lease = %r.lease_id, path = %r.path, base = %r.base, "cannot revoke an orphaned lease: its base secret is gone; it stays in the journal");
                }
            }
        }
        let limit = self.defaults.issue_timeout.0 + Duration::from_secs(2);
        let _ = tokio::time::timeout(limit, async {
            for h in handles.iter_mut() {
                let _ = h.await;
            }
        })
        .await;
    }
}
