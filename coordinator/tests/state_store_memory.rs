//! The `StateStore` contract against the in-memory adapter.

use hyperloop_coordinator::adapters::memory_store::MemoryStore;
use hyperloop_coordinator::ports::state_store::contract::{Corruption, Harness};

struct Memory(MemoryStore);

impl Harness for Memory {
    type Store = MemoryStore;

    fn open(&self) -> MemoryStore {
        self.0.clone()
    }

    fn corrupt(&self, _: Corruption) -> Option<String> {
        None // typed records cannot be unreadable
    }
}

hyperloop_coordinator::state_store_contract_tests!(|limit| Memory(MemoryStore::new(limit)));
