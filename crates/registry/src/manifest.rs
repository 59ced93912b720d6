//! A version's manifest: every file with its relative path, size and sha256.
//! The manifest's own digest (over a canonical text form) is the version's
//! identity. Paths are checked here once: relative, `/`-separated, no `..`,
//! `.` or empty segments, no backslashes or control characters, no
//! duplicates.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::RegistryError;

/// Longest relative path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// One file of a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative path inside the version's directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The blob holding the file's bytes.
    pub sha256: Digest,
}

/// Bounds a manifest must stay within.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most files in one version.
    pub max_files: usize,
    /// Largest single file (blob), in bytes.
    pub max_blob_size: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_files: 10_000, max_blob_size: 16 << 30 }
    }
}

/// A checked manifest, entries sorted by path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Manifest {
    files: Vec<Entry>,
}

impl Manifest {
    /// Checks `files` against the path rules and `limits`.
    pub fn new(mut files: Vec<Entry>, limits: Limits) -> Result<Manifest, RegistryError> {
        if files.is_empty() {
            return Err(RegistryError::InvalidManifest("a manifest needs at least one file".into()));
        }
        if files.len() > limits.max_files {
            return Err(RegistryError::InvalidManifest(format!(
                "{} files given; at most {} are accepted per version",
                files.len(),
                limits.max_files
            )));
        }
        let mut seen = BTreeSet::new();
        for entry in &files {
            check_path(&entry.path)?;
            if entry.size > limits.max_blob_size {
                return Err(RegistryError::InvalidManifest(format!(
                    "file '{}' is {} bytes; at most {} are accepted per file",
                    entry.path, entry.size, limits.max_blob_size
                )));
            }
            if !seen.insert(entry.path.as_str()) {
                return Err(RegistryError::InvalidManifest(format!("path '{}' appears twice", entry.path)));
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        // A file whose path is also a directory of another ("a" and "a/b") cannot be written out.
        for pair in files.windows(2) {
            if let [a, b] = pair
                && b.path.strip_prefix(a.path.as_str()).is_some_and(|rest| rest.starts_with('/'))
            {
                return Err(RegistryError::InvalidManifest(format!(
                    "path '{}' is a file and also the directory of '{}'",
                    a.path, b.path
                )));
            }
        }
        Ok(Manifest { files })
    }

    /// The entries, sorted by path.
    pub fn files(&self) -> &[Entry] {
        &self.files
    }

    /// Total bytes of all files.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|e| e.size).sum()
    }

    /// The version's identity: sha256 of one line per file, sorted by path,
    /// `<sha256 hex> <size> <path>\n` (paths hold no newline).
    pub fn digest(&self) -> Digest {
        let mut text = String::new();
        for e in &self.files {
            text.push_str(&format!("{} {} {}\n", e.sha256.hex(), e.size, e.path));
        }
        Digest::of(text.as_bytes())
    }
}

/// Checks one relative path.
pub fn check_path(path: &str) -> Result<(), RegistryError> {
    let bad = |why: &str| Err(RegistryError::InvalidManifest(format!("path '{}' {why}", path.escape_debug())));
    if path.is_empty() {
        return bad("is empty");
    }
    if path.len() > MAX_PATH_LEN {
        return bad(&format!("is longer than {MAX_PATH_LEN} bytes"));
    }
    if path.starts_with('/') {
        return bad("is absolute; paths must be relative to the version's directory");
    }
    if path.contains('\\') || path.chars().any(char::is_control) {
        return bad("has a backslash or a control character");
    }
    if path.len() >= 2 && path.as_bytes()[1] == b':' {
        return bad("looks like a Windows drive path");
    }
    for segment in path.split('/') {
        match segment {
            "" => return bad("has an empty segment ('//' or a trailing '/')"),
            "." | ".." => return bad("has a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry { path: path.into(), size: 3, sha256: Digest::of(b"abc") }
    }

    #[test]
    fn bad_paths_are_refused_with_the_path_named() {
        for (bad, why) in [
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("/etc/passwd", "absolute"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("./a", "'.'"),
            ("a\\b", "backslash"),
            ("C:x", "Windows"),
            ("a\nb", "control"),
            ("", "empty"),
        ] {
            let error = Manifest::new(vec![entry(bad)], Limits::default()).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn duplicates_limits_and_file_directory_clashes_are_refused() {
        let dup = Manifest::new(vec![entry("a"), entry("b"), entry("a")], Limits::default()).unwrap_err();
        assert!(dup.to_string().contains("'a' appears twice"), "{dup}");
        let clash = Manifest::new(vec![entry("a"), entry("a/b")], Limits::default()).unwrap_err();
        assert!(clash.to_string().contains("also the directory"), "{clash}");
        let limits = Limits { max_files: 2, max_blob_size: 2 };
        let many = Manifest::new(vec![entry("a"), entry("b"), entry("c")], limits).unwrap_err();
        assert!(many.to_string().contains("at most 2"), "{many}");
        let big = Manifest::new(vec![entry("a")], Limits { max_files: 2, max_blob_size: 2 }).unwrap_err();
        assert!(big.to_string().contains("3 bytes"), "{big}");
        assert!(Manifest::new(vec![], Limits::default()).is_err());
    }

    #[test]
    fn the_digest_ignores_order_and_sees_every_field() {
        let a = Manifest::new(vec![entry("x/model.onnx"), entry("config.pbtxt")], Limits::default()).unwrap();
        let b = Manifest::new(vec![entry("config.pbtxt"), entry("x/model.onnx")], Limits::default()).unwrap();
        assert_eq!(a.digest(), b.digest());
        let mut other = entry("config.pbtxt");
        other.size = 4;
        let c = Manifest::new(vec![other, entry("x/model.onnx")], Limits::default()).unwrap();
        assert_ne!(a.digest(), c.digest());
    }
}
