//! The hyperloop wire contract.
