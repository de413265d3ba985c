//! Compiles `rankforge/v1/coordinator.proto` with protox (pure Rust: no system `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "rankforge/v1/coordinator.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
