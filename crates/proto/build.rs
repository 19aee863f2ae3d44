//! Generates the tonic/prost code for `proto/switchyard/config/v1/config.proto` and
//! `usage.proto` (the same package: usage reporting).
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so a fresh machine needs none installed.
//!
//! A second pass generates the control plane's server once more (into `OUT_DIR/encoded`),
//! with every message taken from the first pass except `ControlMessage`, which becomes
//! [`crate::encoded::ControlMessage`]: the same bytes on the wire, but carrying a snapshot
//! encoded once per version and shared by every node's stream.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("switchyard/config/v1/config.proto");
    let usage = root.join("switchyard/config/v1/usage.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    println!("cargo:rerun-if-changed={}", usage.display());
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure().compile_with_config(config, &[&file, &usage], &[&root])?;

    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("encoded");
    std::fs::create_dir_all(&out)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&out)
        .extern_path(".switchyard.config.v1", "crate::v1")
        .extern_path(
            ".switchyard.config.v1.ControlMessage",
            "crate::encoded::ControlMessage",
        )
        .compile_with_config(config, &[&file], &[&root])?;
    Ok(())
}
