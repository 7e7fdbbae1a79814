//! hyperloop's etcd v3 client: the calls the coordinator's etcd adapters make (KV range,
//! put and transactions, watches, leases, and the election service's campaign), over tonic
//! with messages generated from the `.proto` files under `proto/`.
//!
//! Those files declare only the part of etcd's API hyperloop uses, with etcd's package,
//! service and field numbers, so the bytes on the wire are etcd's own. They are compiled by
//! protox in `build.rs`: building needs no `protoc`.
//!
//! - [`Client`]: one connection (lazily made) per endpoint, with failover between them.
//! - [`Error`]: what a call can fail with; keeps etcd's gRPC status.
//! - [`etcdserverpb`], [`mvccpb`], [`v3electionpb`]: the generated messages, with a few
//!   constructors for the common ones (see [`etcdserverpb::Compare::mod_revision`],
//!   [`etcdserverpb::RequestOp::put`]).

mod client;
mod error;
mod messages;

pub use client::{Client, LeaseKeepAlive, Options, Watch};
pub use error::Error;
pub use messages::prefix_end;

/// Stored keys and watch events (etcd's `mvccpb` package).
#[allow(clippy::all, clippy::pedantic)] // generated code
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Requests, responses and services of the KV, Watch and Lease APIs (etcd's `etcdserverpb`).
#[allow(clippy::all, clippy::pedantic)] // generated code
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The election service (etcd's `v3electionpb`).
#[allow(clippy::all, clippy::pedantic)] // generated code
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
