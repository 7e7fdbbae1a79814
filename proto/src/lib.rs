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

// 0 means "unset" on the wire, so the real version can never be 0.
const _: () = assert!(PROTOCOL_VERSION >= 1);

/// Most log lines one `Progress` message carries. With [`MAX_LOG_LINE_BYTES`] this bounds a
/// message at ~1 MiB, well below tonic's default 4 MiB decode limit, so a chatty agent can
/// never produce a message the coordinator refuses to decode.
pub const MAX_PROGRESS_LINES: usize = 256;

/// Longest `LogLine.text` in bytes; workers truncate longer lines (at a char boundary).
pub const MAX_LOG_LINE_BYTES: usize = 4096;

/// The largest message either end of a worker stream decodes or encodes. An `Assign` is
/// mostly its prompt, which the coordinator bounds at [`MAX_PROMPT_BYTES`]; the rest (ids,
/// settings) is small.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The longest prompt the coordinator sends; a longer one is cut with a note saying so. The
/// largest intake (`max_specs_per_intake` 50 × `max_spec_bytes` 1 MiB) stays below it, so
/// only the list of existing tasks of a very large project can be cut.
pub const MAX_PROMPT_BYTES: usize = 56 * 1024 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_version_is_set_and_checked() {
        assert_eq!(
            check_protocol_version("hello.protocol_version", PROTOCOL_VERSION),
            Ok(())
        );

        let missing = check_protocol_version("hello.protocol_version", 0).unwrap_err();
        assert_eq!(
            tonic::Status::from(missing).code(),
            tonic::Code::InvalidArgument
        );

        let newer =
            check_protocol_version("heartbeat.protocol_version", PROTOCOL_VERSION + 1).unwrap_err();
        let status = tonic::Status::from(newer);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("`heartbeat.protocol_version`"));
        assert!(status.message().contains(&PROTOCOL_VERSION.to_string()));
    }

    #[test]
    fn protocol_version_travels_on_hello_and_heartbeat() {
        use prost::Message as _;
        let hello = v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            ..Default::default()
        };
        let decoded = v1::Hello::decode(hello.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.protocol_version, PROTOCOL_VERSION);
        let hb = v1::Heartbeat {
            protocol_version: PROTOCOL_VERSION,
            ..Default::default()
        };
        let decoded = v1::Heartbeat::decode(hb.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.protocol_version, PROTOCOL_VERSION);
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let hello = v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            token: "s3cret-join-token".into(),
            ..Default::default()
        };
        let rendered = format!("{hello:?}");
        assert!(!rendered.contains("s3cret"), "{rendered}");
        assert!(rendered.contains("<redacted>"), "{rendered}");

        let runtime = v1::RuntimeSettings {
            extra_env: [("GITHUB_TOKEN".to_owned(), "ghp_topsecret".to_owned())].into(),
            ..Default::default()
        };
        let assign = v1::Assign {
            runtime: Some(runtime),
            ..Default::default()
        };
        let rendered = format!("{assign:?}");
        assert!(!rendered.contains("ghp_topsecret"), "{rendered}");
        assert!(rendered.contains("GITHUB_TOKEN"), "{rendered}");
    }
}
