//! The lease journal: one JSON line per intent/issue/revoke in `state_dir`, fsynced before contents
//! are returned (several appends share one fsync); compacted while running; read back at start to
//! revoke what a run that died left behind.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::table::Origin;
use crate::policy::IssuerKind;
use crate::statefile::{Access, StateTrust};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// About to issue a credential whose name was chosen locally.
    Intent,
    Issued,
    Revoked,
}

/// The issuer kind a record names. A name this build does not know (a record of another
/// version, or an edited one) is kept as written: such a record is reported and kept in the
/// journal, never run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum IssuerName {
    Known(IssuerKind),
    Unknown(String),
}

impl Default for IssuerName {
    fn default() -> Self {
        IssuerName::Unknown(String::new())
    }
}

impl IssuerName {
    pub fn known(&self) -> Option<IssuerKind> {
        match self {
            IssuerName::Known(k) => Some(*k),
            IssuerName::Unknown(_) => None,
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            IssuerName::Known(k) => k.as_str(),
            IssuerName::Unknown(s) => s,
        }
    }
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
    pub issuer: IssuerName,
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

impl Record {
    /// The one place a journal record is built.
    pub fn new(
        op: Op,
        lease_id: &str,
        origin: &Origin,
        revocation: &serde_json::Value,
        expires_at: Option<DateTime<Utc>>,
        time: DateTime<Utc>,
    ) -> Record {
        Record {
            op,
            lease_id: lease_id.into(),
            path: origin.path.clone(),
            secret_id: origin.secret_id.clone(),
            issuer: IssuerName::Known(origin.issuer),
            source: origin.source_key.clone(),
            base: origin.base.path().to_string(),
            revocation: revocation.clone(),
            expires_at,
            time,
        }
    }
}

/// What a journal held when it was opened.
#[derive(Default, Debug)]
pub struct Replay {
    /// Leases (or intents) with no `revoked` line: left by a run that died.
    pub pending: Vec<Record>,
    /// Lines that could not be read, named by line number.
    pub problems: Vec<String>,
}

/// A journal is rewritten with only its open records once it holds this many lines and at
/// least four times as many lines as open records.
const COMPACT_AT: usize = 4096;

type Reply = tokio::sync::oneshot::Sender<std::io::Result<()>>;

pub struct Journal {
    path: PathBuf,
    writer: std::sync::mpsc::Sender<(Record, Reply)>,
}

/// The writer thread's state: the file, the records still open, and how many lines it holds.
struct Writer {
    st: StateTrust,
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// The length of the file up to its last whole record.
    len: u64,
    /// An append failed and cutting the file back failed too.
    torn: bool,
    open: IndexMap<String, Record>,
    lines: usize,
    compact_at: usize,
}

impl Journal {
    pub const FILE: &'static str = "journal.jsonl";

    /// Opens (creating) `dir/journal.jsonl`, replays it, and compacts it to what is still open.
    /// The directory and the file must be trusted (SPEC §10.5; see `statefile.rs`).
    pub fn open(dir: &Path) -> std::io::Result<(Arc<Journal>, Replay)> {
        Self::open_with(dir, COMPACT_AT, true)
    }

    /// As [`Journal::open`]; `strict` false (`--insecure-perms`) only warns about ownership and
    /// modes (links and files that are not regular are refused still).
    pub fn open_trusted(dir: &Path, strict: bool) -> std::io::Result<(Arc<Journal>, Replay)> {
        Self::open_with(dir, COMPACT_AT, strict)
    }

    fn open_with(dir: &Path, compact_at: usize, strict: bool) -> std::io::Result<(Arc<Journal>, Replay)> {
        let st = StateTrust::new(strict);
        let dir = st.dir(dir, 0o700, true).map_err(std::io::Error::other)?;
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let path = dir.join(Self::FILE);
        let (replay, open) = match st.open(&path, Access::Read).map_err(std::io::Error::other)? {
            Some(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)?;
                replay(&bytes)
            }
            None => (Replay::default(), IndexMap::new()),
        };
        let (file, len) = rewrite(&st, &dir, &path, open.values())?;
        let mut w = Writer { st, dir, path: path.clone(), file, len, torn: false, lines: open.len(), open, compact_at };
        let (tx, rx) = std::sync::mpsc::channel::<(Record, Reply)>();
        std::thread::Builder::new().name("leasefs-journal".into()).spawn(move || w.serve(rx))?;
        Ok((Arc::new(Journal { path, writer: tx }), replay))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn submit(&self, r: Record) -> tokio::sync::oneshot::Receiver<std::io::Result<()>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The writer lives as long as the journal; a send fails only if it died.
        let _ = self.writer.send((r, tx));
        rx
    }

    /// Appends a record and returns once it is on disk (blocking; from a blocking context).
    pub fn append_blocking(&self, r: Record) -> std::io::Result<()> {
        self.submit(r).blocking_recv().unwrap_or_else(|_| Err(std::io::Error::other("the journal writer stopped")))
    }

    /// Appends a record and returns once it is on disk.
    pub async fn append(&self, r: Record) -> std::io::Result<()> {
        self.submit(r).await.unwrap_or_else(|_| Err(std::io::Error::other("the journal writer stopped")))
    }
}

/// Writes `records` to a new file, syncs it and moves it over `path`; returns the file (open for
/// appending: the same inode, never opened again by name) and its length.
fn rewrite<'a>(
    st: &StateTrust,
    dir: &Path,
    path: &Path,
    records: impl Iterator<Item = &'a Record>,
) -> std::io::Result<(File, u64)> {
    let tmp = dir.join(format!("{}.tmp", Journal::FILE));
    let _ = std::fs::remove_file(&tmp);
    let mut f = st
        .open(&tmp, Access::Replace)
        .map_err(std::io::Error::other)?
        .ok_or_else(|| std::io::Error::other("cannot create the journal's new copy"))?;
    let mut buf = Vec::new();
    for r in records {
        serde_json::to_writer(&mut buf, r)?;
        buf.push(b'\n');
    }
    let written = f.write_all(&buf).and_then(|_| f.sync_all()).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()?;
    Ok((f, buf.len() as u64))
}

impl Writer {
    /// Writes what arrives, one fsync for everything that queued up meanwhile (group commit):
    /// each caller is answered only after the fsync that covers its record.
    fn serve(&mut self, rx: std::sync::mpsc::Receiver<(Record, Reply)>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let result = self.write(batch.iter().map(|(r, _)| r));
            for (_, reply) in batch {
                let _ =
                    reply.send(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::new(e.kind(), e.to_string())));
            }
            if result.is_ok() && self.lines >= self.compact_at && self.lines >= 4 * self.open.len() {
                match rewrite(&self.st, &self.dir, &self.path, self.open.values()) {
                    Ok((f, len)) => {
                        self.file = f;
                        self.len = len;
                        self.torn = false;
                        self.lines = self.open.len();
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot compact the lease journal; it keeps growing"),
                }
            }
        }
    }

    /// Appends and syncs a batch. On failure (ENOSPC, EIO) the file is cut back to its last whole
    /// record, so that no later record is glued onto a torn one; if even that fails, nothing more
    /// is appended until it succeeds.
    fn write<'a>(&mut self, records: impl Iterator<Item = &'a Record> + Clone) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        let mut buf = Vec::new();
        for r in records.clone() {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        if let Err(e) = self.file.write_all(&buf).and_then(|_| self.file.sync_data()) {
            match self.file.set_len(self.len).and_then(|_| self.file.sync_data()) {
                Ok(()) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot append to the lease journal; cut back to its last whole record")
                }
                Err(t) => {
                    self.torn = true;
                    tracing::error!(path = %self.path.display(), error = %e, truncate_error = %t, "cannot append to the lease journal, nor cut it back; nothing more is appended until it can be");
                }
            }
            return Err(e);
        }
        self.len += buf.len() as u64;
        for r in records {
            self.lines += 1;
            match r.op {
                Op::Intent | Op::Issued => {
                    self.open.insert(r.lease_id.clone(), r.clone());
                }
                Op::Revoked => {
                    self.open.shift_remove(&r.lease_id);
                }
            }
        }
        Ok(())
    }
}

/// Reads a journal: what is still open (first-seen order; a later `issued` replaces an `intent`).
fn replay(bytes: &[u8]) -> (Replay, IndexMap<String, Record>) {
    let mut out = Replay::default();
    let mut open: IndexMap<String, Record> = IndexMap::new();
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
                Op::Intent | Op::Issued => {
                    open.insert(r.lease_id.clone(), r);
                }
                Op::Revoked => {
                    open.shift_remove(&r.lease_id);
                }
            },
            Err(e) => {
                let torn = i == last && !ends_clean;
                out.problems.push(if torn {
                    format!("line {}: torn record at the end (the previous run died while writing it); ignored", i + 1)
                } else {
                    format!("line {}: unreadable ({}); ignored", i + 1, category(&e))
                });
            }
        }
    }
    out.pending = open.values().cloned().collect();
    (out, open)
}

fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "i/o error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "not a journal record",
        serde_json::error::Category::Eof => "cut short",
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
            issuer: IssuerName::Known(IssuerKind::Exec),
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
                j.append_blocking(x).unwrap();
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

    #[test]
    fn the_journal_is_compacted_while_running_and_keeps_what_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open_with(dir.path(), 64, true).unwrap();
        j.append_blocking(rec(Op::Issued, "keep")).unwrap();
        for i in 0..200 {
            let id = format!("l{i}");
            j.append_blocking(rec(Op::Issued, &id)).unwrap();
            j.append_blocking(rec(Op::Revoked, &id)).unwrap();
        }
        let lines = std::fs::read_to_string(dir.path().join(Journal::FILE)).unwrap().lines().count();
        assert!(lines < 64 + 2, "401 appends left {lines} lines: not compacted");
        drop(j);
        let (_j, r) = Journal::open(dir.path()).unwrap();
        let ids: Vec<_> = r.pending.iter().map(|x| x.lease_id.as_str()).collect();
        assert_eq!(ids, ["keep"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_fsyncs_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let j = j.clone();
                tokio::spawn(async move { j.append(rec(Op::Issued, &format!("c{i}"))).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        drop(j);
        let (_j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.pending.len(), 100);
    }

    #[test]
    fn the_issuer_is_read_as_a_kind_and_an_unknown_one_is_kept_as_written() {
        let lines = [
            r#"{"op":"issued","lease_id":"a","issuer":"postgres","source":"/","base":"b","time":"2030-01-01T00:00:00Z"}"#,
            r#"{"op":"issued","lease_id":"z","issuer":"vaultish","source":"/","base":"b","time":"2030-01-01T00:00:00Z"}"#,
        ];
        let (r, _) = replay(format!("{}\n{}\n", lines[0], lines[1]).as_bytes());
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.pending[0].issuer, IssuerName::Known(IssuerKind::Postgres));
        assert_eq!(r.pending[1].issuer, IssuerName::Unknown("vaultish".into()));
        // Written back as it was read: compaction keeps such a record for a build that knows it.
        assert!(serde_json::to_string(&r.pending[1]).unwrap().contains(r#""issuer":"vaultish""#));
        assert!(serde_json::to_string(&r.pending[0]).unwrap().contains(r#""issuer":"postgres""#));
    }
}
