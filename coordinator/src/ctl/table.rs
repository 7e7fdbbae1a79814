//! kubectl-style text: aligned columns, relative ages, one-line event summaries.

use std::fmt::Write as _;

use hyperloop_shared::event::{EventKind, SpecChange};

/// Columns separated by three spaces (as kubectl does), every column but the last padded to
/// its widest cell. Cells are single-line: line breaks become spaces.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

const GAP: &str = "   ";

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| one_line(&c)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table with every line prefixed by `indent`.
    pub fn render_indented(&self, indent: &str) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::from(indent);
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    let _ = write!(line, "{cell}{}{GAP}", " ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn render(&self) -> String {
        self.render_indented("")
    }
}

fn one_line(s: &str) -> String {
    if s.contains(['\n', '\r']) {
        s.split(['\n', '\r'])
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        s.to_owned()
    }
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    let s = one_line(s);
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// How long ago `at_ms` was, as kubectl prints ages (`45s`, `3m12s`, `2h5m`, `3d`, `2y`).
/// A time in the future (clock skew between hosts) reads as `0s`.
pub fn age(now_ms: u64, at_ms: u64) -> String {
    let secs = now_ms.saturating_sub(at_ms) / 1000;
    let (mins, hours, days) = (secs / 60, secs / 3600, secs / 86_400);
    // The breakpoints of kubectl's `duration.HumanDuration`: more precision while it matters.
    let with = |big: u64, unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    if secs < 120 {
        format!("{secs}s")
    } else if mins < 10 {
        with(mins, "m", secs % 60, "s")
    } else if hours < 3 {
        format!("{mins}m")
    } else if hours < 8 {
        with(hours, "h", mins % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        with(days, "d", hours % 24, "h")
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        with(days / 365, "y", days % 365, "d")
    } else {
        format!("{}y", days / 365)
    }
}

/// A git object id cut to the 7 characters `git log --oneline` shows.
pub fn short_id(id: &str) -> &str {
    id.get(..7).unwrap_or(id)
}

/// What an event says, in one line, for the DETAILS column.
pub fn summary(kind: &EventKind) -> String {
    let list = |items: &[String]| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    let ids = |items: &[hyperloop_shared::model::TaskId]| {
        list(&items.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    match kind {
        EventKind::CoordinatorStarted { version, mode } => format!("{mode}, version {version}"),
        EventKind::CoordinatorHalted { reason, exit_code } => {
            format!("{reason} (exit {exit_code})")
        }
        EventKind::LeaderElected { coordinator, term } => format!("{coordinator}, term {term}"),
        EventKind::CycleCompleted {
            cycle,
            reaped,
            advanced,
            dispatched,
        } => {
            format!("cycle {cycle}: reaped {reaped}, advanced {advanced}, dispatched {dispatched}")
        }
        EventKind::Recovery {
            tasks_loaded,
            attempts_resumed,
            attempts_orphaned,
        } => format!(
            "{tasks_loaded} task(s) loaded, {attempts_resumed} attempt(s) resumed, \
             {attempts_orphaned} orphaned"
        ),
        EventKind::OrphanFound { kind, name, action } => format!("{kind} {name}: {action}"),
        EventKind::SpecChanged { path, change } => {
            let change = match change {
                SpecChange::Added => "added",
                SpecChange::Modified => "modified",
                SpecChange::Deleted => "deleted",
            };
            format!("{path} {change}")
        }
        EventKind::IntakeRun {
            changed_specs,
            failures_considered,
            created,
            rejected,
        } => format!(
            "specs: {}; failures considered: {failures_considered}; created: {}; rejected: {}",
            list(changed_specs),
            ids(created),
            rejected.len()
        ),
        EventKind::TaskCreated {
            title,
            spec_ref,
            deps,
        } => {
            if deps.is_empty() {
                format!("{title:?} for {}", spec_ref.path)
            } else {
                format!("{title:?} for {}, after {}", spec_ref.path, ids(deps))
            }
        }
        EventKind::TaskAdvanced {
            from_step, to_step, ..
        } if from_step.is_empty() => {
            format!("started at {to_step}")
        }
        EventKind::TaskAdvanced {
            from_step, to_step, ..
        } => format!("{from_step} -> {to_step}"),
        EventKind::TaskLoopedBack {
            from_step,
            to_step,
            round,
        } => format!("{from_step} -> {to_step}, round {round}"),
        EventKind::TaskCompleted { rounds } => format!("after {rounds} round(s)"),
        EventKind::TaskFailed { reason }
        | EventKind::TaskReset { reason }
        | EventKind::TaskCancelled { reason } => reason.clone(),
        EventKind::SpecFailed { path, reason } => format!("{path}: {reason}"),
        EventKind::SpecRetried { path } => format!("{path} will be reconciled again"),
        EventKind::PromptComposed { role, round, bytes } => {
            format!("{role}, round {round}, {bytes} bytes")
        }
        EventKind::StepDispatched {
            role,
            round,
            attempt,
            worker,
            ..
        } => format!("{role} round {round} to {worker} (attempt-{attempt})"),
        EventKind::SpawnFailed { role, reason, .. } => format!("{role}: {reason}"),
        EventKind::ResultReaped {
            role,
            round,
            attempt,
            worker,
            verdict,
            duration_ms,
            usage,
            ..
        } => {
            let took =
                hyperloop_shared::duration::human(std::time::Duration::from_millis(*duration_ms));
            let cost = if usage.cost_usd > 0.0 {
                format!(", ${:.2}", usage.cost_usd)
            } else {
                String::new()
            };
            format!(
                "{role} round {round}: {verdict} from {worker} (attempt-{attempt}, {took}{cost})"
            )
        }
        EventKind::ProcessImproved { verdict, commit } => match commit {
            Some(c) => format!("{verdict}, commit {}", short_id(c)),
            None => verdict.to_string(),
        },
        EventKind::GateChecked { gate, cleared } => {
            format!("{gate}: {}", if *cleared { "cleared" } else { "waiting" })
        }
        EventKind::GateCleared { gate, by } => format!("{gate} by {by}"),
        EventKind::BranchPushed {
            branch,
            commit,
            remote,
        } => format!("{branch} at {} to {remote}", short_id(commit)),
        EventKind::PrCreated { number, url } => format!("#{number} {url}"),
        EventKind::PrLabelled {
            number,
            added,
            removed,
        } => format!(
            "#{number} +[{}] -[{}]",
            added.join(", "),
            removed.join(", ")
        ),
        EventKind::PrReady { number } => format!("#{number}"),
        EventKind::Merged {
            branch,
            into,
            commit,
            strategy,
            ..
        } => format!("{branch} into {into} at {} ({strategy})", short_id(commit)),
        EventKind::RebaseConflict {
            branch,
            attempt,
            files,
        } => format!("{branch}, attempt {attempt}: {}", list(files)),
        EventKind::WorkerJoined { worker, capacity } => format!("{worker}, capacity {capacity}"),
        EventKind::WorkerLost { worker, reason } => format!("{worker}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_follow_kubectl_breakpoints() {
        let s = 1000;
        for (secs, expected) in [
            (0, "0s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600 + 59, "8h"),
            (3 * 86_400, "3d"),
            (3 * 86_400 + 3600, "3d1h"),
            (30 * 86_400, "30d"),
            (3 * 365 * 86_400, "3y"),
        ] {
            assert_eq!(age(1_000_000_000 + secs * s, 1_000_000_000), expected);
        }
        assert_eq!(age(0, 5_000), "0s", "future times read as now");
    }

    #[test]
    fn tables_align_every_column_but_the_last() {
        let mut t = Table::new(&["ID", "TITLE"]);
        t.row(vec!["task-001".into(), "multi\nline".into()]);
        t.row(vec!["x".into(), String::new()]);
        assert_eq!(t.render(), "ID         TITLE\ntask-001   multi line\nx\n");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
