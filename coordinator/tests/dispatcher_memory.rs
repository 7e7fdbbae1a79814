//! The loop over the in-memory `Dispatcher`: orders it cannot deliver are journaled and
//! planned again, not lost.

use hyperloop_coordinator::adapters::memory_dispatcher::MemoryDispatcher;
use hyperloop_coordinator::adapters::memory_lander::MemoryLander;
use hyperloop_coordinator::adapters::memory_specs::MemorySpecSource;
use hyperloop_coordinator::adapters::memory_store::MemoryStore;
use hyperloop_coordinator::ports::state_store::StateStore;
use hyperloop_coordinator::reconcile::harness::base_project;
use hyperloop_coordinator::reconcile::{Clock, Context, Links, Mode, Reconciler};
use hyperloop_shared::config::Config;
use hyperloop_shared::event::EventKind;
use hyperloop_shared::model::AttemptId;
use tokio_util::sync::CancellationToken;

#[tokio::test(start_paused = true)]
async fn an_order_the_dispatcher_cannot_deliver_is_journaled_and_sent_again_next_cycle() {
    let (dispatcher, mut workers) = MemoryDispatcher::new();
    let store = MemoryStore::new(100_000);
    let ctx = Context {
        config: Config::default(),
        root: std::path::PathBuf::from("/nonexistent"),
        repo_url: "memory://repo".to_owned(),
        mode: Mode::Watch,
        distributed: false,
        coordinator_id: "test".to_owned(),
        term: 1,
        clock: Clock::start(),
    };
    let reconciler = Reconciler::new(
        ctx,
        store.clone(),
        MemorySpecSource::new(&[("specs/a.md", "# A\n\nA works.\n")]),
        MemoryLander::default(),
        base_project,
        dispatcher,
        Links::detached(),
    )
    .await
    .expect("the loop starts");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(reconciler.run(shutdown.clone()));

    workers.fail_next_dispatch(1);
    workers.join("w1", 1, Vec::new()).await;
    let orders = workers.orders(1).await;
    assert_eq!(orders.len(), 1, "exactly one order arrived");
    let (worker, order) = &orders[0];
    assert_eq!((worker.as_str(), order.role.as_str()), ("w1", "pm"));
    assert_eq!(
        order.attempt,
        AttemptId(2),
        "the refused attempt 1 was planned again as 2"
    );

    shutdown.cancel();
    running.await.expect("the loop ends").expect("cleanly");
    let events = store.events(0, usize::MAX).await.expect("events");
    let failed: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::SpawnFailed { role, reason, .. } => Some((role.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].1.contains("queue is full"), "{failed:?}");
    assert!(
        !store
            .load()
            .await
            .expect("state")
            .assignments
            .values()
            .any(|a| a.attempt == AttemptId(1)),
        "the refused attempt's assignment is gone"
    );
}
