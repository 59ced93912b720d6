//! Code generated from `proto/` by `build.rs`: the KServe V2 / Triton gRPC
//! protocol and the standard gRPC health service.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `package inference`: GRPCInferenceService and Triton's ModelConfig.
pub mod inference {
    tonic::include_proto!("inference");
}

/// `package grpc.health.v1`.
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}
