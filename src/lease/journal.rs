//! The lease journal: one JSON line per intent/issue/revoke in `state_dir`, fsynced before contents are returned; read back at start to revoke orphans.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// About to issue a credential whose name was chosen locally.
    Intent,
    Issued,
    Revoked,
}

/// One journal line. Holds no secret: the revocation handle is a name or an id.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Record {
    pub op: Op,
    pub lease_id: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub secret_id: String,
    #[serde(default)]
    pub issuer: String,
    /// The prefix of the source that holds the base secret.
    #[serde(default)]
    pub source: String,
    /// The base secret's path within that source.
    #[serde(default)]
    pub base: String,
    #[serde(default)]
    pub revocation: serde_json::Value,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    pub time: DateTime<Utc>,
}

pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

/// What a journal held when it was opened.
#[derive(Default, Debug)]
pub struct Replay {
    /// Leases (or intents) with no `revoked` line: left by a run that died.
    pub pending: Vec<Record>,
    /// Lines that could not be read, named by line number.
    pub problems: Vec<String>,
}

impl Journal {
    pub const FILE: &'static str = "journal.jsonl";

    /// Opens (creating) `dir/journal.jsonl` and replays it.
    pub fn open(dir: &Path) -> std::io::Result<(Arc<Journal>, Replay)> {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let path = dir.join(Self::FILE);
        let replay = match std::fs::read(&path) {
            Ok(bytes) => replay(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Replay::default(),
            Err(e) => return Err(e),
        };
        // Rewrite with only what is still pending, so the journal does not grow across runs.
        let tmp = dir.join(format!("{}.tmp", Self::FILE));
        {
            let mut f = OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
            for r in &replay.pending {
                let mut line = serde_json::to_vec(r)?;
                line.push(b'\n');
                f.write_all(&line)?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        let file = OpenOptions::new().append(true).mode(0o600).open(&path)?;
        Ok((Arc::new(Journal { path, file: Mutex::new(file) }), replay))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record and fsyncs it (blocking; call from a blocking context).
    pub fn append_blocking(&self, r: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(r)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line)?;
        f.sync_data()
    }

    /// Appends a record and fsyncs it, off the async threads.
    pub async fn append(self: &Arc<Self>, r: Record) -> std::io::Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.append_blocking(&r)).await.map_err(std::io::Error::other)?
    }
}

fn replay(bytes: &[u8]) -> Replay {
    let mut out = Replay::default();
    let mut open: indexmap_lite::Ordered = Default::default();
    let text = String::from_utf8_lossy(bytes);
    let ends_clean = text.ends_with('\n');
    let lines: Vec<&str> = text.split('\n').collect();
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => match r.op {
                Op::Intent | Op::Issued => open.insert(r),
                Op::Revoked => open.remove(&r.lease_id),
            },
            Err(e) => {
                let torn = i == last && !ends_clean;
                out.problems.push(if torn {
                    format!("line {}: torn record at the end (the previous run died while writing it); ignored", i + 1)
                } else {
                    format!("line {}: unreadable ({}); ignored", i + 1, e.classify_name())
                });
            }
        }
    }
    out.pending = open.into_values();
    out
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}
impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "i/o error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "not a journal record",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}

/// Records by lease id in first-seen order; a later `issued` replaces an `intent`.
mod indexmap_lite {
    use super::Record;

    #[derive(Default)]
    pub struct Ordered {
        items: Vec<Record>,
    }

    impl Ordered {
        pub fn insert(&mut self, r: Record) {
            match self.items.iter_mut().find(|x| x.lease_id == r.lease_id) {
                Some(x) => *x = r,
                None => self.items.push(r),
            }
        }
        pub fn remove(&mut self, id: &str) {
            self.items.retain(|x| x.lease_id != id);
        }
        pub fn into_values(self) -> Vec<Record> {
            self.items
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: Op, id: &str) -> Record {
        Record {
            op,
            lease_id: id.into(),
            path: "/p".into(),
            secret_id: "s".into(),
            issuer: "exec".into(),
            source: "/".into(),
            base: "b".into(),
            revocation: serde_json::Value::Null,
            expires_at: None,
            time: Utc::now(),
        }
    }

    #[test]
    fn replay_keeps_what_was_not_revoked_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, r) = Journal::open(dir.path()).unwrap();
            assert!(r.pending.is_empty());
            for x in [
                rec(Op::Issued, "a"),
                rec(Op::Intent, "b"),
                rec(Op::Issued, "c"),
                rec(Op::Revoked, "a"),
                rec(Op::Issued, "b"),
            ] {
                j.append_blocking(&x).unwrap();
            }
        }
        let p = dir.path().join(Journal::FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.extend_from_slice(br#"{"op": "issued", "lease_id": "d", "pa"#);
        std::fs::write(&p, &bytes).unwrap();
        let (_j, r) = Journal::open(dir.path()).unwrap();
        let ids: Vec<_> = r.pending.iter().map(|x| x.lease_id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(r.pending[0].op, Op::Issued);
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].contains("line 6: torn"), "{:?}", r.problems);
        // Compacted: reopening shows the same pending set and no problem.
        drop(_j);
        let (_j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.pending.len(), 2);
        assert!(r.problems.is_empty());
    }
}
