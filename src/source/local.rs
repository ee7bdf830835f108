//! The `local` source: a directory of secret documents (`*.json`, recursive); metadata at listing
//! (with the exact size of each static secret when its pages may be cached), the payload re-read on open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::document::{data_raw, fields_of, lone_value_len, parse_file, read_data, read_doc};
use super::{Listing, Source, SourceError};
use crate::attrs::{Pending, Step, locate};
use crate::defaults::Defaults;
use crate::diag::FileError;
use crate::fields::SecretFields;
use crate::issuer::exec::{PATH as EXEC_PATH, check_programs};
use crate::policy::IssuerKind;
use crate::render::render_static;
use crate::secret::{Locator, SecretKind, SecretMeta};
use crate::trust::Trust;

/// Documents larger than this are refused (a secret catalog is small; this bounds memory).
pub const MAX_DOCUMENT_BYTES: u64 = 16 * 1024 * 1024;

pub struct LocalSource {
    root: PathBuf,
    /// Who may own and change documents and their directories (`--insecure-perms` relaxes it).
    trust: Trust,
    /// `static_page_cache`: listings carry each static secret's exact size as it reads.
    sizes: bool,
    /// The configuration's lease defaults, against which an entry's own settings are judged.
    defaults: Option<Arc<Defaults>>,
}

impl LocalSource {
    pub fn new(root: PathBuf, strict_perms: bool) -> Self {
        LocalSource { root, trust: Trust::new(strict_perms), sizes: false, defaults: None }
    }

    /// Judges each entry against the configuration's defaults too (as `leasefs check` does): an
    /// entry whose leases could never be reused under them is not served.
    pub fn with_defaults(mut self, defaults: Defaults) -> Self {
        self.defaults = Some(Arc::new(defaults));
        self
    }

    /// Lists each static secret with its exact rendered size (for the page cache: the kernel then
    /// knows where the file ends without asking).
    pub fn with_sizes(mut self, on: bool) -> Self {
        self.sizes = on;
        self
    }
}

/// Sets the size of each static secret of one document file to the length of its rendered bytes.
/// The text is already in memory; the rendered bytes are zeroized at once. A secret that does not
/// render keeps no size (its open then reports the error).
fn size_statics(text: &str, secrets: &mut [SecretMeta]) {
    for m in secrets.iter_mut().filter(|m| m.kind == SecretKind::Static) {
        let Locator::File { offset, len, .. } = &m.locator else { continue };
        let (start, end) = (*offset as usize, *offset as usize + *len as usize);
        let Some(data) = text.get(start..end).and_then(data_raw) else {
            m.size = None;
            continue;
        };
        let format = m.policy().format.as_ref();
        // Most documents hold one plain `value`: sized without building and rendering the fields.
        let lone = data.filter(|_| format.is_none()).and_then(lone_value_len);
        m.size = lone
            .or_else(|| fields_of(data).and_then(|f| render_static(&f, format).ok()).map(|b| b.len()))
            .and_then(|n| u32::try_from(n).ok());
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<FileError>, depth: usize, trust: &Trust) {
    if depth > 32 {
        problems.push(FileError::whole(dir, "directory nesting deeper than 32 levels; not read"));
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(FileError::whole(dir, format!("cannot read directory: {e}")));
            return;
        }
    };
    let mut names: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            // A directory others can write to, or that someone else owns: nothing under it is read.
            match std::fs::metadata(&path).map_err(|e| e.to_string()).and_then(|m| trust.check_owned(&m)) {
                Ok(()) => collect(&path, out, problems, depth + 1, trust),
                Err(why) => problems.push(FileError::whole(
                    &path,
                    format!("directory not trusted ({why}); everything under it is skipped"),
                )),
            }
        } else if path.extension().is_some_and(|x| x == "json") {
            // Never opened unless it is a regular file: a FIFO would block the listing.
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => out.push(path),
                Ok(_) => {
                    problems.push(FileError::whole(&path, "not a regular file (a FIFO, socket or device); skipped"))
                }
                Err(e) => problems.push(FileError::whole(&path, format!("cannot read: {e}"))),
            }
        }
    }
}

/// The bytes `offset..offset+len` of a file, as text in a zeroizing buffer.
fn read_span(path: &Path, offset: u32, len: u32) -> Option<Zeroizing<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset.into())).ok()?;
    let mut buf = Zeroizing::new(vec![0u8; len as usize]);
    f.read_exact(&mut buf).ok()?;
    let text = std::str::from_utf8(&buf).ok()?;
    Some(Zeroizing::new(text.to_string()))
}

fn read_text(path: &Path, trust: &Trust) -> Result<(Zeroizing<String>, std::fs::Metadata), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_DOCUMENT_BYTES {
        return Err(format!("{} bytes is over the {MAX_DOCUMENT_BYTES} byte limit", meta.len()));
    }
    trust.check_private(&meta)?;
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| e.to_string())?);
    let text = std::str::from_utf8(&bytes).map_err(|e| format!("not UTF-8 ({e})"))?;
    Ok((Zeroizing::new(text.to_string()), meta))
}

fn list_dir(root: &Path, trust: &Trust, sizes: bool, defaults: Option<&Defaults>) -> Result<Listing, SourceError> {
    if !root.is_dir() {
        return Err(SourceError::Unavailable(format!("{} is not a readable directory", root.display())));
    }
    let mut files = Vec::new();
    let mut listing = Listing::default();
    // The root and every directory above it: if others can change them, no document is read.
    if let Err(why) = trust.check_dirs(root) {
        listing.problems.push(FileError::whole(root, format!("not trusted ({why}); no document under it is read")));
        return Ok(listing);
    }
    collect(root, &mut files, &mut listing.problems, 0, trust);
    // Documents are parsed on every core, in contiguous runs, and joined in file order.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len().max(1));
    let per = files.len().div_ceil(threads).max(1);
    let parts: Vec<(Listing, Vec<Pending>)> = std::thread::scope(|s| {
        let runs: Vec<_> = files.chunks(per).map(|run| s.spawn(move || read_docs(run, trust, sizes))).collect();
        runs.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    let mut pending = Vec::new();
    for (part, waiting) in parts {
        let shift = listing.secrets.len();
        pending.extend(waiting.into_iter().map(|p| Pending { secret: p.secret + shift, ..p }));
        listing.secrets.extend(part.secrets);
        listing.problems.extend(part.problems);
    }
    // Attributes only an entry's issuer can judge, now that every base of the source is known.
    let (refused, problems) = crate::attrs::settle(&listing.secrets, pending);
    if !refused.is_empty() {
        let mut n = 0;
        listing.secrets.retain(|_| {
            n += 1;
            refused.binary_search(&(n - 1)).is_err()
        });
    }
    listing.problems.extend(problems);
    let problems = refuse_unusable(&mut listing.secrets, trust, defaults);
    listing.problems.extend(problems);
    Ok(listing)
}

/// The line and column of `key` (a path of keys) in a secret's document, or where the document
/// starts, for naming it.
fn place(meta: &SecretMeta, key: &[&str], message: String) -> FileError {
    let Locator::File { file, offset, len, .. } = &meta.locator else {
        return FileError::whole(Path::new(meta.path()), message);
    };
    let text = std::fs::read_to_string(&file.path).unwrap_or_default();
    let (start, end) = (*offset as usize, *offset as usize + *len as usize);
    let steps: Vec<Step<'_>> = key.iter().map(|k| Step::Key(k)).collect();
    let inner = text.get(start..end).and_then(|doc| locate(doc, &steps)).unwrap_or(0);
    let (line, column) = crate::diag::line_col(&text, start + inner);
    FileError { file: file.path.clone(), line, column, message }
}

/// A base secret's data, read back from its document (only exec bases, to check their programs).
fn base_fields(meta: &SecretMeta) -> Option<SecretFields> {
    let Locator::File { file, offset, len, .. } = &meta.locator else { return None };
    read_span(&file.path, *offset, *len).and_then(|t| read_doc(&t, meta.path()))?.ok()
}

/// The `#!` interpreter of each program an exec base runs, checked like the program itself: a
/// script whose shell is missing (a container image without /bin/sh) would fail at every open.
fn interpreters(trust: &Trust, fields: &SecretFields) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["command", "revoke_command"] {
        let Some(argv) = fields.get(key).and_then(|t| serde_json::from_str::<Vec<String>>(t).ok()) else { continue };
        let Some(prog) = argv.first().and_then(|p| trust.check_program(p, EXEC_PATH).ok()) else { continue };
        let mut head = [0u8; 256];
        let n = std::fs::File::open(&prog).and_then(|mut f| std::io::Read::read(&mut f, &mut head)).unwrap_or(0);
        let Some(line) = head[..n].strip_prefix(b"#!") else { continue };
        let line = String::from_utf8_lossy(line.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
        let Some(interp) = line.split_whitespace().next() else { continue };
        if let Err(why) = trust.check_program(interp, EXEC_PATH) {
            out.push(format!("{key} {:?} starts with #!{interp}, which is not trusted: {why}", argv[0]));
        }
    }
    out
}

/// Drops what could never be opened, naming each: an `exec` base whose programs are not trusted
/// (or missing), an entry whose `rotate_command` is not, and an entry linked to no base of this
/// source — so the mount lists nothing `leasefs check` refuses.
fn refuse_unusable(secrets: &mut Vec<Arc<SecretMeta>>, trust: &Trust, defaults: Option<&Defaults>) -> Vec<FileError> {
    let mut problems = Vec::new();
    secrets.retain(|m| {
        // Lease settings that only meet the defaults here: no lease of the entry could be reused.
        let dynamic = matches!(m.kind, SecretKind::Dynamic { .. });
        if let Some((key, why)) = defaults.filter(|_| dynamic).and_then(|d| m.policy().reuse_conflict(d)) {
            let msg = format!("{}: attributes.{key}: {why}; not served", m.path().replace('/', ":"));
            problems.push(place(m, &["attributes", key], msg));
            return false;
        }
        let why: Vec<String> = match &m.kind {
            SecretKind::Base { issuer: IssuerKind::Exec, .. } => match base_fields(m) {
                Some(fields) => {
                    let w = check_programs(trust, &fields);
                    if w.is_empty() { interpreters(trust, &fields) } else { w }
                }
                None => Vec::new(),
            },
            SecretKind::Dynamic { .. } => (m.policy().rotate_command.as_ref())
                .and_then(|argv| trust.check_program(&argv[0], EXEC_PATH).err().map(|e| (argv[0].clone(), e)))
                .map(|(prog, e)| vec![format!("attributes.rotate_command {prog:?} is not trusted: {e}")])
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let key: &[&str] = if matches!(m.kind, SecretKind::Base { .. }) { &["data"] } else { &["attributes"] };
        for w in &why {
            problems.push(place(m, key, format!("{}: {w}; not served", m.path().replace('/', ":"))));
        }
        why.is_empty()
    });
    let bases: std::collections::HashSet<&str> =
        secrets.iter().filter(|m| matches!(m.kind, SecretKind::Base { .. })).map(|m| m.path()).collect();
    let dangling: Vec<usize> = (secrets.iter().enumerate())
        .filter(|(_, m)| matches!(&m.kind, SecretKind::Dynamic { link } if !bases.contains(link.as_str())))
        .map(|(i, _)| i)
        .collect();
    for &i in &dangling {
        let m = &secrets[i];
        let SecretKind::Dynamic { link } = &m.kind else { continue };
        problems.push(place(
            m,
            &["attributes", "linkConfig"],
            format!(
                "{} links to {:?}, which is not a served base secret of this source; not served",
                m.path(),
                link.replace('/', ":")
            ),
        ));
    }
    for i in dangling.into_iter().rev() {
        secrets.remove(i);
    }
    problems
}

/// Reads and parses a run of document files; returns the entries whose keys wait for their issuer.
fn read_docs(files: &[PathBuf], trust: &Trust, sizes: bool) -> (Listing, Vec<Pending>) {
    let mut listing = Listing::default();
    let mut pending = Vec::new();
    for f in files {
        match read_text(f, trust) {
            Ok((text, meta)) => {
                let mtime = meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                let mut parsed = parse_file(f, &text, mtime);
                if sizes {
                    size_statics(&text, &mut parsed.secrets);
                }
                let shift = listing.secrets.len();
                pending.extend(parsed.pending.into_iter().map(|p| Pending { secret: p.secret + shift, ..p }));
                listing.secrets.extend(parsed.secrets.into_iter().map(Arc::new));
                listing.problems.extend(parsed.problems);
            }
            Err(msg) => listing.problems.push(FileError::whole(f, msg)),
        }
    }
    (listing, pending)
}

#[async_trait]
impl Source for LocalSource {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    async fn list(&self) -> Result<Listing, SourceError> {
        let root = self.root.clone();
        let (trust, sizes, defaults) = (self.trust, self.sizes, self.defaults.clone());
        tokio::task::spawn_blocking(move || list_dir(&root, &trust, sizes, defaults.as_deref()))
            .await
            .map_err(|e| SourceError::Unavailable(e.to_string()))?
    }

    async fn read(&self, secret: &SecretMeta) -> Result<SecretFields, SourceError> {
        let Locator::File { file, index, offset, len } = &secret.locator else {
            return Err(SourceError::Invalid(format!("{} has no document file", secret.path())));
        };
        let (doc, index, offset, len, path, trust) =
            (file.clone(), *index as usize, *offset, *len, secret.path().to_string(), self.trust);
        tokio::task::spawn_blocking(move || {
            let file = &doc.path;
            let gone = |m: String| {
                let m = format!("{}: {m}", file.display());
                if file.exists() { SourceError::Invalid(m) } else { SourceError::Unavailable(m) }
            };
            // Unchanged since listing: read just this document's bytes.
            let meta = std::fs::metadata(file).map_err(|e| gone(e.to_string()))?;
            trust.check_private(&meta).map_err(gone)?;
            if meta.len() == doc.size && meta.modified().ok() == Some(doc.mtime) {
                if let Some(r) = read_span(file, offset, len).and_then(|t| read_doc(&t, &path)) {
                    return r.map_err(|m| SourceError::Invalid(format!("{}: {m}", file.display())));
                }
            }
            let (text, _) = read_text(file, &trust).map_err(gone)?;
            read_data(file, &text, index, &path).map_err(SourceError::Invalid)
        })
        .await
        .map_err(|e| SourceError::Unavailable(e.to_string()))?
    }
}
