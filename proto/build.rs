//! Compiles `hyperloop/v1/*.proto` with protox (pure Rust, no `protoc` on PATH needed) and
//! generates prost messages plus tonic client and server code from the descriptor set.

use std::path::Path;

use anyhow::Context as _;

/// Every .proto file of the wire contract, relative to the include root (this crate).
const PROTOS: &[&str] = &[
    "hyperloop/v1/common.proto",
    "hyperloop/v1/worker.proto",
    "hyperloop/v1/events.proto",
    "hyperloop/v1/admin.proto",
];

/// Messages that may carry secrets. Their Debug impls are written by hand in `src/redact.rs`
/// so a `{:?}` in a log line can never print a join token or an agent's environment.
const REDACTED_DEBUG: &[&str] = &[".hyperloop.v1.Hello", ".hyperloop.v1.RuntimeSettings"];

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let fds = protox::compile(PROTOS, [root]).context("compiling hyperloop/v1/*.proto")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(REDACTED_DEBUG.iter().copied())
        .compile_fds(fds)
        .context("generating Rust code for hyperloop.v1")?;
    Ok(())
}
