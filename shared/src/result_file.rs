//! Parsing and validation of the agent result file, `.hyperloop/result.md`.
