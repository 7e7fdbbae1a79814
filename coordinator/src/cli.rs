//! The coordinator's commands, called by `main` with parsed arguments. Each returns an
//! [`Exit`]: the process exit code plus what to print, so commands are testable in-process.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use hyperloop_shared::config::Overrides;

use crate::compose::{CacheDir, CompositionSource, compose_project, render};
use crate::settings;

/// Exit codes (PRODUCT.md §11). Scripts depend on them.
pub mod code {
    /// Converged, or clean shutdown.
    pub const OK: u8 = 0;
    /// A runtime failure.
    pub const RUNTIME: u8 = 1;
    /// Bad usage or bad configuration.
    pub const USAGE: u8 = 2;
    /// Stopped by `max_cycles` before convergence.
    pub const MAX_CYCLES: u8 = 3;
}

/// The outcome of a command: exit code, standard output and standard error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

impl Exit {
    pub fn ok(stdout: String, stderr: String) -> Self {
        Self {
            code: code::OK,
            stdout,
            stderr,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: code::USAGE,
            stdout: String::new(),
            stderr: format!("error: {}\n", message.into()),
        }
    }

    /// Prints the output and turns the code into the process exit status.
    pub fn report(self) -> ExitCode {
        print!("{}", self.stdout);
        eprint!("{}", self.stderr);
        ExitCode::from(self.code)
    }
}

/// `hyperloop-coordinator compose`: the resolved resources as multi-document YAML on stdout;
/// warnings (e.g. a patch that matched nothing) on stderr.
pub fn compose(root: &Path, config_file: Option<&Path>, overrides: &Overrides) -> Exit {
    let settings = match settings::load(root, config_file, overrides) {
        Ok(s) => s,
        Err(e) => return Exit::usage(e.to_string()),
    };
    let config = &settings.config;
    let cache = CacheDir::from_env();
    match compose_project(root, &config.overlay, config.base_ref.as_deref(), &cache) {
        Ok((composition, source)) => {
            let mut stderr = String::new();
            if let CompositionSource::BaseOnly(base) = &source {
                let _ = writeln!(
                    stderr,
                    "note: {} has no kustomization; composing the base {base} alone",
                    config.overlay
                );
            }
            for warning in &composition.warnings {
                let _ = writeln!(stderr, "warning: {warning}");
            }
            Exit::ok(render(&composition), stderr)
        }
        Err(e) => Exit::usage(e.to_string()),
    }
}
