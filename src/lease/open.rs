//! One open of a dynamic secret in the lease manager: reuse of a live lease, the bounds an
//! issuance must pass (quota, pressure, shutdown), then the issuance, audited either way.

use std::sync::Arc;
use std::time::Instant;

use super::deadline::Action;
use super::issue::Issue;
use super::table::{self, Lease, OpenRequest, Origin};
use super::{LeaseError, LeaseManager, cgroup, new_lease_id, pressure};
use crate::audit::{Event, EventKind, Outcome};
use crate::error::ErrorKind;
use crate::policy::{Effective, IssuerKind};
use crate::render::rfc3339;
use crate::secret::SecretKind;

impl LeaseManager {
    /// Opens a dynamic secret: reuses a live lease where the policy allows, else issues a new one.
    pub async fn open(self: &Arc<Self>, req: OpenRequest) -> Result<Arc<Lease>, LeaseError> {
        let SecretKind::Base { issuer: kind, .. } = req.base.kind else {
            return Err(LeaseError::failed(format!(
                "{} links to {}, which is not a base secret",
                req.path,
                req.base.path()
            )));
        };
        let policy = req.secret.policy().effective(&self.defaults);
        let mut req = req;
        let (who, scope) = table::binding(std::mem::take(&mut req.requester), policy.reuse, policy.rotate.is_some());
        req.requester = who;
        // Opens that may share a lease wait for one issuance instead of each issuing their own.
        let turn = match scope {
            Some(id) => Some(self.turns.wait((req.path.clone(), id)).await),
            None => None,
        };
        let result = self.open_in_turn(req, kind, &policy).await;
        drop(turn);
        result
    }

    async fn open_in_turn(
        self: &Arc<Self>,
        req: OpenRequest,
        kind: IssuerKind,
        policy: &Effective,
    ) -> Result<Arc<Lease>, LeaseError> {
        let now = self.clock.now();
        let capped = policy.min_remaining_capped;
        if let Some(l) = self.table.reuse(&req.path, policy.reuse, &req.requester, policy.min_remaining, capped, now) {
            l.opened_by(&req.requester);
            self.metrics.reused(kind.as_str());
            self.audit(EventKind::Reuse, &l, Outcome::Ok, Some(&req.requester));
            return Ok(l);
        }
        if let Err(e) = pressure::within_quota(self.table.usage(req.requester.uid), req.requester.uid, &self.defaults) {
            return Err(self.refuse(&req, kind, e));
        }
        let _admitted = match self.pressure.admit(&req.path, req.requester.uid, pressure::bounds(policy)) {
            Ok(a) => a,
            Err(why) => {
                return Err(self.refuse(&req, kind, LeaseError::new(ErrorKind::Busy, why)));
            }
        };
        let _in_flight = self.in_flight.token();
        if self.engine.is_shutting_down() {
            return Err(LeaseError::new(ErrorKind::ShuttingDown, "leasefs is shutting down"));
        }
        self.issue_new(&req, kind, policy).await
    }

    /// Issues a new lease (bounded by `issue_timeout`): in the table and the deadline queue, or
    /// the failure, counted and audited.
    async fn issue_new(
        self: &Arc<Self>,
        req: &OpenRequest,
        kind: IssuerKind,
        policy: &Effective,
    ) -> Result<Arc<Lease>, LeaseError> {
        let origin = Arc::new(Origin {
            path: req.path.clone(),
            secret_id: req.secret.id().into_owned(),
            issuer: kind,
            source_key: req.source_key.clone(),
            base: req.base.clone(),
            source: req.source.clone(),
        });
        let lease_id = new_lease_id().inspect_err(|e| self.metrics.failed(kind.as_str(), e.reason()))?;
        let started = Instant::now();
        let issue =
            Issue { lease_id: &lease_id, origin: &origin, secret: &req.secret, requester: &req.requester, policy };
        let timeout = self.defaults.issue_timeout.0;
        let result = tokio::time::timeout(timeout, self.engine.issue(&issue))
            .await
            .unwrap_or_else(|_| Err(LeaseError::timeout(timeout)));
        match result {
            Ok(lease) => {
                let lease = Arc::new(lease);
                self.table.insert(lease.clone());
                self.schedule(&lease);
                if policy.reuse == crate::defaults::Reuse::Cgroup {
                    self.deadlines.push(self.clock.now() + cgroup::POLL, &lease, Action::Cgroup);
                }
                self.metrics.issued(kind.as_str(), started.elapsed());
                self.audit(EventKind::Issue, &lease, Outcome::Ok, Some(&req.requester));
                tracing::info!(lease = %lease.id, path = %req.path, issuer = %kind, expires_at = %rfc3339(lease.expires_at()), uid = req.requester.uid, "issued");
                Ok(lease)
            }
            Err(e) => Err(self.issue_failed(req, kind, &lease_id, e)),
        }
    }

    /// Counts and audits a failed issuance; the error the open fails with.
    fn issue_failed(&self, req: &OpenRequest, kind: IssuerKind, lease_id: &str, e: LeaseError) -> LeaseError {
        self.metrics.failed(kind.as_str(), e.reason());
        let detail = e.to_string();
        let ev = Event::new(EventKind::Error, &req.path, Outcome::of(&e)).lease(lease_id, kind).detail(detail.as_str());
        self.audit.record(&ev, Some(&req.requester));
        // Logged once, by the filesystem adapter, as the failed open it causes.
        e.context(format!("issuance failed (lease {lease_id})"))
    }

    /// Counts and audits an open refused by a bound (quota, pressure); repeats folded per 10 s
    /// and marked so (the daemon log then has them at debug only). The error the open fails with.
    fn refuse(&self, req: &OpenRequest, kind: IssuerKind, e: LeaseError) -> LeaseError {
        self.metrics.failed(kind.as_str(), e.reason());
        let Some(count) = self.pressure.folds.deny(req.requester.uid, &req.path, e.reason()) else {
            return e.repeated();
        };
        let detail = e.to_string();
        let ev =
            Event::new(EventKind::Deny, &req.path, Outcome::of(&e)).issuer(kind).detail(detail.as_str()).count(count);
        self.audit.record(&ev, Some(&req.requester));
        e
    }
}
