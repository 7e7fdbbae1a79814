//! The agent shim: a small supervisor between the worker and each agent process.
//!
//! The worker (or the coordinator's in-process worker) starts every agent through its own
//! executable run as `<exe> __hyperloop-agent-shim ...`. The shim, before it starts the agent:
//! - becomes a *child subreaper*, so everything the agent starts stays its descendant even
//!   after `setsid` and a double fork (a daemon cannot slip away to init);
//! - asks for a parent-death signal and watches its parent's pid, so it notices at once when
//!   the worker is `kill -9`ed;
//! - optionally confines itself, and so the agent, with Landlock: everything readable except
//!   the forge and git credentials in the home directory, writable only where the step needs
//!   to write, and no signals to processes outside the step.
//!
//! When the agent ends, or the parent dies, the shim kills every descendant left and exits
//! with the agent's status. Its own process group is the agent's, so the worker's signal
//! ladder (SIGINT, SIGTERM, SIGKILL on the group) reaches both; on SIGTERM the shim also
//! signals descendants that left the group and kills all of them before the worker's SIGKILL
//! would take the shim away.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, getpid, getppid};

/// The first argument that turns a hyperloop executable into the shim.
pub const SHIM_ARG: &str = "__hyperloop-agent-shim";
/// Exit status of a shim whose parent was already gone when it started.
const EXIT_PARENT_GONE: i32 = 124;
/// Exit status of a shim that could not confine the agent (nothing was started).
pub const EXIT_CONFINE_FAILED: i32 = 125;
/// How often the shim checks that its parent is still alive, in case the parent-death signal
/// was missed (it fires when the *thread* that started the shim ends, and is lost when the
/// parent died before it was set).
const PARENT_POLL: Duration = Duration::from_millis(200);
/// After SIGTERM, how long descendants get before the shim kills them; shorter than the
/// worker's own grace before SIGKILL, so the shim finishes the sweep first.
const TERM_SWEEP_AFTER: Duration = Duration::from_millis(350);

/// Files and directories under the home directory that hold git or forge credentials: a
/// confined agent cannot read them (it gets no credentials for `origin`).
pub const HIDDEN_HOME_ENTRIES: &[&str] = &[
    ".ssh",
    ".git-credentials",
    ".netrc",
    ".config/gh",
    ".config/hub",
    ".config/git/credentials",
    ".gnupg",
];

static SHIM: OnceLock<PathBuf> = OnceLock::new();

/// The operator's confinement flags, shared by `hyperloop-worker` and the coordinator (for
/// its in-process workers).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfinementArgs {
    /// Run agents without Landlock confinement (they can then write anywhere this process
    /// can, including the repository's refs). They still die with their step.
    #[arg(long, env = "HYPERLOOP_NO_CONFINE")]
    pub no_confine: bool,
    /// Further paths confined agents may write (colon-separated), e.g. a shared build
    /// cache. Their worktree, temp dir and runtime state are always writable.
    #[arg(long, env = "HYPERLOOP_AGENT_WRITABLE", value_delimiter = ':')]
    pub agent_writable: Vec<PathBuf>,
}

/// How a worker starts its agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// The shim executable ([`installed`]); `None` starts agents directly, without the
    /// shim's guarantees (library use in tests).
    pub shim: Option<PathBuf>,
    /// Confine agents with Landlock where the kernel offers it (`--no-confine` turns it off).
    pub landlock: bool,
    /// Further paths agents may write (`--agent-writable`), the operator's decision.
    pub writable: Vec<PathBuf>,
}

impl Default for Confinement {
    /// The shim of this executable, Landlock on, nothing extra writable.
    fn default() -> Self {
        Self {
            shim: installed(),
            landlock: true,
            writable: Vec::new(),
        }
    }
}

/// Call first thing in `main` of every hyperloop executable that runs agents. When the
/// process was started as the shim it runs the shim and exits; otherwise it records this
/// executable as the shim for the agents this process starts.
pub fn run_if_invoked() {
    let mut args = std::env::args_os();
    let _program = args.next();
    if args.next().as_deref() == Some(OsStr::new(SHIM_ARG)) {
        let rest: Vec<OsString> = args.collect();
        std::process::exit(match ShimArgs::parse(&rest) {
            Ok(parsed) => main(parsed),
            Err(e) => {
                eprintln!("hyperloop agent shim: {e}");
                2
            }
        });
    }
    if let Ok(exe) = std::env::current_exe() {
        let _ = SHIM.set(exe);
    }
}

/// The shim executable of this process, when its `main` called [`run_if_invoked`]. Library
/// users (tests) have none: their agents start directly, without the shim's guarantees.
pub fn installed() -> Option<PathBuf> {
    SHIM.get().cloned()
}

/// What the shim is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    /// The pid the shim's parent must have; anything else means the worker is gone.
    pub parent: u32,
    /// Confine with Landlock, writable only under these paths.
    pub confine: Option<Vec<PathBuf>>,
    /// Only report whether confinement is enforced, then exit.
    pub probe: bool,
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl ShimArgs {
    /// The shim's command line (after the executable).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out = vec![
            OsString::from(SHIM_ARG),
            OsString::from("--parent"),
            OsString::from(self.parent.to_string()),
        ];
        if let Some(writable) = &self.confine {
            out.push(OsString::from("--confine"));
            for path in writable {
                out.push(OsString::from("--write"));
                out.push(path.as_os_str().to_owned());
            }
        }
        if self.probe {
            out.push(OsString::from("--probe"));
        }
        out.push(OsString::from("--"));
        out.push(self.program.clone());
        out.extend(self.args.iter().cloned());
        out
    }

    fn parse(args: &[OsString]) -> Result<Self, String> {
        let mut parsed = ShimArgs {
            parent: 0,
            confine: None,
            probe: false,
            program: OsString::new(),
            args: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.to_str() {
                Some("--parent") => {
                    parsed.parent = it
                        .next()
                        .and_then(|v| v.to_str())
                        .and_then(|v| v.parse().ok())
                        .ok_or("--parent needs a pid")?;
                }
                Some("--confine") => parsed.confine = Some(parsed.confine.unwrap_or_default()),
                Some("--write") => {
                    let path = it.next().ok_or("--write needs a path")?;
                    parsed
                        .confine
                        .get_or_insert_with(Vec::new)
                        .push(PathBuf::from(path));
                }
                Some("--probe") => parsed.probe = true,
                Some("--") => {
                    parsed.program = it.next().cloned().unwrap_or_default();
                    parsed.args = it.cloned().collect();
                    break;
                }
                _ => return Err(format!("unexpected argument {}", arg.to_string_lossy())),
            }
        }
        if parsed.parent == 0 {
            return Err("--parent is required".to_owned());
        }
        if parsed.program.is_empty() && !parsed.probe {
            return Err("no program after --".to_owned());
        }
        Ok(parsed)
    }
}

fn main(args: ShimArgs) -> i32 {
    // Both calls only fail on kernels without them; the parent poll below still works.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    let parent = Pid::from_raw(i32::try_from(args.parent).unwrap_or(i32::MAX));
    if getppid() != parent {
        return EXIT_PARENT_GONE;
    }
    if let Some(writable) = &args.confine {
        match landlock::confine(writable) {
            Ok(status) if args.probe => {
                println!("{status}");
                return 0;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!(
                    "hyperloop: could not confine the agent with Landlock: {e}; start the \
                     worker with --no-confine to run agents unconfined"
                );
                return EXIT_CONFINE_FAILED;
            }
        }
    }
    if args.probe {
        println!("not confined");
        return 0;
    }
    // One thread: Landlock restricted only the calling thread, and the agent must be
    // started from it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hyperloop agent shim: {e}");
            return EXIT_CONFINE_FAILED;
        }
    };
    runtime.block_on(supervise(&args, parent))
}

async fn supervise(args: &ShimArgs, parent: Pid) -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    let mut child = match tokio::process::Command::new(&args.program)
        .args(&args.args)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            // Same message shape as a direct start, so the step's finding reads the same.
            eprintln!(
                "hyperloop: could not start {}: {e}",
                args.program.to_string_lossy()
            );
            return 127;
        }
    };
    let (Ok(mut term), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = child.start_kill();
        return EXIT_CONFINE_FAILED;
    };
    let mut poll = tokio::time::interval(PARENT_POLL);
    let mut term_deadline: Option<tokio::time::Instant> = None;
    loop {
        let sweep_at = term_deadline;
        tokio::select! {
            status = child.wait() => {
                sweep(Signal::SIGKILL);
                return match status {
                    Ok(status) => mirror_status(status),
                    Err(_) => 1,
                };
            }
            _ = term.recv() => {
                if getppid() != parent {
                    sweep(Signal::SIGKILL);
                    return 128 + Signal::SIGKILL as i32;
                }
                // The group got SIGTERM from the worker; descendants that left it did not.
                sweep(Signal::SIGTERM);
                term_deadline.get_or_insert(tokio::time::Instant::now() + TERM_SWEEP_AFTER);
            }
            _ = interrupt.recv() => sweep(Signal::SIGINT),
            () = async {
                match sweep_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                sweep(Signal::SIGKILL);
                term_deadline = None;
            }
            _ = poll.tick() => {
                if getppid() != parent {
                    sweep(Signal::SIGKILL);
                    return 128 + Signal::SIGKILL as i32;
                }
            }
        }
    }
}

/// The shim's exit status for the agent's: the same code, or the same fatal signal when it
/// is one the shim does not handle itself (so the worker sees the crash as the agent's).
fn mirror_status(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return code;
    }
    let sig = status.signal().unwrap_or(0);
    if let Ok(signal) = Signal::try_from(sig)
        && !matches!(signal, Signal::SIGTERM | Signal::SIGINT)
    {
        // Twice: Rust's runtime catches the first SIGSEGV/SIGBUS (stack-overflow detection)
        // and restores the default action, which the second then takes.
        let _ = kill(getpid(), signal);
        let _ = kill(getpid(), signal);
    }
    128 + sig
}

/// Signals every descendant of this process (its children and, through the subreaper, every
/// orphan they left); with SIGKILL, repeats until none is left (or a second has passed) and
/// reaps them.
fn sweep(signal: Signal) {
    let me = getpid();
    let group = nix::unistd::getpgrp();
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let mut targets = descendants(me);
        if signal != Signal::SIGKILL {
            // The worker signalled the group itself; a second SIGINT would turn an agent's
            // clean stop into an abrupt one.
            targets.retain(|(_, pgrp)| *pgrp != group);
        }
        let targets: Vec<Pid> = targets.into_iter().map(|(pid, _)| pid).collect();
        if targets.is_empty() {
            break;
        }
        for pid in &targets {
            let _ = kill(*pid, signal);
        }
        if signal != Signal::SIGKILL {
            break;
        }
        reap_zombies();
        if std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    reap_zombies();
}

fn reap_zombies() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Live (not zombie) descendants of `root` with their process groups, from `/proc`.
fn descendants(root: Pid) -> Vec<(Pid, Pid)> {
    let mut parents: Vec<(Pid, Pid, Pid)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Some((state, ppid, pgrp)) = stat_fields(pid)
                && state != 'Z'
                && state != 'X'
            {
                parents.push((Pid::from_raw(pid), Pid::from_raw(ppid), Pid::from_raw(pgrp)));
            }
        }
    }
    let mut found = vec![(root, root)];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i].0;
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid, _)| *ppid == parent)
                .map(|(pid, _, pgrp)| (*pid, *pgrp)),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// `(state, parent pid, process group)` from `/proc/<pid>/stat` (the command name may
/// hold spaces and parentheses; the fields after it are plain).
pub(crate) fn stat_fields(pid: i32) -> Option<(char, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Where a confined agent of a step may write: its worktree, the parts of the mirror a
/// commit writes (objects, refs, reflogs, the worktree's own admin directory), its private
/// temp dir, the runtime's state and what the worker's operator added. The mirror's config
/// and hooks stay read-only, so an agent cannot make the worker's own git run its code.
pub fn step_writable(
    worktree: &Path,
    admin_dir: &Path,
    mirror: &Path,
    tmp: &Path,
    extra: &[PathBuf],
) -> Vec<PathBuf> {
    let mut paths = vec![
        worktree.to_owned(),
        admin_dir.to_owned(),
        mirror.join("objects"),
        mirror.join("refs"),
        mirror.join("logs"),
        tmp.to_owned(),
    ];
    paths.extend(extra.iter().cloned());
    paths
}

mod landlock {
    use std::path::{Path, PathBuf};

    use landlock::{
        ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
        RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
    };

    use super::HIDDEN_HOME_ENTRIES;

    /// The newest ABI this crate version knows; older kernels get what they support.
    const ABI_WANTED: ABI = ABI::V6;

    /// Restricts this thread (and everything it starts): read and execute anywhere except the
    /// credentials under `$HOME`, write only beneath `writable` (and the terminal devices), no
    /// signals to processes outside the domain. Returns how much the kernel enforced.
    pub(super) fn confine(writable: &[PathBuf]) -> Result<String, RulesetError> {
        let read = AccessFs::from_read(ABI_WANTED);
        let all = AccessFs::from_all(ABI_WANTED);
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(all)?
            .scope(Scope::Signal)?
            .create()?;
        let home = std::env::var_os("HOME").map(PathBuf::from);
        for path in readable_roots(home.as_deref()) {
            ruleset = add(ruleset, &path, read)?;
        }
        for dev in [
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/tty",
            "/dev/pts",
        ] {
            ruleset = add(ruleset, Path::new(dev), all)?;
        }
        for path in writable {
            ruleset = add(ruleset, path, all)?;
        }
        let status = ruleset.restrict_self()?;
        Ok(match status.ruleset {
            RulesetStatus::FullyEnforced => "fully enforced".to_owned(),
            RulesetStatus::PartiallyEnforced => "partially enforced".to_owned(),
            RulesetStatus::NotEnforced => "not enforced".to_owned(),
        })
    }

    fn add(
        ruleset: landlock::RulesetCreated,
        path: &Path,
        access: BitFlags<AccessFs>,
    ) -> Result<landlock::RulesetCreated, RulesetError> {
        // A path that does not exist (no ~/.cache yet) has nothing to grant.
        let Ok(fd) = PathFd::new(path) else {
            return Ok(ruleset);
        };
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(ABI_WANTED)
        };
        ruleset.add_rule(PathBeneath::new(fd, access))
    }

    /// Directories and files granted read access: `/` as a whole when the home directory is
    /// unknown; otherwise every entry along the way to `$HOME` except that way itself, and
    /// every entry of `$HOME` except [`HIDDEN_HOME_ENTRIES`] (descending into `.config` to
    /// hide only its credential entries).
    pub(super) fn readable_roots(home: Option<&Path>) -> Vec<PathBuf> {
        let Some(home) = home.filter(|h| h.is_absolute() && h.is_dir() && *h != Path::new("/"))
        else {
            return vec![PathBuf::from("/")];
        };
        let mut roots = Vec::new();
        let mut dir = PathBuf::from("/");
        for component in home.components().skip(1) {
            let next = dir.join(component);
            roots.extend(entries(&dir).into_iter().filter(|p| *p != next));
            dir = next;
        }
        hide_within(&dir, "", &mut roots);
        roots
    }

    /// Grants the entries of `dir` except hidden ones; descends where a hidden entry lies
    /// deeper (`.config` for `.config/gh`).
    fn hide_within(dir: &Path, prefix: &str, roots: &mut Vec<PathBuf>) {
        for entry in entries(dir) {
            let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
                roots.push(entry);
                continue;
            };
            let relative = format!("{prefix}{name}");
            if HIDDEN_HOME_ENTRIES.contains(&relative.as_str()) {
                continue;
            }
            let deeper = format!("{relative}/");
            if entry.is_dir() && HIDDEN_HOME_ENTRIES.iter().any(|h| h.starts_with(&deeper)) {
                hide_within(&entry, &deeper, roots);
            } else {
                roots.push(entry);
            }
        }
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

/// Whether agents started through `shim` are confined, as one line for the worker's log;
/// `Err` when the shim could not run at all.
pub async fn probe(shim: &Path) -> Result<String, String> {
    let args = ShimArgs {
        parent: std::process::id(),
        confine: Some(Vec::new()),
        probe: true,
        program: OsString::new(),
        args: Vec::new(),
    };
    let output = tokio::process::Command::new(shim)
        .args(args.to_args())
        .output()
        .await
        .map_err(|e| format!("could not start {}: {e}", shim.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_arguments_round_trip() {
        let args = ShimArgs {
            parent: 42,
            confine: Some(vec![PathBuf::from("/w/t"), PathBuf::from("/tmp/x")]),
            probe: false,
            program: OsString::from("claude"),
            args: vec![OsString::from("-p"), OsString::from("--")],
        };
        let line = args.to_args();
        assert_eq!(line[0], SHIM_ARG);
        assert_eq!(ShimArgs::parse(&line[1..]).unwrap(), args);
        let unconfined = ShimArgs {
            confine: None,
            ..args
        };
        assert_eq!(
            ShimArgs::parse(&unconfined.to_args()[1..]).unwrap(),
            unconfined
        );
        assert!(ShimArgs::parse(&[OsString::from("--")]).is_err());
    }

    #[test]
    fn credentials_in_the_home_directory_are_not_readable() {
        let home = tempfile::tempdir().unwrap();
        for dir in [".ssh", ".config/gh", ".config/other", "src"] {
            std::fs::create_dir_all(home.path().join(dir)).unwrap();
        }
        std::fs::write(home.path().join(".git-credentials"), "x").unwrap();
        std::fs::write(home.path().join(".gitconfig"), "x").unwrap();
        let roots = landlock::readable_roots(Some(home.path()));
        let relative: Vec<String> = roots
            .iter()
            .filter_map(|p| p.strip_prefix(home.path()).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let mut sorted = relative.clone();
        sorted.sort();
        assert_eq!(sorted, [".config/other", ".gitconfig", "src"]);
        // The way to $HOME is not granted as a whole (it would include the hidden entries).
        assert!(!roots.iter().any(|p| home.path().starts_with(p)));
        assert!(roots.contains(&PathBuf::from("/usr")));
    }
}
