//! Extended attributes (`user.leasefs.*`): metadata of an entry — kind, id, link, ttl, issuer —
//! never a value.

use std::time::Duration;

use super::error::FsError;
use super::tree::{Node, NodeKind, Tree};
use crate::defaults::format_duration;
use crate::secret::SecretKind;

/// The value of attribute `name` of inode `ino`.
pub fn get(tree: &Tree, ino: u64, name: &str, default_ttl: Duration) -> Result<Vec<u8>, FsError> {
    let n = tree.node(ino).ok_or_else(FsError::enoent)?;
    of(tree, n, default_ttl)
        .into_iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.into_bytes())
        .ok_or_else(|| FsError::new(libc::ENODATA, "no such attribute"))
}

/// The names of the attributes of inode `ino`, each ended by a NUL (as `listxattr` returns them).
pub fn list(tree: &Tree, ino: u64, default_ttl: Duration) -> Result<Vec<u8>, FsError> {
    let n = tree.node(ino).ok_or_else(FsError::enoent)?;
    let mut out = Vec::new();
    for (k, _) in of(tree, n, default_ttl) {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
    }
    Ok(out)
}

/// The attributes of an entry; `default_ttl` is shown for dynamic entries that set none.
pub fn of(tree: &Tree, n: &Node, default_ttl: Duration) -> Vec<(&'static str, String)> {
    let (NodeKind::Secret { source, meta } | NodeKind::Bundle { source, meta, .. }) = &n.kind else {
        return Vec::new();
    };
    let mut v = vec![("user.leasefs.id", meta.id().into_owned())];
    match &meta.kind {
        SecretKind::Dynamic { link } => {
            v.insert(0, ("user.leasefs.kind", "dynamic".into()));
            v.push(("user.leasefs.link", link.replace('/', ":")));
            // The policy's typed ttl: written as a string or as a number of seconds.
            let ttl = format_duration(meta.policy().ttl.unwrap_or(default_ttl));
            v.push(("user.leasefs.ttl", ttl));
            let issuer = tree.base(*source, link).and_then(|b| match &b.kind {
                SecretKind::Base { issuer, .. } => Some(issuer.as_str()),
                _ => None,
            });
            v.push(("user.leasefs.issuer", issuer.unwrap_or("unresolved").into()));
        }
        _ => v.insert(0, ("user.leasefs.kind", "static".into())),
    }
    v
}
