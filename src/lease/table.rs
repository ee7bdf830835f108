//! The lease table: live leases by id, where an open finds a lease it may reuse, and what
//! `leases.json` shows (metadata only).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;

use crate::defaults::Reuse;
use crate::memlock::SharedBytes;
use crate::policy::IssuerKind;
use crate::render::rfc3339;
use crate::requester::Requester;
use crate::secret::SecretMeta;
use crate::source::Source;

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

/// Why a lease ended before (or at) its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Expire,
    /// `/.leasefs/revoke` or `leasefs revoke`.
    Revoke,
    /// `revoke_on_close`: its last handle closed.
    Close,
    Shutdown,
    /// `bind`/`reuse: "cgroup"`: the reader's cgroup has no process left.
    Cgroup,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expire => "expire",
            EndReason::Revoke => "revoke",
            EndReason::Close => "close",
            EndReason::Shutdown => "shutdown",
            EndReason::Cgroup => "cgroup",
        }
    }
}

/// Where a lease comes from: enough to revoke it, now or after a restart.
pub struct Origin {
    /// Path in the mount.
    pub path: String,
    pub secret_id: String,
    pub issuer: IssuerKind,
    /// The prefix of the source that holds the base secret (how the journal finds it again).
    pub source_key: String,
    pub base: Arc<SecretMeta>,
    pub source: Arc<dyn Source>,
}

/// A live credential and its rendered bytes.
pub struct Lease {
    pub id: String,
    pub origin: Arc<Origin>,
    pub requester: Requester,
    pub issued_at: DateTime<Utc>,
    /// Milliseconds since the epoch; moves later when a renewable lease is renewed.
    expires_ms: AtomicI64,
    /// issued_at + max_ttl: no renewal goes past it.
    pub cap: DateTime<Utc>,
    /// The lease's length at issue: what each renewal asks for.
    pub period: Duration,
    /// Its rendered contents: one entry per file (a bundle has several, a file one).
    pub files: Vec<Arc<SharedBytes>>,
    /// A non-secret handle that the issuer's revoke needs (journaled).
    pub revocation: serde_json::Value,
    /// Whether the journal holds it (only what the next start could revoke is journaled).
    pub journaled: bool,
    handles: AtomicUsize,
    pub revoke_on_close: bool,
    pub renew_while_open: bool,
    /// Whether another open may share it (`reuse` uid or pid): its bytes are kept while no
    /// handle is open.
    pub reusable: bool,
    /// Whether its bytes count against its uid's bound.
    charged: AtomicBool,
    /// How and when long-running readers are told to re-read (`rotate_*`).
    pub rotate: Option<crate::policy::Rotation>,
    /// Processes that opened it, as (pid, start time): they get the rotation signal.
    openers: Mutex<Vec<(u32, u64)>>,
    /// Set at rotation: no new open shares it, so a reader that re-reads gets a fresh lease.
    retired: AtomicBool,
    /// Set once: the lease has ended (expiry, revoke, close or shutdown). Revocation runs once.
    ended: AtomicBool,
    /// Its place in the deadline queue, removed when it ends early.
    pub(super) expiry_slot: Mutex<Option<(i64, u64)>>,
}

/// The parts a new lease is made of.
pub struct NewLease {
    pub id: String,
    pub origin: Arc<Origin>,
    pub requester: Requester,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub cap: DateTime<Utc>,
    pub files: Vec<SharedBytes>,
    pub revocation: serde_json::Value,
    pub journaled: bool,
    pub revoke_on_close: bool,
    pub renew_while_open: bool,
    pub reusable: bool,
    pub rotate: Option<crate::policy::Rotation>,
}

impl Lease {
    pub fn new(n: NewLease) -> Lease {
        let opener = (n.requester.pid, n.requester.start);
        Lease {
            period: (n.expires_at - n.issued_at).to_std().unwrap_or_default(),
            id: n.id,
            origin: n.origin,
            requester: n.requester,
            issued_at: n.issued_at,
            expires_ms: AtomicI64::new(n.expires_at.timestamp_millis()),
            cap: n.cap,
            files: n.files.into_iter().map(Arc::new).collect(),
            revocation: n.revocation,
            journaled: n.journaled,
            handles: AtomicUsize::new(1),
            revoke_on_close: n.revoke_on_close,
            renew_while_open: n.renew_while_open,
            reusable: n.reusable,
            charged: AtomicBool::new(false),
            rotate: n.rotate,
            openers: Mutex::new(vec![opener]),
            retired: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            expiry_slot: Mutex::new(None),
        }
    }
    pub fn path(&self) -> &str {
        &self.origin.path
    }
    /// A process opened it (again).
    pub fn opened_by(&self, who: &Requester) {
        let mut g = self.openers.lock();
        if !g.contains(&(who.pid, who.start)) {
            g.push((who.pid, who.start));
        }
    }
    /// (pid, start time) of each process that opened it.
    pub fn openers(&self) -> Vec<(u32, u64)> {
        self.openers.lock().clone()
    }
    /// No new open shares it from now on.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }
    /// The contents of file `i` (0 for a single file).
    pub fn file(&self, i: usize) -> Option<&Arc<SharedBytes>> {
        self.files.get(i)
    }
    /// Bytes held, over every file.
    pub fn held(&self) -> u64 {
        self.files.iter().map(|b| b.len().unwrap_or(0) as u64).sum()
    }
    /// Zeroizes every file's contents; reads then fail with EKEYEXPIRED.
    pub fn zeroize(&self) {
        for b in &self.files {
            b.expire();
        }
    }
    pub fn issuer(&self) -> IssuerKind {
        self.origin.issuer
    }
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.expires_ms.load(Ordering::SeqCst)).unwrap_or_default()
    }
    pub(super) fn set_expiry(&self, t: DateTime<Utc>) {
        self.expires_ms.store(t.timestamp_millis(), Ordering::SeqCst);
    }
    pub fn remaining(&self, now: DateTime<Utc>) -> Duration {
        (self.expires_at() - now).to_std().unwrap_or_default()
    }
    pub fn is_live(&self) -> bool {
        !self.ended.load(Ordering::SeqCst)
    }
    /// Marks the lease ended; true for the one caller that ended it.
    pub(super) fn mark_ended(&self) -> bool {
        !self.ended.swap(true, Ordering::SeqCst)
    }
    pub fn open_handles(&self) -> usize {
        self.handles.load(Ordering::SeqCst)
    }
    pub(super) fn hold(&self) {
        self.handles.fetch_add(1, Ordering::SeqCst);
    }
    /// Drops one handle; the number left.
    pub(super) fn release(&self) -> usize {
        self.handles.fetch_sub(1, Ordering::SeqCst).saturating_sub(1)
    }

    pub fn info(&self, now: DateTime<Utc>) -> LeaseInfo {
        LeaseInfo {
            id: self.id.clone(),
            path: self.origin.path.clone(),
            secret_id: self.origin.secret_id.clone(),
            issuer: self.origin.issuer.as_str().into(),
            uid: self.requester.uid,
            gid: self.requester.gid,
            pid: self.requester.pid,
            comm: self.requester.comm.clone(),
            workload: self.requester.workload.clone(),
            issued_at: rfc3339(self.issued_at),
            expires_at: rfc3339(self.expires_at()),
            remaining_seconds: self.remaining(now).as_secs(),
            open_handles: self.open_handles(),
            state: LeaseState::Live,
        }
    }
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    Live,
    /// Ended, but its issuer has refused revocation for longer than `irrevocable_after`.
    Irrevocable,
    /// Irrevocable, and refused through an hour of slow retries: no more automatic attempts in
    /// this run (`leasefs revoke` tries again; so does the next start).
    Abandoned,
}

/// A lease as `leases.json` shows it: metadata only.
#[derive(Serialize, Clone, Debug)]
pub struct LeaseInfo {
    pub id: String,
    pub path: String,
    pub secret_id: String,
    pub issuer: String,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub comm: String,
    /// The reader's cgroup, unit, container, pod and executable, where read.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::workload::serialize_shared")]
    pub workload: Option<Arc<crate::workload::Workload>>,
    pub issued_at: String,
    pub expires_at: String,
    pub remaining_seconds: u64,
    pub open_handles: usize,
    pub state: LeaseState,
}

impl LeaseInfo {
    /// The row of a credential that is waiting for revocation without a live lease (an
    /// issuance that failed half-way, an orphan from the journal).
    pub fn revoking(
        id: &str,
        origin: &Origin,
        who: Option<&Requester>,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> LeaseInfo {
        let who = who.cloned().unwrap_or_default();
        LeaseInfo {
            id: id.into(),
            path: origin.path.clone(),
            secret_id: origin.secret_id.clone(),
            issuer: origin.issuer.as_str().into(),
            uid: who.uid,
            gid: who.gid,
            pid: who.pid,
            comm: who.comm,
            workload: who.workload,
            issued_at: rfc3339(issued_at),
            expires_at: rfc3339(expires_at),
            remaining_seconds: 0,
            open_handles: 0,
            state: LeaseState::Live,
        }
    }
}

/// What one uid holds: leases whose bytes are in memory, and those bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub leases: usize,
    pub bytes: u64,
}

/// Live leases by id, and what each uid holds.
#[derive(Default)]
pub struct Table {
    leases: Mutex<HashMap<String, Arc<Lease>>>,
    usage: Mutex<HashMap<u32, Usage>>,
}

impl Table {
    /// What `uid` holds now.
    pub fn usage(&self, uid: u32) -> Usage {
        self.usage.lock().get(&uid).copied().unwrap_or_default()
    }

    fn charge(&self, lease: &Lease) {
        if !lease.charged.swap(true, Ordering::SeqCst) {
            let mut u = self.usage.lock();
            let e = u.entry(lease.requester.uid).or_default();
            e.leases += 1;
            e.bytes += lease.held();
        }
    }

    /// Its bytes no longer count (they were zeroized: the lease ended, or it cannot be read again).
    pub fn uncharge(&self, lease: &Lease, bytes: u64) {
        if lease.charged.swap(false, Ordering::SeqCst) {
            let mut u = self.usage.lock();
            if let Some(e) = u.get_mut(&lease.requester.uid) {
                e.leases = e.leases.saturating_sub(1);
                e.bytes = e.bytes.saturating_sub(bytes);
                if e.leases == 0 {
                    u.remove(&lease.requester.uid);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.leases.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn get(&self, id: &str) -> Option<Arc<Lease>> {
        self.leases.lock().get(id).cloned()
    }
    pub fn insert(&self, lease: Arc<Lease>) {
        self.charge(&lease);
        self.leases.lock().insert(lease.id.clone(), lease);
    }
    pub fn remove(&self, id: &str) {
        self.leases.lock().remove(id);
    }
    pub fn all(&self) -> Vec<Arc<Lease>> {
        self.leases.lock().values().cloned().collect()
    }

    /// A live lease of `path` that `who` may share under `reuse`, with at least `min_remaining`
    /// left (the one that lasts longest). Takes a handle on it.
    pub fn reuse(
        &self,
        path: &str,
        reuse: Reuse,
        who: &Requester,
        min_remaining: Duration,
        capped: bool,
        now: DateTime<Utc>,
    ) -> Option<Arc<Lease>> {
        if reuse == Reuse::None {
            return None;
        }
        let g = self.leases.lock();
        let found = g
            .values()
            .filter(|l| {
                let need = if capped { min_remaining.min(l.period / 2) } else { min_remaining };
                l.path() == path && l.is_live() && !l.is_retired() && l.remaining(now) >= need
            })
            // Whatever the binding, a lease is never shared with another uid.
            .filter(|l| l.requester.uid == who.uid)
            .filter(|l| match reuse {
                Reuse::Uid => true,
                // The same process: a later one that got the pid is not it.
                Reuse::Pid => l.requester.same_process(who),
                Reuse::Session => l.requester.sid == who.sid,
                Reuse::Workload | Reuse::Cgroup => same_workload(reuse, &l.requester, who),
                Reuse::None => false,
            })
            .max_by_key(|l| l.expires_at())
            .cloned()?;
        found.hold();
        Some(found)
    }

    /// Metadata of every live lease, soonest expiry first.
    pub fn list(&self, now: DateTime<Utc>) -> Vec<LeaseInfo> {
        let mut v: Vec<LeaseInfo> = self.leases.lock().values().map(|l| l.info(now)).collect();
        v.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then(a.id.cmp(&b.id)));
        v
    }
}

/// Queues of opens that may share a lease, by (path, binding): each waits its turn, so that
/// concurrent opens of one binding make one issuance.
#[derive(Default)]
pub struct Turns {
    queues: Mutex<HashMap<(String, Binding), Queue>>,
}

/// Who may share a lease: (uid, pid or session id or 0, start time or 0, or a hash of the
/// reader's workload or cgroup).
pub type Binding = (u32, u32, u64);

/// What `reuse: "workload"` or `"cgroup"` shares a lease by; None when the reader's workload
/// could not be read (its leases are then its process's own).
fn workload_key(reuse: Reuse, who: &Requester) -> Option<String> {
    let w = who.workload.as_ref()?;
    Some(if reuse == Reuse::Cgroup { format!("cgroup:{}", w.cgroup) } else { w.key() })
}

/// Whether a lease issued to `holder` may be shared with `who` under `reuse` workload or cgroup.
fn same_workload(reuse: Reuse, holder: &Requester, who: &Requester) -> bool {
    match (workload_key(reuse, holder), workload_key(reuse, who)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => holder.same_process(who),
        _ => false,
    }
}

fn hash_of(key: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key)
}

/// The requester with what its binding needs read, and the binding (none for `reuse: none`).
/// A process is its pid and start time, read (with the session, in one pass of
/// `/proc/PID/stat`) only where a later process at the same pid must not pass for it: reuse by
/// pid, and rotation signals to openers.
pub fn binding(who: Requester, reuse: Reuse, rotate: bool) -> (Requester, Option<Binding>) {
    let who = match reuse {
        Reuse::Session => who.with_session(),
        Reuse::Pid | Reuse::Workload | Reuse::Cgroup => who.with_start(),
        _ if rotate => who.with_start(),
        _ => who,
    };
    let scope = match reuse {
        Reuse::None => None,
        Reuse::Uid => Some((who.uid, 0, 0)),
        Reuse::Pid => Some((who.uid, who.pid, who.start)),
        Reuse::Session => Some((who.uid, who.sid, 0)),
        // A queue per workload (a hash: the queue only orders issuances; `reuse` compares keys).
        Reuse::Workload | Reuse::Cgroup => match workload_key(reuse, &who) {
            Some(k) => Some((who.uid, u32::MAX, hash_of(&k))),
            None => Some((who.uid, who.pid, who.start)),
        },
    };
    (who, scope)
}

/// One queue: whoever holds its lock is issuing for the binding.
type Queue = Arc<tokio::sync::Mutex<()>>;

/// A turn; the queue is dropped with the last one.
pub struct Turn<'a> {
    turns: &'a Turns,
    key: (String, Binding),
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Turns {
    pub async fn wait(&self, key: (String, Binding)) -> Turn<'_> {
        let lock = self.queues.lock().entry(key.clone()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        Turn { turns: self, key, lock: Some(lock), _guard: guard }
    }

    pub fn is_empty(&self) -> bool {
        self.queues.lock().is_empty()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut g = self.turns.queues.lock();
        if let Some(lock) = self.lock.take() {
            // The map, this turn and its guard's handle hold it: nobody else is waiting.
            if Arc::strong_count(&lock) <= 3 {
                g.remove(&self.key);
            }
        }
    }
}
