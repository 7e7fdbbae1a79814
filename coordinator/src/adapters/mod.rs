//! Adapters: the ports implemented over concrete technology.

pub mod git;
