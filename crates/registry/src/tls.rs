//! Trusting a private CA for https:// calls, besides the system's roots (the
//! gateway's `sync.ca_file`, the mirror's `--mirror-mlflow-ca`).

use std::path::Path;

/// The CA certificates of the PEM file at `path`, or why not, naming `setting`
/// (the config key or flag that gave the path) and the file.
pub fn ca_certificates(setting: &str, path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certificates) if !certificates.is_empty() => Ok(certificates),
        Ok(_) => Err(format!("{setting} {}: no PEM certificate in it", path.display())),
        Err(e) => Err(format!("{setting} {}: not a PEM bundle: {e}", path.display())),
    }
}

/// `builder` trusting `roots` too.
pub fn trusting(builder: reqwest::ClientBuilder, roots: &[reqwest::Certificate]) -> reqwest::ClientBuilder {
    roots.iter().fold(builder, |builder, root| builder.add_root_certificate(root.clone()))
}
