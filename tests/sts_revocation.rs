//! STS sessions die with their lease: `leasefs revoke` (or the lease's end) puts a deny for
//! exactly that session on its role, read back here through IAM's GetRolePolicy on moto, and the
//! deny is lifted once the session has expired anyway — by the running daemon, or by the next
//! start when the daemon died in between. moto does not evaluate the deny on later calls; what
//! is checked is the policy leasefs writes (see docs/issuers.md for the check on real AWS).

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::backends::{Sts, python, sts};
use common::*;
use serde_json::{Value, json};

const POLICY: &str = "leasefs-revoked-sessions";

/// Runs boto3 as the base user (the same keys leasefs holds) and parses its JSON output.
fn boto(s: &Sts, script: &str, env: &[(&str, &str)]) -> Value {
    let prelude = r#"
import boto3, json, os, sys
from botocore.exceptions import ClientError
kw = dict(endpoint_url=os.environ["EP"], region_name="us-east-1", aws_access_key_id=os.environ["K"], aws_secret_access_key=os.environ["S"])
iam = boto3.client("iam", **kw)
"#;
    let mut all =
        vec![("EP", s.endpoint.as_str()), ("K", s.access_key_id.as_str()), ("S", s.secret_access_key.as_str())];
    all.extend_from_slice(env);
    let o = python(&format!("{prelude}{script}"), &all);
    assert!(o.status.success(), "boto3: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("boto3 output {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// A role of its own for each test: (arn, role id).
fn role(s: &Sts, name: &str) -> (String, String) {
    let v = boto(
        s,
        r#"
trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
r = iam.create_role(RoleName=os.environ["R"], AssumeRolePolicyDocument=trust)["Role"]
print(json.dumps({"arn": r["Arn"], "id": r["RoleId"]}))
"#,
        &[("R", name)],
    );
    (v["arn"].as_str().unwrap().into(), v["id"].as_str().unwrap().into())
}

/// The role's deny policy as IAM holds it (None: there is none): a GetRolePolicy signed by curl
/// (`--aws-sigv4`) as the base user — fast enough to poll.
fn deny_policy(s: &Sts, role: &str) -> Option<Value> {
    let o = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--aws-sigv4", "aws:amz:us-east-1:iam", "--user"])
        .arg(format!("{}:{}", s.access_key_id, s.secret_access_key))
        .args(["-d", &format!("Action=GetRolePolicy&Version=2010-05-08&RoleName={role}&PolicyName={POLICY}")])
        .arg(format!("{}/", s.endpoint))
        .output()
        .unwrap();
    let xml = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "curl: {}", String::from_utf8_lossy(&o.stderr));
    if xml.contains("<Code>NoSuchEntity</Code>") {
        return None;
    }
    let doc = xml
        .split_once("<PolicyDocument>")
        .and_then(|(_, rest)| rest.split_once("</PolicyDocument>"))
        .unwrap_or_else(|| panic!("GetRolePolicy: {xml}"))
        .0;
    let doc = percent_encoding::percent_decode_str(doc).decode_utf8().unwrap();
    Some(serde_json::from_str(&doc).unwrap())
}

/// Every `aws:userid` the policy denies.
fn denied(policy: &Option<Value>) -> Vec<String> {
    let Some(p) = policy else { return Vec::new() };
    p["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|st| st["Condition"]["StringEquals"]["aws:userid"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A credential_process file read: (session name from the assumed-role ARN, its Expiration).
fn session_of(s: &Sts, env: &Env, file: &str) -> (String, DateTime<Utc>) {
    let v: Value = serde_json::from_str(&cat(&env.m(file))).unwrap();
    let arn = s
        .caller_identity(
            v["AccessKeyId"].as_str().unwrap(),
            v["SecretAccessKey"].as_str().unwrap(),
            v["SessionToken"].as_str(),
        )
        .expect("the issued keys sign a call");
    let session = arn.rsplit('/').next().unwrap().to_string();
    (session, v["Expiration"].as_str().unwrap().parse().unwrap())
}

fn aws_env(s: &Sts, entries: &[(&str, &str, &str)]) -> Env {
    let mut env = Env::new();
    let base = json!({"access_key_id": s.access_key_id, "secret_access_key": s.secret_access_key,
                      "region": "us-east-1", "endpoint": s.endpoint, "iam_endpoint": s.endpoint});
    let mut docs = vec![json!({"path": "base:aws:api", "attributes": {"type": "aws"}, "data": base})];
    for (path, role_arn, ttl) in entries {
        docs.push(dynamic(
            path,
            "base:aws:api",
            json!({"role_arn": role_arn, "ttl": ttl, "format": "credential_process"}),
        ));
    }
    env.doc("aws.json", &Value::Array(docs).to_string());
    env.config(json!({}));
    env.start();
    env
}

/// `eventually`, with the daemon's log in the failure.
fn wait(env: &Env, limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}\n--- daemon log:\n{}", env.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lease_id(env: &Env, path: &str) -> String {
    env.leases().into_iter().find(|l| l["path"] == path).unwrap()["id"].as_str().unwrap().to_string()
}

fn journal(env: &Env) -> Vec<Value> {
    std::fs::read_to_string(env.path("state/journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn journaled(env: &Env, lease: &str, op: &str) -> bool {
    journal(env).iter().any(|r| r["lease_id"] == lease && r["op"] == op)
}

#[test]
fn leasefs_revoke_of_a_five_minute_sts_lease_denies_exactly_that_session_on_its_role() {
    let s = sts();
    let (arn, role_id) = role(s, "rev-five");
    let mut env = aws_env(s, &[("dynamic:aws:one", &arn, "5m"), ("dynamic:aws:two", &arn, "5m")]);
    let (one, one_expires) = session_of(s, &env, "dynamic/aws/one");
    let (two, _) = session_of(s, &env, "dynamic/aws/two");
    assert_ne!(one, two);
    let left = (one_expires - Utc::now()).num_seconds();
    assert!((280..=300).contains(&left), "the credential states the lease's 5 minutes: {left} s left");
    assert_eq!(deny_policy(s, "rev-five"), None);

    let id = lease_id(&env, "/dynamic/aws/one");
    // Journaled like any revocable lease: the handle names the role and the session, no key.
    let issued = journal(&env).into_iter().find(|r| r["lease_id"] == id.as_str() && r["op"] == "issued");
    let issued = issued.expect("the aws lease is journaled");
    assert_eq!(
        (issued["revocation"]["role_arn"].as_str(), issued["revocation"]["session"].as_str()),
        (Some(arn.as_str()), Some(one.as_str()))
    );
    assert!(!std::fs::read_to_string(env.path("state/journal.jsonl")).unwrap().contains("SecretAccessKey"));

    ok(BIN, &["revoke", env.mnt().to_str().unwrap(), &id]);
    let mut policy = None;
    wait(&env, Duration::from_secs(10), "a deny on the role", || {
        policy = deny_policy(s, "rev-five");
        policy.is_some()
    });
    let p = policy.clone().unwrap();
    eprintln!("the role's policy after `leasefs revoke`: {p}");
    assert_eq!(denied(&policy), vec![format!("{role_id}:{one}")], "exactly the revoked session: {p}");
    let st = &p["Statement"][0];
    assert_eq!(
        (st["Effect"].as_str(), st["Action"].as_str(), st["Resource"].as_str()),
        (Some("Deny"), Some("*"), Some("*"))
    );
    // Named after the session's own expiry, as STS stated it.
    assert_eq!(st["Sid"], format!("LeasefsUntil{}", one_expires.format("%Y%m%d%H%M%S")), "{p}");
    // Revoked for the user (audited once the deny is read back, a moment after moto has it); kept
    // in the journal until the deny is lifted.
    wait(&env, Duration::from_secs(10), "the revocation audited", || {
        env.audit().iter().any(|e| e["event"] == "revoke" && e["lease_id"] == id.as_str() && e["outcome"] == "revoked")
    });
    assert!(env.leases().iter().all(|l| l["id"] != id.as_str()));
    assert!(!journaled(&env, &id, "revoked"), "the deny is still to be lifted: the journal keeps the lease");

    // The other session's lease ends at shutdown: denied too, in the same policy.
    assert!(env.daemon().stop().success());
    assert_eq!(denied(&deny_policy(s, "rev-five")), vec![format!("{role_id}:{one}"), format!("{role_id}:{two}")]);
}

#[test]
fn the_deny_is_lifted_at_the_sessions_own_expiry_and_by_the_next_start_after_a_crash() {
    let s = sts();
    let (arn, role_id) = role(s, "rev-short");
    let mut env = aws_env(s, &[("dynamic:aws:short", &arn, "12s")]);

    // Revoked a second or two in; the session itself runs for 12 s.
    let (first, expires) = session_of(s, &env, "dynamic/aws/short");
    let id = lease_id(&env, "/dynamic/aws/short");
    ok(BIN, &["revoke", env.mnt().to_str().unwrap(), &id]);
    wait(&env, Duration::from_secs(5), "the deny", || {
        denied(&deny_policy(s, "rev-short")) == [format!("{role_id}:{first}")]
    });
    wait(&env, Duration::from_secs(25), "the deny lifted", || deny_policy(s, "rev-short").is_none());
    assert!(Utc::now() >= expires, "lifted only once the session had expired ({expires})");
    wait(&env, Duration::from_secs(5), "the journal closing the lease", || journaled(&env, &id, "revoked"));

    // The same with the daemon killed while the deny stands: nobody lifts it until the next start.
    let (second, expires) = session_of(s, &env, "dynamic/aws/short");
    let id = lease_id(&env, "/dynamic/aws/short");
    ok(BIN, &["revoke", env.mnt().to_str().unwrap(), &id]);
    wait(&env, Duration::from_secs(5), "the deny", || {
        denied(&deny_policy(s, "rev-short")) == [format!("{role_id}:{second}")]
    });
    env.daemon().kill9();
    let past = Instant::now() + (expires - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(2);
    std::thread::sleep(past.saturating_duration_since(Instant::now()));
    assert_eq!(denied(&deny_policy(s, "rev-short")), [format!("{role_id}:{second}")], "still there with no daemon");
    assert!(!journaled(&env, &id, "revoked"));
    env.start();
    wait(&env, Duration::from_secs(10), "the next start lifting the expired session's deny", || {
        deny_policy(s, "rev-short").is_none()
    });
    wait(&env, Duration::from_secs(5), "the journal closing the lease", || journaled(&env, &id, "revoked"));
}

#[test]
fn without_iam_permissions_the_revocation_fails_loudly_until_the_session_has_expired() {
    let s = sts();
    let (arn, _) = role(s, "rev-noiam");
    // A base user that may assume the role and nothing else.
    let v = boto(
        s,
        r#"
iam.create_user(UserName="assume-only")
key = iam.create_access_key(UserName="assume-only")["AccessKey"]
iam.put_user_policy(UserName="assume-only", PolicyName="assume", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}))
print(json.dumps({"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))
"#,
        &[],
    );
    let mut env = Env::new();
    let base = json!({"access_key_id": v["key"], "secret_access_key": v["secret"], "endpoint": s.endpoint, "iam_endpoint": s.endpoint});
    let docs = json!([
        {"path": "base:aws:api", "attributes": {"type": "aws"}, "data": base},
        dynamic("dynamic:aws:short", "base:aws:api", json!({"role_arn": arn, "ttl": "10s", "format": "credential_process"}))
    ]);
    env.doc("aws.json", &docs.to_string());
    env.config(json!({}));
    env.start();
    let (_, expires) = session_of(s, &env, "dynamic/aws/short");
    let id = lease_id(&env, "/dynamic/aws/short");
    ok(BIN, &["revoke", env.mnt().to_str().unwrap(), &id]);
    wait(&env, Duration::from_secs(10), "the refusal audited", || {
        env.audit().iter().any(|e| e["lease_id"] == id.as_str() && e["outcome"] == "revoke failed")
    });
    let refusal = env.audit().into_iter().find(|e| e["lease_id"] == id.as_str() && e["outcome"] == "revoke failed");
    let detail = refusal.unwrap()["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("IAM") && detail.contains("AccessDenied"), "{detail}");
    let metrics = read(&env.m(".leasefs/metrics")).unwrap();
    assert!(metrics.contains("leasefs_revocation_failures_total{issuer=\"aws\"}"), "{metrics}");
    assert!(!journaled(&env, &id, "revoked"));
    // Once the session has expired the revocation counts as done (a warning says what is left).
    wait(&env, Duration::from_secs(30), "the revocation done after the session's expiry", || {
        journaled(&env, &id, "revoked")
    });
    assert!(Utc::now() >= expires);
    assert!(env.log().contains("could not lift the deny of an expired STS session"));
}
