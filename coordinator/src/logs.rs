//! Placeholder for the agent output hub (replaced by the admin work).

use hyperloop_proto::v1;

#[derive(Debug, Default)]
pub struct LogHub;

impl LogHub {
    pub fn new() -> Self {
        LogHub
    }
    pub fn started(&self, _task_id: &str, _attempt: u64, _step_path: &str, _role: &str) {}
    pub fn lines(&self, _attempt: u64, _lines: Vec<v1::LogLine>) {}
    pub fn finished(&self, _attempt: u64) {}
}
