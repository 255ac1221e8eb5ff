//! Errors that name the file, line:column and field.

use std::fmt;
use std::path::{Path, PathBuf};

/// A manifest that does not parse or validate.
#[derive(Debug, thiserror::Error)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no position.
    pub line: usize,
    pub column: usize,
    /// The dotted key path of the offending field, when known.
    pub field: String,
    pub message: String,
    /// The offending line, for humans.
    pub snippet: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": ")?;
        if !self.field.is_empty() {
            write!(f, "field `{}`: ", self.field)?;
        }
        write!(f, "{}", self.message)?;
        if !self.snippet.is_empty() {
            write!(f, "\n    {} | {}", self.line, self.snippet)?;
        }
        Ok(())
    }
}

impl ManifestError {
    pub(crate) fn from_toml(file: &Path, text: &str, e: &toml::de::Error) -> ManifestError {
        let message = e.message().trim().to_string();
        let Some(span) = e.span() else {
            return ManifestError {
                file: file.to_path_buf(),
                line: 0,
                column: 0,
                field: String::new(),
                message,
                snippet: String::new(),
            };
        };
        let start = span.start.min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = text[line_start..start].chars().count() + 1;
        let line_text = text[line_start..].lines().next().unwrap_or("").to_string();
        ManifestError {
            file: file.to_path_buf(),
            line,
            column,
            field: field_path(text, line_start),
            message,
            snippet: line_text,
        }
    }
}

/// The dotted key path at the line starting at `line_start`: the nearest
/// `[table]` header above it, plus the line's own key if it has one.
fn field_path(text: &str, line_start: usize) -> String {
    let this_line = text[line_start..].lines().next().unwrap_or("").trim();
    let header = |l: &str| -> Option<String> {
        let l = l.trim();
        let inner = l.strip_prefix('[')?.split(']').next()?;
        Some(inner.trim_start_matches('[').trim().replace('"', ""))
    };
    if let Some(h) = header(this_line) {
        return h;
    }
    let table = text[..line_start].lines().rev().find_map(header);
    let key = this_line
        .split_once('=')
        .map(|(k, _)| k.trim().replace('"', ""))
        .filter(|k| !k.is_empty() && !k.starts_with('#'));
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k,
        (Some(t), None) => t,
        (None, None) => String::new(),
    }
}
