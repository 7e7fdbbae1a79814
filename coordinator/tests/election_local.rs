//! The `Election` contract for [`LocalElection`], the single-host election.

use std::time::Duration;

use hyperloop_coordinator::adapters::local_election::LocalElection;
use hyperloop_coordinator::ports::election::Leadership;
use hyperloop_coordinator::ports::election::contract::Harness;

struct Local(LocalElection);

impl Harness for Local {
    type Election = LocalElection;

    fn candidate(&self) -> LocalElection {
        self.0.clone()
    }

    fn ttl(&self) -> Duration {
        Duration::ZERO
    }

    async fn expire(&self, _: &Leadership) -> bool {
        false
    }
}

hyperloop_coordinator::election_contract_tests!(|| Local(LocalElection::new()));
