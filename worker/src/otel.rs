//! OpenTelemetry trace export, shared by the coordinator and `hyperloop-worker`: an OTLP/gRPC
//! exporter behind the SDK's batch processor, and the W3C trace context that carries a step's
//! span from the coordinator to the worker and on to the agent.
//!
//! The batch processor owns a bounded queue (2048 spans) drained by its own thread: ending a
//! span only enqueues it, a full queue drops spans, and a collector that is down or slow only
//! costs that thread its export timeouts (a failed batch is dropped, not retried). [`Telemetry::shutdown`] flushes what is queued, for
//! at most [`SHUTDOWN_TIMEOUT`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{RetryPolicy, WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// How long one export may take before it is abandoned (the span batch is dropped).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long shutting down waits for the last spans to be exported.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// The running exporter; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Where and as what to export.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// OTLP/gRPC endpoint, like `http://localhost:4317`.
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Further resource attributes (repository, coordinator id, worker name).
    pub attributes: Vec<(&'static str, String)>,
}

/// The exporter could not be set up (a malformed endpoint).
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {reason}")]
pub struct ExportError {
    endpoint: String,
    reason: String,
}

impl Telemetry {
    /// Starts the exporter and returns the `tracing` layer that feeds it: hyperloop's own
    /// spans and events at info level and above, whatever the log filter says. Must be called
    /// inside a Tokio runtime (the gRPC channel lives on it), which must outlive
    /// [`Telemetry::shutdown`].
    ///
    /// # Errors
    /// The endpoint is not a usable URI.
    pub fn start<S>(settings: &ExportSettings) -> Result<(Self, impl Layer<S>), ExportError>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            // A failed batch is dropped, not retried with backoff: the next batch tries again,
            // and a dead collector does not hold up the flush at shutdown.
            .with_retry_policy(RetryPolicy::disabled())
            .build()
            .map_err(|e| ExportError {
                endpoint: settings.endpoint.clone(),
                reason: e.to_string(),
            })?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attributes(
                settings
                    .attributes
                    .iter()
                    .map(|(key, value)| KeyValue::new(*key, value.clone())),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("hyperloop"))
            .with_filter(
                Targets::new()
                    .with_target("hyperloop_coordinator", tracing::Level::INFO)
                    .with_target("hyperloop_worker", tracing::Level::INFO),
            );
        Ok((Telemetry { provider }, layer))
    }

    /// Exports what is still queued (for at most [`SHUTDOWN_TIMEOUT`]) and stops.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "trace export did not finish cleanly");
        }
    }
}

/// The W3C trace context (`traceparent`, and `tracestate` when non-empty) of `span`; empty
/// when no trace export is set up, so nothing travels.
pub fn context_of(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.into_iter().filter(|(_, v)| !v.is_empty()).collect()
}

/// Makes `span` a child of the remote span in `carrier` (a W3C trace context); no-op when the
/// carrier holds none or no trace export is set up.
pub fn continue_from(span: &tracing::Span, carrier: &HashMap<String, String>) {
    if carrier.is_empty() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(carrier);
    // Only fails when the span is disabled (no export): then there is nothing to join.
    let _ = span.set_parent(parent);
}

/// The environment an agent gets for the trace context: `TRACEPARENT`, and `TRACESTATE`
/// when non-empty, from `carrier`.
pub fn agent_env(carrier: &BTreeMap<String, String>) -> Vec<(String, String)> {
    [("traceparent", "TRACEPARENT"), ("tracestate", "TRACESTATE")]
        .into_iter()
        .filter_map(|(key, var)| {
            carrier
                .get(key)
                .filter(|v| !v.is_empty())
                .map(|v| (var.to_owned(), v.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_gets_traceparent_and_a_non_empty_tracestate_only() {
        let carrier = BTreeMap::from([
            ("traceparent".to_owned(), "00-ab-cd-01".to_owned()),
            ("tracestate".to_owned(), String::new()),
        ]);
        assert_eq!(
            agent_env(&carrier),
            [("TRACEPARENT".to_owned(), "00-ab-cd-01".to_owned())]
        );
        assert!(agent_env(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn without_trace_export_no_context_travels() {
        let span = tracing::info_span!("step");
        assert!(context_of(&span).is_empty());
    }
}
