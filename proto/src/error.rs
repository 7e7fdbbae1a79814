//! [`ConversionError`]: why a wire message could not become a domain value.

use hyperloop_shared::model::ModelError;

/// A wire message that cannot be turned into a domain value. Every variant names the field
/// as a path from the converted message (`spec_ref.commit`, `deps[2]`), so the peer learns
/// exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    /// A field the domain requires is unset, empty, zero or `*_UNSPECIFIED`.
    #[error("missing required field `{field}`")]
    MissingField { field: String },
    /// An enum field holds a number this build does not know.
    #[error("invalid value for field `{field}`: unknown enum value {value}")]
    UnknownEnumValue { field: String, value: i32 },
    /// A field is present but its content is rejected by the domain model.
    #[error("invalid value for field `{field}`: {source}")]
    InvalidField {
        field: String,
        #[source]
        source: ModelError,
    },
    /// A pipeline position that does not parse (see `hyperloop_shared::pipeline::Position`).
    #[error("invalid value for field `{field}`: {reason}")]
    InvalidPosition { field: String, reason: String },
    /// A numeric field is out of the range the domain allows.
    #[error("invalid value for field `{field}`: {reason}")]
    OutOfRange { field: String, reason: String },
    /// The peer speaks another protocol version. Refused with FAILED_PRECONDITION, not
    /// INVALID_ARGUMENT: the message is well-formed, the peers are incompatible.
    #[error(
        "unsupported protocol version {got} in field `{field}`: this build speaks version \
         {expected}; run coordinator and workers from the same hyperloop release"
    )]
    ProtocolMismatch {
        field: String,
        got: u32,
        expected: u32,
    },
}

/// The `field` of any variant, borrowed as `$err` is (shared or mutable): the one list of
/// variants behind [`ConversionError::field`] and `field_mut`.
macro_rules! field_of {
    ($err:expr) => {
        match $err {
            Self::MissingField { field }
            | Self::UnknownEnumValue { field, .. }
            | Self::InvalidField { field, .. }
            | Self::InvalidPosition { field, .. }
            | Self::OutOfRange { field, .. }
            | Self::ProtocolMismatch { field, .. } => field,
        }
    };
}

impl ConversionError {
    pub(crate) fn missing(field: &str) -> Self {
        Self::MissingField {
            field: field.to_owned(),
        }
    }

    /// The path of the offending field, relative to the converted message.
    pub fn field(&self) -> &str {
        field_of!(self)
    }

    /// Prefixes the field path with the field that contained the converted message, so an
    /// error from a nested conversion names the full path (`task.spec_ref.commit`).
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        let field = self.field_mut();
        *field = format!("{parent}.{field}");
        self
    }

    fn field_mut(&mut self) -> &mut String {
        field_of!(self)
    }

    /// The gRPC status code for this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::ProtocolMismatch { .. } => tonic::Code::FailedPrecondition,
            _ => tonic::Code::InvalidArgument,
        }
    }
}

impl From<ConversionError> for tonic::Status {
    fn from(err: ConversionError) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}
