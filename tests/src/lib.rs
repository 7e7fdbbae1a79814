//! Shared helpers for hyperloop end-to-end tests.

pub mod etcd;
pub mod model_server;
pub mod repo;
