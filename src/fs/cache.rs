//! Static payloads kept for `cache_ttl` (and served up to `max_stale` longer while their source is
//! down); zeroized when evicted or dropped.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use super::error::FsError;
use crate::defaults::Defaults;
use crate::fields::SecretFields;
use crate::secret::SecretMeta;
use crate::source::{Source, SourceError};

/// How many payloads are kept.
pub const ENTRIES: usize = 16384;

pub struct PayloadCache {
    entries: Mutex<LruCache<u64, (Instant, Arc<SecretFields>)>>,
}

impl Default for PayloadCache {
    fn default() -> Self {
        PayloadCache { entries: Mutex::new(LruCache::new(NonZeroUsize::new(ENTRIES).unwrap_or(NonZeroUsize::MIN))) }
    }
}

impl PayloadCache {
    /// The payload of `ino` and how old it is.
    pub fn get(&self, ino: u64) -> Option<(Duration, Arc<SecretFields>)> {
        self.entries.lock().get(&ino).map(|(at, f)| (at.elapsed(), f.clone()))
    }

    pub fn put(&self, ino: u64, fields: Arc<SecretFields>) {
        self.entries.lock().put(ino, (Instant::now(), fields));
    }

    pub fn forget(&self, ino: u64) {
        self.entries.lock().pop(&ino);
    }
}

impl PayloadCache {
    /// The payload of `ino`: from the cache while fresh, else from `source` (under
    /// `issue_timeout`); while the source is unavailable, a cached payload up to `max_stale` old.
    pub async fn fetch(
        &self,
        ino: u64,
        source: &dyn Source,
        meta: &SecretMeta,
        d: &Defaults,
    ) -> Result<Arc<SecretFields>, FsError> {
        let stale = match self.get(ino) {
            Some((age, f)) if age < d.cache_ttl.0 => return Ok(f),
            other => other,
        };
        let fetched = match tokio::time::timeout(d.issue_timeout.0, source.read(meta)).await {
            Ok(r) => r,
            Err(_) => Err(SourceError::Unavailable(format!("reading took longer than {:?}", d.issue_timeout.0))),
        };
        match fetched {
            Ok(f) => {
                let f = Arc::new(f);
                self.put(ino, f.clone());
                Ok(f)
            }
            Err(SourceError::Unavailable(msg)) => match stale {
                Some((age, f)) if age < d.cache_ttl.0 + d.max_stale.0 => {
                    tracing::warn!(path = %meta.path(), error = %msg, age_s = age.as_secs(), "source unavailable; serving the cached value");
                    Ok(f)
                }
                _ => {
                    self.forget(ino);
                    Err(FsError::eio(msg))
                }
            },
            Err(e @ SourceError::Invalid(_)) => {
                self.forget(ino);
                Err(e.into())
            }
        }
    }
}

/// What the kernel's page cache holds for each static secret served through it: a keyed
/// fingerprint (never the bytes) of the contents last served, so pages of other contents are never kept.
#[derive(Default)]
pub struct ServedPages {
    served: Mutex<std::collections::HashMap<u64, u64>>,
    key: std::collections::hash_map::RandomState,
}

impl ServedPages {
    /// Records `bytes` as what `ino` now serves; true if the pages cached before hold the same.
    pub fn unchanged(&self, ino: u64, bytes: &[u8]) -> bool {
        let print = std::hash::BuildHasher::hash_one(&self.key, bytes);
        self.served.lock().insert(ino, print) == Some(print)
    }
}

/// The largest size the kernel may hold for each inode, from the sizes opens raised it to. An open
/// whose raise lands exactly on its size, with nothing larger told before, needs no attribute
/// drop: the kernel's size is then the handle's, and `fstat` is answered without a round trip.
#[derive(Default)]
pub struct KernelSizes {
    ceiling: Mutex<std::collections::HashMap<u64, u64>>,
}

impl KernelSizes {
    /// Records that the kernel's size of `ino`, listed as `listed`, is raised to `size`; true if
    /// its size is then exactly `size` (false: the attributes must be dropped so that `fstat` asks).
    pub fn raise(&self, ino: u64, listed: u64, size: u64) -> bool {
        let end = if size == 0 { 0 } else { super::types::placeholder_at(size) + 1 };
        let mut g = self.ceiling.lock();
        let ceiling = g.entry(ino).or_insert(0);
        *ceiling = (*ceiling).max(listed);
        let exact = end == size && *ceiling <= size;
        *ceiling = (*ceiling).max(end);
        exact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstat_is_answered_by_the_kernel_only_when_its_size_is_exactly_the_handles() {
        let k = KernelSizes::default();
        assert!(k.raise(7, 0, 100), "first open: raised from the listed 0 to exactly 100");
        assert!(k.raise(7, 0, 100), "same size again");
        assert!(k.raise(7, 0, 120), "longer: raised exactly");
        assert!(!k.raise(7, 0, 90), "shorter than the kernel may hold: attributes must be dropped");
        assert!(!k.raise(8, 50, 40), "shorter than listed");
        assert!(!k.raise(9, 0, 4097), "placeholder past the end (page boundary): one byte too large");
        assert!(!k.raise(9, 0, 4000), "and everything shorter after it");
    }
}
