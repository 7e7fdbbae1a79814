//! [`ForgeGates`]: the [`GateEvaluator`] of GitHub mode. Label, approval and CI gates are read
//! from the task's pull request through the [`Forge`]; `command` gates go to a
//! [`CommandGates`], if the operator allowed them; `manual` gates wait for
//! `hyperloopctl approve`.

use std::sync::Arc;

use hyperloop_shared::gates::{GateStatus, command_line};
use hyperloop_shared::pipeline::GateKind;

use crate::adapters::command_gate::CommandGates;
use crate::ports::forge::{Forge, PrGate};
use crate::ports::gate::{GateError, GateEvaluator, GateQuery};

pub struct ForgeGates<F> {
    forge: Arc<F>,
    /// `None`: command gates are refused ([`GateError::CommandGatesRefused`]).
    commands: Option<CommandGates>,
}

impl<F: Forge> ForgeGates<F> {
    pub fn new(forge: Arc<F>, commands: Option<CommandGates>) -> Self {
        ForgeGates { forge, commands }
    }
}

impl<F: Forge + 'static> GateEvaluator for ForgeGates<F> {
    async fn evaluate(&self, query: GateQuery) -> Result<GateStatus, GateError> {
        let check = match &query.kind {
            GateKind::Label { label } => PrGate::Label(label),
            GateKind::PrApproval => PrGate::Approval,
            GateKind::CiStatus => PrGate::Ci,
            GateKind::Manual => return Ok(query.awaiting_approval("waits for a human")),
            GateKind::All { .. } => return Err(query.not_a_leaf()),
            GateKind::Command { run, .. } => {
                let Some(commands) = &self.commands else {
                    return Err(GateError::CommandGatesRefused {
                        gate: query.gate.clone(),
                        command: command_line(run),
                    });
                };
                return commands.evaluate(query).await;
            }
        };
        let pr = query.target.pr.ok_or_else(|| GateError::NoPullRequest {
            task: query.target.task,
            gate: query.gate.clone(),
            kind: query.kind.type_name(),
        })?;
        let snapshot = self.forge.pr_snapshot(pr).await?;
        Ok(self.forge.pr_gate(&snapshot, &query.gate, check).await?)
    }
}
