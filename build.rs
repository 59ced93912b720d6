//! Compiles the KServe V2 / Triton protocol (`proto/`) into Rust with a pure-Rust
//! protobuf compiler (`protox`), so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["grpc_service.proto", "model_config.proto", "health.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Tensor payloads stay `Bytes`: decoded without a copy, encoded without one.
        .bytes(".")
        .build_server(true)
        .build_client(true)
        // Clients are for tests; they bring their own channel.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
