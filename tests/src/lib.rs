//! Shared helpers for hyperloop end-to-end tests.
