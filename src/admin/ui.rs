//! The operations page: one HTML page, its script and stylesheet, and the chart
//! library (uPlot, embedded by `build.rs` when `scripts/setup.sh ui` installed it),
//! served by the admin listener under [`PREFIX`].
//!
//! The files hold no data, so they are served without the token (the `Host` and
//! `Origin` rules of [`super::auth`] still apply): the page asks the operator for
//! the token, keeps it in the tab's `sessionStorage`, and sends it with each call
//! to the documented admin API (`api/admin.openapi.yaml`). The page never builds
//! HTML from API strings: it makes DOM text nodes, so model names, reasons and
//! messages are shown, never run. The headers below forbid inline script, other
//! origins, framing and caching.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION};
use http::{HeaderMap, Method, Response, StatusCode};

use crate::respond::Chunks;

/// Where the page lives; its files are relative to it.
pub const PREFIX: &str = "/admin/ui/";

/// Paths that send the browser to [`PREFIX`].
const REDIRECTS: &[&str] = &["/", "/admin", "/admin/", "/admin/ui"];

/// `script-src 'self'` without `'unsafe-inline'`: the page's code is `ops.js`
/// only. uPlot sizes its elements through the CSSOM (`element.style`), which
/// `style-src 'self'` allows.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// Name under [`PREFIX`] ("" is the page itself).
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file of the page.
const ASSETS: &[Asset] = &[
    Asset { name: "", content_type: "text/html; charset=utf-8", body: include_str!("ui/index.html") },
    Asset { name: "ops.js", content_type: "text/javascript; charset=utf-8", body: include_str!("ui/ops.js") },
    Asset { name: "ops.css", content_type: "text/css; charset=utf-8", body: include_str!("ui/ops.css") },
    // Empty when the library was not installed at build time: the page then says charts are off.
    Asset {
        name: "uplot.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!(concat!(env!("OUT_DIR"), "/uplot/uPlot.iife.min.js")),
    },
    Asset {
        name: "uplot.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!(concat!(env!("OUT_DIR"), "/uplot/uPlot.min.css")),
    },
];

/// Whether the chart library was embedded at build time.
pub fn has_charts() -> bool {
    ASSETS.iter().any(|a| a.name == "uplot.js" && !a.body.is_empty())
}

/// Whether this request is for the page (a GET or HEAD under [`PREFIX`], or
/// one of the paths redirected there): such requests need no token.
pub fn serves(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && (path.starts_with(PREFIX) || REDIRECTS.contains(&path))
}

/// The answer to a request that [`serves`] accepted.
pub fn respond(method: &Method, path: &str) -> Response<Chunks> {
    if REDIRECTS.contains(&path) {
        let mut response = Response::new(Chunks::empty());
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        response.headers_mut().insert(LOCATION, HeaderValue::from_static(PREFIX));
        return response;
    }
    let name = path.strip_prefix(PREFIX).unwrap_or(path);
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        let mut response = Response::new(Chunks::one(Bytes::from_static(b"not found\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    let body =
        if method == Method::HEAD { Chunks::empty() } else { Chunks::one(Bytes::from_static(asset.body.as_bytes())) };
    let mut response = Response::new(body);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    response
        .headers_mut()
        .insert(http::header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    response.headers_mut().insert(http::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response.headers_mut().insert(http::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Headers on every admin answer, the API's and the page's: nothing is
/// cached (the answers are live state, read with a token), and nothing is
/// sniffed into another type than the one declared.
pub fn add_common_headers(headers: &mut HeaderMap) {
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_served_with_strict_headers() {
        for name in ["", "ops.js", "ops.css", "uplot.js", "uplot.css"] {
            let path = format!("{PREFIX}{name}");
            assert!(serves(&Method::GET, &path), "{path}");
            let response = respond(&Method::GET, &path);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let csp = response.headers()[http::header::CONTENT_SECURITY_POLICY].to_str().unwrap_or_default();
            assert!(csp.contains("script-src 'self';") && !csp.contains("unsafe"), "{csp}");
        }
        assert_eq!(respond(&Method::GET, "/admin/ui/nothing.js").status(), StatusCode::NOT_FOUND);
        let redirect = respond(&Method::GET, "/admin/");
        assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(redirect.headers()[LOCATION], PREFIX);
    }

    #[test]
    fn only_reads_of_the_page_skip_the_token() {
        assert!(!serves(&Method::POST, PREFIX));
        assert!(!serves(&Method::GET, "/admin/v1/routes"));
        assert!(!serves(&Method::GET, "/admin/uix"));
    }

    #[test]
    fn the_page_has_no_inline_script_and_stays_small() {
        let page = ASSETS[0].body;
        // Every <script> loads a file; none carries code (the CSP would block it anyway).
        assert_eq!(page.matches("<script").count(), page.matches("<script src=").count());
        let handlers: Vec<&str> = page.split_whitespace().filter(|w| w.starts_with("on") && w.contains('=')).collect();
        assert!(handlers.is_empty(), "inline event handlers: {handlers:?}");
        let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
        assert!(total < 150 * 1024, "the page's files weigh {total} bytes");
    }

    /// No endpoint exists only for the page: each path `ops.js` calls is in the API's description.
    #[test]
    fn every_call_of_the_page_is_documented() {
        let script = include_str!("ui/ops.js");
        let spec = include_str!("../../api/admin.openapi.yaml");
        let mut paths: Vec<String> = script
            .split('\'')
            .filter(|literal| literal.starts_with("/admin/v1/"))
            .map(|literal| literal.trim_end_matches('/').to_owned())
            .collect();
        // routePath(model, action): the commands' actions and `weights`.
        let actions = script.split("action: '").skip(1).filter_map(|rest| rest.split('\'').next());
        paths.extend(actions.chain(["weights"]).map(|action| format!("/admin/v1/routes/{{model}}/{action}")));
        assert!(paths.len() >= 7, "{paths:?}");
        for path in paths {
            assert!(
                spec.contains(&format!("\n  {path}:\n")),
                "ops.js calls {path}, which api/admin.openapi.yaml lacks"
            );
        }
        for name in ["", "{file}"] {
            assert!(spec.contains(&format!("\n  {PREFIX}{name}:\n")), "the page's own path {PREFIX}{name}");
        }
    }

    #[test]
    fn the_script_never_writes_html() {
        let script = ASSETS.iter().find(|a| a.name == "ops.js").map(|a| a.body).unwrap_or_default();
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!script.contains(sink), "ops.js uses {sink}: build DOM nodes with text instead");
        }
    }
}
