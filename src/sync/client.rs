//! The gateway's side of the control plane's API: the long poll for the
//! desired state, blob downloads (from an offset, to resume), reports, and
//! the admin API's registry reads.

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
    /// No connection, a reset, a timeout.
    #[error("cannot reach the control plane: {0}")]
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

/// A connection to one control plane.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    base: String,
    token: Token,
    http: reqwest::Client,
}

/// Longer than any wait the gateway asks for: a poll that hangs past it is cut.
const POLL_SLACK: Duration = Duration::from_secs(15);

impl ControlPlane {
    /// A client of `base` (`http://host:port`).
    pub fn new(base: &str, token: Token) -> Result<ControlPlane, CallError> {
        // Connect fast and fail fast: an unreachable control plane must not hold start-up.
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build()?;
        Ok(ControlPlane { base: base.trim_end_matches('/').to_owned(), token, http })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(self.token.expose())
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
        let response = self
            .request(reqwest::Method::GET, "/cp/v1/sync")
            .query(&[("gateway", gateway), ("since", &since.to_string()), ("wait", &format!("{}s", wait.as_secs()))])
            .timeout(wait + POLL_SLACK)
            .send()
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
        let mut request = self.request(reqwest::Method::GET, &format!("/cp/v1/blobs/{digest}"));
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let response = request.send().await?;
        let expected = if offset > 0 { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
        if response.status() != expected {
            return Err(Self::refused(response).await);
        }
        Ok(response.bytes_stream().map(|chunk| chunk.map_err(CallError::from)))
    }

    /// A read of the control plane's API (`GET /cp/v1/...` with `query`): its JSON answer.
    pub async fn read(&self, path: &str, query: &[(&str, String)]) -> Result<serde_json::Value, CallError> {
        let response =
            self.request(reqwest::Method::GET, path).query(query).timeout(Duration::from_secs(10)).send().await?;
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
        let response = self
            .request(reqwest::Method::POST, &format!("/cp/v1/feedback/{what}"))
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
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
            .request(reqwest::Method::POST, &format!("/cp/v1/gateways/{gateway}/report"))
            .json(report)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        if response.status().is_success() { Ok(()) } else { Err(Self::refused(response).await) }
    }
}
