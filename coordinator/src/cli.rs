//! The coordinator's commands, called by `main` with parsed arguments. Each returns an
//! [`Exit`]: the process exit code plus what to print, so commands are testable in-process.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use hyperloop_shared::config::Overrides;
use hyperloop_shared::pipeline::{HookKind, Process, Step};
use hyperloop_shared::project::Project;
use hyperloop_worker::otel::{ExportError, ExportSettings, Telemetry};

use crate::compose::{CacheDir, Composition, CompositionSource, compose_project, render};
use crate::init::InitError;
use crate::reconcile::{Halt, Mode};
use crate::settings::{self, Settings};
use crate::specs;
use tokio_util::sync::CancellationToken;

/// Exit codes (PRODUCT.md §11). Scripts depend on them.
pub mod code {
    /// Converged, or clean shutdown.
    pub const OK: u8 = 0;
    /// A runtime failure.
    pub const RUNTIME: u8 = 1;
    /// Bad usage or bad configuration.
    pub const USAGE: u8 = 2;
    /// Stopped by `max_cycles`: that many cycles in a row made no progress.
    pub const MAX_CYCLES: u8 = 3;
    /// Everything else converged, but specs were given up after `max_spec_failures`.
    pub const SPECS_FAILED: u8 = 4;
    /// The base branch was rewritten outside hyperloop (not a fast-forward); nothing was
    /// built on it. The message says how to restore it or continue.
    pub const BASE_REWRITTEN: u8 = 5;
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
    let (settings, composition, source) = match load_project(root, config_file, overrides) {
        Ok(loaded) => loaded,
        Err(exit) => return exit,
    };
    let mut stderr = String::new();
    if let CompositionSource::BaseOnly(base) = &source {
        let _ = writeln!(
            stderr,
            "note: {} has no kustomization; composing the base {base} alone",
            settings.config.overlay
        );
    }
    if let CompositionSource::Implied {
        overlay,
        kustomization,
    } = &source
    {
        let _ = writeln!(
            stderr,
            "note: {overlay} has no kustomization.yaml; its files were applied to the base \
             as if it held:\n{kustomization}"
        );
    }
    for warning in &composition.warnings {
        let _ = writeln!(stderr, "warning: {warning}");
    }
    Exit::ok(render(&composition), stderr)
}

/// Loads the settings and composes the project they point at, as every command starts; a
/// failure of either is a usage error.
fn load_project(
    root: &Path,
    config_file: Option<&Path>,
    overrides: &Overrides,
) -> Result<(Settings, Composition, CompositionSource), Exit> {
    let settings =
        settings::load(root, config_file, overrides).map_err(|e| Exit::usage(e.to_string()))?;
    let config = &settings.config;
    let cache = CacheDir::from_env();
    let (composition, source) =
        compose_project(root, &config.overlay, config.base_ref.as_deref(), &cache)
            .map_err(|e| Exit::usage(e.to_string()))?;
    Ok((settings, composition, source))
}

/// `hyperloop-coordinator run --dry-run`: validates configuration, composition and pipeline,
/// and prints what a run would work with. Reads only; changes nothing.
pub fn dry_run(root: &Path, config_file: Option<&Path>, overrides: &Overrides) -> Exit {
    let (settings, composition, source) = match load_project(root, config_file, overrides) {
        Ok(loaded) => loaded,
        Err(exit) => return exit,
    };
    let mut settings = settings;
    let inferred = settings::infer(root, &mut settings.config);
    let config = &settings.config;
    let project = match Project::from_composition(&composition) {
        Ok(p) => p,
        Err(e) => return Exit::usage(e.to_string()),
    };
    // The specs a run works on: those committed on the base branch. Where a run could not
    // read them, the dry run shows everything else and fails with the run's error.
    let survey = specs::Survey::take(root, &config.target.base_branch, &config.target.specs_dir);
    let specs = survey.as_ref().map_or(&[][..], |s| &s.committed[..]);

    let mut out = String::new();
    let _ = writeln!(out, "# hyperloop dry run: nothing is changed\n");
    let _ = writeln!(out, "repository:    {}", root.display());
    let _ = writeln!(
        out,
        "configuration: {}",
        settings.file.as_deref().map_or_else(
            || "none found, all defaults".to_owned(),
            |f| f.display().to_string()
        )
    );
    let _ = writeln!(
        out,
        "composition:   {}",
        match &source {
            CompositionSource::Overlay(o) => format!("overlay {o}"),
            CompositionSource::BaseOnly(b) => format!("base {b} (no overlay kustomization)"),
            CompositionSource::Implied { overlay, .. } => {
                format!("overlay {overlay} (its patch files, through an implied kustomization)")
            }
        }
    );
    let landing = match &config.target.repo {
        Some(repo) => format!(
            "pull requests on {repo} into {}{}",
            config.target.base_branch,
            inferred
                .repo
                .as_ref()
                .map_or(String::new(), |(_, origin)| format!(
                    " (target.repo inferred from origin {origin}; `target.repo: null` or \
                 `--repo ''` lands locally)"
                ))
        ),
        None => format!("local merges into {}", config.target.base_branch),
    };
    let _ = writeln!(out, "landing:       {landing}");

    let _ = writeln!(out, "\n## Configuration\n");
    out.push_str(&serde_yaml::to_string(config).unwrap_or_default());

    let process = &project.process;
    let _ = writeln!(
        out,
        "\n## Pipeline `{}` ({})\n",
        process.name, process.source
    );
    pipeline_tree(&mut out, process.pipeline.steps(), 0, process);
    for hook in &process.hooks.after_reap {
        let name = match hook {
            HookKind::ProcessImprover => "process-improver",
        };
        let _ = writeln!(out, "after_reap hook: {name}");
    }

    let _ = writeln!(out, "\n## Agents\n");
    for template in project.agents.values() {
        let _ = writeln!(out, "### {}\n", template.name);
        out.push_str(template.prompt.trim_end());
        out.push('\n');
        if !template.guidelines.trim().is_empty() {
            let _ = writeln!(out, "\nGuidelines:\n{}", template.guidelines.trim_end());
        }
        out.push('\n');
    }

    let _ = writeln!(
        out,
        "## Specs ({} under {}/ on {})\n",
        specs.len(),
        config.target.specs_dir,
        config.target.base_branch
    );
    for spec in specs {
        let _ = writeln!(out, "- {spec}");
    }
    match &survey {
        Ok(survey) => {
            for skipped in &survey.skipped {
                let _ = writeln!(out, "- skipped: {skipped}");
            }
            if let Some(note) = survey.uncommitted_note() {
                let _ = writeln!(out, "\nNot worked on: {note}");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "A run would stop here: {e}");
        }
    }
    let _ = writeln!(out, "\n## Plan\n");
    if survey.is_err() {
        let _ = writeln!(out, "None: a run cannot read the specs (above).");
    } else if specs.is_empty() {
        let _ = writeln!(
            out,
            "No specs under {}/ on {}: there is nothing to reconcile. Write a spec and \
             commit it first.",
            config.target.specs_dir, config.target.base_branch
        );
    } else {
        let _ = writeln!(
            out,
            "The pm agent would propose tasks for the gaps in {} spec(s); up to {} task(s) \
             would then run the pipeline above at once, landing by {landing}.",
            specs.len(),
            config.runtime.max_workers,
        );
    }
    let mut stderr = String::new();
    for note in inferred.notes() {
        let _ = writeln!(stderr, "note: {note}");
    }
    for warning in &composition.warnings {
        let _ = writeln!(stderr, "warning: {warning}");
    }
    match survey {
        Ok(_) => Exit::ok(out, stderr),
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            Exit {
                code: code::RUNTIME,
                stdout: out,
                stderr,
            }
        }
    }
}

fn pipeline_tree(out: &mut String, steps: &[Step], depth: usize, process: &Process) {
    let indent = "  ".repeat(depth);
    for step in steps {
        let _ = match step {
            Step::Agent(role) => match process.checks.get(role) {
                Some(names) if names.is_empty() => {
                    writeln!(out, "{indent}- agent {role} (checks: none)")
                }
                Some(names) => {
                    writeln!(out, "{indent}- agent {role} (checks: {})", names.join(", "))
                }
                None => writeln!(out, "{indent}- agent {role}"),
            },
            Step::Gate(name) => {
                let kind = process.gates.get(name).map_or("?", |g| g.kind.type_name());
                writeln!(out, "{indent}- gate {name} ({kind})")
            }
            Step::Action(name) => {
                let kind = process.actions.get(name).map_or("?", |a| a.type_name());
                writeln!(out, "{indent}- action {name} ({kind})")
            }
            Step::Loop(inner) => {
                let _ = writeln!(out, "{indent}- loop");
                pipeline_tree(out, inner, depth + 1, process);
                Ok(())
            }
        };
    }
}

/// `hyperloop-coordinator init`: scaffolds the repository (idempotent, offline).
pub fn init(path: &Path, base_ref: Option<&str>, overlay: Option<&str>) -> Exit {
    match crate::init::init(path, base_ref, overlay) {
        Ok(report) => Exit::ok(report.to_string(), String::new()),
        Err(e @ (InitError::NotARepository { .. } | InitError::NotRepositoryRoot { .. })) => {
            Exit::usage(e.to_string())
        }
        Err(e @ InitError::Invalid { .. }) => Exit::usage(e.to_string()),
        Err(e) => Exit {
            code: code::RUNTIME,
            stdout: String::new(),
            stderr: format!("error: {e}\n"),
        },
    }
}

/// `hyperloop-coordinator run` / `watch`: reconciles until convergence (run) or forever
/// (watch). The first SIGINT/SIGTERM shuts down cleanly (agents stopped, state persisted);
/// a second one exits at once.
pub fn reconcile(
    root: &Path,
    config_file: Option<&Path>,
    overrides: &Overrides,
    mode: Mode,
) -> Exit {
    let settings = match settings::load(root, config_file, overrides) {
        Ok(s) => s,
        Err(e) => return Exit::usage(e.to_string()),
    };
    let mut config = settings.config;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let display = crate::progress::Display::new(terminal);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return runtime_error(format!("cannot start the async runtime: {e}")),
    };
    let repository = config
        .target
        .repo
        .clone()
        .unwrap_or_else(|| root.display().to_string());
    let coordinator_id = crate::run::coordinator_id(&config);
    let export = match ExportSettings::resolve(
        config.observability.otel.as_ref(),
        |name| std::env::var(name).ok(),
        "hyperloop",
        vec![
            ("hyperloop.repository", repository.clone()),
            ("hyperloop.coordinator.id", coordinator_id.clone()),
        ],
    ) {
        Ok(export) => export,
        Err(e) => return Exit::usage(e.to_string()),
    };
    // The exporter's gRPC channel lives on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        match init_tracing(&config, &display, export.as_ref()) {
            Ok(telemetry) => telemetry,
            Err(e) => return Exit::usage(e.to_string()),
        }
    };
    for note in settings::infer(root, &mut config).notes() {
        tracing::info!("{note}");
    }
    // The run span names the repository as inferred from `origin`, when it was.
    let repository = config.target.repo.clone().unwrap_or(repository);
    // Named before anything runs: a spec left uncommitted is otherwise silently not seen.
    if let Ok(survey) =
        specs::Survey::take(root, &config.target.base_branch, &config.target.specs_dir)
        && let Some(note) = survey.uncommitted_note()
    {
        tracing::warn!("{note}");
    }
    // JSON logs are for machines: no progress text mixed into them.
    let show_progress =
        config.observability.log_format == hyperloop_shared::config::LogFormat::Console;
    let max_cycles = config.max_cycles;
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(hyperloop_worker::signals::watch(
            shutdown.clone(),
            "stopping agents and saving state",
        ));
        let stop = CancellationToken::new();
        let (give, take) = tokio::sync::oneshot::channel();
        let observer: crate::run::LiveObserver = Box::new(move |live| drop(give.send(live)));
        let follower = {
            let stop = stop.clone();
            tokio::spawn(async move {
                if let (true, Ok(live)) = (show_progress, take.await) {
                    display.follow(live, stop).await;
                }
            })
        };
        let run =
            tracing::info_span!("run", repository = %repository, coordinator_id = %coordinator_id);
        let outcome = tracing::Instrument::instrument(
            crate::run::run_observed(root, config, mode, shutdown, Some(observer)),
            run,
        )
        .await;
        stop.cancel();
        let _ = follower.await;
        outcome
    });
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(Halt::Converged { complete, failed }) => Exit::ok(
            String::new(),
            format!("converged: {complete} task(s) complete, {failed} failed\n"),
        ),
        Ok(Halt::SpecsFailed {
            complete,
            failed,
            specs,
        }) => Exit {
            code: code::SPECS_FAILED,
            stdout: String::new(),
            stderr: format!(
                "stopped: {complete} task(s) complete, {failed} failed; {} spec(s) given up:\n{}",
                specs.len(),
                specs.iter().map(|s| format!("  {s}\n")).collect::<String>()
            ),
        },
        Ok(Halt::Shutdown) => Exit::ok(String::new(), "stopped; state saved\n".to_owned()),
        Ok(Halt::MaxCycles(_)) => Exit {
            code: code::MAX_CYCLES,
            stdout: String::new(),
            stderr: format!(
                "stopped: {max_cycles} cycles in a row made no progress (max_cycles); see \
                 `hyperloopctl get events` for what repeats, then run again\n"
            ),
        },
        Ok(Halt::IntakeFailing(detail)) => runtime_error(format!(
            "intake failed {} times in a row; fix the pm agent or its overlay and run again. \
             Last finding: {detail}",
            crate::reconcile::MAX_INTAKE_FAILURES
        )),
        Ok(Halt::BaseRewritten(detail)) => Exit {
            code: code::BASE_REWRITTEN,
            stdout: String::new(),
            stderr: format!("stopped: {detail}\n"),
        },
        Ok(Halt::Deposed) => runtime_error(
            "this coordinator lost its leadership and stopped; another one carries on".to_owned(),
        ),
        Err(e) if e.is_usage() => Exit::usage(e.to_string()),
        Err(e) => runtime_error(e.to_string()),
    }
}

fn runtime_error(message: String) -> Exit {
    Exit {
        code: code::RUNTIME,
        stdout: String::new(),
        stderr: format!("error: {message}\n"),
    }
}

/// Logs go to stderr, as console lines or JSON, at the configured level. `RUST_LOG`, when
/// set, wins (for debugging one module).
/// Logs through the display; with `export`, spans also go to an OpenTelemetry collector.
fn init_tracing(
    config: &hyperloop_shared::config::Config,
    display: &std::sync::Arc<crate::progress::Display>,
    export: Option<&ExportSettings>,
) -> Result<Option<Telemetry>, ExportError> {
    use hyperloop_shared::config::{LogFormat, LogLevel};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let level = match config.observability.log_level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warning => "warn",
        LogLevel::Error => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let style = match config.observability.log_format {
        LogFormat::Json => hyperloop_worker::logfmt::Style::Json,
        // Colour only for a person at a terminal: never escape codes in a file or pipe.
        LogFormat::Console => hyperloop_worker::logfmt::Style::Console {
            colour: display.terminal() && std::env::var_os("NO_COLOR").is_none(),
        },
    };
    let logs = tracing_subscriber::fmt::layer()
        .event_format(hyperloop_worker::logfmt::Format(style))
        // Through the display, so log lines appear above the live progress block.
        .with_writer(display.log_writer())
        .with_filter(filter);
    let (telemetry, spans) = match export {
        Some(settings) => {
            let (telemetry, layer) = Telemetry::start(settings)?;
            (Some(telemetry), Some(layer))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Ok(telemetry)
}
