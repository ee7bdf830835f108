//! Cutting an STS session short: an inline deny policy on its role for exactly that session
//! (`aws:userid` = `<role id>:<session name>`), one statement per expiry second, each removed once
//! the sessions it names have expired anyway; kept under IAM's size limit by pruning.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::LeaseError;
use super::awsapi::{Service, call, fail, form_encode, tag};

/// The inline policy leasefs owns on each role it revokes sessions of.
pub const POLICY_NAME: &str = "leasefs-revoked-sessions";
/// IAM's limit for a role's inline policies, all together, in characters (whitespace not counted).
pub const POLICY_LIMIT: usize = 10_240;
/// A session with less than this left is let run out rather than denied.
const NOT_WORTH_SECONDS: i64 = 3;
/// Statements leasefs writes are named `LeasefsUntil<YYYYMMDDhhmmss>` (UTC): the last second
/// any session they name is valid.
const SID_PREFIX: &str = "LeasefsUntil";

/// The role name in a role ARN (`arn:aws:iam::1:role/path/name` → `name`).
pub fn role_name(role_arn: &str) -> Option<&str> {
    let (_, rest) = role_arn.split_once(":role/")?;
    rest.rsplit('/').next().filter(|n| !n.is_empty())
}

fn sid_for(expires: DateTime<Utc>) -> String {
    format!("{SID_PREFIX}{}", expires.format("%Y%m%d%H%M%S"))
}

fn sid_time(sid: &str) -> Option<DateTime<Utc>> {
    let digits = sid.strip_prefix(SID_PREFIX)?;
    chrono::NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M%S").ok().map(|t| t.and_utc())
}

/// The deny policy: what IAM holds, changed locally, written back only when it changed.
#[derive(Clone, Debug, PartialEq)]
pub struct DenyPolicy {
    doc: Value,
}

impl DenyPolicy {
    /// From the stored document (None: the role has no such policy yet).
    pub fn parse(stored: Option<&str>) -> Result<Self, String> {
        let doc = match stored {
            None => json!({"Version": "2012-10-17", "Statement": []}),
            Some(text) => {
                let mut doc: Value = serde_json::from_str(text).map_err(|e| format!("unreadable policy: {e}"))?;
                match doc.get("Statement") {
                    Some(Value::Array(_)) => {}
                    Some(one @ Value::Object(_)) => doc["Statement"] = Value::Array(vec![one.clone()]),
                    _ => doc["Statement"] = Value::Array(Vec::new()),
                }
                doc
            }
        };
        Ok(DenyPolicy { doc })
    }

    fn statements(&mut self) -> &mut Vec<Value> {
        match self.doc.get_mut("Statement") {
            Some(Value::Array(v)) => v,
            _ => unreachable!("parse makes Statement an array"),
        }
    }

    fn ids(st: &mut Value) -> Option<&mut Vec<Value>> {
        let ids = st.pointer_mut("/Condition/StringEquals/aws:userid")?;
        if let Value::String(s) = ids {
            *ids = Value::Array(vec![Value::String(std::mem::take(s))]);
        }
        match ids {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }

    /// Drops the statements leasefs wrote whose sessions have all expired by `now`.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        self.statements().retain(|st| {
            let sid = st.get("Sid").and_then(Value::as_str).unwrap_or("");
            sid_time(sid).is_none_or(|until| until >= now)
        });
    }

    /// Denies everything to `userid` until `expires`.
    pub fn deny(&mut self, userid: &str, expires: DateTime<Utc>) {
        if self.contains(userid) {
            return;
        }
        let sid = sid_for(expires);
        let sts = self.statements();
        if let Some(st) = sts.iter_mut().find(|st| st.get("Sid").and_then(Value::as_str) == Some(&sid))
            && let Some(ids) = Self::ids(st)
        {
            ids.push(Value::String(userid.into()));
            return;
        }
        sts.push(json!({
            "Sid": sid, "Effect": "Deny", "Action": "*", "Resource": "*",
            "Condition": {"StringEquals": {"aws:userid": [userid]}}
        }));
    }

    /// Takes `userid` out of leasefs's statements (its session has expired).
    pub fn lift(&mut self, userid: &str) {
        let mut emptied = false;
        for st in self.statements().iter_mut() {
            if st.get("Sid").and_then(Value::as_str).and_then(sid_time).is_none() {
                continue;
            }
            if let Some(ids) = Self::ids(st) {
                ids.retain(|v| v.as_str() != Some(userid));
                emptied |= ids.is_empty();
            }
        }
        if emptied {
            self.statements().retain(|st| st.pointer("/Condition/StringEquals/aws:userid") != Some(&json!([])));
        }
    }

    pub fn contains(&self, userid: &str) -> bool {
        let want = Value::String(userid.into());
        self.doc["Statement"].as_array().into_iter().flatten().any(|st| {
            match st.pointer("/Condition/StringEquals/aws:userid") {
                Some(Value::Array(v)) => v.contains(&want),
                Some(v) => *v == want,
                None => false,
            }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.doc["Statement"].as_array().is_none_or(Vec::is_empty)
    }

    /// The sessions leasefs denies in it.
    pub fn sessions(&self) -> usize {
        self.doc["Statement"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|st| st.pointer("/Condition/StringEquals/aws:userid").and_then(Value::as_array))
            .map(Vec::len)
            .sum()
    }

    /// Combines leasefs's statements while the document is over [`POLICY_LIMIT`]: the two with
    /// the closest expiries become one under the later (a session may then stay denied past its
    /// expiry, until its own lift or the later statement's prune). Saves a statement's overhead
    /// (about 100 characters) per step.
    pub fn fit(&mut self) {
        while self.text().len() > POLICY_LIMIT {
            let mut ours: Vec<(DateTime<Utc>, usize)> = self.doc["Statement"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, st)| Some((st.get("Sid").and_then(Value::as_str).and_then(sid_time)?, i)))
                .collect();
            ours.sort();
            let Some((_, j)) = ours.windows(2).map(|w| (w[1].0 - w[0].0, w)).min_by_key(|(gap, _)| *gap) else {
                return;
            };
            let (earlier, later) = (j[0].1, j[1].1);
            let sts = self.statements();
            let moved = Self::ids(&mut sts[earlier]).map(std::mem::take).unwrap_or_default();
            if let Some(ids) = Self::ids(&mut sts[later]) {
                ids.extend(moved);
            }
            sts.remove(earlier);
        }
    }

    /// The document as written (compact JSON, as IAM counts it).
    pub fn text(&self) -> String {
        self.doc.to_string()
    }
}

/// The IAM calls, as the base secret, on one role.
pub struct Iam<'a> {
    pub http: &'a Result<reqwest::Client, String>,
    pub svc: Service<'a>,
    pub role: &'a str,
}

impl Iam<'_> {
    async fn ask(&self, pairs: &[(&str, &str)]) -> Result<Result<String, super::awsapi::Refusal>, LeaseError> {
        let mut all = vec![("Version", "2010-05-08"), ("RoleName", self.role)];
        all.extend_from_slice(pairs);
        match call(self.http, &self.svc, form_encode(&all)).await {
            Ok(text) => Ok(Ok(text.to_string())),
            Err(Ok(refusal)) => Ok(Err(refusal)),
            Err(Err(e)) => Err(e),
        }
    }

    /// The role's unique id (`AROA…`), the first half of its sessions' `aws:userid`.
    pub async fn role_id(&self) -> Result<String, LeaseError> {
        let text = self.ask(&[("Action", "GetRole")]).await?.map_err(|r| r.into_error("IAM GetRole"))?;
        tag(&text, "RoleId").ok_or_else(|| fail("the IAM GetRole answer lacks RoleId"))
    }

    /// The deny policy as IAM holds it now.
    pub async fn policy(&self) -> Result<DenyPolicy, LeaseError> {
        let stored = match self.ask(&[("Action", "GetRolePolicy"), ("PolicyName", POLICY_NAME)]).await? {
            Ok(text) => {
                let doc = tag(&text, "PolicyDocument").ok_or_else(|| fail("the IAM answer lacks PolicyDocument"))?;
                // IAM returns the document URL-encoded.
                Some(percent_encoding::percent_decode_str(&doc).decode_utf8_lossy().into_owned())
            }
            Err(r) if r.code == "NoSuchEntity" => None,
            Err(r) => return Err(r.into_error("IAM GetRolePolicy")),
        };
        DenyPolicy::parse(stored.as_deref()).map_err(|e| fail(format!("role {}: policy {POLICY_NAME}: {e}", self.role)))
    }

    /// Writes `policy` (deleting it when empty).
    pub async fn store(&self, policy: &DenyPolicy) -> Result<(), LeaseError> {
        if policy.is_empty() {
            return match self.ask(&[("Action", "DeleteRolePolicy"), ("PolicyName", POLICY_NAME)]).await? {
                Ok(_) => Ok(()),
                Err(r) if r.code == "NoSuchEntity" => Ok(()),
                Err(r) => Err(r.into_error("IAM DeleteRolePolicy")),
            };
        }
        let text = policy.text();
        if text.len() > POLICY_LIMIT {
            return Err(fail(format!(
                "role {}: denying {} revoked sessions needs a {}-character policy, over IAM's {POLICY_LIMIT}-character \
                 limit for a role's inline policies; the revocation is retried as sessions expire",
                self.role,
                policy.sessions(),
                text.len()
            )));
        }
        self.ask(&[("Action", "PutRolePolicy"), ("PolicyName", POLICY_NAME), ("PolicyDocument", &text)])
            .await?
            .map(|_| ())
            .map_err(|r| r.into_error("IAM PutRolePolicy"))
    }
}

/// Denies the session `session` of the role (until `expires`), or lifts that deny once `expires`
/// has passed; prunes statements of sessions expired by `now` either way. A deny is read back:
/// a concurrent writer (another host) that lost it makes this fail, to be retried.
pub async fn revoke_session(
    iam: &Iam<'_>,
    session: &str,
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), LeaseError> {
    let userid = format!("{}:{session}", iam.role_id().await?);
    let before = iam.policy().await?;
    let mut after = before.clone();
    after.prune(now);
    // IAM takes seconds to apply a policy: a session about to expire is not worth a statement.
    let denying = expires > now + chrono::Duration::seconds(NOT_WORTH_SECONDS);
    if denying {
        after.deny(&userid, expires);
    } else {
        after.lift(&userid);
    }
    after.fit();
    if after != before {
        iam.store(&after).await?;
    }
    if denying && !iam.policy().await?.contains(&userid) {
        return Err(fail(format!(
            "role {}: the deny for session {session} did not stick (a concurrent update?)",
            iam.role
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn role_names_from_arns() {
        assert_eq!(role_name("arn:aws:iam::123456789012:role/app"), Some("app"));
        assert_eq!(role_name("arn:aws:iam::123456789012:role/team/x/app"), Some("app"));
        assert_eq!(role_name("arn:aws:iam::123456789012:user/app"), None);
    }

    #[test]
    fn denies_group_by_expiry_and_prune_after_it() {
        let mut p = DenyPolicy::parse(None).unwrap();
        p.deny("AROA1:a", t("2030-01-01T00:15:00Z"));
        p.deny("AROA1:b", t("2030-01-01T00:15:00Z"));
        p.deny("AROA1:c", t("2030-01-01T00:20:00Z"));
        p.deny("AROA1:c", t("2030-01-01T00:20:00Z"));
        assert_eq!(p.sessions(), 3);
        let st = &p.doc["Statement"][0];
        assert_eq!(st["Sid"], "LeasefsUntil20300101001500");
        assert_eq!(st["Effect"], "Deny");
        assert_eq!(st["Condition"]["StringEquals"]["aws:userid"], json!(["AROA1:a", "AROA1:b"]));
        p.prune(t("2030-01-01T00:15:00Z"));
        assert_eq!(p.sessions(), 3, "valid through its last second");
        p.prune(t("2030-01-01T00:15:01Z"));
        assert_eq!(p.sessions(), 1);
        assert!(p.contains("AROA1:c") && !p.contains("AROA1:a"));
        p.lift("AROA1:c");
        assert!(p.is_empty());
    }

    #[test]
    fn keeps_statements_it_did_not_write() {
        let other =
            r#"{"Version":"2012-10-17","Statement":{"Sid":"Ops","Effect":"Deny","Action":"s3:*","Resource":"*"}}"#;
        let mut p = DenyPolicy::parse(Some(other)).unwrap();
        p.deny("AROA1:a", t("2030-01-01T00:15:00Z"));
        p.prune(t("2031-01-01T00:00:00Z"));
        assert_eq!(p.doc["Statement"].as_array().unwrap().len(), 1);
        assert_eq!(p.doc["Statement"][0]["Sid"], "Ops");
    }

    #[test]
    fn over_the_limit_statements_are_combined_until_one_holds_about_200_sessions() {
        let mut p = DenyPolicy::parse(None).unwrap();
        let start = t("2030-01-01T00:00:00Z");
        let id = |n: i64| format!("AROAABCDEFGHIJKLMNOPQ:leasefs-65534-{n:012}");
        let mut n = 0;
        while p.text().len() <= POLICY_LIMIT {
            p.deny(&id(n), start + chrono::Duration::seconds(n));
            n += 1;
        }
        eprintln!("a statement per expiry second: {n} sessions fit");
        assert!((50..100).contains(&n), "a statement per second: {n} sessions");
        p.fit();
        assert!(p.text().len() <= POLICY_LIMIT && p.sessions() as i64 == n);
        loop {
            p.deny(&id(n), start + chrono::Duration::seconds(n));
            p.fit();
            if p.text().len() > POLICY_LIMIT {
                break;
            }
            n += 1;
        }
        eprintln!("combined into one statement: {n} sessions fit");
        assert!((180..230).contains(&n), "combined: {n} sessions fit");
        assert_eq!(p.doc["Statement"].as_array().unwrap().len(), 1, "one statement left, still too big");
        // Lifting or pruning expired sessions makes room again; lift finds a session in any statement.
        for k in 0..20 {
            p.lift(&id(k));
        }
        assert!(p.text().len() <= POLICY_LIMIT && !p.contains(&id(3)) && p.contains(&id(30)));
    }
}
