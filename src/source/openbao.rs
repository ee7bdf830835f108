//! The `openbao` source: KV v2 mounts listed through metadata endpoints only (a value is read on open), and the roles of dynamic mounts as dynamic entries.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{Listing, Source, SourceError};
use crate::diag::FileError;
use crate::fields::SecretFields;
use crate::openbao::{BaoClient, BaoError, Endpoints, fields_of};
use crate::openbao_auth::{AuthConfig, Login};
use crate::paths::split_path;
use crate::policy::IssuerKind;
use crate::secret::{Locator, SecretKind, SecretMeta};

/// Where the synthesized base secret of a dynamic mount lives (never listed).
pub const BASE_DIR: &str = "_openbao";

pub struct OpenBaoSource {
    endpoints: Endpoints,
    login: Arc<Login>,
    kv_mounts: Vec<String>,
    dynamic_mounts: Vec<String>,
    timeout: Duration,
}

impl OpenBaoSource {
    pub fn new(
        endpoints: Endpoints,
        auth: AuthConfig,
        kv_mounts: Vec<String>,
        dynamic_mounts: Vec<String>,
        timeout: Duration,
    ) -> Self {
        let login = Login::new(auth, endpoints.clone(), timeout);
        OpenBaoSource { endpoints, login, kv_mounts, dynamic_mounts, timeout }
    }

    fn address(&self) -> &str {
        self.endpoints.addresses.first().map_or("", String::as_str)
    }

    /// A client with the current token (a token file is re-read at each use; an AppRole token
    /// is renewed or logged in again as needed).
    async fn client(&self) -> Result<BaoClient, SourceError> {
        let token = self.login.token().await.map_err(map_err)?;
        BaoClient::new(&self.endpoints, token, self.timeout).map_err(map_err)
    }

    async fn walk_kv(
        &self,
        client: &BaoClient,
        mount: &str,
        listing: &mut Listing,
        now: SystemTime,
    ) -> Result<(), SourceError> {
        let mut dirs = vec![String::new()];
        let mut seen = 0usize;
        while let Some(dir) = dirs.pop() {
            let keys = match client.list(&format!("{mount}/metadata/{dir}")).await {
                Ok(k) => k,
                Err(BaoError::NotFound) => continue,
                Err(e) => return Err(map_err(e)),
            };
            for key in keys {
                seen += 1;
                if seen > 1_000_000 {
                    return Err(SourceError::Invalid(format!("{mount}: more than a million keys; stopped")));
                }
                if let Some(sub) = key.strip_suffix('/') {
                    dirs.push(format!("{dir}{sub}/"));
                    continue;
                }
                let rel = format!("{dir}{key}");
                let mut segments = vec![mount.to_string()];
                match segments_of(&rel) {
                    Ok(s) => segments.extend(s),
                    Err(e) => {
                        // A key can be megabytes long: the problem names its start only.
                        let shown = crate::diag::excerpt(&rel, 200);
                        listing.problems.push(FileError::whole(
                            std::path::Path::new(&format!("{}/v1/{mount}/metadata/{shown}", self.address())),
                            e,
                        ));
                        continue;
                    }
                }
                listing.secrets.push(meta(
                    format!("{mount}/{rel}"),
                    segments,
                    SecretKind::Static,
                    Default::default(),
                    now,
                    Locator::Remote(format!("{mount}/data/{rel}").into()),
                ));
            }
        }
        Ok(())
    }
}

/// KV keys are `/`-separated; each segment must be a safe file name.
fn segments_of(rel: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let shown = crate::diag::excerpt(rel, 200);
    for seg in rel.split('/') {
        // Reuse the document path rules on one segment at a time (a ':' in a key is not a separator here).
        let checked = split_path(&seg.replace(':', "/"), false).map_err(|e| format!("key {shown:?}: {e}"))?;
        if checked.len() != 1 {
            return Err(format!("key {shown:?}: segment {:?} holds a ':' or '/'", crate::diag::excerpt(seg, 200)));
        }
        out.push(seg.to_string());
    }
    Ok(out)
}

/// Metadata of an OpenBao entry: ownership and mode come from the source's defaults.
fn meta(
    id: String,
    segments: Vec<String>,
    kind: SecretKind,
    attributes: serde_json::Map<String, serde_json::Value>,
    mtime: SystemTime,
    locator: Locator,
) -> Arc<SecretMeta> {
    Arc::new(SecretMeta::new(Some(&id), &segments, kind, attributes, None, mtime, locator))
}

fn map_err(e: BaoError) -> SourceError {
    match e {
        BaoError::Unreachable(m) | BaoError::Timeout(m) => SourceError::Unavailable(m),
        // A refused token or a sealed server: keep serving the last listing.
        BaoError::Refused(m) => SourceError::Unavailable(m),
        BaoError::NotFound => SourceError::Invalid("not found".into()),
    }
}

#[async_trait]
impl Source for OpenBaoSource {
    fn describe(&self) -> String {
        format!("openbao:{}", self.endpoints.addresses.join(","))
    }

    fn openbao_login(&self) -> Option<Arc<Login>> {
        Some(self.login.clone())
    }

    async fn list(&self) -> Result<Listing, SourceError> {
        let client = self.client().await?;
        let now = SystemTime::now();
        let mut listing = Listing::default();
        for mount in &self.kv_mounts {
            self.walk_kv(&client, mount.trim_matches('/'), &mut listing, now).await?;
        }
        for mount in &self.dynamic_mounts {
            let mount = mount.trim_matches('/');
            let roles = match client.list(&format!("{mount}/roles")).await {
                Ok(r) => r,
                Err(BaoError::NotFound) => Vec::new(),
                Err(e) => return Err(map_err(e)),
            };
            let base_path = format!("{BASE_DIR}/{mount}");
            listing.secrets.push(meta(
                format!("{mount}/"),
                vec![BASE_DIR.into(), mount.to_string()],
                SecretKind::Base { issuer: IssuerKind::Openbao, expose: false },
                Default::default(),
                now,
                Locator::None,
            ));
            for role in roles.iter().filter(|r| !r.ends_with('/')) {
                let Ok(seg) = segments_of(role) else { continue };
                let mut attributes = serde_json::Map::new();
                attributes.insert("path".into(), format!("{mount}/creds/{role}").into());
                listing.secrets.push(meta(
                    format!("{mount}/creds/{role}"),
                    [vec![mount.to_string(), "creds".into()], seg].concat(),
                    SecretKind::Dynamic { link: base_path.clone() },
                    attributes,
                    now,
                    Locator::None,
                ));
            }
        }
        Ok(listing)
    }

    async fn read(&self, secret: &SecretMeta) -> Result<SecretFields, SourceError> {
        match (&secret.kind, &secret.locator) {
            // The base of a dynamic mount: how to reach OpenBao, for the openbao issuer.
            (SecretKind::Base { .. }, _) => {
                let mut f = SecretFields::default();
                self.endpoints.to_fields(&mut f);
                // The issuer asks this source's login for a current token at each use
                // (`openbao_login`).
                Ok(f)
            }
            (_, Locator::Remote(path)) => {
                let client = self.client().await?;
                let mut v = client.read(path).await.map_err(|e| match e {
                    BaoError::NotFound => SourceError::Invalid(format!("{path}: not found (deleted?)")),
                    other => map_err(other),
                })?;
                let data = v.pointer_mut("/data/data").map(serde_json::Value::take).unwrap_or_default();
                Ok(fields_of(data))
            }
            _ => Err(SourceError::Invalid(format!("{}: nothing to read", secret.path()))),
        }
    }
}
