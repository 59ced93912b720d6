//! The HTTP form of an inference response: its content type, the binary
//! header length, and compression when the client accepts it.

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response};

use super::infer::{EncodedResponse, HEADER_LENGTH};
use crate::respond::Chunks;

/// A compression the client accepts for the response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseEncoding {
    /// `Content-Encoding: gzip`.
    Gzip,
    /// `Content-Encoding: deflate` (a zlib stream, as RFC 9110 defines it and
    /// tritonclient's `response_compression_algorithm="deflate"` reads it).
    Deflate,
}

/// The response encoding to use from `Accept-Encoding`: gzip when accepted,
/// else deflate when accepted, else none. Tokens with `q=0` are refusals.
pub fn accepts(headers: &HeaderMap) -> Option<ResponseEncoding> {
    let accepted = |wanted: &str| {
        headers.get_all(ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
            |token| {
                let mut parts = token.split(';');
                let name = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
                name.eq_ignore_ascii_case(wanted) && !refused
            },
        )
    };
    if accepted("gzip") {
        Some(ResponseEncoding::Gzip)
    } else if accepted("deflate") {
        Some(ResponseEncoding::Deflate)
    } else {
        None
    }
}

/// Writes every part, in order, through a compressing writer.
fn write_parts(encoder: &mut impl std::io::Write, encoded: &EncodedResponse) -> std::io::Result<()> {
    encoded.parts.iter().try_for_each(|part| encoder.write_all(part))
}

/// Builds the HTTP response of an inference, compressing it when asked.
pub fn infer_response(encoded: EncodedResponse, encoding: Option<ResponseEncoding>) -> Response<Chunks> {
    let binary = encoded.header_length;
    let mut response = match encoding {
        Some(encoding) => {
            let level = flate2::Compression::fast();
            let (compressed, name) = match encoding {
                ResponseEncoding::Gzip => {
                    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
                    (write_parts(&mut encoder, &encoded).and_then(|()| encoder.finish()), "gzip")
                }
                ResponseEncoding::Deflate => {
                    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), level);
                    (write_parts(&mut encoder, &encoded).and_then(|()| encoder.finish()), "deflate")
                }
            };
            let compressed = compressed.expect("writing to a Vec cannot fail");
            let mut r = Response::new(Chunks::one(Bytes::from(compressed)));
            r.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static(name));
            r
        }
        None => Response::new(Chunks::many(encoded.parts)),
    };
    let headers = response.headers_mut();
    match binary {
        Some(length) => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(HEADER_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn accept_encoding_is_read_with_q_values() {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("deflate, gzip;q=0.8"));
        assert_eq!(accepts(&h), Some(ResponseEncoding::Gzip));
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0"));
        assert_eq!(accepts(&h), None);
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("deflate"));
        assert_eq!(accepts(&h), Some(ResponseEncoding::Deflate));
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0, deflate"));
        assert_eq!(accepts(&h), Some(ResponseEncoding::Deflate));
        assert_eq!(accepts(&HeaderMap::new()), None);
    }

    #[test]
    fn compressed_responses_decompress_to_the_parts_in_order() {
        let parts = || EncodedResponse {
            parts: smallvec::smallvec![Bytes::from_static(b"{\"json\":1}"), Bytes::from_static(b"\x01\x02")],
            header_length: Some(10),
        };
        let body = |r: Response<Chunks>| r.into_body().parts().flatten().copied().collect::<Vec<u8>>();

        let gzip = infer_response(parts(), Some(ResponseEncoding::Gzip));
        assert_eq!(gzip.headers()[CONTENT_ENCODING], "gzip");
        assert_eq!(gzip.headers()[HEADER_LENGTH], "10");
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body(gzip)[..]).read_to_end(&mut plain).unwrap();
        assert_eq!(plain, b"{\"json\":1}\x01\x02");

        let deflate = infer_response(parts(), Some(ResponseEncoding::Deflate));
        assert_eq!(deflate.headers()[CONTENT_ENCODING], "deflate");
        let mut plain = Vec::new();
        flate2::read::ZlibDecoder::new(&body(deflate)[..]).read_to_end(&mut plain).unwrap();
        assert_eq!(plain, b"{\"json\":1}\x01\x02");

        let identity = infer_response(parts(), None);
        assert!(identity.headers().get(CONTENT_ENCODING).is_none());
        assert_eq!(body(identity), b"{\"json\":1}\x01\x02");
    }
}
