//! [`Link`]: the worker's end of the coordinator stream, as a pair of bounded channels.
//!
//! In-process workers are wired straight to the coordinator's dispatcher with
//! [`Link::pair`]; `hyperloop-worker` bridges the same channels to the
//! gRPC `Join` stream, so the protocol logic in [`serve`](crate::serve) is shared.

use hyperloop_proto::v1::{CoordinatorMessage, WorkerMessage};
use tokio::sync::mpsc;

/// Messages buffered in each direction. A worker's burst is one Progress batch per running
/// step plus a result and a heartbeat; 64 absorbs that for a worker of capacity ~16 without
/// blocking, while a coordinator that stops reading pushes back within a few messages
/// instead of letting memory grow (a Progress carries up to ~1 MiB).
pub const LINK_CAPACITY: usize = 64;

/// The worker's end of the stream.
#[derive(Debug)]
pub struct Link {
    /// Worker → coordinator.
    pub outbound: mpsc::Sender<WorkerMessage>,
    /// Coordinator → worker.
    pub inbound: mpsc::Receiver<CoordinatorMessage>,
}

/// The coordinator's end of a [`Link`].
#[derive(Debug)]
pub struct CoordinatorEnd {
    /// Coordinator → worker.
    pub outbound: mpsc::Sender<CoordinatorMessage>,
    /// Worker → coordinator.
    pub inbound: mpsc::Receiver<WorkerMessage>,
}

impl Link {
    /// A connected pair of ends, each direction bounded by [`LINK_CAPACITY`].
    pub fn pair() -> (Link, CoordinatorEnd) {
        let (to_coordinator, from_worker) = mpsc::channel(LINK_CAPACITY);
        let (to_worker, from_coordinator) = mpsc::channel(LINK_CAPACITY);
        (
            Link {
                outbound: to_coordinator,
                inbound: from_coordinator,
            },
            CoordinatorEnd {
                outbound: to_worker,
                inbound: from_worker,
            },
        )
    }
}
