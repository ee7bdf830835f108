//! The sources as mounted: each one's spec, what it last listed and its health; and the
//! questions `check` asks of them (every listed secret, bases of an issuer, dangling links).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::control::Health;
use super::tree::Tree;
use super::types::SourceSpec;
use crate::diag::FileError;
use crate::policy::IssuerKind;
use crate::secret::{SecretKind, SecretMeta};
use crate::source::{Source, SourceError};

/// What a source listed last, shared with the tree built from it.
pub type Listed = Arc<Vec<Arc<SecretMeta>>>;

struct Slot {
    spec: SourceSpec,
    last: Mutex<(Listed, Health)>,
}

pub struct Catalog {
    slots: Vec<Slot>,
}

impl Catalog {
    pub fn new(specs: Vec<SourceSpec>) -> Catalog {
        let slots = specs
            .into_iter()
            .map(|spec| Slot { spec, last: Mutex::new((Arc::new(Vec::new()), Health::default())) })
            .collect();
        Catalog { slots }
    }

    pub fn spec(&self, i: usize) -> &SourceSpec {
        &self.slots[i].spec
    }

    /// The key the journal uses for a source: its prefix.
    pub fn source_key(&self, i: usize) -> String {
        format!("/{}", self.slots[i].spec.prefix.join("/"))
    }

    /// The source with this key.
    pub fn find(&self, key: &str) -> Option<usize> {
        (0..self.slots.len()).find(|i| self.source_key(*i) == key)
    }

    /// What each source listed last.
    pub fn lasts(&self) -> Vec<Listed> {
        self.slots.iter().map(|s| s.last.lock().0.clone()).collect()
    }

    /// Lists every source again (each bounded by `timeout`); one that fails keeps its last listing.
    pub async fn list_all(&self, timeout: Duration) -> Vec<FileError> {
        let mut problems = Vec::new();
        for slot in &self.slots {
            let result = match tokio::time::timeout(timeout, slot.spec.source.list()).await {
                Ok(r) => r,
                Err(_) => Err(SourceError::Unavailable(format!("listing took longer than {timeout:?}"))),
            };
            let mut g = slot.last.lock();
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            match result {
                Ok(listing) => {
                    g.1.up = true;
                    g.1.last_ok = Some(now);
                    g.1.secrets = listing.secrets.len();
                    g.1.problems = listing.problems.len();
                    let mut metas = listing.secrets;
                    metas.shrink_to_fit();
                    g.0 = Arc::new(metas);
                    problems.extend(listing.problems);
                }
                Err(e) => {
                    if g.1.up || g.1.last_error.is_none() {
                        tracing::warn!(source = %slot.spec.source.describe(), error = %e, "source unavailable; serving its last listing");
                    }
                    g.1.up = false;
                    g.1.last_error = Some(format!("{now}: {e}"));
                }
            }
        }
        problems
    }

    pub fn health(&self) -> Vec<(String, Health)> {
        self.slots.iter().map(|s| (s.spec.source.describe(), s.last.lock().1.clone())).collect()
    }

    /// Every secret the sources listed, with its prefix in the mount (for `check`).
    pub fn listed(&self) -> Vec<(String, Arc<SecretMeta>)> {
        let mut out = Vec::new();
        for i in 0..self.slots.len() {
            let prefix = self.source_key(i);
            out.extend(self.slots[i].last.lock().0.iter().map(|m| (prefix.clone(), m.clone())));
        }
        out
    }

    /// The base secrets of one issuer kind, with their sources (for `check`).
    pub fn bases_of(&self, kind: IssuerKind) -> Vec<(Arc<SecretMeta>, Arc<dyn Source>)> {
        let mut out = Vec::new();
        for slot in &self.slots {
            let listed = slot.last.lock().0.clone();
            for meta in listed.iter() {
                if matches!(meta.kind, SecretKind::Base { issuer, .. } if issuer == kind) {
                    out.push((meta.clone(), slot.spec.source.clone()));
                }
            }
        }
        out
    }

    /// Dynamic entries whose `linkedSecret` names no base secret of their source (for `check`).
    pub fn dangling_links(&self, tree: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let listed = slot.last.lock().0.clone();
            for meta in listed.iter() {
                if let SecretKind::Dynamic { link } = &meta.kind {
                    if tree.base(i, link).is_none() {
                        out.push(format!(
                            "{}: {} links to {:?}, which is not a base secret of its source",
                            slot.spec.source.describe(),
                            meta.path(),
                            link.replace('/', ":")
                        ));
                    }
                }
            }
        }
        out
    }
}
