//! Bearer-token authentication in front of every route, with the admin API's
//! rules: `Authorization: Bearer <token>` compared in constant time; any
//! request with an `Origin` header (a browser page) refused with 403; a `Host`
//! that names anything but this server (loopback, the address connected to,
//! or an allowed name) refused with 403, which defeats DNS rebinding.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use http::header::{AUTHORIZATION, HOST, ORIGIN, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use tokio::net::TcpListener;

/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// The environment variable holding the token (the admin API's).
pub const TOKEN_ENV: &str = "MODELGATE_ADMIN_TOKEN";

/// The bearer token. Never printed.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A token too weak to use.
#[derive(Debug, thiserror::Error)]
#[error("the control-plane token must be at least {MIN_TOKEN_LEN} visible ASCII characters without spaces")]
pub struct WeakToken;

impl Token {
    /// A token from its text (surrounding whitespace ignored).
    pub fn new(text: &str) -> Result<Token, WeakToken> {
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(WeakToken);
        }
        Ok(Token(token.as_bytes().into()))
    }

    /// The token's text, for clients.
    pub fn expose(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    fn matches(&self, given: &[u8]) -> bool {
        tokens_match(&self.0, given)
    }
}

/// Both ends of a connection, recorded when it is accepted.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    /// The client.
    pub peer: SocketAddr,
    /// The address it connected to.
    pub local: Option<SocketAddr>,
}

impl Connected<IncomingStream<'_, TcpListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Conn {
        Conn { peer: *stream.remote_addr(), local: stream.io().local_addr().ok() }
    }
}

/// The token and the extra host names clients may use.
#[derive(Clone, Debug)]
pub struct Auth {
    token: Token,
    allowed_hosts: Arc<[String]>,
}

impl Auth {
    /// Accepts `token`; `allowed_hosts` are names beyond loopback and the listener's address.
    pub fn new(token: Token, allowed_hosts: &[String]) -> Auth {
        Auth { token, allowed_hosts: allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect() }
    }

    fn check(&self, request: &Request, local: Option<IpAddr>) -> Result<(), (StatusCode, &'static str)> {
        if request.headers().contains_key(ORIGIN) {
            return Err((StatusCode::FORBIDDEN, "control-plane requests from browser pages are refused"));
        }
        let host = request.uri().host().or_else(|| request.headers().get(HOST).and_then(|h| h.to_str().ok()));
        // Two Host lines may name two servers (RFC 9112 §3.2): neither counts, as at the admin API.
        let two_hosts = request.headers().get_all(HOST).iter().nth(1).is_some();
        if two_hosts || !host.is_some_and(|h| names_this_server(h, local, &self.allowed_hosts)) {
            return Err((
                StatusCode::FORBIDDEN,
                "the Host header must name this server: a loopback name or address, the address connected to, or an allowed host",
            ));
        }
        let missing = (StatusCode::UNAUTHORIZED, "missing bearer token: send 'Authorization: Bearer <token>'");
        let given = request.headers().get(AUTHORIZATION).ok_or(missing)?.as_bytes();
        let token = bearer_token(given).ok_or(missing)?;
        if self.token.matches(token) { Ok(()) } else { Err((StatusCode::UNAUTHORIZED, "invalid bearer token")) }
    }
}

// === The rules the admin API and the control plane share ===

/// Whether a request's host names this server: a loopback name or address,
/// the address connected to (`local`), or one of `allowed_hosts` (lower case).
/// Anything else may be a DNS-rebinding page reaching a loopback listener.
pub fn names_this_server(host: &str, local: Option<IpAddr>, allowed_hosts: &[String]) -> bool {
    let name = without_port(host).to_ascii_lowercase();
    let name = name.trim_start_matches('[').trim_end_matches(']');
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || Some(ip) == local || allowed_hosts.iter().any(|h| h == name),
        Err(_) => name == "localhost" || allowed_hosts.iter().any(|h| h == name),
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
pub fn bearer_token(authorization: &[u8]) -> Option<&[u8]> {
    authorization
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .and_then(|_| authorization.get(7..))
        .map(<[u8]>::trim_ascii)
}

/// Compares a token in time that depends on the lengths only.
pub fn tokens_match(expected: &[u8], given: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// `host[:port]` or `[v6][:port]` without the port.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(inside, _)| &host[..=inside.len()]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The middleware: answers 401/403 itself, else passes the request on.
pub async fn require(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    let conn = request.extensions().get::<ConnectInfo<Conn>>().map(|c| c.0);
    match auth.check(&request, conn.and_then(|c| c.local).map(|a| a.ip())) {
        Ok(()) => next.run(request).await,
        Err((status, message)) => {
            tracing::warn!(
                target: "modelgate::audit",
                peer = conn.map(|c| c.peer.to_string()).unwrap_or_default(),
                method = %request.method(),
                path = ?request.uri().path(),
                reason = message,
                "control-plane request refused"
            );
            let mut response = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"modelgate-control-plane\""));
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_names_this_server_only_as_loopback_the_local_address_or_an_allowed_name() {
        let allowed = vec!["gw.internal".to_owned()];
        let local = Some(IpAddr::from([10, 0, 0, 5]));
        for host in ["localhost:8004", "127.0.0.1", "[::1]:8004", "10.0.0.5:8004", "GW.internal"] {
            assert!(names_this_server(host, local, &allowed), "{host}");
        }
        for host in ["evil.example", "10.0.0.6", "localhost.evil.example:8004", ""] {
            assert!(!names_this_server(host, local, &allowed), "{host}");
        }
    }

    #[test]
    fn a_bearer_token_is_read_with_any_scheme_case_and_compared_whole() {
        assert_eq!(bearer_token(b"Bearer abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bEaReR xyz"), Some(&b"xyz"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bear"), None);
        assert!(tokens_match(b"secret", b"secret"));
        assert!(!tokens_match(b"secret", b"secreT") && !tokens_match(b"secret", b"secret2"));
    }
}
