//! Compiles the etcd v3 subset under `proto/` with protox (pure Rust: no `protoc` needed)
//! and generates prost messages plus tonic clients (no servers) from the descriptor set.

use std::path::Path;

use anyhow::Context as _;

/// Every .proto file, relative to the include root `proto/`.
const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "etcdserverpb/rpc.proto",
    "v3electionpb/v3election.proto",
];

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let fds = protox::compile(PROTOS, [&root]).context("compiling the etcd protos")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)
        .context("generating Rust code for the etcd protos")?;
    Ok(())
}
