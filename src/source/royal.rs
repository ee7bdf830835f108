//! Royal JSON documents (`{"Objects": [...]}`): each `DynamicCredential` object is a dynamic secret linked to an exec base; other objects are ignored.

use serde::Deserialize;

use super::text::FileText;
use crate::diag::FileError;
use crate::paths::split_path;
use crate::policy::Policy;
use crate::secret::{SecretKind, SecretMeta};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoyalObject {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "ID", default)]
    id: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(rename = "linkedSecret", default)]
    linked_secret: Option<String>,
    #[serde(rename = "format", default)]
    format: Option<String>,
}

/// One object of the file: its secret, its problem, or `None` when it is not a
/// `DynamicCredential`. `linked` is the file's `linkedSecret`, used where the object names none.
pub(super) fn object(
    cx: &FileText<'_>,
    index: usize,
    slice: &str,
    linked: Option<&str>,
) -> Option<Result<SecretMeta, FileError>> {
    let obj: RoyalObject = match cx.item(slice) {
        Ok(o) => o,
        Err(e) => return Some(Err(e)),
    };
    if obj.kind != "DynamicCredential" {
        tracing::debug!(file = %cx.file.display(), index, kind = %obj.kind, "royal object is not a DynamicCredential; ignored");
        return None;
    }
    Some(meta(cx, index, slice, obj, linked).map_err(|msg| cx.problem(slice, None, msg)))
}

fn meta(
    cx: &FileText<'_>,
    index: usize,
    slice: &str,
    obj: RoyalObject,
    linked: Option<&str>,
) -> Result<SecretMeta, String> {
    let name = obj.name.ok_or("DynamicCredential needs a \"Name\"")?;
    let id = obj.id.ok_or("DynamicCredential needs an \"ID\"")?;
    let folder = obj.path.unwrap_or_else(|| "credentials".into());
    let mut segments = split_path(folder.trim_matches('/'), true).map_err(|e| format!("Path {folder:?}: {e}"))?;
    segments.extend(split_path(&name, false).map_err(|e| format!("Name {name:?}: {e}"))?);
    let link = obj
        .linked_secret
        .as_deref()
        .or(linked)
        .ok_or("DynamicCredential needs \"linkedSecret\" (on the object or the file) naming an exec base secret")?;
    split_path(link, false).map_err(|e| format!("linkedSecret: {e}"))?;
    let mut attributes = serde_json::Map::new();
    let mut policy = Policy::default();
    if let Some(f) = &obj.format {
        let format = crate::render::Format::parse(f).map_err(|e| format!("format: {e}"))?;
        attributes.insert("format".into(), f.clone().into());
        policy.format = Some(format);
    }
    attributes.insert("royal".into(), true.into());
    let locator = cx.locator(index, slice);
    let kind = SecretKind::Dynamic { link: link.replace(':', "/") };
    let mut m = SecretMeta::new(Some(&id), &segments, kind, attributes, Some(0), cx.mtime, locator);
    m.extras_mut().policy = policy;
    Ok(m)
}
