//! Base secrets' data, read through one cache for issuance, renewal and revocation alike
//! (kept for `cache_ttl`, zeroized when evicted).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::table::Origin;
use crate::error::LeaseError;
use crate::fields::SecretFields;

/// When a base secret was read, and its data.
type Entry = (Instant, Arc<SecretFields>);

pub struct Bases {
    ttl: Duration,
    timeout: Duration,
    /// (source key, base path) → when read, and the data.
    cache: Mutex<lru::LruCache<(String, String), Entry>>,
}

impl Bases {
    pub fn new(ttl: Duration, timeout: Duration) -> Self {
        Bases {
            ttl,
            timeout,
            cache: Mutex::new(lru::LruCache::new(NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN))),
        }
    }

    /// The base secret's data of `origin`, from the cache while it is fresh.
    pub async fn fields(&self, origin: &Origin) -> Result<Arc<SecretFields>, LeaseError> {
        let key = (origin.source_key.clone(), origin.base.path().to_string());
        if let Some((at, f)) = self.cache.lock().get(&key) {
            if at.elapsed() < self.ttl {
                return Ok(f.clone());
            }
        }
        let read = tokio::time::timeout(self.timeout, origin.source.read(&origin.base)).await;
        let fields = match read {
            Ok(Ok(f)) => Arc::new(f),
            Ok(Err(e)) => {
                return Err(
                    LeaseError::unavailable(format!("cannot read the base secret {}", origin.base.path())).caused_by(e)
                );
            }
            Err(_) => return Err(LeaseError::timeout(self.timeout).context("reading the base secret")),
        };
        self.cache.lock().put(key, (Instant::now(), fields.clone()));
        Ok(fields)
    }
}
