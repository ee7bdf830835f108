//! The model shared by sources, issuers and the filesystem: a secret's metadata (never a value),
//! its kind and where its source finds it again.

use std::sync::Arc;
use std::time::SystemTime;

use crate::policy::{IssuerKind, Policy};

/// What kind of entry a secret is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// `data` holds the payload, fetched on open.
    Static,
    /// Opening issues a credential through the issuer of the base secret at `link` (source-relative path).
    Dynamic { link: String },
    /// Holds an issuer's long-lived credential; `issuer` is `attributes.type`.
    Base { issuer: IssuerKind, expose: bool },
}

/// A secret's id, stored only when it is not its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretId {
    /// The path itself (`a/b/c`).
    Path,
    /// The path written with `:` separators (`a:b:c`, as documents write it).
    Colons,
    Own(Box<str>),
}

impl SecretId {
    pub fn new(id: &str, path: &str) -> SecretId {
        if id == path {
            SecretId::Path
        } else if id.len() == path.len()
            && id.bytes().zip(path.bytes()).all(|(i, p)| if p == b'/' { i == b':' } else { i == p })
        {
            SecretId::Colons
        } else {
            SecretId::Own(id.into())
        }
    }
}

/// Metadata of one secret. Never holds a value.
#[derive(Debug)]
pub struct SecretMeta {
    pub id: SecretId,
    /// Source-relative path, segments joined with `/` (no segment holds a `/`).
    pub path: Box<str>,
    pub kind: SecretKind,
    /// What the document sets beyond path and kind; most static secrets set nothing, and a
    /// million of them cost a pointer each (see `Extras`).
    extras: Option<Box<Extras>>,
    /// Size in bytes when the source knows it without reading the value (documents are at most
    /// 16 MiB, so 32 bits hold any rendered size).
    pub size: Option<u32>,
    pub mtime: SystemTime,
    /// Where the source finds the payload (source-specific, e.g. file and index).
    pub locator: Locator,
}

/// Attributes, policy and ownership a document sets for its entry.
#[derive(Debug, Default)]
pub struct Extras {
    /// Non-secret parameters (`ttl`, `format`, `reuse`, grants, …), passed on to issuers.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The lease and rendering settings of `attributes`, parsed once.
    pub policy: Policy,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u16>,
}

impl SecretMeta {
    /// Builds the metadata of a secret from its path segments; `id` defaults to the path.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Option<&str>,
        segments: &[String],
        kind: SecretKind,
        attributes: serde_json::Map<String, serde_json::Value>,
        size: Option<u32>,
        mtime: SystemTime,
        locator: Locator,
    ) -> SecretMeta {
        let path = segments.join("/");
        let extras = (!attributes.is_empty()).then(|| Box::new(Extras { attributes, ..Extras::default() }));
        SecretMeta {
            id: id.map_or(SecretId::Path, |i| SecretId::new(i, &path)),
            path: path.into(),
            kind,
            extras,
            size,
            mtime,
            locator,
        }
    }

    /// The extras, created on first change.
    pub fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }
    /// Non-secret parameters (`ttl`, `format`, `reuse`, grants, …), passed on to issuers.
    pub fn attributes(&self) -> &serde_json::Map<String, serde_json::Value> {
        static EMPTY: std::sync::LazyLock<serde_json::Map<String, serde_json::Value>> =
            std::sync::LazyLock::new(serde_json::Map::new);
        self.extras.as_ref().map_or(&EMPTY, |e| &e.attributes)
    }
    pub fn uid(&self) -> Option<u32> {
        self.extras.as_ref().and_then(|e| e.uid)
    }
    pub fn gid(&self) -> Option<u32> {
        self.extras.as_ref().and_then(|e| e.gid)
    }
    pub fn mode(&self) -> Option<u16> {
        self.extras.as_ref().and_then(|e| e.mode)
    }
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.path.split('/')
    }
    /// The last path segment: the file's name.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
    pub fn id(&self) -> std::borrow::Cow<'_, str> {
        match &self.id {
            SecretId::Path => std::borrow::Cow::Borrowed(&self.path),
            SecretId::Colons => std::borrow::Cow::Owned(self.path.replace('/', ":")),
            SecretId::Own(s) => std::borrow::Cow::Borrowed(s),
        }
    }
    /// The entry's own policy (empty when the document sets none).
    pub fn policy(&self) -> &Policy {
        static EMPTY: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
        self.extras.as_ref().map_or_else(|| EMPTY.get_or_init(Policy::default), |e| &e.policy)
    }
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes().get(key).and_then(|v| v.as_str())
    }
    pub fn is_listed(&self) -> bool {
        !matches!(self.kind, SecretKind::Base { expose: false, .. })
    }
}

/// A document file as it was when listed: opens read just one document's bytes while the file
/// still has this size and modification time.
#[derive(Debug)]
pub struct DocFile {
    pub path: std::path::PathBuf,
    pub size: u64,
    pub mtime: SystemTime,
}

/// Where a source finds a payload again.
#[derive(Clone, Debug)]
pub enum Locator {
    /// A local document file, the index of the document within it, and its byte range there.
    File { file: Arc<DocFile>, index: u32, offset: u32, len: u32 },
    /// A key in a remote store (OpenBao KV path or dynamic path).
    Remote(Box<str>),
    /// Fields that the source embeds itself (the demo catalog's jwt key, generated at start).
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_stored_only_when_it_is_not_the_path() {
        let segs = ["a".to_string(), "b".to_string(), "c".to_string()];
        let meta = |id: &str| {
            SecretMeta::new(
                Some(id),
                &segs,
                SecretKind::Static,
                Default::default(),
                None,
                SystemTime::UNIX_EPOCH,
                Locator::None,
            )
        };
        assert_eq!(meta("a/b/c").id, SecretId::Path);
        assert_eq!(meta("a:b:c").id, SecretId::Colons);
        assert_eq!(meta("a:b:c").id(), "a:b:c");
        // Mixed separators are kept as written.
        assert_eq!(meta("a:b/c").id(), "a:b/c");
        assert_eq!(meta("Cred01").id(), "Cred01");
    }
}
