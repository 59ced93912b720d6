//! The gateway's side of the control plane's API: the long poll for the
//! desired state, blob downloads (from an offset, to resume), reports, and
//! the admin API's registry reads.
//!
//! `https://` control planes are verified against the system's CA certificates
//! and, when `sync.ca_file` names a PEM bundle, against those too (a private CA).
//!
//! Several replicas of the control plane (`http://a:8004,http://b:8004`)
//! serve the same state from one database: calls go to the replica that
//! answered last, and one that cannot be reached (no connection, a reset, a
//! timeout) or answers 502/503/504 hands the same call to the next one at
//! once. Every call here is safe to repeat (reads, and reports, which the
//! control plane applies idempotently).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::StreamExt;
use modelgate_registry::api::auth::Token;
use modelgate_registry::digest::Digest;
use modelgate_registry::sync::{DesiredState, Report};
use reqwest::StatusCode;

/// Why a call to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection, a reset, a timeout, a certificate it does not trust.
    #[error("cannot reach the control plane: {}", modelgate_registry::error::with_causes(.0))]
    Unreachable(#[from] reqwest::Error),
    /// It answered with an error status.
    #[error("the control plane answered {status}: {message}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// Its `error` text.
        message: String,
    },
    /// It answered something that is not the contract.
    #[error("the control plane's answer does not parse: {0}")]
    Malformed(String),
}

/// A connection to the control plane: one replica or several.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// The replicas' base URLs, in the order given.
    bases: Arc<[String]>,
    /// The index of the replica calls go to first (the last one that answered).
    current: Arc<AtomicUsize>,
    token: Token,
    http: reqwest::Client,
}

/// Longer than any wait the gateway asks for: a poll that hangs past it is cut.
const POLL_SLACK: Duration = Duration::from_secs(15);

/// Most replicas one gateway follows.
pub const MAX_REPLICAS: usize = 16;

impl ControlPlane {
    /// A client of `bases`: `http://host:port` or `https://host:port`, or several such
    /// URLs separated by commas (replicas of one control plane).
    pub fn new(bases: &str, token: Token) -> Result<ControlPlane, CallError> {
        ControlPlane::trusting(bases, token, &[])
    }

    /// The same, trusting the CA certificates of the PEM file `ca_file` for `https://`
    /// besides the system's (`sync.ca_file`).
    pub fn configured(bases: &str, token: Token, ca_file: Option<&std::path::Path>) -> Result<ControlPlane, CallError> {
        let roots = match ca_file {
            None => Vec::new(),
            Some(path) => {
                modelgate_registry::tls::ca_certificates("sync.ca_file", path).map_err(CallError::Malformed)?
            }
        };
        ControlPlane::trusting(bases, token, &roots)
    }

    fn trusting(bases: &str, token: Token, roots: &[reqwest::Certificate]) -> Result<ControlPlane, CallError> {
        let bases: Vec<String> =
            bases.split(',').map(|b| b.trim().trim_end_matches('/').to_owned()).filter(|b| !b.is_empty()).collect();
        if bases.is_empty() || bases.len() > MAX_REPLICAS {
            return Err(CallError::Malformed(format!(
                "control plane URLs: expected 1 to {MAX_REPLICAS} comma-separated http://host:port, got {}",
                bases.len()
            )));
        }
        if let Some(bad) = bases.iter().find(|b| !(b.starts_with("http://") || b.starts_with("https://"))) {
            return Err(CallError::Malformed(format!(
                "control plane URL '{bad}': expected http://host:port or https://host:port"
            )));
        }
        // Connect fast and fail fast: an unreachable control plane must not hold start-up.
        let http = modelgate_registry::tls::trusting(reqwest::Client::builder(), roots)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(ControlPlane { bases: bases.into(), current: Arc::default(), token, http })
    }

    /// The replica calls go to now.
    pub fn current(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Sends the request `build` makes for a replica's base URL, to the current replica and,
    /// when it cannot be reached or answers 502/503/504, to each other one in turn; the replica
    /// that answers becomes the current one.
    async fn send(&self, build: impl Fn(&str) -> reqwest::RequestBuilder) -> Result<reqwest::Response, CallError> {
        let first = self.current.load(Ordering::Relaxed);
        let count = self.bases.len();
        let mut last_error = None;
        for attempt in 0..count {
            let index = (first + attempt) % count;
            let base = &self.bases[index];
            let more = attempt + 1 < count;
            match build(base).bearer_auth(self.token.expose()).send().await {
                Ok(response) if more && replica_unavailable(response.status()) => {
                    tracing::warn!(control_plane = %base, status = %response.status(), "control plane replica unavailable; trying the next");
                    last_error = Some(Self::refused(response).await);
                }
                Ok(response) => {
                    if index != first {
                        tracing::info!(control_plane = %base, "following another control plane replica");
                        self.current.store(index, Ordering::Relaxed);
                    }
                    return Ok(response);
                }
                Err(error) if more => {
                    tracing::warn!(control_plane = %base, %error, "control plane replica unreachable; trying the next");
                    last_error = Some(CallError::Unreachable(error));
                }
                Err(error) => {
                    // All failed: start from the next one next time.
                    self.current.store((index + 1) % count, Ordering::Relaxed);
                    return Err(CallError::Unreachable(error));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| CallError::Malformed("no control plane URL".into())))
    }

    async fn refused(response: reqwest::Response) -> CallError {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        CallError::Refused { status, message }
    }

    /// The desired state once its generation passes `since` (waiting up to `wait`);
    /// `None` when nothing changed in that time.
    pub async fn poll(&self, gateway: &str, since: i64, wait: Duration) -> Result<Option<DesiredState>, CallError> {
        let query = [("gateway", gateway), ("since", &since.to_string()), ("wait", &format!("{}s", wait.as_secs()))];
        let response = self
            .send(|base| self.http.get(format!("{base}/cp/v1/sync")).query(&query).timeout(wait + POLL_SLACK))
            .await?;
        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(None),
            StatusCode::OK => {
                let bytes = response.bytes().await?;
                serde_json::from_slice(&bytes).map(Some).map_err(|e| CallError::Malformed(e.to_string()))
            }
            _ => Err(Self::refused(response).await),
        }
    }

    /// The bytes of a blob from `offset` on.
    pub async fn blob(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<impl Stream<Item = Result<Bytes, CallError>> + use<>, CallError> {
        let response = self
            .send(|base| {
                let request = self.http.get(format!("{base}/cp/v1/blobs/{digest}"));
                if offset > 0 { request.header(reqwest::header::RANGE, format!("bytes={offset}-")) } else { request }
            })
            .await?;
        let expected = if offset > 0 { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
        if response.status() != expected {
            return Err(Self::refused(response).await);
        }
        Ok(response.bytes_stream().map(|chunk| chunk.map_err(CallError::from)))
    }

    /// A read of the control plane's API (`GET /cp/v1/...` with `query`): its JSON answer.
    pub async fn read(&self, path: &str, query: &[(&str, String)]) -> Result<serde_json::Value, CallError> {
        let response = self
            .send(|base| self.http.get(format!("{base}{path}")).query(query).timeout(Duration::from_secs(10)))
            .await?;
        if !response.status().is_success() {
            return Err(Self::refused(response).await);
        }
        let bytes = response.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Malformed(e.to_string()))
    }

    /// A feedback call (`POST /cp/v1/feedback/{what}`) with `body`: its JSON answer.
    /// Bounded by the caller's timeout too (feedback waits at most `feedback::fleet::CALL_TIMEOUT`).
    pub async fn feedback<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        body: &B,
    ) -> Result<T, CallError> {
        // A claim whose answer was lost is retried at the next replica, which then finds it
        // judged: the truth is refused as a duplicate although one was taken (rare, and safe).
        let response = self
            .send(|base| {
                self.http.post(format!("{base}/cp/v1/feedback/{what}")).json(body).timeout(Duration::from_secs(10))
            })
            .await?;
        if !response.status().is_success() {
            return Err(Self::refused(response).await);
        }
        let bytes = response.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Malformed(e.to_string()))
    }

    /// Sends a report.
    pub async fn report(&self, gateway: &str, report: &Report) -> Result<(), CallError> {
        let response = self
            .send(|base| {
                self.http
                    .post(format!("{base}/cp/v1/gateways/{gateway}/report"))
                    .json(report)
                    .timeout(Duration::from_secs(10))
            })
            .await?;
        if response.status().is_success() { Ok(()) } else { Err(Self::refused(response).await) }
    }
}

/// Statuses that mean "this replica cannot serve now" (its database or a proxy in front of it),
/// not "the request is wrong": another replica may answer.
fn replica_unavailable(status: StatusCode) -> bool {
    matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::new("test-token-0123456789abcdef").unwrap()
    }

    #[test]
    fn a_url_without_an_http_scheme_or_a_ca_file_that_is_not_pem_is_refused_by_name() {
        let error = ControlPlane::new("http://a:8004,cp-b:8004", token()).unwrap_err().to_string();
        assert!(error.contains("'cp-b:8004'") && error.contains("https://host:port"), "{error}");
        assert!(ControlPlane::new("https://a:8004", token()).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = ControlPlane::configured("https://a:8004", token(), Some(&missing)).unwrap_err().to_string();
        assert!(error.contains("sync.ca_file") && error.contains("missing.pem"), "{error}");
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let error = ControlPlane::configured("https://a:8004", token(), Some(&not_pem)).unwrap_err().to_string();
        assert!(error.contains("sync.ca_file"), "{error}");
    }

    #[test]
    fn replicas_are_comma_separated_urls_within_a_bound() {
        let client = ControlPlane::new(" http://a:8004/, http://b:8004 ,", token()).unwrap();
        assert_eq!(&*client.bases, ["http://a:8004", "http://b:8004"]);
        assert_eq!(client.current(), "http://a:8004");
        assert!(ControlPlane::new(" , ", token()).is_err());
        let many = vec!["http://a:1"; MAX_REPLICAS + 1].join(",");
        assert!(ControlPlane::new(&many, token()).is_err());
    }

    #[tokio::test]
    async fn a_replica_that_cannot_be_reached_hands_the_call_to_the_next_which_stays_current() {
        // A port nothing listens on, then a replica that answers 503 (its database is away),
        // then one that answers.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let unavailable = answering("HTTP/1.1 503 Service Unavailable", "{\"error\":\"database\"}").await;
        let healthy = answering("HTTP/1.1 200 OK", "{\"generation\":7}").await;
        let client =
            ControlPlane::new(&format!("http://{closed},http://{unavailable},http://{healthy}"), token()).unwrap();
        let answer = client.read("/cp/v1/generation", &[]).await.unwrap();
        assert_eq!(answer["generation"], 7);
        assert_eq!(client.current(), format!("http://{healthy}"));
        // A refusal that is the request's fault is not retried elsewhere.
        let bad = answering("HTTP/1.1 400 Bad Request", "{\"error\":\"bad since\"}").await;
        let client = ControlPlane::new(&format!("http://{bad},http://{healthy}"), token()).unwrap();
        let error = client.read("/cp/v1/generation", &[]).await.unwrap_err();
        assert!(matches!(error, CallError::Refused { status: StatusCode::BAD_REQUEST, .. }), "{error}");
        assert_eq!(client.current(), format!("http://{bad}"));
        // None answers: the error says why, and the next call starts at the next replica.
        let client = ControlPlane::new(&format!("http://{closed},http://{closed}"), token()).unwrap();
        assert!(matches!(client.read("/cp/v1/generation", &[]).await, Err(CallError::Unreachable(_))));
    }

    /// A one-line HTTP server answering every request with `status` and the JSON `body`.
    async fn answering(status: &'static str, body: &'static str) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let response = format!(
                        "{status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        addr
    }
}
