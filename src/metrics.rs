//! Counters and histograms for `/.leasefs/metrics`, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Upper bounds (seconds) of the issuance latency histogram.
pub const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    issued: BTreeMap<String, u64>,
    failed: BTreeMap<(String, &'static str), u64>,
    reused: BTreeMap<String, u64>,
    revoked: BTreeMap<String, u64>,
    revoke_failed: BTreeMap<String, u64>,
    irrevocable: BTreeMap<String, u64>,
    abandoned: BTreeMap<String, u64>,
    expired: u64,
    rotate_unheard: u64,
    overhang_allowed: BTreeMap<String, u64>,
    latency: BTreeMap<String, Histogram>,
}

/// The FUSE requests the adapter answers, counted by operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Lookup,
    Getattr,
    Setattr,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Opendir,
    Readdir,
    Readdirplus,
    Statfs,
    Getxattr,
    Listxattr,
    Ioctl,
    Lseek,
    Other,
}

impl Request {
    pub const ALL: [Request; 17] = [
        Request::Lookup,
        Request::Getattr,
        Request::Setattr,
        Request::Open,
        Request::Read,
        Request::Write,
        Request::Flush,
        Request::Release,
        Request::Opendir,
        Request::Readdir,
        Request::Readdirplus,
        Request::Statfs,
        Request::Getxattr,
        Request::Listxattr,
        Request::Ioctl,
        Request::Lseek,
        Request::Other,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Request::Lookup => "lookup",
            Request::Getattr => "getattr",
            Request::Setattr => "setattr",
            Request::Open => "open",
            Request::Read => "read",
            Request::Write => "write",
            Request::Flush => "flush",
            Request::Release => "release",
            Request::Opendir => "opendir",
            Request::Readdir => "readdir",
            Request::Readdirplus => "readdirplus",
            Request::Statfs => "statfs",
            Request::Getxattr => "getxattr",
            Request::Listxattr => "listxattr",
            Request::Ioctl => "ioctl",
            Request::Lseek => "lseek",
            Request::Other => "other",
        }
    }
}

/// Restarts of the exec guard (one guard per process, so one count per process).
static GUARD_RESTARTS: AtomicU64 = AtomicU64::new(0);

/// The exec guard died and a new one runs.
pub fn guard_restarted() {
    GUARD_RESTARTS.fetch_add(1, Ordering::Relaxed);
}

/// Values sampled when the metrics are read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub live_leases: usize,
    pub pending_revocations: usize,
    pub irrevocable_leases: usize,
    pub open_handles: usize,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// FUSE requests, counted by the adapter (the one count of them).
    requests: [AtomicU64; Request::ALL.len()],
    /// Opens answered with an error.
    open_errors: AtomicU64,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock())
    }

    pub fn issued(&self, issuer: &str, took: Duration) {
        self.with(|i| {
            *i.issued.entry(issuer.into()).or_default() += 1;
            let h = i.latency.entry(issuer.into()).or_default();
            let s = took.as_secs_f64();
            for (n, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    h.counts[n] += 1;
                }
            }
            h.sum += s;
            h.count += 1;
        })
    }
    pub fn failed(&self, issuer: &str, reason: &'static str) {
        self.with(|i| *i.failed.entry((issuer.into(), reason)).or_default() += 1)
    }
    pub fn reused(&self, issuer: &str) {
        self.with(|i| *i.reused.entry(issuer.into()).or_default() += 1)
    }
    pub fn revoked(&self, issuer: &str) {
        self.with(|i| *i.revoked.entry(issuer.into()).or_default() += 1)
    }
    pub fn revoke_failed(&self, issuer: &str) {
        self.with(|i| *i.revoke_failed.entry(issuer.into()).or_default() += 1)
    }
    /// One FUSE request answered.
    pub fn request(&self, r: Request) {
        self.requests[r as usize].fetch_add(1, Ordering::Relaxed);
    }
    /// One open answered with an error.
    pub fn open_failed(&self) {
        self.open_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn irrevocable(&self, issuer: &str) {
        self.with(|i| *i.irrevocable.entry(issuer.into()).or_default() += 1)
    }
    /// An irrevocable lease whose automatic revocation attempts stopped.
    pub fn revoke_abandoned(&self, issuer: &str) {
        self.with(|i| *i.abandoned.entry(issuer.into()).or_default() += 1)
    }
    pub fn expired(&self) {
        self.with(|i| i.expired += 1)
    }
    /// A credential served although it states a validity past its lease (`allow_overhang`).
    pub fn overhang_allowed(&self, issuer: &str) {
        self.with(|i| *i.overhang_allowed.entry(issuer.into()).or_default() += 1)
    }
    /// A rotation that reached nobody (no live opener, no pid file, the command failed).
    pub fn rotate_unheard(&self) {
        self.with(|i| i.rotate_unheard += 1)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: Gauges) -> String {
        let mut o = String::new();
        let i = self.inner.lock();
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let by_issuer = |o: &mut String, name: &str, help: &str, counts: &BTreeMap<String, u64>| {
            family(o, name, "counter", help);
            for (k, v) in counts {
                let _ = writeln!(o, "{name}{{issuer=\"{k}\"}} {v}");
            }
        };
        by_issuer(&mut o, "leasefs_issuances_total", "Credentials issued, by issuer.", &i.issued);
        family(&mut o, "leasefs_issuance_failures_total", "counter", "Issuances that failed, by issuer and reason.");
        for ((k, r), v) in &i.failed {
            let _ = writeln!(o, "leasefs_issuance_failures_total{{issuer=\"{k}\",reason=\"{r}\"}} {v}");
        }
        by_issuer(&mut o, "leasefs_reuses_total", "Opens served by a live lease, by issuer.", &i.reused);
        family(&mut o, "leasefs_issue_duration_seconds", "histogram", "Time to issue a credential, by issuer.");
        for (k, h) in &i.latency {
            for (n, b) in BUCKETS.iter().enumerate() {
                let _ =
                    writeln!(o, "leasefs_issue_duration_seconds_bucket{{issuer=\"{k}\",le=\"{b}\"}} {}", h.counts[n]);
            }
            let _ = writeln!(o, "leasefs_issue_duration_seconds_bucket{{issuer=\"{k}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(o, "leasefs_issue_duration_seconds_sum{{issuer=\"{k}\"}} {}", h.sum);
            let _ = writeln!(o, "leasefs_issue_duration_seconds_count{{issuer=\"{k}\"}} {}", h.count);
        }
        by_issuer(&mut o, "leasefs_revocations_total", "Leases revoked at their issuer, by issuer.", &i.revoked);
        by_issuer(
            &mut o,
            "leasefs_revocation_failures_total",
            "Revocation attempts that failed (retried), by issuer.",
            &i.revoke_failed,
        );
        by_issuer(
            &mut o,
            "leasefs_irrevocable_total",
            "Leases marked irrevocable (revocation refused past irrevocable_after), by issuer.",
            &i.irrevocable,
        );
        by_issuer(
            &mut o,
            "leasefs_revocations_abandoned_total",
            "Irrevocable leases whose automatic revocation attempts stopped (an hour of slow retries), by issuer.",
            &i.abandoned,
        );
        by_issuer(
            &mut o,
            "leasefs_overhang_allowed_total",
            "Credentials served that state a validity past their lease (allow_overhang), by issuer.",
            &i.overhang_allowed,
        );
        family(&mut o, "leasefs_expirations_total", "counter", "Leases that reached their expiry.");
        let _ = writeln!(o, "leasefs_expirations_total {}", i.expired);
        family(
            &mut o,
            "leasefs_rotate_unheard_total",
            "counter",
            "Rotations that reached nobody: no live opener, no pid file, or the command failed.",
        );
        let _ = writeln!(o, "leasefs_rotate_unheard_total {}", i.rotate_unheard);
        family(&mut o, "leasefs_leases_live", "gauge", "Live leases.");
        let _ = writeln!(o, "leasefs_leases_live {}", g.live_leases);
        family(&mut o, "leasefs_revocations_pending", "gauge", "Leases whose revocation has not succeeded yet.");
        let _ = writeln!(o, "leasefs_revocations_pending {}", g.pending_revocations);
        family(&mut o, "leasefs_leases_irrevocable", "gauge", "Ended leases whose issuer keeps refusing revocation.");
        let _ = writeln!(o, "leasefs_leases_irrevocable {}", g.irrevocable_leases);
        family(&mut o, "leasefs_open_handles", "gauge", "Open file handles.");
        let _ = writeln!(o, "leasefs_open_handles {}", g.open_handles);
        family(&mut o, "leasefs_guard_restarts_total", "counter", "Times the exec guard died and was started again.");
        let _ = writeln!(o, "leasefs_guard_restarts_total {}", GUARD_RESTARTS.load(Ordering::Relaxed));
        family(&mut o, "leasefs_fuse_requests_total", "counter", "FUSE requests from the kernel, by operation.");
        for r in Request::ALL {
            let n = self.requests[r as usize].load(Ordering::Relaxed);
            let _ = writeln!(o, "leasefs_fuse_requests_total{{op=\"{}\"}} {n}", r.name());
        }
        family(&mut o, "leasefs_fuse_errors_total", "counter", "Opens answered with an error.");
        let _ = writeln!(o, "leasefs_fuse_errors_total {}", self.open_errors.load(Ordering::Relaxed));
        o
    }
}
