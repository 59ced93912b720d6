//! Bearer-token authentication: one tower layer in front of every admin
//! route, so no route can be added without it.
//!
//! A request passes only with `Authorization: Bearer <token>` equal to the
//! configured token (compared in constant time). Requests whose `Host` names
//! anything but this server (a loopback name or address, the address the
//! connection arrived on, or `admin.allowed_hosts`) are refused (403)
//! whatever their token: a page that rebinds its own domain name to
//! 127.0.0.1 still sends that name. So are requests whose `Origin` is not
//! this server's own origin (`http://` or `https://` and the `Host` sent):
//! the only browser page that may call the API is the operations page this
//! listener serves ([`super::ui`]); another site's page always sends its own
//! origin. The page's files themselves need no token (they hold no data),
//! but the same `Host` and `Origin` rules.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::header::{AUTHORIZATION, HOST, HeaderValue, ORIGIN, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use modelgate_registry::api::auth::{bearer_token, names_this_server, tokens_match};
use tower::{Layer, Service};

use crate::respond::{Chunks, json_response};

/// Shortest token accepted: guessable tokens are refused at start.
pub const MIN_TOKEN_LEN: usize = 16;
/// Environment variable that may hold the token.
pub const TOKEN_ENV: &str = "MODELGATE_ADMIN_TOKEN";

/// The admin bearer token. Never printed.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The token is too short or has characters a header cannot carry.
    #[error("the admin token must be at least {MIN_TOKEN_LEN} visible ASCII characters without spaces")]
    Weak,
}

impl AdminToken {
    /// A token from its text (surrounding whitespace, such as a file's final
    /// newline, is ignored).
    pub fn new(text: &str) -> Result<AdminToken, TokenError> {
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Weak);
        }
        Ok(AdminToken(token.as_bytes().into()))
    }

    /// Reads a token file.
    pub fn from_file(path: &Path) -> Result<AdminToken, TokenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenError::Read { path: path.display().to_string(), source })?;
        AdminToken::new(&text)
    }

    /// The token from the file if one is given, else from `MODELGATE_ADMIN_TOKEN`;
    /// `None` when neither is set.
    pub fn configured(file: Option<&Path>) -> Result<Option<AdminToken>, TokenError> {
        if let Some(path) = file {
            return AdminToken::from_file(path).map(Some);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(text) => AdminToken::new(&text).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The token's text, for clients.
    pub fn expose(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked ASCII when built")
    }

    /// Compares in time that depends on the lengths only.
    fn matches(&self, given: &[u8]) -> bool {
        tokens_match(&self.0, given)
    }
}

/// The peer of an admin connection, put in each request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The address an admin connection arrived on, put in each request's
/// extensions: a `Host` naming it is this server.
#[derive(Clone, Copy, Debug)]
pub struct Local(pub SocketAddr);

/// Wraps a service in [`BearerAuth`].
#[derive(Clone, Debug)]
pub struct BearerAuthLayer {
    token: AdminToken,
    allowed_hosts: Arc<[String]>,
}

impl BearerAuthLayer {
    /// The layer for `token`; `allowed_hosts` are the names, beyond loopback
    /// and the listener's own address, that clients may use in `Host`.
    pub fn new(token: AdminToken, allowed_hosts: &[String]) -> BearerAuthLayer {
        let allowed_hosts = allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        BearerAuthLayer { token, allowed_hosts }
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> BearerAuth<S> {
        BearerAuth { token: self.token.clone(), allowed_hosts: self.allowed_hosts.clone(), inner }
    }
}

/// Answers 401 (or 403) itself unless the request carries the token.
#[derive(Clone, Debug)]
pub struct BearerAuth<S> {
    token: AdminToken,
    allowed_hosts: Arc<[String]>,
    inner: S,
}

/// Why a request was refused at the door.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token: send 'Authorization: Bearer <token>'")]
    Missing,
    /// A token that is not the admin token.
    #[error("invalid bearer token")]
    Invalid,
    /// A request from another site's page.
    #[error("admin requests from other sites' pages are refused (Origin must be this server's own)")]
    Browser,
    /// A `Host` that does not name this server.
    #[error(
        "the Host header must name this server: a loopback name or address, the address connected to, or one of admin.allowed_hosts"
    )]
    Host,
}

impl<S> BearerAuth<S> {
    fn check<B>(&self, request: &Request<B>) -> Result<(), Refusal> {
        // Two Host lines may name two servers: which one counts is ambiguous
        // (RFC 9112 §3.2 says 400), so neither does.
        if request.headers().get_all(HOST).iter().nth(1).is_some() {
            return Err(Refusal::Host);
        }
        // HTTP/2 carries the host in the URI's authority, HTTP/1.1 in `Host`.
        let host = match request.uri().authority() {
            Some(authority) => Some(authority.as_str()),
            None => request.headers().get(HOST).and_then(|h| h.to_str().ok()),
        };
        let local = request.extensions().get::<Local>().map(|l| l.0.ip());
        let Some(host) = host.filter(|host| names_this_server(host, local, &self.allowed_hosts)) else {
            return Err(Refusal::Host);
        };
        if let Some(origin) = request.headers().get(ORIGIN)
            && !is_own_origin(origin.as_bytes(), host)
        {
            return Err(Refusal::Browser);
        }
        if super::ui::serves(request.method(), request.uri().path()) {
            return Ok(());
        }
        let header = request.headers().get(AUTHORIZATION).ok_or(Refusal::Missing)?;
        let given = header.as_bytes();
        let token = bearer_token(given).ok_or(Refusal::Missing)?;
        if self.token.matches(token) { Ok(()) } else { Err(Refusal::Invalid) }
    }
}

/// Whether `origin` is `http://HOST` or `https://HOST` (a TLS proxy in front),
/// `host` being the `Host` the request named (already checked to be this
/// server). Browsers send `Origin` on the page's own writes (same origin);
/// a page of any other site sends its own, and `null` matches nothing.
fn is_own_origin(origin: &[u8], host: &str) -> bool {
    let rest = if origin.len() >= 8 && origin[..8].eq_ignore_ascii_case(b"https://") {
        &origin[8..]
    } else if origin.len() >= 7 && origin[..7].eq_ignore_ascii_case(b"http://") {
        &origin[7..]
    } else {
        return false;
    };
    rest.eq_ignore_ascii_case(host.as_bytes())
}

fn refusal_response(refusal: Refusal) -> Response<Chunks> {
    let status = match refusal {
        Refusal::Browser | Refusal::Host => StatusCode::FORBIDDEN,
        Refusal::Missing | Refusal::Invalid => StatusCode::UNAUTHORIZED,
    };
    let mut response = json_response(status, &serde_json::json!({ "error": refusal.to_string() }));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"modelgate-admin\""));
    }
    response
}

impl<S, B> Service<Request<B>> for BearerAuth<S>
where
    S: Service<Request<B>, Response = Response<Chunks>, Error = Infallible>,
{
    type Response = Response<Chunks>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response<Chunks>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.check(&request) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(refusal) => {
                let peer = request.extensions().get::<Peer>().map(|p| p.0.to_string()).unwrap_or_default();
                tracing::warn!(
                    target: "modelgate::audit",
                    peer,
                    method = %request.method(),
                    path = ?request.uri().path(),
                    reason = %refusal,
                    "admin request refused"
                );
                Either::Right(ready(Ok(refusal_response(refusal))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    const TOKEN: &str = "0123456789abcdef-secret";

    type Answer = Ready<Result<Response<Chunks>, Infallible>>;
    type Inner = tower::util::ServiceFn<fn(Request<()>) -> Answer>;

    fn service() -> BearerAuth<Inner> {
        fn ok(_: Request<()>) -> Answer {
            ready(Ok(Response::new(Chunks::empty())))
        }
        let allowed = ["Modelgate-Admin.prod.svc".to_owned()];
        BearerAuthLayer::new(AdminToken::new(TOKEN).unwrap(), &allowed).layer(tower::service_fn(ok as fn(_) -> _))
    }

    /// The status of a request with `headers`, a `Host: localhost:8003` unless
    /// they name another.
    async fn status(headers: &[(&str, &str)]) -> StatusCode {
        let mut request = Request::builder().uri("/admin/v1/routes");
        if !headers.iter().any(|(k, _)| *k == "host") {
            request = request.header("host", "localhost:8003");
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut request = request.body(()).unwrap();
        request.extensions_mut().insert(Local(SocketAddr::from(([10, 0, 0, 5], 8003))));
        service().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn only_hosts_that_name_this_server_pass() {
        let auth = format!("Bearer {TOKEN}");
        for host in ["localhost", "127.0.0.1:8003", "[::1]:8003", "[::1]", "10.0.0.5:8003", "modelgate-admin.prod.svc"]
        {
            assert_eq!(status(&[("authorization", &auth), ("host", host)]).await, StatusCode::OK, "{host}");
        }
        for host in ["evil.example", "evil.example:8003", "10.0.0.6:8003", "localhost.evil.example", "", "[::2]:8003"] {
            assert_eq!(status(&[("authorization", &auth), ("host", host)]).await, StatusCode::FORBIDDEN, "{host}");
        }
    }

    #[tokio::test]
    async fn only_the_token_passes() {
        assert_eq!(status(&[("authorization", &format!("Bearer {TOKEN}"))]).await, StatusCode::OK);
        assert_eq!(status(&[("authorization", &format!("bearer  {TOKEN} "))]).await, StatusCode::OK);
        assert_eq!(status(&[]).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&[("authorization", "Bearer wrong-token-of-any-length")]).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&[("authorization", &format!("Basic {TOKEN}"))]).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&[("authorization", &format!("Bearer {TOKEN}x"))]).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&[("authorization", "Bearer")]).await, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn other_sites_pages_are_refused_even_with_the_token() {
        let auth = format!("Bearer {TOKEN}");
        for origin in [
            "http://evil.example",
            "null",
            "http://localhost:8004",
            "http://localhost",
            "http://localhost:8003.evil.example",
            "file://localhost:8003",
            "",
        ] {
            assert_eq!(
                status(&[("authorization", &auth), ("origin", origin)]).await,
                StatusCode::FORBIDDEN,
                "{origin}"
            );
        }
    }

    #[tokio::test]
    async fn the_operations_page_may_call_its_own_server() {
        let auth = format!("Bearer {TOKEN}");
        for origin in ["http://localhost:8003", "HTTP://LocalHost:8003", "https://localhost:8003"] {
            assert_eq!(status(&[("authorization", &auth), ("origin", origin)]).await, StatusCode::OK, "{origin}");
        }
        // Its origin still needs the token.
        assert_eq!(status(&[("origin", "http://localhost:8003")]).await, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn the_page_needs_no_token_but_the_same_host_and_origin() {
        let get = |path: &str, headers: &[(&str, &str)]| {
            let mut request = Request::builder().uri(path);
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            service().oneshot(request.body(()).unwrap())
        };
        assert_eq!(get("/admin/ui/", &[("host", "127.0.0.1:8003")]).await.unwrap().status(), StatusCode::OK);
        assert_eq!(get("/admin/ui/ops.js", &[("host", "evil.example")]).await.unwrap().status(), StatusCode::FORBIDDEN);
        let foreign = [("host", "127.0.0.1:8003"), ("origin", "http://evil.example")];
        assert_eq!(get("/admin/ui/ops.js", &foreign).await.unwrap().status(), StatusCode::FORBIDDEN);
        assert_eq!(
            get("/admin/v1/routes", &[("host", "127.0.0.1:8003")]).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn a_refusal_says_how_to_authenticate() {
        let request = Request::builder().uri("/admin/v1/routes").header("host", "127.0.0.1").body(()).unwrap();
        let response = service().oneshot(request).await.unwrap();
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer realm=\"modelgate-admin\"");
    }

    #[test]
    fn weak_tokens_are_refused_and_tokens_never_print() {
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space inside it!!").is_err());
        let token = AdminToken::new(&format!("  {TOKEN}\n")).unwrap();
        assert_eq!(token.expose(), TOKEN);
        assert!(!format!("{token:?}").contains("secret"));
    }
}
