//! Generates the tonic/prost code for `proto/switchyard/config/v1/config.proto`.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so a fresh machine needs none installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("switchyard/config/v1/config.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &[file], &[root])?;
    Ok(())
}
