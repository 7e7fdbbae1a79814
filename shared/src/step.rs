//! A step as it travels between the coordinator and a worker, in domain form: the order a
//! worker is given and the report it sends back. The wire messages (`Assign`, `StepResult`)
//! convert to and from these in the `proto` crate, so nothing past the coordinator's
//! transport sees a protobuf type.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::AgentProgram;
use crate::model::{AttemptId, Proposal, SpecRef, Verdict};

/// One step for one worker: everything it needs to run the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOrder {
    pub attempt: AttemptId,
    /// The task id, or `intake` / `process-improvement` for runs that are not task steps.
    pub subject: String,
    /// The step's position in the pipeline (empty for jobs).
    pub step: String,
    pub role: String,
    pub round: u32,
    /// The composed prompt, given to the agent on stdin.
    pub prompt: String,
    pub spec_ref: Option<SpecRef>,
    /// Where the worker's mirror fetches from.
    pub repo_url: String,
    pub base_branch: String,
    /// The base-branch commit the work starts from.
    pub base_commit: String,
    pub branch: String,
    pub runtime: RuntimeSettings,
    /// Wall-clock deadline (ms since the epoch) after which the attempt is given up.
    pub deadline_ms: u64,
    /// The checks the process names for this role (`checks:`), run in order after a pass;
    /// `None` = the default (every check, for implementers and verifiers).
    pub checks: Option<Vec<String>>,
    /// W3C trace context (`traceparent`, `tracestate`) of the coordinator's span for this
    /// step, so the worker's spans and the agent join its trace; empty without trace export.
    pub trace_context: BTreeMap<String, String>,
}

/// How the worker runs the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeSettings {
    pub program: AgentProgram,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub timeout: Duration,
    pub budget_usd: Option<f64>,
    /// Extra worker-host variables the agent may see.
    pub env_passthrough: Vec<String>,
    /// Who the agent commits as when git on the worker has no identity of its own.
    pub git_identity: GitIdentity,
}

/// A git author/committer identity (`agent.git_identity`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GitIdentity {
    pub name: String,
    pub email: String,
}

impl Default for GitIdentity {
    /// `.invalid` (RFC 2606) so the address can never reach anyone.
    fn default() -> Self {
        GitIdentity {
            name: "hyperloop agent".to_owned(),
            email: "agent@hyperloop.invalid".to_owned(),
        }
    }
}

/// What a worker reports when a step ends.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub attempt: AttemptId,
    pub subject: String,
    pub step: String,
    /// An unusable report (no verdict) arrives as a failure that says so.
    pub verdict: Verdict,
    pub detail: String,
    /// The branch the worker pushed, when it pushed one.
    pub branch: Option<String>,
    /// The branch tip after the step, when the step produced commits.
    pub head_commit: Option<String>,
    /// The step made commits and the worker pushed them (the branch moved).
    pub new_commits: bool,
    pub duration: Duration,
    /// What the step used, as the runtime reported it.
    pub usage: Usage,
    /// The PM's proposals (intake only).
    pub proposals: Vec<Proposal>,
}

/// What a step used, as its runtime reported it; zero where the runtime says nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub turns: u32,
    pub cost_usd: f64,
    pub tokens: Tokens,
}

/// Model tokens of a session, by kind (prompt caching bills reads and writes apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Usage {
    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }

    /// The usage with a cost that cannot be real (negative, NaN, infinite: a runtime's
    /// output is not trusted) counted as unknown.
    #[must_use]
    pub fn sanitized(self) -> Usage {
        let cost_usd = if self.cost_usd.is_finite() && self.cost_usd >= 0.0 {
            self.cost_usd
        } else {
            0.0
        };
        Usage { cost_usd, ..self }
    }
}

impl Tokens {
    /// Each kind with its metric label.
    pub fn by_kind(&self) -> [(&'static str, u64); 4] {
        [
            ("input", self.input),
            ("output", self.output),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
        ]
    }
}

impl StepReport {
    pub fn duration_ms(&self) -> u64 {
        u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A worker asks whether an attempt may still push its commits (the push fence): a worker
/// whose attempt was revoked must not push over the work of the one that took it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    pub attempt: AttemptId,
    /// The commit the worker would push, for the coordinator's log.
    pub head_commit: String,
}

/// The coordinator's answer to a [`PushRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAnswer {
    pub attempt: AttemptId,
    pub grant: PushGrant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushGrant {
    /// The worker may start its push within `valid_for` of sending its request; after that
    /// the coordinator may already have given the attempt away.
    Granted {
        valid_for: Duration,
    },
    Refused {
        reason: String,
    },
}
