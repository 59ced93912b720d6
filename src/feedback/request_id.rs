//! Request ids the gateway makes for requests that bring none: a per-process
//! random prefix and a counter. Unique within the process by the counter, and
//! across replicas and restarts by the prefix (64 random bits), which is what
//! joining late feedback to a prediction needs; no clock, no lock, no syscall.

use std::fmt::Write;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Header that carries the request id on HTTP responses and gRPC metadata.
pub const HEADER: &str = "x-request-id";

/// [`HEADER`] as an HTTP header name, built once: a `&str` key is parsed and
/// copied into a new name on every insert.
pub const HEADER_NAME: http::HeaderName = http::HeaderName::from_static(HEADER);

/// Longest request id a client may send; longer ones are refused (400).
pub const MAX_LEN: usize = 128;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The prefix, 16 hex digits from `RandomState`'s per-process random keys.
fn prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        format!("{:016x}", hasher.finish())
    })
}

/// A fresh id, `<16 hex digits>-<counter in hex>`: one atomic add and one
/// allocation of at most 33 bytes.
pub fn generate() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = String::with_capacity(33);
    id.push_str(prefix());
    // Writing to a String cannot fail.
    let _ = write!(id, "-{n:x}");
    id
}

/// Checks a client's id: 1 to [`MAX_LEN`] visible ASCII characters, so it can
/// travel in a header and a log line as is.
pub fn check(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_LEN {
        return Err(format!("request id must be 1 to {MAX_LEN} characters, got {}", id.len()));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("request id must be visible ASCII characters (no spaces or control characters)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_valid_and_share_the_process_prefix() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a[..17], b[..17]);
        assert!(check(&a).is_ok() && check(&b).is_ok(), "{a} {b}");
        let counter = |id: &str| u64::from_str_radix(&id[17..], 16).unwrap();
        assert!(counter(&b) > counter(&a));
    }

    #[test]
    fn client_ids_that_cannot_travel_in_a_header_are_refused() {
        assert!(check("").is_err());
        assert!(check(&"x".repeat(MAX_LEN + 1)).is_err());
        assert!(check("a b").is_err());
        assert!(check("a\nb").is_err());
        assert!(check("req-42_é").is_err());
        assert!(check("req-42").is_ok());
    }
}
