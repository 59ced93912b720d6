//! The decoders a client reaches, one function per fuzz target. The targets
//! in `fuzz_targets/` call these under libFuzzer (nightly); the corpus replay
//! (`tests/fuzz_corpus.rs`, stable, in `scripts/test.sh`) includes this file
//! and feeds every corpus file through the same functions.
//!
//! Each must return for any input, with a value or an error: a panic, a hang
//! or an allocation past the limits given here is a finding.
#![allow(missing_docs)]

use std::str::FromStr;

use bytes::Bytes;
use prost::Message;

/// Request limit the decoders are given (the real default is 64 MiB).
pub const LIMIT: usize = 1 << 20;

/// A target: its name (the corpus folder under `fuzz/corpus/`) and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("v2_json", v2_json),
    ("binary_tensor", binary_tensor),
    ("grpc_infer", grpc_infer),
    ("config_pbtxt", config_pbtxt),
    ("route_spec", route_spec),
    ("registry_manifest", registry_manifest),
];

/// A V2 JSON inference request body.
pub fn v2_json(data: &[u8]) {
    let _ = modelgate::http::decode_request(None, Bytes::copy_from_slice(data), LIMIT);
}

/// The binary tensor extension: the first two bytes give the JSON header's
/// length (`Inference-Header-Content-Length`), the rest is the body.
pub fn binary_tensor(data: &[u8]) {
    let [a, b, body @ ..] = data else { return };
    let header_length = usize::from(u16::from_le_bytes([*a, *b]));
    let _ = modelgate::http::decode_request(Some(header_length), Bytes::copy_from_slice(body), LIMIT);
}

/// A `ModelInferRequest` message as the gRPC door decodes it: the bound on
/// its decoded size, prost, then the conversion to the gateway's request.
pub fn grpc_infer(data: &[u8]) {
    if modelgate::grpc::bounded_codec::check_decoded_size(data, 2 * LIMIT).is_err() {
        return;
    }
    let Ok(message) = modelgate::proto::inference::ModelInferRequest::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let _ = modelgate::grpc::codec::decode_request(message, LIMIT);
}

/// A model's `config.pbtxt`.
pub fn config_pbtxt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = modelgate::repository::pbtxt::parse(text);
    let _ = modelgate::repository::model_config::parse_config_file(text);
}

/// A route as the admin API takes it (JSON) and as the config file holds
/// it (TOML), validated.
pub fn route_spec(data: &[u8]) {
    if let Ok(spec) = serde_json::from_slice::<modelgate::routing::RouteSpec>(data) {
        let _ = spec.validate();
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(spec) = toml::from_str::<modelgate::routing::RouteSpec>(text)
    {
        let _ = spec.validate();
    }
}

/// A registry version's file list (the `files` of a create-version call),
/// digests, paths and names.
pub fn registry_manifest(data: &[u8]) {
    use modelgate_registry::manifest::{Entry, Limits, Manifest, check_path};
    if let Ok(files) = serde_json::from_slice::<Vec<Entry>>(data)
        && let Ok(manifest) = Manifest::new(files, Limits::default())
    {
        let _ = manifest.digest();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = modelgate_registry::digest::Digest::from_str(text);
        let _ = check_path(text);
        let _ = modelgate_registry::name::Name::parse("model", text);
    }
}
