//! [`serve`]: the worker's side of the coordinator stream.
//!
//! One event loop owns all state (running steps, unacknowledged results, draining) and
//! consumes one closed [`Event`] enum; steps run as tracked tasks and report back through a
//! bounded channel. Nothing else holds the link's sender except the per-step progress
//! forwarders, which only ever send `Progress`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyperloop_proto::convert::parse_duration;
use hyperloop_proto::v1::{
    self, AttemptPhase, CoordinatorMessage, FailureCause, HeldAttempt, Registration, WorkerMessage,
    coordinator_message, worker_message,
};
use hyperloop_proto::{MAX_PROGRESS_LINES, PROTOCOL_VERSION, check_protocol_version};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::WorkerError;
use crate::link::Link;
use crate::options::{DEFAULT_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL, WorkerOptions};
use crate::progress::{ProgressStream, progress_channel};
use crate::step::{StepContext, StepPlan, StepReport, run_step};
use crate::workspace::Workspace;

/// How long a finished step waits for its last progress lines to reach the link before
/// reporting its result anyway (a coordinator that stopped reading must not hold results).
const PROGRESS_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the worker protocol over `link` until drained (Ok), shut down (Ok) or the link
/// fails (Err).
///
/// Sends Hello, waits for Registered, then heartbeats every `Registered.heartbeat_interval`,
/// accepts up to `options.capacity` concurrent Assigns (Accepted, or Declined with the
/// reason), streams Progress, and sends each StepResult until its ResultAck arrives.
/// Cancel stops that step's agent at once; Drain finishes running steps, declines new ones
/// and returns once every result is acknowledged. Cancelling `shutdown` stops all agents
/// and returns within `options.shutdown_grace`.
///
/// # Errors
///
/// Invalid options, a work dir that cannot be cleaned, a registration timeout or refusal
/// (protocol mismatch, not the leader), or the link closing while work is outstanding.
pub async fn serve(
    options: WorkerOptions,
    link: Link,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    options.validate()?;
    let workspace = Arc::new(Workspace::new(&options.work_dir));
    workspace.sweep().await?;
    let Link {
        outbound,
        mut inbound,
    } = link;
    let registration = Registration {
        name: options.name.clone(),
        instance_id: instance_id(),
        capacity: options.capacity,
        labels: options.labels.clone().into_iter().collect(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let hello = worker_message::Body::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        registration: Some(registration.clone()),
        token: options.token.clone(),
        attempts: Vec::new(),
    });
    if send_or_stop(&outbound, hello, &shutdown).await? == Sent::Stopped {
        return Ok(());
    }

    let answer = tokio::select! {
        msg = inbound.recv() => msg,
        () = tokio::time::sleep(options.registration_timeout) => {
            return Err(WorkerError::RegistrationTimeout { waited: options.registration_timeout });
        }
        () = shutdown.cancelled() => return Ok(()),
    };
    let heartbeat_interval = match answer.and_then(|m| m.body) {
        Some(coordinator_message::Body::Registered(r)) => {
            check_protocol_version("registered.protocol_version", r.protocol_version)?;
            tracing::info!(worker_id = %r.worker_id, leader_term = r.leader_term, "registered");
            parse_duration("registered.heartbeat_interval", r.heartbeat_interval)
                .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL)
                .max(MIN_HEARTBEAT_INTERVAL)
        }
        Some(coordinator_message::Body::NotLeader(n)) => {
            return Err(WorkerError::NotLeader {
                leader_address: n.leader_address,
            });
        }
        Some(other) => {
            return Err(WorkerError::UnexpectedMessage {
                got: body_name(&other),
            });
        }
        None => return Err(WorkerError::LinkClosed { running: 0 }),
    };

    let (finished_tx, finished_rx) = mpsc::channel(finished_capacity(options.capacity));
    let worker = Worker {
        workspace,
        outbound,
        registration,
        running: HashMap::new(),
        unacked: BTreeMap::new(),
        draining: false,
        finished_tx,
        tracker: TaskTracker::new(),
        shutdown,
        options,
    };
    worker.run(inbound, finished_rx, heartbeat_interval).await
}

/// Every step sends exactly one report; room for all of them means a step never waits to
/// report while the loop is busy sending.
fn finished_capacity(capacity: u32) -> usize {
    usize::try_from(capacity)
        .unwrap_or(usize::MAX)
        .clamp(1, 1024)
}

/// The one event type the loop consumes.
enum Event {
    Inbound(Option<Box<CoordinatorMessage>>),
    Finished(u64, Box<StepReport>),
    Heartbeat,
    Resend,
    Shutdown,
}

struct Running {
    task_id: String,
    step_path: String,
    cancel: CancellationToken,
    cancel_reason: Option<String>,
    phase: watch::Receiver<AttemptPhase>,
}

struct Pending {
    result: v1::StepResult,
    last_sent: Instant,
}

struct Worker {
    options: WorkerOptions,
    workspace: Arc<Workspace>,
    outbound: mpsc::Sender<WorkerMessage>,
    registration: Registration,
    running: HashMap<u64, Running>,
    unacked: BTreeMap<u64, Pending>,
    draining: bool,
    finished_tx: mpsc::Sender<(u64, Box<StepReport>)>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Delivered,
    Stopped,
}

async fn send_or_stop(
    outbound: &mpsc::Sender<WorkerMessage>,
    body: worker_message::Body,
    shutdown: &CancellationToken,
) -> Result<Sent, WorkerError> {
    let msg = WorkerMessage { body: Some(body) };
    tokio::select! {
        sent = outbound.send(msg) => match sent {
            Ok(()) => Ok(Sent::Delivered),
            Err(_) => Err(WorkerError::LinkClosed { running: 0 }),
        },
        () = shutdown.cancelled() => Ok(Sent::Stopped),
    }
}

impl Worker {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<CoordinatorMessage>,
        mut finished_rx: mpsc::Receiver<(u64, Box<StepReport>)>,
        heartbeat_interval: Duration,
    ) -> Result<(), WorkerError> {
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_interval, heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let resend_every = self.options.result_resend_interval;
        let mut resend = tokio::time::interval_at(Instant::now() + resend_every, resend_every);
        resend.set_missed_tick_behavior(MissedTickBehavior::Delay);

        loop {
            if self.draining && self.running.is_empty() && self.unacked.is_empty() {
                tracing::info!("drained");
                self.tracker.close();
                self.tracker.wait().await;
                return Ok(());
            }
            let event = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Event::Shutdown,
                Some((attempt, report)) = finished_rx.recv() => Event::Finished(attempt, report),
                msg = inbound.recv() => Event::Inbound(msg.map(Box::new)),
                _ = heartbeat.tick() => Event::Heartbeat,
                _ = resend.tick() => Event::Resend,
            };
            let outcome = match event {
                Event::Shutdown => return self.stop(finished_rx, None).await,
                Event::Inbound(None) => {
                    let running = self.running.len();
                    let lost = running + self.unacked.len();
                    let err =
                        (lost > 0 || !self.draining).then_some(WorkerError::LinkClosed { running });
                    return self.stop(finished_rx, err).await;
                }
                Event::Inbound(Some(msg)) => self.on_message(*msg).await,
                Event::Finished(attempt, report) => self.on_finished(attempt, *report).await,
                Event::Heartbeat => self.send(self.heartbeat()).await,
                Event::Resend => self.resend_due().await,
            };
            match outcome {
                Ok(Sent::Delivered) => {}
                Ok(Sent::Stopped) => return self.stop(finished_rx, None).await,
                Err(e) => return self.stop(finished_rx, Some(e)).await,
            }
        }
    }

    async fn send(&self, body: worker_message::Body) -> Result<Sent, WorkerError> {
        send_or_stop(&self.outbound, body, &self.shutdown).await
    }

    async fn on_message(&mut self, msg: CoordinatorMessage) -> Result<Sent, WorkerError> {
        use coordinator_message::Body;
        match msg.body {
            Some(Body::Assign(assign)) => self.on_assign(assign).await,
            Some(Body::Cancel(cancel)) => {
                if let Some(step) = self.running.get_mut(&cancel.attempt_id) {
                    tracing::info!(attempt = cancel.attempt_id, reason = %cancel.reason, "cancel");
                    step.cancel_reason = Some(cancel.reason);
                    step.cancel.cancel();
                }
                Ok(Sent::Delivered)
            }
            Some(Body::Drain(drain)) => {
                tracing::info!(reason = %drain.reason, "draining");
                self.draining = true;
                // Tell the coordinator at once rather than at the next heartbeat.
                self.send(self.heartbeat()).await
            }
            Some(Body::ResultAck(ack)) => {
                self.unacked.remove(&ack.attempt_id);
                Ok(Sent::Delivered)
            }
            Some(Body::NotLeader(n)) => Err(WorkerError::NotLeader {
                leader_address: n.leader_address,
            }),
            // A repeated Registered changes nothing; an empty message is ignored.
            Some(Body::Registered(_)) | None => Ok(Sent::Delivered),
        }
    }

    async fn on_assign(&mut self, assign: v1::Assign) -> Result<Sent, WorkerError> {
        let attempt = assign.attempt_id;
        if self.running.contains_key(&attempt) || self.unacked.contains_key(&attempt) {
            // A duplicate (the coordinator resent after a hiccup): the attempt is ours.
            return self
                .send(worker_message::Body::Accepted(v1::Accepted {
                    attempt_id: attempt,
                }))
                .await;
        }
        let refusal = if self.draining {
            Some("the worker is draining and takes no new steps".to_owned())
        } else if self.running.len() >= usize::try_from(self.options.capacity).unwrap_or(usize::MAX)
        {
            Some(format!(
                "the worker is at capacity ({} running)",
                self.running.len()
            ))
        } else {
            StepPlan::from_assign(
                &assign,
                self.options.default_step_timeout,
                SystemTime::now(),
            )
            .err()
            .map(|e| e.to_string())
        };
        if let Some(reason) = refusal {
            tracing::info!(attempt, %reason, "declined");
            return self
                .send(worker_message::Body::Declined(v1::Declined {
                    attempt_id: attempt,
                    reason,
                }))
                .await;
        }

        let sent = self
            .send(worker_message::Body::Accepted(v1::Accepted {
                attempt_id: attempt,
            }))
            .await?;
        let cancel = self.shutdown.child_token();
        let (phase_tx, phase_rx) = watch::channel(AttemptPhase::Preparing);
        let (sink, stream) = progress_channel();
        self.running.insert(
            attempt,
            Running {
                task_id: assign.task_id.clone(),
                step_path: assign.step_path.clone(),
                cancel: cancel.clone(),
                cancel_reason: None,
                phase: phase_rx,
            },
        );
        let ctx = StepContext {
            workspace: self.workspace.clone(),
            cancel,
            progress: Some(sink),
            phase: Some(phase_tx),
            claude_bin: self.options.claude_bin.clone(),
            default_timeout: self.options.default_step_timeout,
            host_env: None,
        };
        let forwarder =
            self.tracker
                .spawn(forward_progress(attempt, stream, self.outbound.clone()));
        let finished = self.finished_tx.clone();
        self.tracker.spawn(async move {
            let report = run_step(&assign, &ctx).await;
            drop(ctx); // closes the progress channel once the output readers are done
            let _ = tokio::time::timeout(PROGRESS_FLUSH_TIMEOUT, forwarder).await;
            let _ = finished.send((attempt, Box::new(report))).await;
        });
        Ok(sent)
    }

    async fn on_finished(
        &mut self,
        attempt: u64,
        mut report: StepReport,
    ) -> Result<Sent, WorkerError> {
        if let Some(step) = self.running.remove(&attempt)
            && report.failure_cause == FailureCause::Cancelled
            && let Some(reason) = step.cancel_reason.filter(|r| !r.is_empty())
        {
            report.detail.push_str(&format!(" Reason: {reason}"));
        }
        tracing::info!(
            attempt,
            verdict = ?report.verdict,
            cause = ?report.failure_cause,
            duration_ms = report.duration.as_millis(),
            "step finished"
        );
        let result = report.to_wire();
        self.unacked.insert(
            attempt,
            Pending {
                result: result.clone(),
                last_sent: Instant::now(),
            },
        );
        self.send(worker_message::Body::StepResult(result)).await
    }

    async fn resend_due(&mut self) -> Result<Sent, WorkerError> {
        let due: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, p)| p.last_sent.elapsed() >= self.options.result_resend_interval)
            .map(|(id, _)| *id)
            .collect();
        for attempt in due {
            let Some(pending) = self.unacked.get_mut(&attempt) else {
                continue;
            };
            pending.last_sent = Instant::now();
            let body = worker_message::Body::StepResult(pending.result.clone());
            if self.send(body).await? == Sent::Stopped {
                return Ok(Sent::Stopped);
            }
        }
        Ok(Sent::Delivered)
    }

    fn heartbeat(&self) -> worker_message::Body {
        let mut attempts: Vec<HeldAttempt> = self
            .running
            .iter()
            .map(|(id, step)| HeldAttempt {
                attempt_id: *id,
                task_id: step.task_id.clone(),
                step_path: step.step_path.clone(),
                phase: (*step.phase.borrow()).into(),
            })
            .collect();
        attempts.extend(self.unacked.iter().map(|(id, p)| HeldAttempt {
            attempt_id: *id,
            task_id: p.result.task_id.clone(),
            step_path: p.result.step_path.clone(),
            phase: AttemptPhase::Reporting.into(),
        }));
        attempts.sort_by_key(|a| a.attempt_id);
        worker_message::Body::Heartbeat(v1::Heartbeat {
            protocol_version: PROTOCOL_VERSION,
            registration: Some(self.registration.clone()),
            attempts,
            draining: self.draining,
        })
    }

    /// Stops every running step (their tokens are children of `shutdown`, or cancelled here),
    /// waits up to the shutdown grace for them to clean up, and offers their results to the
    /// link without waiting.
    async fn stop(
        mut self,
        mut finished_rx: mpsc::Receiver<(u64, Box<StepReport>)>,
        error: Option<WorkerError>,
    ) -> Result<(), WorkerError> {
        for step in self.running.values() {
            step.cancel.cancel();
        }
        self.tracker.close();
        if tokio::time::timeout(self.options.shutdown_grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = self.options.shutdown_grace.as_millis(),
                "steps did not stop within the shutdown grace"
            );
        }
        while let Ok((attempt, report)) = finished_rx.try_recv() {
            self.running.remove(&attempt);
            let msg = WorkerMessage {
                body: Some(worker_message::Body::StepResult(report.to_wire())),
            };
            let _ = self.outbound.try_send(msg);
        }
        match error {
            Some(WorkerError::LinkClosed { .. }) => Err(WorkerError::LinkClosed {
                running: self.running.len(),
            }),
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Forwards a step's output as `Progress` batches of at most [`MAX_PROGRESS_LINES`] lines.
/// Waits on the link (backpressure lands here and makes the step's buffer drop lines; the
/// agent itself never waits).
async fn forward_progress(
    attempt: u64,
    mut stream: ProgressStream,
    outbound: mpsc::Sender<WorkerMessage>,
) {
    let mut batch = Vec::with_capacity(MAX_PROGRESS_LINES);
    while stream.lines.recv_many(&mut batch, MAX_PROGRESS_LINES).await > 0 {
        let usage = *stream.usage.borrow();
        let progress = v1::Progress {
            attempt_id: attempt,
            lines: std::mem::take(&mut batch),
            turns: usage.turns,
            cost_usd: usage.cost_usd,
        };
        let msg = WorkerMessage {
            body: Some(worker_message::Body::Progress(progress)),
        };
        if outbound.send(msg).await.is_err() {
            return;
        }
    }
}

fn body_name(body: &coordinator_message::Body) -> &'static str {
    use coordinator_message::Body;
    match body {
        Body::Registered(_) => "Registered",
        Body::Assign(_) => "Assign",
        Body::Cancel(_) => "Cancel",
        Body::Drain(_) => "Drain",
        Body::ResultAck(_) => "ResultAck",
        Body::NotLeader(_) => "NotLeader",
    }
}

/// Random enough per process start: pid and start time in nanoseconds.
fn instance_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn serve_is_send() {
        let (link, _end) = Link::pair();
        let fut = serve(
            WorkerOptions::new("w", "/tmp/never-used"),
            link,
            CancellationToken::new(),
        );
        assert_send(&fut);
    }
}
