//! The hyperloop wire contract: package `hyperloop.v1` (worker stream, admin API, domain
//! events) compiled from `proto/hyperloop/v1/*.proto`, plus conversions to and from the
//! domain types in [`hyperloop_shared::model`].
//!
//! - [`v1`]: generated prost messages and tonic clients/servers (`WorkerService`,
//!   `AdminService`).
//! - [`convert`]: `From` (domain → wire, infallible) and `TryFrom` (wire → domain, validated).
//! - [`error`]: [`ConversionError`], the one error type of this crate; it names the offending
//!   field and maps to `tonic::Status` in one place.
//!
//! API Boundary: everything under `proto/hyperloop/v1/` is the compatibility surface between
//! builds. Architecture Invariant: `shared` never depends on this crate; handlers never
//! `unwrap()` wire data but go through `TryFrom`.

pub mod convert;
pub mod error;
mod redact;

pub use error::ConversionError;

/// Generated messages and services of package `hyperloop.v1`.
#[allow(clippy::all, clippy::pedantic)] // generated code; lint the .proto files instead
pub mod v1 {
    tonic::include_proto!("hyperloop.v1");
}

/// The worker-stream protocol version of this build, defined in `common.proto` as
/// `PROTOCOL_VERSION_CURRENT` so that the number lives next to the messages it versions.
/// Sent on `Hello` and every `Heartbeat`; see [`check_protocol_version`].
pub const PROTOCOL_VERSION: u32 = v1::ProtocolVersion::Current as u32;

/// Most log lines one `Progress` message carries. With [`MAX_LOG_LINE_BYTES`] this bounds a
/// message at ~1 MiB, well below tonic's default 4 MiB decode limit, so a chatty agent can
/// never produce a message the coordinator refuses to decode.
pub const MAX_PROGRESS_LINES: usize = 256;

/// Longest `LogLine.text` in bytes; workers truncate longer lines (at a char boundary).
pub const MAX_LOG_LINE_BYTES: usize = 4096;

/// Checks a peer's protocol version as carried in `field` (e.g. `hello.protocol_version`).
///
/// # Errors
///
/// [`ConversionError::MissingField`] when the version is 0 (unset), and
/// [`ConversionError::ProtocolMismatch`] (FAILED_PRECONDITION on the wire) when it differs
/// from [`PROTOCOL_VERSION`].
pub fn check_protocol_version(field: &str, got: u32) -> Result<(), ConversionError> {
    match got {
        0 => Err(ConversionError::missing(field)),
        v if v == PROTOCOL_VERSION => Ok(()),
        v => Err(ConversionError::ProtocolMismatch {
            field: field.to_owned(),
            got: v,
            expected: PROTOCOL_VERSION,
        }),
    }
}
