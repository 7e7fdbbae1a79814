//! Bounded progress reporting from a running step: numbered log lines plus turns and cost.
//!
//! The agent must never wait on hyperloop, so a full buffer drops lines (counting them and
//! saying so in the next line that fits) instead of blocking the reader of the agent's output.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use hyperloop_proto::v1::{LogLine, LogSource};
use hyperloop_proto::{MAX_LOG_LINE_BYTES, MAX_PROGRESS_LINES};
use tokio::sync::{mpsc, watch};

/// Lines buffered per step between the agent's output readers and whoever forwards them.
/// Four `Progress` batches: a forwarder briefly stalled on the coordinator stream loses
/// nothing from a normally chatty agent, while memory stays bounded at
/// 1024 × 4 KiB = 4 MiB per step.
pub const PROGRESS_BUFFER_LINES: usize = 4 * MAX_PROGRESS_LINES;

/// Turns, cost and tokens reported so far by the runtime (0 when it does not say).
pub use hyperloop_shared::step::Usage;

/// The writing side, cloned into each output reader of a step.
#[derive(Debug, Clone)]
pub struct ProgressSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<LogLine>,
    usage: watch::Sender<Usage>,
    seq: AtomicU64,
    dropped: AtomicU64,
}

/// The reading side: lines in order (with gaps in `seq` where lines were dropped) and the
/// latest usage.
#[derive(Debug)]
pub struct ProgressStream {
    pub lines: mpsc::Receiver<LogLine>,
    pub usage: watch::Receiver<Usage>,
}

/// A connected sink and stream with [`PROGRESS_BUFFER_LINES`] of buffer.
pub fn progress_channel() -> (ProgressSink, ProgressStream) {
    let (tx, lines) = mpsc::channel(PROGRESS_BUFFER_LINES);
    let (usage_tx, usage) = watch::channel(Usage::default());
    let sink = ProgressSink {
        inner: Arc::new(Inner {
            tx,
            usage: usage_tx,
            seq: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }),
    };
    (sink, ProgressStream { lines, usage })
}

impl ProgressSink {
    /// Records one line, truncated to [`MAX_LOG_LINE_BYTES`]. Never waits.
    pub fn line(&self, source: LogSource, text: &str) {
        let dropped = self.inner.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let notice =
                format!("[hyperloop: {dropped} output lines dropped; the log buffer was full]");
            if !self.try_push(LogSource::Worker, &notice) {
                self.inner.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
                return;
            }
        }
        if !self.try_push(source, text) {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes the latest turns and cost.
    pub fn usage(&self, usage: Usage) {
        self.inner.usage.send_replace(usage);
    }

    fn try_push(&self, source: LogSource, text: &str) -> bool {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let line = LogLine {
            seq,
            source: source.into(),
            text: truncate(text, MAX_LOG_LINE_BYTES).to_owned(),
            at: Some(prost_types::Timestamp::from(SystemTime::now())),
        };
        self.inner.tx.try_send(line).is_ok()
    }
}

pub(crate) use hyperloop_shared::result_file::truncate;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_lines_and_says_how_many() {
        let (sink, mut stream) = progress_channel();
        for i in 0..PROGRESS_BUFFER_LINES + 10 {
            sink.line(LogSource::Stdout, &format!("line {i}"));
        }
        let mut got = Vec::new();
        while let Ok(line) = stream.lines.try_recv() {
            got.push(line);
        }
        assert_eq!(got.len(), PROGRESS_BUFFER_LINES);
        sink.line(LogSource::Stdout, "after");
        let notice = stream.lines.try_recv().unwrap();
        assert!(
            notice.text.contains("10 output lines dropped"),
            "{}",
            notice.text
        );
        let after = stream.lines.try_recv().unwrap();
        assert_eq!(after.text, "after");
        // Dropped lines leave gaps in the numbering.
        assert!(after.seq > notice.seq && notice.seq > PROGRESS_BUFFER_LINES as u64 + 1);
    }

    #[test]
    fn long_lines_are_truncated_at_a_char_boundary() {
        let (sink, mut stream) = progress_channel();
        sink.line(LogSource::Stderr, &"é".repeat(MAX_LOG_LINE_BYTES));
        let line = stream.lines.try_recv().unwrap();
        assert!(line.text.len() <= MAX_LOG_LINE_BYTES);
        assert!(line.text.chars().all(|c| c == 'é'));
    }
}
