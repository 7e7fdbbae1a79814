//! Hand-written `Debug` for generated messages that may carry secrets (build.rs skips the
//! derived impls): a `{:?}` in a log line must never print a join token or agent env value.

use std::fmt;

use crate::v1::{Hello, RuntimeSettings};

/// Renders a secret as whether it is set, never its value.
struct Redacted(bool);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { "<redacted>" } else { "<empty>" })
    }
}

impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello")
            .field("protocol_version", &self.protocol_version)
            .field("registration", &self.registration)
            .field("token", &Redacted(!self.token.is_empty()))
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl fmt::Debug for RuntimeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut env_names: Vec<&str> = self.extra_env.keys().map(String::as_str).collect();
        env_names.sort_unstable();
        f.debug_struct("RuntimeSettings")
            .field("kind", &self.kind)
            .field("command", &self.command)
            .field("model", &self.model)
            .field("max_turns", &self.max_turns)
            .field("timeout", &self.timeout)
            .field("budget_usd", &self.budget_usd)
            .field("env_passthrough", &self.env_passthrough)
            .field("extra_env (names only)", &env_names)
            .field("git_identity", &self.git_identity)
            .finish()
    }
}
