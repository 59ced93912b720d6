//! Code generated from `proto/` by `build.rs`: the KServe V2 / Triton gRPC
//! protocol, the standard gRPC health service, and modelgate's own service.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `package inference`: GRPCInferenceService and Triton's ModelConfig.
pub mod inference {
    tonic::include_proto!("inference");
}

/// Every message of `proto/`, as a `FileDescriptorSet` (for reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// `package modelgate`: the gateway's own service (feedback).
pub mod modelgate {
    tonic::include_proto!("modelgate");
}

/// `package grpc.health.v1`.
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}
