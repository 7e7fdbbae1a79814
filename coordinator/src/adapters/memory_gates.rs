//! [`MemoryGates`]: a [`GateEvaluator`] answering what a test set, so tests drive gates
//! without GitHub or a host to run commands on. Like every evaluator it keeps `manual` gates
//! waiting, whatever was set for them.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use hyperloop_shared::gates::GateStatus;
use hyperloop_shared::model::TaskId;
use hyperloop_shared::pipeline::GateKind;

use crate::ports::gate::{GateError, GateEvaluator, GateQuery};

#[derive(Debug, Default)]
pub struct MemoryGates {
    // std Mutex: nothing awaits while holding it.
    statuses: Mutex<BTreeMap<(TaskId, String), GateStatus>>,
}

impl MemoryGates {
    pub fn new() -> Self {
        Self::default()
    }

    /// What evaluating `gate` for `task` answers from now on (until then: waiting).
    pub fn set(&self, task: TaskId, gate: &str, status: GateStatus) {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((task, gate.to_owned()), status);
    }
}

impl GateEvaluator for MemoryGates {
    async fn evaluate(&self, query: GateQuery) -> Result<GateStatus, GateError> {
        match query.kind {
            GateKind::All { .. } => return Err(query.not_a_leaf()),
            GateKind::Manual => return Ok(query.awaiting_approval("waits for a human")),
            _ => {}
        }
        let target = &query.target;
        if target.branch.is_none() && target.commit.is_none() {
            return Err(GateError::NoWork {
                task: target.task,
                gate: query.gate,
            });
        }
        let set = self
            .statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(target.task, query.gate.clone()))
            .cloned();
        Ok(set.unwrap_or_else(|| GateStatus::Waiting {
            reasons: vec![format!(
                "gate `{}`: no status was set for {} yet",
                query.gate, target.task
            )],
        }))
    }
}
