//! [`serve`] and [`serve_links`]: the worker's side of the coordinator stream.
//!
//! One event loop owns all state (running steps, unacknowledged results, draining) and
//! consumes one closed [`Event`] enum; steps run as tracked tasks and report back through a
//! bounded channel. That state outlives any one stream: `serve_links` takes a new [`Link`]
//! per reconnect and carries on. Nothing else sends on a stream except the per-step
//! progress forwarders, which only ever send `Progress` to whichever stream is current.
//!
//! Steps ask the loop before pushing (the push fence, [`crate::fence`]): the loop sends their
//! `PushRequest`s, again on every new stream and while unanswered, and hands each answer back.

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
use crate::fence::{Asks, PushFence, Question};
use crate::link::Link;
use crate::options::{DEFAULT_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL, WorkerOptions};
use crate::progress::{ProgressStream, progress_channel};
use crate::step::{StepContext, StepPlan, StepReport, run_step};
use crate::workspace::Workspace;

/// How long a finished step waits for its last progress lines to reach the link before
/// reporting its result anyway (a coordinator that stopped reading must not hold results).
const PROGRESS_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the worker protocol over one `link` until drained (Ok), shut down (Ok) or the link
/// ends (Err): [`serve_links`] with a single link, as used by the coordinator's in-process
/// workers. When that link closes the worker stops its steps.
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
    let (links_tx, links) = mpsc::channel(1);
    // A fresh channel with room for one: this send cannot fail.
    let _ = links_tx.try_send(link);
    drop(links_tx);
    serve_links(options, links, shutdown).await
}

/// Says once, at start, how this worker's agents are confined.
async fn report_confinement(options: &WorkerOptions) {
    let worker = options.name.as_str();
    let Some(shim) = &options.confinement.shim else {
        tracing::warn!(
            worker,
            "agents start without the shim: they are not confined and may outlive this worker"
        );
        return;
    };
    if !options.confinement.landlock {
        tracing::warn!(
            worker,
            "agent confinement is off (--no-confine): agents can write anywhere this worker can"
        );
        return;
    }
    match crate::shim::probe(shim).await {
        Ok(status) if status == "fully enforced" => {
            tracing::info!(worker, "agents are confined with Landlock ({status})");
        }
        Ok(status) => tracing::warn!(
            worker,
            landlock = %status,
            "this kernel does not fully support Landlock: agents are not (fully) confined; \
             they still die with their step and this worker"
        ),
        Err(e) => tracing::warn!(
            worker,
            error = %e,
            "could not check agent confinement; agents may fail to start"
        ),
    }
}

/// [`serve`] across reconnects: every [`Link`] received from `links` is a new stream to a
/// (possibly different) coordinator.
///
/// When a stream ends or fails, running steps keep running and finished ones keep their
/// results. The next link starts with a Hello listing every held attempt (running ones with
/// their phase, unacknowledged results as REPORTING), and right after Registered every
/// unacknowledged StepResult is sent again. Progress produced while no stream is up is
/// dropped. Once `links` is closed and the last stream has ended, the worker stops its steps
/// and returns why that stream ended.
///
/// # Errors
///
/// As [`serve`]. A stream that ended in a way a reconnect may fix (closed, registration
/// timeout, NotLeader) is only an error when no further link comes.
pub async fn serve_links(
    options: WorkerOptions,
    links: mpsc::Receiver<Link>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    options.validate()?;
    let workspace = Arc::new(Workspace::new(&options.work_dir));
    workspace.sweep().await?;
    report_confinement(&options).await;
    let registration = Registration {
        name: options.name.clone(),
        instance_id: instance_id(),
        capacity: options.capacity,
        labels: options.labels.clone().into_iter().collect(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let (finished_tx, finished) = mpsc::channel(finished_capacity(options.capacity));
    // Each step asks at most once at a time: room for all of them, as for reports.
    let (questions_tx, questions) = mpsc::channel(finished_capacity(options.capacity));
    let worker = Worker {
        workspace,
        outbound: watch::channel(None).0,
        registration,
        running: HashMap::new(),
        unacked: BTreeMap::new(),
        draining: false,
        finished_tx,
        asks: Asks::default(),
        questions_tx,
        tracker: TaskTracker::new(),
        shutdown,
        options,
    };
    worker
        .run(
            links,
            Inbox {
                finished,
                questions,
            },
        )
        .await
}

/// Every step sends exactly one report; room for all of them means a step never waits to
/// report while the loop is busy sending.
fn finished_capacity(capacity: u32) -> usize {
    usize::try_from(capacity)
        .unwrap_or(usize::MAX)
        .clamp(1, 1024)
}

/// What the steps tell the loop.
struct Inbox {
    finished: mpsc::Receiver<(u64, Box<StepReport>)>,
    questions: mpsc::Receiver<Question>,
}

/// The one event type the connected loop consumes.
enum Event {
    Inbound(Option<Box<CoordinatorMessage>>),
    Finished(u64, Box<StepReport>),
    Asked(Question),
    Heartbeat,
    Resend,
    Shutdown,
}

/// How one stream ended.
enum Ended {
    /// Draining is complete: every step finished and every result was acknowledged.
    Drained,
    /// Shutdown (None) or a failure no reconnect fixes.
    Stop(Option<WorkerError>),
    /// The stream is gone; the next link may carry on.
    Lost(WorkerError),
}

impl Ended {
    fn from_error(e: WorkerError) -> Self {
        if e.is_transient() {
            Self::Lost(e)
        } else {
            Self::Stop(Some(e))
        }
    }
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

/// The current stream's sender, shared with the progress forwarders; None between streams.
type Outbound = watch::Sender<Option<mpsc::Sender<WorkerMessage>>>;

struct Worker {
    options: WorkerOptions,
    workspace: Arc<Workspace>,
    outbound: Outbound,
    registration: Registration,
    running: HashMap<u64, Running>,
    unacked: BTreeMap<u64, Pending>,
    draining: bool,
    finished_tx: mpsc::Sender<(u64, Box<StepReport>)>,
    /// Steps' push questions still being asked, and where steps send new ones.
    asks: Asks,
    questions_tx: mpsc::Sender<Question>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Delivered,
    Stopped,
}

impl Worker {
    async fn run(
        mut self,
        mut links: mpsc::Receiver<Link>,
        mut inbox: Inbox,
    ) -> Result<(), WorkerError> {
        let mut last_end = WorkerError::LinkClosed { running: 0 };
        loop {
            // Between streams: steps keep running; finished ones wait in `unacked`, push
            // questions wait for the next stream (or give up after their time).
            let link = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return self.stop(inbox, None).await,
                Some((attempt, report)) = inbox.finished.recv() => {
                    self.record(attempt, *report);
                    continue;
                }
                Some(question) = inbox.questions.recv() => {
                    self.asks.add(question, Instant::now(), false);
                    continue;
                }
                () = tokio::time::sleep(self.options.result_resend_interval), if !self.asks.is_empty() => {
                    self.push_requests_due(false);
                    continue;
                }
                link = links.recv() => match link {
                    Some(link) => link,
                    None => return self.stop(inbox, Some(last_end)).await,
                },
            };
            match self.session(link, &mut inbox).await {
                Ended::Drained => {
                    self.outbound.send_replace(None);
                    self.tracker.close();
                    self.tracker.wait().await;
                    return Ok(());
                }
                Ended::Stop(error) => return self.stop(inbox, error).await,
                Ended::Lost(e) => {
                    self.outbound.send_replace(None);
                    last_end = e;
                }
            }
        }
    }

    /// One stream: Hello with the held attempts, Registered, the unacknowledged results
    /// again, then the protocol until the stream ends.
    async fn session(&mut self, link: Link, inbox: &mut Inbox) -> Ended {
        let Link {
            outbound,
            mut inbound,
        } = link;
        self.outbound.send_replace(Some(outbound));
        let hello = worker_message::Body::Hello(v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            registration: Some(self.registration.clone()),
            token: self.options.token.clone(),
            attempts: self.held(),
        });
        match self.send(hello).await {
            Ok(Sent::Delivered) => {}
            Ok(Sent::Stopped) => return Ended::Stop(None),
            Err(e) => return Ended::from_error(e),
        }
        let heartbeat_interval = match self.handshake(&mut inbound, &mut inbox.finished).await {
            Ok(Some(interval)) => interval,
            Ok(None) => return Ended::Stop(None),
            Err(e) => return Ended::from_error(e),
        };
        // Results that finished while no stream was up go out now, not at the next tick, and
        // push questions are asked again: the last stream can no longer answer them.
        match self.resend(true).await {
            Ok(Sent::Delivered) => {}
            Ok(Sent::Stopped) => return Ended::Stop(None),
            Err(e) => return Ended::from_error(e),
        }
        let again = self.asks.restart(Instant::now());
        match self.send_push_requests(again).await {
            Ok(Sent::Delivered) => {}
            Ok(Sent::Stopped) => return Ended::Stop(None),
            Err(e) => return Ended::from_error(e),
        }

        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_interval, heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let resend_every = self.options.result_resend_interval;
        let mut resend = tokio::time::interval_at(Instant::now() + resend_every, resend_every);
        resend.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if self.draining && self.running.is_empty() && self.unacked.is_empty() {
                tracing::info!("drained");
                return Ended::Drained;
            }
            let event = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Event::Shutdown,
                Some((attempt, report)) = inbox.finished.recv() => Event::Finished(attempt, report),
                Some(question) = inbox.questions.recv() => Event::Asked(question),
                msg = inbound.recv() => Event::Inbound(msg.map(Box::new)),
                _ = heartbeat.tick() => Event::Heartbeat,
                _ = resend.tick() => Event::Resend,
            };
            let outcome = match event {
                Event::Shutdown => return Ended::Stop(None),
                Event::Inbound(None) => Err(WorkerError::LinkClosed {
                    running: self.running.len(),
                }),
                Event::Inbound(Some(msg)) => self.on_message(*msg).await,
                Event::Finished(attempt, report) => self.on_finished(attempt, *report).await,
                Event::Asked(question) => {
                    let request = self.asks.add(question, Instant::now(), true);
                    self.send_push_requests(request.into_iter().collect()).await
                }
                Event::Heartbeat => self.send(self.heartbeat()).await,
                Event::Resend => match self.resend(false).await {
                    Ok(Sent::Delivered) => {
                        let due = self.push_requests_due(true);
                        self.send_push_requests(due).await
                    }
                    other => other,
                },
            };
            match outcome {
                Ok(Sent::Delivered) => {}
                Ok(Sent::Stopped) => return Ended::Stop(None),
                // Drained as the coordinator went away (its Drain and the end of the stream
                // arrive together when it stops): nothing is lost, so leave.
                Err(_) if self.draining && self.running.is_empty() && self.unacked.is_empty() => {
                    tracing::info!("drained");
                    return Ended::Drained;
                }
                Err(e) => {
                    // Before registration the caller that dialled reports why; from here on
                    // the loss matters because steps may be held.
                    tracing::warn!(
                        running = self.running.len(),
                        unacknowledged = self.unacked.len(),
                        "coordinator stream ended ({e}); running steps continue"
                    );
                    return Ended::from_error(e);
                }
            }
        }
    }

    /// Waits for the answer to Hello: the heartbeat interval once Registered, None on
    /// shutdown. Steps finishing meanwhile are recorded for the resend that follows.
    async fn handshake(
        &mut self,
        inbound: &mut mpsc::Receiver<CoordinatorMessage>,
        finished_rx: &mut mpsc::Receiver<(u64, Box<StepReport>)>,
    ) -> Result<Option<Duration>, WorkerError> {
        let deadline = tokio::time::sleep(self.options.registration_timeout);
        tokio::pin!(deadline);
        let answer = loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(None),
                Some((attempt, report)) = finished_rx.recv() => {
                    self.record(attempt, *report);
                }
                msg = inbound.recv() => break msg,
                () = &mut deadline => {
                    return Err(WorkerError::RegistrationTimeout {
                        waited: self.options.registration_timeout,
                    });
                }
            }
        };
        match answer.and_then(|m| m.body) {
            Some(coordinator_message::Body::Registered(r)) => {
                check_protocol_version("registered.protocol_version", r.protocol_version)?;
                tracing::info!(
                    worker_id = %r.worker_id,
                    leader_term = r.leader_term,
                    held = self.running.len() + self.unacked.len(),
                    "registered"
                );
                Ok(Some(
                    parse_duration("registered.heartbeat_interval", r.heartbeat_interval)
                        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL)
                        .max(MIN_HEARTBEAT_INTERVAL),
                ))
            }
            Some(coordinator_message::Body::NotLeader(n)) => Err(WorkerError::NotLeader {
                leader_address: n.leader_address,
            }),
            Some(other) => Err(WorkerError::UnexpectedMessage {
                got: body_name(&other),
            }),
            None => Err(WorkerError::LinkClosed {
                running: self.running.len(),
            }),
        }
    }

    /// Sends on the current stream; no stream is the same as a closed one.
    async fn send(&self, body: worker_message::Body) -> Result<Sent, WorkerError> {
        let Some(outbound) = self.outbound.borrow().clone() else {
            return Err(WorkerError::LinkClosed {
                running: self.running.len(),
            });
        };
        let msg = WorkerMessage { body: Some(body) };
        tokio::select! {
            sent = outbound.send(msg) => match sent {
                Ok(()) => Ok(Sent::Delivered),
                Err(_) => Err(WorkerError::LinkClosed { running: self.running.len() }),
            },
            () = self.shutdown.cancelled() => Ok(Sent::Stopped),
        }
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
            Some(Body::PushAnswer(answer)) => {
                self.asks.answer(answer, Instant::now());
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
            pass_env: self.options.pass_env.clone(),
            confinement: self.options.confinement.clone(),
            fence: PushFence::coordinator(self.questions_tx.clone()),
        };
        let forwarder =
            self.tracker
                .spawn(forward_progress(attempt, stream, self.outbound.subscribe()));
        let finished = self.finished_tx.clone();
        self.tracker.spawn(async move {
            let report = run_step(&assign, &ctx).await;
            drop(ctx); // closes the progress channel once the output readers are done
            let _ = tokio::time::timeout(PROGRESS_FLUSH_TIMEOUT, forwarder).await;
            let _ = finished.send((attempt, Box::new(report))).await;
        });
        Ok(sent)
    }

    async fn on_finished(&mut self, attempt: u64, report: StepReport) -> Result<Sent, WorkerError> {
        let result = self.record(attempt, report);
        self.send(worker_message::Body::StepResult(result)).await
    }

    /// Moves a finished step from `running` to `unacked` and returns its result.
    fn record(&mut self, attempt: u64, mut report: StepReport) -> v1::StepResult {
        if let Some(step) = self.running.remove(&attempt)
            && report.failure_cause == FailureCause::Cancelled
            && let Some(reason) = step.cancel_reason.filter(|r| !r.is_empty())
        {
            report.detail.push_str(&format!(" Reason: {reason}"));
        }
        tracing::info!(
            attempt,
            verdict = %report.verdict,
            cause = report
                .failure_cause
                .as_str_name()
                .trim_start_matches("FAILURE_CAUSE_")
                .to_ascii_lowercase(),
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
        result
    }

    /// Sends unacknowledged results again: those not sent for a resend interval, or `all`.
    async fn resend(&mut self, all: bool) -> Result<Sent, WorkerError> {
        let due: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, p)| all || p.last_sent.elapsed() >= self.options.result_resend_interval)
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

    /// Push requests due again (and questions given up, with or without a stream).
    fn push_requests_due(&mut self, connected: bool) -> Vec<v1::PushRequest> {
        self.asks.due(
            Instant::now(),
            self.options.result_resend_interval,
            self.options.push_answer_timeout,
            connected,
        )
    }

    async fn send_push_requests(
        &self,
        requests: Vec<v1::PushRequest>,
    ) -> Result<Sent, WorkerError> {
        for request in requests {
            if self
                .send(worker_message::Body::PushRequest(request))
                .await?
                == Sent::Stopped
            {
                return Ok(Sent::Stopped);
            }
        }
        Ok(Sent::Delivered)
    }

    /// Every attempt this worker holds, for Hello and Heartbeat.
    fn held(&self) -> Vec<HeldAttempt> {
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
        attempts
    }

    fn heartbeat(&self) -> worker_message::Body {
        worker_message::Body::Heartbeat(v1::Heartbeat {
            protocol_version: PROTOCOL_VERSION,
            registration: Some(self.registration.clone()),
            attempts: self.held(),
            draining: self.draining,
        })
    }

    /// Stops every running step (their tokens are children of `shutdown`, or cancelled here),
    /// waits up to the shutdown grace for them to clean up, and offers their results to the
    /// current stream, if any, without waiting.
    async fn stop(
        mut self,
        mut inbox: Inbox,
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
        let outbound = self.outbound.borrow().clone();
        while let Ok((attempt, report)) = inbox.finished.try_recv() {
            self.running.remove(&attempt);
            let msg = WorkerMessage {
                body: Some(worker_message::Body::StepResult(report.to_wire())),
            };
            if let Some(outbound) = &outbound {
                let _ = outbound.try_send(msg);
            }
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

/// Forwards a step's output as `Progress` batches of at most [`MAX_PROGRESS_LINES`] lines
/// to whichever stream is up. Waits on the stream (backpressure lands here and makes the
/// step's buffer drop lines; the agent itself never waits); with no stream up a batch is
/// dropped.
async fn forward_progress(
    attempt: u64,
    mut stream: ProgressStream,
    outbound: watch::Receiver<Option<mpsc::Sender<WorkerMessage>>>,
) {
    let mut batch = Vec::with_capacity(MAX_PROGRESS_LINES);
    while stream.lines.recv_many(&mut batch, MAX_PROGRESS_LINES).await > 0 {
        let Some(link) = outbound.borrow().clone() else {
            batch.clear();
            continue;
        };
        let usage = *stream.usage.borrow();
        let progress = v1::Progress {
            attempt_id: attempt,
            lines: std::mem::take(&mut batch),
            turns: usage.turns,
            cost_usd: usage.cost_usd,
            tokens: Some(usage.tokens.into()),
        };
        let msg = WorkerMessage {
            body: Some(worker_message::Body::Progress(progress)),
        };
        // A stream that ended meanwhile loses this batch; the next one goes to its successor.
        let _ = link.send(msg).await;
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
        Body::PushAnswer(_) => "PushAnswer",
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
