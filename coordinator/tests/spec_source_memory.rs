//! The `SpecSource` contract against the in-memory adapter.

use hyperloop_coordinator::adapters::memory_specs::MemorySpecSource;
use hyperloop_coordinator::ports::spec_source::CommitId;
use hyperloop_coordinator::ports::spec_source::contract::Harness;

struct Memory(MemorySpecSource);

impl Harness for Memory {
    type Source = MemorySpecSource;

    fn source(&self) -> &MemorySpecSource {
        &self.0
    }

    fn set(&self, path: &str, text: &str) -> CommitId {
        self.0.set(path, text)
    }

    fn remove(&self, path: &str) -> CommitId {
        self.0.remove(path)
    }

    fn head(&self) -> CommitId {
        self.0.head()
    }
}

hyperloop_coordinator::spec_source_contract_tests!(|specs: &[(&str, &str)]| Memory(
    MemorySpecSource::new(specs)
));
