//! Shutdown on signals, shared by the worker and coordinator binaries.

use tokio_util::sync::CancellationToken;

/// The first SIGINT/SIGTERM cancels `shutdown` (a clean stop: `stopping` says what that
/// means, for the log); a second one exits at once with status 130.
pub async fn watch(shutdown: CancellationToken, stopping: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down: {stopping} (signal again to force)");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    std::process::exit(130);
}
