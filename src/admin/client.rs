//! `modelgate admin ...`: a small HTTP client of the admin API, one request
//! per command, its JSON answer printed as is.

use std::path::PathBuf;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::api::ACTOR_HEADER;
use super::auth::AdminToken;
use crate::routing::RouteSpec;

/// What to ask the admin API.
#[derive(Clone, Debug, PartialEq, Eq, clap::Subcommand)]
pub enum AdminCommand {
    /// List every route with its weights, windows and rollout.
    Routes,
    /// Show one route.
    Route {
        /// Public model name.
        model: String,
    },
    /// Create or replace a route from a JSON or TOML file ("-": JSON on stdin).
    PutRoute {
        /// Public model name.
        model: String,
        /// The route spec (the `[[routes]]` entry of the config file, or its JSON).
        file: PathBuf,
    },
    /// Remove a route: the model then serves its latest version.
    DeleteRoute {
        /// Public model name.
        model: String,
    },
    /// Set every target's weight, e.g. `set-weights mlp 1=90 2=10` (pauses a rollout).
    SetWeights {
        /// Public model name.
        model: String,
        /// `version=weight` pairs, one per target, summing to 100.
        #[arg(required = true)]
        weights: Vec<String>,
    },
    /// Send the canary all traffic and end the rollout.
    Promote {
        /// Public model name.
        model: String,
    },
    /// Send the canary no traffic, mark it failed and end the rollout.
    Rollback {
        /// Public model name.
        model: String,
    },
    /// Stop stepping the canary up (SLO breaches still roll back).
    Pause {
        /// Public model name.
        model: String,
    },
    /// Step the canary up again from the current step.
    Resume {
        /// Public model name.
        model: String,
    },
    /// A/B results of a route: each arm's quality against the baseline, the
    /// difference's 95 % intervals and a verdict (needs the route's `feedback`).
    Ab {
        /// Public model name.
        model: String,
    },
    /// List the repository's models and versions with their states.
    Models,
    /// Load one version of a model.
    Load {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
    },
    /// Unload one version of a model (refused while a route sends it traffic).
    Unload {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The admin API could not be reached.
    #[error("cannot reach the admin API at {address}: {reason}")]
    Connect {
        /// host:port.
        address: String,
        /// Why.
        reason: String,
    },
    /// The admin API answered with an error.
    #[error("{message} (HTTP {status})")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// Its `error` message.
        message: String,
    },
}

/// The method, path and body of a command.
pub fn request_for(command: &AdminCommand) -> Result<(Method, String, Option<Value>), ClientError> {
    let route = |m: &str| format!("/admin/v1/routes/{m}");
    Ok(match command {
        AdminCommand::Routes => (Method::GET, "/admin/v1/routes".into(), None),
        AdminCommand::Route { model } => (Method::GET, route(model), None),
        AdminCommand::PutRoute { model, file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(file)
            }
            .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", file.display())))?;
            let spec: RouteSpec = if file.extension().is_some_and(|e| e == "toml") {
                toml::from_str(&text).map_err(|e| ClientError::Usage(format!("{}: {e}", file.display())))?
            } else {
                serde_json::from_str(&text).map_err(|e| ClientError::Usage(format!("{}: {e}", file.display())))?
            };
            let body = serde_json::to_value(spec).map_err(|e| ClientError::Usage(e.to_string()))?;
            (Method::PUT, route(model), Some(body))
        }
        AdminCommand::DeleteRoute { model } => (Method::DELETE, route(model), None),
        AdminCommand::SetWeights { model, weights } => {
            let mut entries = Vec::new();
            for pair in weights {
                let parsed = pair
                    .split_once('=')
                    .and_then(|(v, w)| Some((v.trim().parse::<u64>().ok()?, w.trim().parse::<u32>().ok()?)));
                let (version, weight) = parsed
                    .ok_or_else(|| ClientError::Usage(format!("expected version=weight (like 2=10), got {pair:?}")))?;
                entries.push(json!({ "version": version, "weight": weight }));
            }
            (Method::PUT, format!("{}/weights", route(model)), Some(json!({ "weights": entries })))
        }
        AdminCommand::Promote { model } => (Method::POST, format!("{}/promote", route(model)), None),
        AdminCommand::Rollback { model } => (Method::POST, format!("{}/rollback", route(model)), None),
        AdminCommand::Pause { model } => (Method::POST, format!("{}/pause", route(model)), None),
        AdminCommand::Resume { model } => (Method::POST, format!("{}/resume", route(model)), None),
        AdminCommand::Ab { model } => (Method::GET, format!("{}/ab", route(model)), None),
        AdminCommand::Models => (Method::GET, "/admin/v1/models".into(), None),
        AdminCommand::Load { model, version } => {
            (Method::POST, format!("/admin/v1/models/{model}/versions/{version}/load"), None)
        }
        AdminCommand::Unload { model, version } => {
            (Method::POST, format!("/admin/v1/models/{model}/versions/{version}/unload"), None)
        }
    })
}

/// Sends one request to the admin API at `address` (`host:port`) and
/// returns its JSON answer.
pub async fn call(
    address: &str,
    token: &AdminToken,
    actor: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, ClientError> {
    let headers = [
        (http::header::AUTHORIZATION.as_str(), format!("Bearer {}", token.expose())),
        (ACTOR_HEADER, actor.to_owned()),
    ];
    send(address, &headers, method, path, body).await
}

/// Posts `body` to the data plane's HTTP port at `address` (`host:port`), as
/// `modelgate feedback` does, and returns its JSON answer.
pub async fn post_data_plane(address: &str, path: &str, body: Value) -> Result<Value, ClientError> {
    send(address, &[], Method::POST, path, Some(body)).await
}

async fn send(
    address: &str,
    headers: &[(&str, String)],
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, ClientError> {
    let connect = |reason: String| ClientError::Connect { address: address.to_owned(), reason };
    let stream = TcpStream::connect(address).await.map_err(|e| connect(e.to_string()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| connect(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path).header(http::header::HOST, address);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let bytes = match body {
        Some(body) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(bytes)).map_err(|e| ClientError::Usage(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| connect(e.to_string()))?;
    let status = response.status();
    let bytes = response.into_body().collect().await.map_err(|e| connect(e.to_string()))?.to_bytes();
    driver.abort();
    let value: Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes) }));
    if status.is_success() {
        Ok(value)
    } else {
        let message = value.get("error").and_then(Value::as_str).unwrap_or("no error message").to_owned();
        Err(ClientError::Refused { status, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_map_to_admin_requests() {
        let (method, path, body) = request_for(&AdminCommand::SetWeights {
            model: "mlp".into(),
            weights: vec!["1=90".into(), "2 = 10".into()],
        })
        .unwrap();
        assert_eq!((method, path.as_str()), (Method::PUT, "/admin/v1/routes/mlp/weights"));
        assert_eq!(
            body.unwrap(),
            json!({ "weights": [{ "version": 1, "weight": 90 }, { "version": 2, "weight": 10 }] })
        );
        let (method, path, _) = request_for(&AdminCommand::Ab { model: "fraud".into() }).unwrap();
        assert_eq!((method, path.as_str()), (Method::GET, "/admin/v1/routes/fraud/ab"));
        let (method, path, _) = request_for(&AdminCommand::Unload { model: "mlp".into(), version: 3 }).unwrap();
        assert_eq!((method, path.as_str()), (Method::POST, "/admin/v1/models/mlp/versions/3/unload"));
        assert!(request_for(&AdminCommand::SetWeights { model: "m".into(), weights: vec!["1:90".into()] }).is_err());
    }

    #[test]
    fn a_toml_route_file_is_sent_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("route.toml");
        std::fs::write(
            &file,
            "model = \"mlp\"\ntargets = [{ version = 1 }, { version = 2 }]\nrollout = { canary = 2 }\n",
        )
        .unwrap();
        let (method, _, body) = request_for(&AdminCommand::PutRoute { model: "mlp".into(), file }).unwrap();
        assert_eq!(method, Method::PUT);
        let body = body.unwrap();
        assert_eq!(body["rollout"]["canary"], 2);
        assert_eq!(body["rollout"]["interval"], "1m");
    }
}
