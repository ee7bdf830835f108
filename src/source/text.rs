//! The text of a document file being parsed: where one of its items sits (the locator its secret keeps), and problems placed at a line and column of it.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use crate::diag::{FileError, json_cause};
use crate::secret::{DocFile, Locator};

/// The file being parsed, shared by the secrets it defines.
pub(super) struct FileText<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub mtime: SystemTime,
    pub shared: Arc<DocFile>,
}

impl FileText<'_> {
    /// Where `slice` (one item of the file) is: the locator its secret keeps.
    pub fn locator(&self, index: usize, slice: &str) -> Locator {
        // Documents are at most 16 MiB (`MAX_DOCUMENT_BYTES`): 32 bits hold any position.
        let offset = (slice.as_ptr() as usize).saturating_sub(self.text.as_ptr() as usize).min(u32::MAX as usize);
        let len = slice.len().min(u32::MAX as usize);
        Locator::File { file: self.shared.clone(), index: index as u32, offset: offset as u32, len: len as u32 }
    }

    /// An error at `slice`, or inside it at the serde error's position.
    pub fn problem(&self, slice: &str, e: Option<&serde_json::Error>, msg: String) -> FileError {
        problem_at(self.file, self.text, slice, e, msg)
    }

    /// Parses one item; a syntax or shape error is reported at its position.
    pub fn item<'de, T: Deserialize<'de>>(&self, slice: &'de str) -> Result<T, FileError> {
        serde_json::from_str(slice).map_err(|e| self.problem(slice, Some(&e), json_cause(&e)))
    }
}

fn position(text: &str, slice: &str) -> (usize, usize) {
    let offset = (slice.as_ptr() as usize).saturating_sub(text.as_ptr() as usize).min(text.len());
    crate::diag::line_col(text, offset)
}

/// An error at `slice` (a part of `text`), or inside it at the serde error's position.
pub(super) fn problem_at(
    file: &Path,
    text: &str,
    slice: &str,
    e: Option<&serde_json::Error>,
    msg: String,
) -> FileError {
    let (line, col) = position(text, slice);
    let (line, column) = match e {
        Some(e) if e.line() == 1 => (line, col + e.column() - 1),
        Some(e) if e.line() > 1 => (line + e.line() - 1, e.column()),
        _ => (line, col),
    };
    FileError { file: file.to_path_buf(), line, column, message: msg }
}
