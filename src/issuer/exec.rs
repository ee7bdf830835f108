//! The `exec` issuer: runs the dynamic credential script contract (SPEC §4) — argv, cleared env, request JSON on stdin, credential JSON on stdout.

use std::process::Stdio;

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use super::{IssueRequest, Issued, Issuer, LeaseError, RevokeRequest, parse_expiry};
use crate::fields::SecretFields;
use crate::requester::Requester;
use crate::trust::Trust;

/// Output larger than this is refused (`EIO`): the bound of every issuer's credential.
pub const MAX_OUTPUT: usize = super::MAX_CREDENTIAL_BYTES;
/// How much of a failing script's stderr reaches the log.
pub const STDERR_LOGGED: usize = 512;
/// The only variable the cleared environment gets besides the `LEASEFS_*` tokens.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a script waits for a guard being restarted before its open fails (`EIO`).
const GUARD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Output fields that identify (not unlock) a credential; they are kept for `revoke_command`.
const IDENTIFYING: &[&str] =
    &["LeaseId", "lease_id", "Username", "username", "user", "AccessKeyId", "access_key_id", "KeyFilePath", "id"];

pub struct ExecIssuer {
    /// Who may own the programs a base names (`--insecure-perms` relaxes it).
    pub trust: Trust,
}

/// Kills the script's whole process group and reaps the script unless it finished (a timeout
/// drops the future mid-run): no process, not even a zombie, is left behind.
struct GroupGuard {
    pgid: i32,
    child: Option<tokio::process::Child>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        super::guard::finished(self.pgid);
        if let Some(mut child) = self.child.take() {
            if self.pgid > 0 {
                // SAFETY: signalling a process group we created.
                unsafe { libc::killpg(self.pgid, libc::SIGKILL) };
            }
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = child.wait().await;
                });
            }
        }
    }
}

struct Ran {
    status: std::process::ExitStatus,
    stdout: Zeroizing<Vec<u8>>,
    stderr: String,
}

fn command_of(base: &SecretFields, key: &str) -> Result<Option<Vec<String>>, LeaseError> {
    let Some(text) = base.get(key) else { return Ok(None) };
    let argv: Vec<String> = serde_json::from_str(text).map_err(|_| {
        LeaseError::failed(format!("exec: base data \"{key}\" must be an array of strings (argv, no shell)"))
    })?;
    if argv.is_empty() || argv[0].is_empty() {
        return Err(LeaseError::failed(format!("exec: base data \"{key}\" is empty")));
    }
    Ok(Some(argv))
}

/// Checks the programs a base secret names (`command`, `revoke_command`) as they would be run.
pub fn check_programs(trust: &Trust, base: &SecretFields) -> Vec<String> {
    let mut problems = Vec::new();
    for key in ["command", "revoke_command"] {
        match command_of(base, key) {
            Ok(Some(argv)) => {
                if let Err(why) = trust.check_program(&argv[0], PATH) {
                    problems.push(format!("{key} {:?} is not trusted: {why}", argv[0]));
                }
            }
            Ok(None) if key == "command" => problems.push("no \"command\"".into()),
            Ok(None) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    problems
}

fn sanitize(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(STDERR_LOGGED)];
    let s: String =
        String::from_utf8_lossy(cut).chars().map(|c| if c.is_control() && c != '\n' { '?' } else { c }).collect();
    if bytes.len() > STDERR_LOGGED {
        format!("{}… ({} bytes)", s.trim_end(), bytes.len())
    } else {
        s.trim_end().to_string()
    }
}

async fn run(trust: &Trust, argv: &[String], env: &[(&str, String)], stdin: &[u8]) -> Result<Ran, LeaseError> {
    // A program others could have written or replaced is never run (SPEC §9.1).
    trust
        .check_program(&argv[0], PATH)
        .map_err(|why| LeaseError::failed(format!("exec: {:?} is not trusted: {why}", argv[0])))?;
    // Nor while no guard would kill it with the daemon (SPEC §10.3).
    super::guard::ready(GUARD_WAIT).await.map_err(|why| LeaseError::failed(format!("exec: {why}")))?;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", PATH)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| LeaseError::failed(format!("exec: cannot run {:?}: {e}", argv[0])))?;
    let mut sin = child.stdin.take();
    let mut sout = child.stdout.take().expect("piped");
    let mut serr = child.stderr.take().expect("piped");
    let mut guard = GroupGuard { pgid: child.id().map(|p| p as i32).unwrap_or(0), child: Some(child) };
    // Killed with its children if the daemon dies while it runs.
    super::guard::started(guard.pgid);
    let write = async {
        if let Some(s) = sin.as_mut() {
            // A script that ignores stdin may close it early: that is not an error.
            let _ = s.write_all(stdin).await;
        }
        drop(sin.take());
    };
    let pgid = guard.pgid;
    let read_out = async {
        let mut buf = Zeroizing::new(Vec::with_capacity(64 * 1024));
        let r = (&mut sout).take(MAX_OUTPUT as u64 + 1).read_to_end(&mut buf).await;
        if buf.len() > MAX_OUTPUT && pgid > 0 {
            // Stop the script now: it may be blocked writing more, holding stderr open.
            // SAFETY: signalling the process group we created.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
        r.map(|_| buf)
    };
    // Drained to the end (keeping the first 64 KiB): a script blocked on a full stderr pipe
    // would never exit.
    let read_err = async {
        let mut buf = Vec::new();
        let _ = (&mut serr).take(64 * 1024).read_to_end(&mut buf).await;
        let _ = tokio::io::copy(&mut serr, &mut tokio::io::sink()).await;
        buf
    };
    let ((), out, err) = tokio::join!(write, read_out, read_err);
    let stdout = out.map_err(|e| LeaseError::failed(format!("exec: reading output: {e}")))?;
    if stdout.len() > MAX_OUTPUT {
        drop(guard); // kills the group
        return Err(LeaseError::failed(format!("exec: {:?} printed more than {MAX_OUTPUT} bytes", argv[0])));
    }
    let status = match guard.child.as_mut() {
        Some(c) => c.wait().await.map_err(|e| LeaseError::failed(format!("exec: {e}")))?,
        None => return Err(LeaseError::failed("exec: lost the child")),
    };
    guard.child = None;
    // Children the script left behind in its group are not ours to keep.
    // SAFETY: signalling the process group we created; harmless if it is empty.
    unsafe { libc::killpg(guard.pgid, libc::SIGKILL) };
    drop(guard);
    Ok(Ran { status, stdout, stderr: sanitize(&err) })
}

/// Runs a `rotate_command` as a script is run (trusted program, cleared environment with the
/// lease's id and path, the guard, its process group killed after), bounded by `timeout`.
pub async fn run_rotate_command(
    trust: &Trust,
    argv: &[String],
    lease_id: &str,
    path: &str,
    timeout: std::time::Duration,
) -> Result<(), LeaseError> {
    let env = [("LEASEFS_LEASE_ID", lease_id.to_string()), ("LEASEFS_SECRET_PATH", path.to_string())];
    let ran = tokio::time::timeout(timeout, run(trust, argv, &env, b""))
        .await
        .unwrap_or_else(|_| Err(LeaseError::timeout(timeout)))?;
    if !ran.status.success() {
        return Err(LeaseError::failed(format!("rotate_command {:?} failed ({})", argv[0], ran.status))
            .with_log_detail(format!("stderr: {}", ran.stderr)));
    }
    Ok(())
}

fn tokens(lease_id: &str, id: &str, name: &str, path: &str, who: &Requester) -> Vec<(&'static str, String)> {
    vec![
        ("LEASEFS_SECRET_ID", id.to_string()),
        ("LEASEFS_SECRET_NAME", name.to_string()),
        ("LEASEFS_SECRET_PATH", path.to_string()),
        ("LEASEFS_LEASE_ID", lease_id.to_string()),
        ("LEASEFS_UID", who.uid.to_string()),
        ("LEASEFS_GID", who.gid.to_string()),
        ("LEASEFS_PID", who.pid.to_string()),
    ]
    .into_iter()
    .chain(who.workload.iter().flat_map(|w| w.env()))
    .collect()
}

/// Describes a JSON error by kind and position only: serde's messages can quote the input.
fn json_problem(e: &serde_json::Error) -> String {
    format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column())
}

/// Parses what a script printed: AWS `credential_process` JSON, a RoyalJSONDynamicCredential, or plain fields.
pub fn parse_output(
    bytes: &[u8],
) -> Result<(SecretFields, Option<chrono::DateTime<chrono::Utc>>, serde_json::Value), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("output is not UTF-8 (at byte {})", e.valid_up_to()))?;
    if text.trim().is_empty() {
        return Err("output is empty".into());
    }
    if !text.trim_start().starts_with('{') {
        return Err("output is not a JSON object".into());
    }
    let fields = SecretFields::from_json_object(text)
        .map_err(|e| format!("output is not a JSON object: {}", json_problem(&e)))?;
    if let Some(v) = fields.get("Version") {
        if v != "1" {
            return Err(format!("credential_process output has Version {v}, expected 1"));
        }
        for k in ["AccessKeyId", "SecretAccessKey"] {
            if fields.get(k).is_none() {
                return Err(format!("credential_process output lacks {k}"));
            }
        }
    }
    let expiry = match fields.get_any(&["Expiration", "ExpiresAt", "expires_at", "expiration"]) {
        None | Some("") | Some("null") => None,
        Some(t) => {
            Some(parse_expiry(t).ok_or("the expiry (Expiration/ExpiresAt) is neither RFC 3339 nor epoch seconds")?)
        }
    };
    let mut revocation = serde_json::Map::new();
    for k in IDENTIFYING {
        if let Some(v) = fields.get(k) {
            revocation.insert((*k).to_string(), v.into());
        }
    }
    Ok((fields, expiry, serde_json::Value::Object(revocation)))
}

#[derive(Serialize)]
struct SecretInfo<'a> {
    id: &'a str,
    name: &'a str,
    path: &'a str,
    attributes: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct Request<'a> {
    lease_id: &'a str,
    secret: SecretInfo<'a>,
    requester: &'a Requester,
    ttl_seconds: u64,
    base: &'a SecretFields,
}

#[derive(Serialize)]
struct RevokeBody<'a> {
    lease_id: &'a str,
    secret_id: &'a str,
    path: &'a str,
    revocation: &'a serde_json::Value,
    base: &'a SecretFields,
}

fn to_secret_json<T: Serialize>(v: &T) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(16 * 1024));
    let _ = serde_json::to_writer(&mut *out, v);
    out
}

#[async_trait]
impl Issuer for ExecIssuer {
    /// With a `revoke_command`, the lease is journaled before the program runs: if the daemon
    /// dies while it runs, the next start revokes by lease id (`LEASEFS_LEASE_ID`).
    fn prepare(&self, req: &IssueRequest<'_>) -> Option<serde_json::Value> {
        req.base.get("revoke_command").map(|_| serde_json::json!({"exec": "intent"}))
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, LeaseError> {
        let argv = command_of(req.base, "command")?
            .ok_or_else(|| LeaseError::failed("exec: the base secret has no \"command\""))?;
        let name = req.secret.name();
        let id = req.secret.id();
        let body = Request {
            lease_id: req.lease_id,
            secret: SecretInfo { id: &id, name, path: req.path, attributes: req.secret.attributes() },
            requester: req.requester,
            ttl_seconds: req.ttl.as_secs(),
            base: req.base,
        };
        let stdin = to_secret_json(&body);
        let env = tokens(req.lease_id, &id, name, req.path, req.requester);
        let ran = run(&self.trust, &argv, &env, &stdin).await?;
        if !ran.status.success() {
            // Its stderr goes to the daemon log only: never to the audit log or a reader.
            return Err(LeaseError::failed(format!("exec: {:?} failed ({})", argv[0], ran.status))
                .with_log_detail(format!("stderr: {}", ran.stderr)));
        }
        let (fields, expires_at, revocation) =
            parse_output(&ran.stdout).map_err(|m| LeaseError::failed(format!("exec: {:?}: {m}", argv[0])))?;
        Ok(Issued { fields, expires_at, revocation })
    }

    /// Only a base with a `revoke_command` can end a credential before the expiry it states.
    fn revocable(&self, base: &SecretFields, _revocation: &serde_json::Value) -> bool {
        base.get("revoke_command").is_some()
    }

    async fn revoke(&self, req: &RevokeRequest<'_>) -> Result<(), LeaseError> {
        let Some(argv) = command_of(req.base, "revoke_command")? else { return Ok(()) };
        let body = RevokeBody {
            lease_id: req.lease_id,
            secret_id: req.secret_id,
            path: req.path,
            revocation: req.revocation,
            base: req.base,
        };
        let stdin = to_secret_json(&body);
        let env = vec![
            ("LEASEFS_LEASE_ID", req.lease_id.to_string()),
            ("LEASEFS_SECRET_ID", req.secret_id.to_string()),
            ("LEASEFS_SECRET_PATH", req.path.to_string()),
        ];
        let ran = run(&self.trust, &argv, &env, &stdin).await?;
        if !ran.status.success() {
            return Err(LeaseError::failed(format!("exec: revoke {:?} failed ({})", argv[0], ran.status))
                .with_log_detail(format!("stderr: {}", ran.stderr)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_process_output() {
        let (f, exp, rev) = parse_output(
            br#"{"Version": 1, "AccessKeyId": "ASIA1", "SecretAccessKey": "s", "SessionToken": "t", "Expiration": "2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(f.get("AccessKeyId"), Some("ASIA1"));
        assert_eq!(exp.unwrap().to_rfc3339(), "2030-01-01T00:00:00+00:00");
        assert_eq!(rev["AccessKeyId"], "ASIA1");
        assert!(rev.get("SecretAccessKey").is_none());
    }

    #[test]
    fn royal_output() {
        let (f, exp, rev) =
            parse_output(br#"{"Username": "u1", "Password": "p", "ExpiresAt": 1893456000, "LeaseId": "L1"}"#).unwrap();
        assert_eq!(f.get("Password"), Some("p"));
        assert_eq!(exp.unwrap().timestamp(), 1893456000);
        assert_eq!(rev, serde_json::json!({"LeaseId": "L1", "Username": "u1"}));
    }

    #[test]
    fn garbage_is_refused_without_quoting_it() {
        for bad in [
            &b"hunter2"[..],
            b"",
            b"\"hunter2\"",
            b"{\"a\": hunter2}",
            b"\xff\xfe",
            b"[1,2]",
            br#"{"Version": 2}"#,
            br#"{"Version": 1, "AccessKeyId": "x"}"#,
        ] {
            let e = parse_output(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert!(parse_output(br#"{"a": 1, "Expiration": "soon"}"#).is_err());
    }
}
