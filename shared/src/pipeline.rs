//! The pipeline DSL (`kind: Process`), its validation and the pure executor.
