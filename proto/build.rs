//! Compiles the gRPC contract with protox (pure Rust): no `protoc` on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["nodedns/v1/authority.proto"];
    let fds = protox::compile(protos, ["."])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
