//! The admin API's reads of the registry: its models, a model's versions (aliases, digest,
//! lineage), its alias history, its drift evaluations and one feature's reference and current
//! distributions. Each is one `GET` of the control plane this gateway follows (the embedded one
//! or `sync.registry`, through the sync follower's client), answered under the admin listener's
//! token, `Host` and `Origin` rules: the operations page needs no second token or origin, and
//! the control plane's token never reaches a browser.

use std::sync::{Arc, OnceLock};

use http::StatusCode;
use serde_json::Value;

use crate::error::Error;
use crate::sync::client::{CallError, ControlPlane};

/// The control plane the admin API reads, once the sync follower has one: the admin listener
/// starts before the embedded control plane does, so the client arrives later (or never, on a
/// gateway that follows none, whose reads are answered 503).
#[derive(Clone, Debug, Default)]
pub struct RegistryLink(Arc<OnceLock<ControlPlane>>);

impl RegistryLink {
    /// Reads go to `control_plane` from now on; a second call keeps the first.
    pub fn connect(&self, control_plane: ControlPlane) {
        let _ = self.0.set(control_plane);
    }
}

/// One read of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// Every registered model.
    Models,
    /// A model's versions, each with its aliases, manifest digest and lineage.
    Versions(String),
    /// The moves of a model's aliases, oldest first (query `alias`).
    History(String),
    /// A model's drift evaluations per version, newest first (query `history`).
    Drift(String),
    /// One feature's reference and current distributions (query `feature`).
    Distribution(String, u64),
}

impl Read {
    /// The control plane's path for this read.
    fn path(&self) -> String {
        match self {
            Read::Models => "/cp/v1/models".into(),
            Read::Versions(m) => format!("/cp/v1/models/{m}/versions"),
            Read::History(m) => format!("/cp/v1/models/{m}/history"),
            Read::Drift(m) => format!("/cp/v1/models/{m}/drift"),
            Read::Distribution(m, v) => format!("/cp/v1/models/{m}/versions/{v}/drift/distribution"),
        }
    }

    /// The query keys passed on; others are refused.
    fn keys(&self) -> &'static [&'static str] {
        match self {
            Read::Models | Read::Versions(_) => &[],
            Read::History(_) => &["alias"],
            Read::Drift(_) => &["history"],
            Read::Distribution(..) => &["feature"],
        }
    }
}

/// Why a registry read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A query key the read does not take.
    #[error("unknown query parameter {0:?}: this endpoint takes {1}")]
    UnknownKey(String, String),
    /// No follower runs.
    #[error(
        "this gateway follows no control plane (the embedded one is off and sync.registry is not set, or sync is off): \
         there is no registry to read"
    )]
    NoControlPlane,
    /// The control plane refused: its status and message are passed on.
    #[error("{message}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its `error` text.
        message: String,
    },
    /// It did not answer, or not with JSON.
    #[error("the registry cannot be read now: {0}")]
    Unreachable(String),
}

impl ReadError {
    /// The admin API's status for it.
    pub fn status(&self) -> StatusCode {
        match self {
            ReadError::UnknownKey(..) => StatusCode::BAD_REQUEST,
            ReadError::NoControlPlane => StatusCode::SERVICE_UNAVAILABLE,
            // A 401/403 of the control plane is this gateway's token, not the operator's.
            ReadError::Refused { status, .. } if matches!(status.as_u16(), 401 | 403) => StatusCode::BAD_GATEWAY,
            ReadError::Refused { status, .. } => *status,
            ReadError::Unreachable(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl From<CallError> for ReadError {
    fn from(error: CallError) -> ReadError {
        match error {
            CallError::Refused { status, message } => ReadError::Refused {
                status: StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                message: format!("the registry says: {message}"),
            },
            other => ReadError::Unreachable(other.to_string()),
        }
    }
}

/// The read at `segments` (after `/admin/v1/registry`), if there is one.
pub fn route(segments: &[&str]) -> Result<Option<Read>, Error> {
    let name = |s: &str| -> Result<String, Error> {
        crate::repository::validate_model_name(s)?;
        Ok(s.to_owned())
    };
    Ok(Some(match segments {
        ["models"] => Read::Models,
        ["models", m, "versions"] => Read::Versions(name(m)?),
        ["models", m, "history"] => Read::History(name(m)?),
        ["models", m, "drift"] => Read::Drift(name(m)?),
        ["models", m, "versions", v, "drift", "distribution"] => {
            let version =
                v.parse::<u64>().ok().filter(|&v| v > 0).ok_or_else(|| {
                    Error::invalid(format!("invalid version {:?}: versions are positive integers", v))
                })?;
            Read::Distribution(name(m)?, version)
        }
        _ => return Ok(None),
    }))
}

/// Runs `read` against the control plane with the request's `query` string.
pub async fn read(link: &RegistryLink, read: &Read, query: Option<&str>) -> Result<Value, ReadError> {
    let mut pairs = Vec::new();
    for (key, value) in form_pairs(query.unwrap_or("")) {
        let Some(known) = read.keys().iter().find(|k| **k == key) else {
            let shown: String = key.chars().take(64).collect();
            let takes = if read.keys().is_empty() { "none".to_owned() } else { read.keys().join(", ") };
            return Err(ReadError::UnknownKey(shown, takes));
        };
        pairs.push((*known, value));
    }
    let control_plane = link.0.get().ok_or(ReadError::NoControlPlane)?;
    Ok(control_plane.read(&read.path(), &pairs).await?)
}

/// `a=1&b=x%20y` as decoded pairs.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    let url = reqwest::Url::parse("http://query.invalid/").map(|mut url| {
        url.set_query(Some(query));
        url
    });
    url.map(|url| url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_reads_map_to_the_control_planes_paths() {
        let cases = [
            (&["models"][..], "/cp/v1/models"),
            (&["models", "fraud", "versions"][..], "/cp/v1/models/fraud/versions"),
            (&["models", "fraud", "history"][..], "/cp/v1/models/fraud/history"),
            (&["models", "fraud", "drift"][..], "/cp/v1/models/fraud/drift"),
            (
                &["models", "fraud", "versions", "2", "drift", "distribution"][..],
                "/cp/v1/models/fraud/versions/2/drift/distribution",
            ),
        ];
        for (segments, path) in cases {
            let read = route(segments).unwrap().unwrap();
            assert_eq!(read.path(), path);
        }
        assert_eq!(route(&["models", "fraud", "aliases"]).unwrap(), None);
        assert!(route(&["models", "..", "drift"]).is_err());
        assert!(route(&["models", "fraud", "versions", "0", "drift", "distribution"]).is_err());
    }

    #[test]
    fn query_strings_are_decoded_and_only_known_keys_pass() {
        assert_eq!(
            form_pairs("feature=INPUT0%5B2%5D&history=5"),
            vec![("feature".into(), "INPUT0[2]".into()), ("history".into(), "5".into())]
        );
        assert!(form_pairs("").is_empty());
        let status = ReadError::Refused { status: StatusCode::UNAUTHORIZED, message: String::new() }.status();
        assert_eq!(status, StatusCode::BAD_GATEWAY, "the control plane's token is not the operator's");
    }
}
