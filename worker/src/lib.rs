//! The hyperloop worker.
