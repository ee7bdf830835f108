//! The lease manager with a test issuer on tokio's paused clock: reuse, expiry order, renewal at
//! 2/3, revoke exactly once, retries and irrevocable leases, shutdown — no real sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::*;
use crate::defaults::Dur;
use crate::error::ErrorKind;
use crate::fields::SecretFields;
use crate::issuer::{IssueRequest, Issued, Issuer, RevokeRequest};
use crate::secret::{Locator, SecretKind};
use crate::source::{Listing, SourceError};

#[derive(Default)]
struct TestIssuer {
    issued: AtomicUsize,
    revoked: Mutex<Vec<String>>,
    /// Revocation attempts to refuse before accepting.
    refuse: AtomicUsize,
    renewable: bool,
    renewals: AtomicUsize,
    clock: Mutex<Option<Clock>>,
    /// How long an issuance takes.
    delay: Duration,
    /// Journals an intent before issuing (like exec with a `revoke_command`).
    intent: bool,
    /// Bytes of padding in each credential.
    pad: usize,
}

#[async_trait]
impl Issuer for TestIssuer {
    fn prepare(&self, _req: &IssueRequest<'_>) -> Option<serde_json::Value> {
        self.intent.then(|| serde_json::json!({"test": "intent"}))
    }
    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, LeaseError> {
        tokio::time::sleep(self.delay).await;
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let mut fields = SecretFields::default();
        fields.insert("user", format!("u{n}{}", "x".repeat(self.pad)));
        Ok(Issued { fields, expires_at: None, revocation: serde_json::json!({"lease": req.lease_id}) })
    }
    async fn revoke(&self, req: &RevokeRequest<'_>) -> Result<(), LeaseError> {
        if self.refuse.load(Ordering::SeqCst) > 0 {
            self.refuse.fetch_sub(1, Ordering::SeqCst);
            return Err(LeaseError::unavailable("the issuer is down"));
        }
        self.revoked.lock().push(req.lease_id.to_string());
        Ok(())
    }
    async fn renew(&self, _req: &RevokeRequest<'_>, increment: Duration) -> Result<Option<DateTime<Utc>>, LeaseError> {
        if !self.renewable {
            return Ok(None);
        }
        self.renewals.fetch_add(1, Ordering::SeqCst);
        let now = self.clock.lock().as_ref().expect("clock set").now();
        Ok(Some(now + chrono::Duration::from_std(increment).unwrap()))
    }
}

struct NoSource;

#[async_trait]
impl Source for NoSource {
    fn describe(&self) -> String {
        "test".into()
    }
    async fn list(&self) -> Result<Listing, SourceError> {
        Ok(Listing::default())
    }
    async fn read(&self, _secret: &SecretMeta) -> Result<SecretFields, SourceError> {
        Ok(SecretFields::default())
    }
}

fn defaults() -> Defaults {
    Defaults {
        ttl: Dur::secs(30),
        max_ttl: Dur::secs(90),
        min_remaining: Dur::secs(10),
        irrevocable_after: Dur::secs(60),
        issue_timeout: Dur::secs(5),
        ..Defaults::default()
    }
}

fn manager(issuer: &Arc<TestIssuer>, d: Defaults) -> Arc<LeaseManager> {
    let clock = Clock::tokio();
    *issuer.clock.lock() = Some(clock.clone());
    let mut issuers = Issuers::default();
    issuers.insert(IssuerKind::Exec, issuer.clone());
    LeaseManager::new(issuers, None, d, Arc::new(Audit::disabled()), Arc::new(Metrics::default()), clock)
}

fn meta(path: &str, kind: SecretKind, attrs: serde_json::Value) -> Arc<SecretMeta> {
    let segs: Vec<String> = path.split('/').map(str::to_string).collect();
    let attrs = attrs.as_object().cloned().unwrap_or_default();
    let mut m =
        SecretMeta::new(None, &segs, kind, attrs.clone(), None, std::time::SystemTime::UNIX_EPOCH, Locator::None);
    m.extras_mut().policy = crate::policy::Policy::parse(&attrs).unwrap();
    Arc::new(m)
}

/// An open by process `pid` of `uid`; its start time is given as `pid` too (no /proc read).
fn request(path: &str, attrs: serde_json::Value, uid: u32, pid: u32) -> OpenRequest {
    request_at(path, attrs, uid, pid, u64::from(pid))
}

/// An open by the process `pid` of `uid` that started at `start` (0: read it from /proc).
fn request_at(path: &str, attrs: serde_json::Value, uid: u32, pid: u32, start: u64) -> OpenRequest {
    OpenRequest {
        secret: meta(path, SecretKind::Dynamic { link: "base".into() }, attrs),
        path: format!("/{path}"),
        base: meta("base", SecretKind::Base { issuer: IssuerKind::Exec, expose: false }, serde_json::json!({})),
        source: Arc::new(NoSource),
        source_key: "/".into(),
        requester: Requester { uid, gid: uid, pid, comm: "test".into(), sid: 0, start, workload: None },
    }
}

/// Lets spawned tasks (revocations, the deadline task) run to where they wait.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Moves the paused clock forward and lets what fell due run.
async fn advance(secs: u64) {
    for _ in 0..secs {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
    }
}

#[tokio::test(start_paused = true)]
async fn reuse_shares_a_lease_by_uid_or_pid_and_none_issues_every_time() {
    let i = Arc::new(TestIssuer::default());
    let m = manager(&i, defaults());
    let a = m.open(request("db/uid", serde_json::json!({"reuse": "uid"}), 1000, 1)).await.unwrap();
    let b = m.open(request("db/uid", serde_json::json!({"reuse": "uid"}), 1000, 2)).await.unwrap();
    let c = m.open(request("db/uid", serde_json::json!({"reuse": "uid"}), 1001, 3)).await.unwrap();
    assert_eq!(a.id, b.id, "same uid: one lease");
    assert_ne!(a.id, c.id, "another uid: its own lease");
    assert_eq!(a.open_handles(), 2);
    let p1 = m.open(request("db/pid", serde_json::json!({"reuse": "pid"}), 1000, 7)).await.unwrap();
    let p2 = m.open(request("db/pid", serde_json::json!({"reuse": "pid"}), 1000, 7)).await.unwrap();
    let p3 = m.open(request("db/pid", serde_json::json!({"reuse": "pid"}), 1000, 8)).await.unwrap();
    assert_eq!(p1.id, p2.id);
    assert_ne!(p1.id, p3.id);
    // A process is (uid, pid, start time): a later process at pid 7, or another uid's, is not it.
    let pid = serde_json::json!({"reuse": "pid"});
    let later = m.open(request_at("db/pid", pid.clone(), 1000, 7, 99)).await.unwrap();
    let foreign = m.open(request("db/pid", pid.clone(), 1001, 7)).await.unwrap();
    assert!(later.id != p1.id && foreign.id != p1.id && foreign.id != later.id);
    assert_eq!(m.open(request_at("db/pid", pid, 1000, 7, 99)).await.unwrap().id, later.id);
    let n1 = m.open(request("db/none", serde_json::json!({}), 1000, 7)).await.unwrap();
    let n2 = m.open(request("db/none", serde_json::json!({}), 1000, 7)).await.unwrap();
    assert_ne!(n1.id, n2.id);
    assert_eq!(i.issued.load(Ordering::SeqCst), 8);
    // A lease with less than min_remaining left is not handed out again.
    advance(25).await;
    let d = m.open(request("db/uid", serde_json::json!({"reuse": "uid"}), 1000, 9)).await.unwrap();
    assert_ne!(d.id, a.id, "5 s left is under the 10 s min_remaining");
}

#[tokio::test(start_paused = true)]
async fn leases_expire_in_deadline_order_and_are_revoked_exactly_once() {
    let i = Arc::new(TestIssuer::default());
    let m = manager(&i, defaults());
    let long = m.open(request("a", serde_json::json!({"ttl": "30s"}), 0, 1)).await.unwrap();
    let short = m.open(request("b", serde_json::json!({"ttl": "10s"}), 0, 1)).await.unwrap();
    let mid = m.open(request("c", serde_json::json!({"ttl": "20s"}), 0, 1)).await.unwrap();
    settle().await;
    advance(9).await;
    assert!(short.is_live() && short.file(0).unwrap().len().is_some());
    advance(2).await;
    assert!(!short.is_live(), "ended at its expiry");
    assert!(short.file(0).unwrap().len().is_none(), "its bytes are zeroized: reads now fail");
    assert!(mid.is_live() && long.is_live());
    advance(20).await;
    assert!(!mid.is_live() && !long.is_live());
    assert_eq!(*i.revoked.lock(), [short.id.clone(), mid.id.clone(), long.id.clone()]);
    // Ending again (a late revoke, a close) does nothing more.
    assert!(m.end(&short, EndReason::Revoke, None).is_none());
    assert!(!m.revoke(&short.id, None));
    settle().await;
    assert_eq!(i.revoked.lock().len(), 3);
    assert_eq!(m.live(), 0);
    assert_eq!(m.pending_revocations(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_renewable_lease_is_renewed_at_two_thirds_while_open_and_never_past_max_ttl() {
    let i = Arc::new(TestIssuer { renewable: true, ..TestIssuer::default() });
    let m = manager(&i, defaults());
    let open = m.open(request("r", serde_json::json!({"renew_while_open": true}), 0, 1)).await.unwrap();
    let first = open.expires_at();
    advance(19).await;
    assert_eq!(i.renewals.load(Ordering::SeqCst), 0, "not before 2/3 of 30 s");
    advance(2).await;
    assert_eq!(i.renewals.load(Ordering::SeqCst), 1, "renewed at 20 s");
    assert!(open.expires_at() > first, "the expiry moved later");
    // It keeps being renewed while the handle is open, but ends at issued_at + max_ttl (90 s).
    advance(68).await;
    assert!(open.is_live());
    advance(3).await;
    assert!(!open.is_live(), "capped at max_ttl");
    assert!(i.renewals.load(Ordering::SeqCst) >= 2);

    // Without an open handle, no renewal: it ends at its first expiry.
    let closed = m.open(request("r2", serde_json::json!({"renew_while_open": true}), 0, 1)).await.unwrap();
    m.closed(&closed);
    let before = i.renewals.load(Ordering::SeqCst);
    advance(31).await;
    assert!(!closed.is_live());
    assert_eq!(i.renewals.load(Ordering::SeqCst), before);
}

#[tokio::test(start_paused = true)]
async fn a_refused_revocation_is_retried_with_backoff_then_marked_irrevocable_then_done() {
    let i = Arc::new(TestIssuer { refuse: AtomicUsize::new(usize::MAX), ..TestIssuer::default() });
    let m = manager(&i, defaults());
    let l = m.open(request("x", serde_json::json!({"ttl": "10s"}), 0, 1)).await.unwrap();
    advance(11).await;
    assert!(!l.is_live());
    assert_eq!(m.pending_revocations(), 1);
    advance(8).await;
    assert!(m.irrevocable().is_empty(), "not yet: refused for less than irrevocable_after");
    let tries_early = usize::MAX - i.refuse.load(Ordering::SeqCst);
    assert!((3..=5).contains(&tries_early), "1 s, 2 s, 4 s … backoff: {tries_early} attempts in 9 s");
    advance(62).await;
    let irr = m.irrevocable();
    assert_eq!(irr.len(), 1, "refused for 60 s: irrevocable");
    assert_eq!(irr[0].state, LeaseState::Irrevocable);
    assert!(m.list().iter().any(|x| x.id == l.id && x.state == LeaseState::Irrevocable));
    let metrics = m.metrics.render(m.gauges(0));
    assert!(metrics.contains("leasefs_leases_irrevocable 1"), "{metrics}");
    // The issuer comes back: the slow retry revokes it, once.
    i.refuse.store(0, Ordering::SeqCst);
    advance(301).await;
    assert_eq!(*i.revoked.lock(), std::slice::from_ref(&l.id));
    assert!(m.irrevocable().is_empty());
    assert_eq!(m.pending_revocations(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_irrevocable_lease_is_abandoned_after_an_hour_of_slow_retries_and_retried_by_hand() {
    let i = Arc::new(TestIssuer { refuse: AtomicUsize::new(usize::MAX), ..TestIssuer::default() });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let clock = Clock::tokio();
    let mut issuers = Issuers::default();
    issuers.insert(IssuerKind::Exec, i.clone());
    let audit = Arc::new(Audit::open_trusted(&log, false).unwrap());
    let m = LeaseManager::new(issuers, None, defaults(), audit, Arc::new(Metrics::default()), clock);
    let tries = || usize::MAX - i.refuse.load(Ordering::SeqCst);
    let l = m.open(request("x", serde_json::json!({"ttl": "10s"}), 0, 1)).await.unwrap();
    advance(11 + 62).await;
    assert_eq!(m.irrevocable()[0].state, LeaseState::Irrevocable);
    // Twelve slow retries, 5 minutes apart; refused through all of them: abandoned.
    advance(11 * 300).await;
    assert_eq!(m.irrevocable()[0].state, LeaseState::Irrevocable, "still within the hour");
    advance(300 + 5).await;
    let irr = m.irrevocable();
    assert_eq!((irr.len(), irr[0].state), (1, LeaseState::Abandoned));
    assert!(m.list().iter().any(|x| x.id == l.id && x.state == LeaseState::Abandoned), "still listed");
    let metrics = m.metrics.render(m.gauges(0));
    assert!(metrics.contains("leasefs_revocations_abandoned_total{issuer=\"exec\"} 1"), "{metrics}");
    assert!(metrics.contains("leasefs_leases_irrevocable 1"), "{metrics}");
    let audited = std::fs::read_to_string(&log).unwrap();
    let abandoned: Vec<&str> = audited.lines().filter(|l| l.contains(r#""outcome":"revoke_abandoned""#)).collect();
    assert_eq!(abandoned.len(), 1, "{audited}");
    assert!(abandoned[0].contains(r#""event":"irrevocable""#) && abandoned[0].contains(&l.id), "{}", abandoned[0]);
    // No attempt on its own any more.
    let n = tries();
    advance(3 * 3600).await;
    assert_eq!(tries(), n, "an abandoned revocation is not retried on its own");
    // By hand (`leasefs revoke`), twice at once: one attempt; refused again, it stays abandoned.
    assert!(m.revoke(&l.id, None));
    assert!(m.revoke(&l.id, None));
    settle().await;
    assert_eq!(tries(), n + 1, "one attempt for both");
    assert_eq!(m.irrevocable()[0].state, LeaseState::Abandoned);
    // The issuer is back: by hand again, revoked, once.
    i.refuse.store(0, Ordering::SeqCst);
    assert!(m.revoke(&l.id, None));
    settle().await;
    assert_eq!(*i.revoked.lock(), std::slice::from_ref(&l.id));
    assert!(m.irrevocable().is_empty());
    assert_eq!(m.pending_revocations(), 0);
    assert!(!m.revoke(&l.id, None), "nothing left to revoke");
}

#[tokio::test(start_paused = true)]
async fn leasefs_revoke_of_an_irrevocable_lease_tries_it_at_once() {
    let i = Arc::new(TestIssuer { refuse: AtomicUsize::new(usize::MAX), ..TestIssuer::default() });
    let m = manager(&i, defaults());
    let l = m.open(request("y", serde_json::json!({"ttl": "10s"}), 0, 1)).await.unwrap();
    advance(11 + 62).await;
    assert_eq!(m.irrevocable().len(), 1);
    i.refuse.store(0, Ordering::SeqCst);
    assert!(m.revoke(&l.id, None), "an ended lease still pending is found");
    settle().await;
    assert_eq!(*i.revoked.lock(), std::slice::from_ref(&l.id), "revoked now, not at the next 5-minute retry");
    assert!(m.irrevocable().is_empty());
}

#[tokio::test(start_paused = true)]
async fn revoke_on_close_ends_the_lease_with_its_last_handle() {
    let i = Arc::new(TestIssuer::default());
    let m = manager(&i, defaults());
    let attrs = serde_json::json!({"reuse": "uid", "revoke_on_close": true});
    let a = m.open(request("c", attrs.clone(), 5, 1)).await.unwrap();
    let b = m.open(request("c", attrs, 5, 2)).await.unwrap();
    m.closed(&a);
    assert!(b.is_live(), "one handle is still open");
    m.closed(&b);
    settle().await;
    assert!(!a.is_live());
    assert_eq!(*i.revoked.lock(), std::slice::from_ref(&a.id));
}

#[tokio::test(start_paused = true)]
async fn shutdown_revokes_every_live_lease_and_refuses_new_ones() {
    let i = Arc::new(TestIssuer::default());
    let m = manager(&i, defaults());
    for n in 0..5 {
        m.open(request(&format!("s{n}"), serde_json::json!({}), 0, 1)).await.unwrap();
    }
    m.shutdown(true).await;
    assert_eq!(i.revoked.lock().len(), 5);
    assert_eq!(m.live(), 0);
    let Err(e) = m.open(request("late", serde_json::json!({}), 0, 1)).await else { panic!("issued during shutdown") };
    assert_eq!(e.kind, ErrorKind::ShuttingDown);
    assert_eq!(crate::error::ToErrno::errno(&e), libc::EIO);
}

#[tokio::test(start_paused = true)]
async fn concurrent_opens_that_may_share_wait_for_one_issuance() {
    let i = Arc::new(TestIssuer { delay: Duration::from_millis(300), ..TestIssuer::default() });
    let m = manager(&i, defaults());
    let opens: Vec<_> = (0..200)
        .map(|n| {
            let m = m.clone();
            tokio::spawn(async move { m.open(request("db/app", serde_json::json!({"reuse": "uid"}), 1000, n)).await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for o in opens {
        let Ok(l) = o.await.unwrap() else { panic!("an open failed") };
        ids.insert(l.id.clone());
    }
    assert_eq!(ids.len(), 1, "200 concurrent opens by one uid share one lease");
    assert_eq!(i.issued.load(Ordering::SeqCst), 1);
    // Another uid queues separately and gets its own.
    let other = m.open(request("db/app", serde_json::json!({"reuse": "uid"}), 1001, 1)).await.ok().unwrap();
    assert!(!ids.contains(&other.id));
    assert!(m.turns.is_empty(), "no queue is left behind");
}

#[tokio::test(start_paused = true)]
async fn a_uid_holds_at_most_max_leases_per_uid_and_closing_frees_its_place() {
    let i = Arc::new(TestIssuer::default());
    let m = manager(&i, Defaults { max_leases_per_uid: 3, ..defaults() });
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(m.open(request("q", serde_json::json!({}), 1000, 1)).await.ok().unwrap());
    }
    let Err(e) = m.open(request("q", serde_json::json!({}), 1000, 1)).await else { panic!("a 4th lease") };
    assert_eq!(crate::error::ToErrno::errno(&e), libc::EDQUOT);
    assert!(m.open(request("q", serde_json::json!({}), 1001, 1)).await.is_ok(), "other uids are not affected");
    // A closed lease nobody may share has its bytes zeroized and no longer counts.
    m.closed(&held.pop().unwrap());
    assert!(m.open(request("q", serde_json::json!({}), 1000, 1)).await.is_ok());
    let bytes = Defaults { max_lease_bytes_per_uid: 10, ..defaults() };
    let m = manager(&i, bytes);
    let first = m.open(request("b", serde_json::json!({}), 7, 1)).await.ok().unwrap();
    assert!(first.held() >= 10);
    let Err(e) = m.open(request("b", serde_json::json!({}), 7, 1)).await else { panic!("over the byte bound") };
    assert_eq!(crate::error::ToErrno::errno(&e), libc::EDQUOT);
}

#[tokio::test(start_paused = true)]
async fn an_entry_issues_at_most_its_bounds_at_once_and_per_minute() {
    let i = Arc::new(TestIssuer { delay: Duration::from_millis(500), ..TestIssuer::default() });
    let m = manager(&i, defaults());
    let attrs = serde_json::json!({"max_concurrent_issuances": 2});
    let opens: Vec<_> = (0..3)
        .map(|n| {
            let (m, a) = (m.clone(), attrs.clone());
            tokio::spawn(async move { m.open(request("busy", a, 1000 + n, n)).await.map(|l| l.id.clone()) })
        })
        .collect();
    let mut errnos = Vec::new();
    for o in opens {
        if let Err(e) = o.await.unwrap() {
            errnos.push(crate::error::ToErrno::errno(&e));
        }
    }
    assert_eq!(errnos, [libc::EAGAIN], "the third concurrent issuance is refused");
    let attrs = serde_json::json!({"max_issues_per_minute": 3});
    for _ in 0..3 {
        assert!(m.open(request("polled", attrs.clone(), 0, 1)).await.is_ok());
    }
    let Err(e) = m.open(request("polled", attrs.clone(), 0, 1)).await else { panic!("a 4th in the minute") };
    assert_eq!(crate::error::ToErrno::errno(&e), libc::EAGAIN);
    assert!(e.to_string().contains("max_issues_per_minute"), "{e}");
    advance(61).await;
    assert!(m.open(request("polled", attrs, 0, 1)).await.is_ok(), "a new minute");
}

#[tokio::test(start_paused = true)]
async fn an_issuance_that_times_out_after_its_intent_is_revoked_at_once_and_shutdown_waits_for_it() {
    let i = Arc::new(TestIssuer { delay: Duration::from_secs(60), intent: true, ..TestIssuer::default() });
    let m = manager(&i, defaults());
    let Err(e) = m.open(request("hang", serde_json::json!({}), 0, 1)).await else { panic!("issued") };
    assert_eq!(e.kind, ErrorKind::Timeout);
    settle().await;
    assert_eq!(i.revoked.lock().len(), 1, "revoked at once, by its lease id");
    assert!(e.to_string().contains(&i.revoked.lock()[0]), "{e}");
    // One under way at shutdown: shutdown lets it time out and waits for its revocation.
    let m2 = m.clone();
    let open = tokio::spawn(async move { m2.open(request("hang", serde_json::json!({}), 0, 2)).await });
    settle().await;
    m.shutdown(false).await;
    assert_eq!(i.revoked.lock().len(), 2, "the pending intent was revoked before shutdown returned");
    assert!(open.await.unwrap().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_credential_without_memory_for_its_bytes_fails_the_open_with_enomem_and_is_revoked() {
    let i = Arc::new(TestIssuer { pad: 100_000, ..TestIssuer::default() });
    let m = manager(&i, defaults());
    let refused = crate::memlock::limit_maps(64 * 1024);
    let Err(e) = m.open(request("big", serde_json::json!({}), 0, 1)).await else { panic!("no memory, yet issued") };
    assert_eq!(crate::error::ToErrno::errno(&e), libc::ENOMEM, "{e}");
    settle().await;
    assert_eq!(i.revoked.lock().len(), 1, "the credential nobody can read is revoked at once");
    assert_eq!(m.live(), 0);
    drop(refused);
    assert!(m.open(request("big", serde_json::json!({}), 0, 2)).await.is_ok(), "with memory, it opens");
}

mod rotation;
