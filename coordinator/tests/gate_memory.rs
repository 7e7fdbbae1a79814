//! The `GateEvaluator` contract against the in-memory adapter.

use hyperloop_coordinator::adapters::memory_gates::MemoryGates;
use hyperloop_coordinator::ports::gate::GateTarget;
use hyperloop_coordinator::ports::gate::contract::Harness;
use hyperloop_shared::gates::GateStatus;
use hyperloop_shared::model::TaskId;
use hyperloop_shared::pipeline::GateKind;

struct Memory(MemoryGates);

const TASK: TaskId = TaskId(1);

impl Harness for Memory {
    type Evaluator = MemoryGates;

    fn evaluator(&self) -> &MemoryGates {
        &self.0
    }

    fn target(&self) -> GateTarget {
        GateTarget {
            task: TASK,
            branch: Some("hyperloop/task-001".to_owned()),
            commit: Some("c0ffee".to_owned()),
            pr: None,
        }
    }

    fn passing(&self, gate: &str) -> GateKind {
        self.0.set(TASK, gate, GateStatus::Cleared);
        GateKind::CiStatus
    }

    fn failing(&self, gate: &str) -> GateKind {
        let findings = vec![format!("gate `{gate}`: set to fail")];
        self.0.set(TASK, gate, GateStatus::Failed { findings });
        GateKind::CiStatus
    }

    fn unknown(&self) -> GateTarget {
        GateTarget {
            branch: None,
            commit: None,
            ..self.target()
        }
    }

    fn residue(&self) -> Vec<String> {
        Vec::new()
    }
}

hyperloop_coordinator::gate_contract_tests!(|| Memory(MemoryGates::new()));
