//! OpenTelemetry export, shared by the coordinator and `hyperloop-worker`: spans (through the
//! SDK's batch processor) and metrics (a periodic reader; instruments come from
//! `opentelemetry::global::meter`) over OTLP/gRPC or OTLP/HTTP (protobuf), and the W3C trace
//! context that carries a step's span from the coordinator to the worker and on to the agent.
//!
//! [`ExportSettings::resolve`] decides what to export where from what the operator asked for
//! explicitly (the repository's `observability.otel` keys, or the worker's flags) and the
//! standard `OTEL_*` variables, passed in rather than read here.
//!
//! Export never holds up the run: ending a span only enqueues it on the batch processor's
//! bounded queue (2048 spans; a full queue drops spans), metrics are collected and sent by the
//! reader's own thread every interval, and a collector that is down or slow only costs those
//! threads their export timeouts (a failed export is dropped, not retried).
//! [`Telemetry::shutdown`] flushes both, for at most [`SHUTDOWN_TIMEOUT`], and logs how many
//! spans and metric data points failed exports lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyperloop_shared::config::OtelConfig;
pub use hyperloop_shared::config::OtelProtocol as Protocol;
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{
    RetryPolicy, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt as _, Targets};
use tracing_subscriber::registry::LookupSpan;

/// How long one export may take before it is abandoned (the batch is dropped).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long shutting down waits for the last spans and metrics to be exported.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// How often metrics are exported unless `OTEL_METRIC_EXPORT_INTERVAL` says otherwise.
pub const METRIC_INTERVAL: Duration = Duration::from_secs(10);

/// The running exporters; [`Telemetry::shutdown`] flushes them.
pub struct Telemetry {
    traces: SdkTracerProvider,
    metrics: SdkMeterProvider,
    lost: Arc<Lost>,
}

/// What failed exports dropped (queue overflow is the SDK's to report: it does not say).
#[derive(Debug, Default)]
struct Lost {
    spans: AtomicU64,
    data_points: AtomicU64,
}

/// Where and as what to export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    pub protocol: Protocol,
    /// Where spans go: for gRPC the collector's URL, for HTTP the full `…/v1/traces` URL.
    pub traces_endpoint: String,
    /// Where metrics go, likewise (`…/v1/metrics` over HTTP).
    pub metrics_endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Further resource attributes: `OTEL_RESOURCE_ATTRIBUTES`, then hyperloop's own
    /// (repository, coordinator id, worker name), which win on a clash.
    pub attributes: Vec<(String, String)>,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`); never logged.
    pub headers: Headers,
    /// How often metrics are exported.
    pub metric_interval: Duration,
}

/// Export request headers. They usually carry credentials, so `Debug` shows names only.
#[derive(Clone, Default, PartialEq)]
pub struct Headers(Vec<(String, String)>);

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// The settings or the exporter could not be set up; names the variable or key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{variable}: {problem}")]
    Setting {
        variable: &'static str,
        problem: String,
    },
    #[error("cannot export to {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// The environment variables [`ExportSettings::resolve`] reads.
const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";

/// Where an endpoint came from, which decides whether the signal's path is appended.
enum Source<'a> {
    /// `observability.otel.endpoint` / `--otel-endpoint`: a base URL, or one ending in
    /// `/v1/traces`.
    Requested(&'a str),
    /// A per-signal variable: used as is (the OTLP specification's rule).
    Signal(&'a str),
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: a base URL.
    Base(&'a str),
    Default,
}

impl ExportSettings {
    /// What to export where, or `None` when export is off: it is on when `requested` is
    /// given (an `observability.otel` section, or the worker's `--otel-*` flags) or the
    /// environment names an OTLP endpoint. Precedence, per setting:
    ///
    /// - endpoint: `requested.endpoint` (for both signals), else
    ///   `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT` (as is), else
    ///   `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL), else `localhost:4317` (gRPC) or
    ///   `localhost:4318` (HTTP). Over HTTP a base URL gets `/v1/traces` or `/v1/metrics`.
    /// - protocol: `requested.protocol`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else HTTP when
    ///   the traces endpoint is on port 4318 or ends in `/v1/traces`, else gRPC.
    /// - service name: `requested.service_name`, else `OTEL_SERVICE_NAME`, else `service.name`
    ///   in `OTEL_RESOURCE_ATTRIBUTES`, else `default_service_name`.
    /// - headers: only `OTEL_EXPORTER_OTLP_HEADERS` (credentials belong in the environment,
    ///   not the repository).
    /// - metric interval: `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds), else 10 s.
    ///
    /// `env` looks a variable up; an empty value counts as unset. `attributes` are
    /// hyperloop's own resource attributes.
    ///
    /// # Errors
    /// A variable that is set but unusable, named with what to write instead.
    pub fn resolve(
        requested: Option<&OtelConfig>,
        env: impl Fn(&str) -> Option<String>,
        default_service_name: &str,
        attributes: Vec<(&'static str, String)>,
    ) -> Result<Option<ExportSettings>, ExportError> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let [base, traces, metrics] = [ENDPOINT, TRACES_ENDPOINT, METRICS_ENDPOINT].map(var);
        if requested.is_none() && base.is_none() && traces.is_none() && metrics.is_none() {
            return Ok(None);
        }
        for (variable, value) in [
            (ENDPOINT, &base),
            (TRACES_ENDPOINT, &traces),
            (METRICS_ENDPOINT, &metrics),
        ] {
            if let Some(url) = value.as_deref().filter(|url| !is_http_url(url)) {
                return Err(ExportError::Setting {
                    variable,
                    problem: format!(
                        "`{url}` is not an http(s) URL; write one like http://collector:4317"
                    ),
                });
            }
        }
        let requested = requested.cloned().unwrap_or_default();
        let (traces_source, metrics_source) = (
            source(
                requested.endpoint.as_deref(),
                traces.as_deref(),
                base.as_deref(),
            ),
            source(
                requested.endpoint.as_deref(),
                metrics.as_deref(),
                base.as_deref(),
            ),
        );

        let protocol = match (requested.protocol, var(PROTOCOL)) {
            (Some(protocol), _) => protocol,
            (None, Some(given)) => match given.trim() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" | "http" => Protocol::HttpProtobuf,
                other => {
                    return Err(ExportError::Setting {
                        variable: PROTOCOL,
                        problem: format!("`{other}` is not supported; write grpc or http/protobuf"),
                    });
                }
            },
            (None, None) => match &traces_source {
                Source::Requested(url) | Source::Signal(url) | Source::Base(url)
                    if looks_like_http(url) =>
                {
                    Protocol::HttpProtobuf
                }
                _ => Protocol::Grpc,
            },
        };

        let resource = match var(RESOURCE_ATTRIBUTES) {
            Some(list) => parse_pairs(&list).ok_or_else(|| ExportError::Setting {
                variable: RESOURCE_ATTRIBUTES,
                problem: "write comma-separated key=value pairs (values percent-encoded)"
                    .to_owned(),
            })?,
            None => Vec::new(),
        };
        let service_name = requested
            .service_name
            .or_else(|| var(SERVICE_NAME))
            .or_else(|| {
                resource
                    .iter()
                    .find(|(key, _)| key == "service.name")
                    .map(|(_, value)| value.clone())
            })
            .unwrap_or_else(|| default_service_name.to_owned());
        let attributes = resource
            .into_iter()
            .filter(|(key, _)| key != "service.name")
            .chain(
                attributes
                    .into_iter()
                    .map(|(key, value)| (key.to_owned(), value)),
            )
            .collect();

        // Only names are checked here; a value is never echoed (it may be a secret).
        let headers = match var(HEADERS) {
            Some(list) => parse_pairs(&list)
                .filter(|pairs| {
                    pairs.iter().all(|(name, value)| {
                        http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                            && http::HeaderValue::from_str(value).is_ok()
                    })
                })
                .map(Headers)
                .ok_or_else(|| ExportError::Setting {
                    variable: HEADERS,
                    problem: "write comma-separated name=value pairs of valid HTTP header \
                              names and values (values percent-encoded)"
                        .to_owned(),
                })?,
            None => Headers::default(),
        };

        let metric_interval = match var(METRIC_EXPORT_INTERVAL) {
            Some(ms) => ms
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| ExportError::Setting {
                    variable: METRIC_EXPORT_INTERVAL,
                    problem: format!(
                        "`{ms}` is not a positive number of milliseconds; write e.g. 10000"
                    ),
                })?,
            None => METRIC_INTERVAL,
        };

        Ok(Some(ExportSettings {
            protocol,
            traces_endpoint: signal_url(protocol, &traces_source, "traces"),
            metrics_endpoint: signal_url(protocol, &metrics_source, "metrics"),
            service_name,
            attributes,
            headers,
            metric_interval,
        }))
    }
}

fn source<'a>(
    requested: Option<&'a str>,
    signal: Option<&'a str>,
    base: Option<&'a str>,
) -> Source<'a> {
    match (requested, signal, base) {
        (Some(url), _, _) => Source::Requested(url),
        (None, Some(url), _) => Source::Signal(url),
        (None, None, Some(url)) => Source::Base(url),
        (None, None, None) => Source::Default,
    }
}

fn is_http_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .is_ok_and(|uri| matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some())
}

/// OTLP/HTTP's conventional port, or a URL already naming the HTTP traces path.
fn looks_like_http(url: &str) -> bool {
    url.parse::<http::Uri>().is_ok_and(|uri| {
        uri.port_u16() == Some(4318) || uri.path().trim_end_matches('/').ends_with("/v1/traces")
    })
}

/// The URL one signal is sent to.
fn signal_url(protocol: Protocol, source: &Source<'_>, signal: &str) -> String {
    let path = format!("/v1/{signal}");
    match (protocol, source) {
        (Protocol::Grpc, Source::Requested(url) | Source::Signal(url) | Source::Base(url)) => {
            (*url).to_owned()
        }
        (Protocol::Grpc, Source::Default) => "http://localhost:4317".to_owned(),
        (Protocol::HttpProtobuf, Source::Signal(url)) => (*url).to_owned(),
        (Protocol::HttpProtobuf, Source::Requested(url)) => {
            // One configured URL serves both signals: `…/v1/traces` names the traces one.
            let url = url.trim_end_matches('/');
            let base = url.strip_suffix("/v1/traces").unwrap_or(url);
            format!("{base}{path}")
        }
        (Protocol::HttpProtobuf, Source::Base(url)) => {
            format!("{}{path}", url.trim_end_matches('/'))
        }
        (Protocol::HttpProtobuf, Source::Default) => format!("http://localhost:4318{path}"),
    }
}

/// `key=value,key=value` with percent-encoded values (the W3C Baggage form the OTLP
/// variables use); `None` when an entry has no `=`, an empty key or a bad escape.
fn parse_pairs(list: &str) -> Option<Vec<(String, String)>> {
    list.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let (key, value) = entry.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then_some(())?;
            Some((key.to_owned(), percent_decode(value.trim())?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

impl Telemetry {
    /// Starts both exporters, installs the meter provider as `opentelemetry::global`'s (so
    /// instruments made from `global::meter` afterwards are exported) and returns the
    /// `tracing` layer that feeds spans: hyperloop's own spans and events at info level and
    /// above, whatever the log filter says. Must be called inside a Tokio runtime (the
    /// exporters' connections live on it), which must outlive [`Telemetry::shutdown`].
    ///
    /// # Errors
    /// An endpoint is not a usable URI, or there is no Tokio runtime.
    pub fn start<S>(
        settings: &ExportSettings,
    ) -> Result<(Self, impl Layer<S> + use<S>), ExportError>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| ExportError::Exporter {
            endpoint: settings.traces_endpoint.clone(),
            reason: e.to_string(),
        })?;
        let lost = Arc::new(Lost::default());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attributes(
                settings
                    .attributes
                    .iter()
                    .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
            )
            .build();

        let spans = CountingSpans {
            inner: span_exporter(settings, &runtime)?,
            lost: lost.clone(),
        };
        let traces = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();

        let metrics = CountingMetrics {
            inner: metric_exporter(settings, &runtime)?,
            lost: lost.clone(),
        };
        let metrics = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(metrics)
                    .with_interval(settings.metric_interval)
                    .build(),
            )
            .with_resource(resource)
            .build();
        opentelemetry::global::set_meter_provider(metrics.clone());

        // Spans only, and lean ones: log lines are not copied into spans as events, and no
        // source location, thread or busy/idle timings are kept. The loop opens a few spans
        // per step on its own thread; each extra field costs every step.
        let layer = tracing_opentelemetry::layer()
            .with_tracer(traces.tracer("hyperloop"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(
                Targets::new()
                    .with_target("hyperloop_coordinator", tracing::Level::INFO)
                    .with_target("hyperloop_worker", tracing::Level::INFO)
                    .and(tracing_subscriber::filter::filter_fn(|meta| meta.is_span())),
            );
        Ok((
            Telemetry {
                traces,
                metrics,
                lost,
            },
            layer,
        ))
    }

    /// Exports what is still queued and the metrics' last values, both at once, for at most
    /// [`SHUTDOWN_TIMEOUT`], and stops; logs what failed exports lost.
    pub fn shutdown(self) {
        let (traces, metrics) = std::thread::scope(|scope| {
            let traces = scope.spawn(|| self.traces.shutdown_with_timeout(SHUTDOWN_TIMEOUT));
            let metrics = self.metrics.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
            (traces.join(), metrics)
        });
        if let Ok(Err(e)) = traces {
            tracing::warn!(error = %e, "trace export did not finish cleanly");
        }
        if let Err(e) = metrics {
            tracing::warn!(error = %e, "metric export did not finish cleanly");
        }
        let spans = self.lost.spans.load(Ordering::Relaxed);
        let data_points = self.lost.data_points.load(Ordering::Relaxed);
        if spans + data_points > 0 {
            tracing::warn!(
                spans,
                data_points,
                "OpenTelemetry exports failed; what they carried is lost"
            );
        }
    }
}

fn build_error(
    endpoint: &str,
) -> impl FnOnce(opentelemetry_otlp::ExporterBuildError) -> ExportError {
    move |e| ExportError::Exporter {
        endpoint: endpoint.to_owned(),
        reason: e.to_string(),
    }
}

fn span_exporter(
    settings: &ExportSettings,
    runtime: &tokio::runtime::Handle,
) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    let endpoint = &settings.traces_endpoint;
    let builder = opentelemetry_otlp::SpanExporter::builder();
    match settings.protocol {
        Protocol::Grpc => builder
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .with_metadata(metadata(&settings.headers))
            // A failed batch is dropped, not retried with backoff: the next batch tries
            // again, and a dead collector does not hold up the flush at shutdown.
            .with_retry_policy(RetryPolicy::disabled())
            .build(),
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(settings.headers.0.iter().cloned().collect())
            .with_http_client(OnRuntime::new(runtime))
            .with_retry_policy(RetryPolicy::disabled())
            .build(),
    }
    .map_err(build_error(endpoint))
}

fn metric_exporter(
    settings: &ExportSettings,
    runtime: &tokio::runtime::Handle,
) -> Result<opentelemetry_otlp::MetricExporter, ExportError> {
    let endpoint = &settings.metrics_endpoint;
    let builder = opentelemetry_otlp::MetricExporter::builder();
    match settings.protocol {
        Protocol::Grpc => builder
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .with_metadata(metadata(&settings.headers))
            .with_retry_policy(RetryPolicy::disabled())
            .build(),
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(settings.headers.0.iter().cloned().collect())
            .with_http_client(OnRuntime::new(runtime))
            .with_retry_policy(RetryPolicy::disabled())
            .build(),
    }
    .map_err(build_error(endpoint))
}

/// The headers as gRPC metadata ([`ExportSettings::resolve`] checked them).
fn metadata(headers: &Headers) -> tonic::metadata::MetadataMap {
    let map = headers
        .0
        .iter()
        .filter_map(|(name, value)| {
            Some((
                http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                http::HeaderValue::from_str(value).ok()?,
            ))
        })
        .collect();
    tonic::metadata::MetadataMap::from_headers(map)
}

/// OTLP/HTTP's client: hyper with rustls (ring) for https. The SDK exports from its own
/// threads, outside any Tokio runtime, while hyper's connections need one; each request is
/// spawned onto the runtime `Telemetry::start` ran in.
#[derive(Debug)]
struct OnRuntime {
    client: Arc<dyn opentelemetry_http::HttpClient>,
    runtime: tokio::runtime::Handle,
}

impl OnRuntime {
    fn new(runtime: &tokio::runtime::Handle) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        OnRuntime {
            client: Arc::new(opentelemetry_http::hyper::HyperClient::new(
                connector,
                EXPORT_TIMEOUT,
                None,
            )),
            runtime: runtime.clone(),
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<opentelemetry_http::Bytes>,
    ) -> Result<http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

/// Counts the spans of failed exports into [`Lost`].
#[derive(Debug)]
struct CountingSpans<E> {
    inner: E,
    lost: Arc<Lost>,
}

impl<E: SpanExporter> SpanExporter for CountingSpans<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.lost.spans.fetch_add(spans, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts the data points of failed exports into [`Lost`].
struct CountingMetrics<E> {
    inner: E,
    lost: Arc<Lost>,
}

impl<E: PushMetricExporter> PushMetricExporter for CountingMetrics<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        if result.is_err() {
            self.lost
                .data_points
                .fetch_add(data_points(metrics), Ordering::Relaxed);
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

fn data_points(metrics: &ResourceMetrics) -> u64 {
    fn count<T>(data: &MetricData<T>) -> usize {
        match data {
            MetricData::Gauge(gauge) => gauge.data_points().count(),
            MetricData::Sum(sum) => sum.data_points().count(),
            MetricData::Histogram(histogram) => histogram.data_points().count(),
            MetricData::ExponentialHistogram(histogram) => histogram.data_points().count(),
        }
    }
    metrics
        .scope_metrics()
        .flat_map(|scope| scope.metrics())
        .map(|metric| match metric.data() {
            AggregatedMetrics::F64(data) => count(data),
            AggregatedMetrics::U64(data) => count(data),
            AggregatedMetrics::I64(data) => count(data),
        })
        .sum::<usize>() as u64
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

    fn resolve(
        requested: Option<OtelConfig>,
        env: &[(&str, &str)],
    ) -> Result<Option<ExportSettings>, ExportError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ExportSettings::resolve(
            requested.as_ref(),
            |name| env.get(name).cloned(),
            "hyperloop",
            vec![("hyperloop.repository", "acme".to_owned())],
        )
    }

    fn settings(requested: Option<OtelConfig>, env: &[(&str, &str)]) -> ExportSettings {
        resolve(requested, env)
            .expect("valid settings")
            .expect("export is on")
    }

    fn requested(endpoint: &str) -> Option<OtelConfig> {
        Some(OtelConfig {
            endpoint: Some(endpoint.to_owned()),
            ..OtelConfig::default()
        })
    }

    fn endpoints(s: &ExportSettings) -> (Protocol, &str, &str) {
        (s.protocol, &s.traces_endpoint, &s.metrics_endpoint)
    }

    #[test]
    fn export_is_off_without_a_config_section_or_an_endpoint_variable() {
        assert_eq!(resolve(None, &[]).expect("valid"), None);
        // Variables that say how, but not where, turn nothing on.
        let how = [
            (PROTOCOL, "grpc"),
            (SERVICE_NAME, "svc"),
            (HEADERS, "a=b"),
            (ENDPOINT, ""),
        ];
        assert_eq!(resolve(None, &how).expect("valid"), None);
        for variable in [ENDPOINT, TRACES_ENDPOINT, METRICS_ENDPOINT] {
            assert!(
                resolve(None, &[(variable, "http://c:4317")])
                    .expect("valid")
                    .is_some(),
                "{variable} alone turns export on"
            );
        }
        // An empty section turns it on, to the gRPC default.
        let s = settings(Some(OtelConfig::default()), &[]);
        assert_eq!(
            endpoints(&s),
            (
                Protocol::Grpc,
                "http://localhost:4317",
                "http://localhost:4317"
            )
        );
        assert_eq!(s.service_name, "hyperloop");
        assert_eq!(s.metric_interval, METRIC_INTERVAL);
    }

    #[test]
    fn the_protocol_follows_the_key_then_the_variable_then_the_url() {
        let http = Some(OtelConfig {
            protocol: Some(Protocol::HttpProtobuf),
            ..OtelConfig::default()
        });
        assert_eq!(
            endpoints(&settings(http, &[(PROTOCOL, "grpc")])),
            (
                Protocol::HttpProtobuf,
                "http://localhost:4318/v1/traces",
                "http://localhost:4318/v1/metrics"
            )
        );
        assert_eq!(
            settings(requested("http://c:4318"), &[(PROTOCOL, "grpc")]).protocol,
            Protocol::Grpc
        );
        for alias in ["http", "http/protobuf"] {
            assert_eq!(
                settings(requested("http://c:4317"), &[(PROTOCOL, alias)]).protocol,
                Protocol::HttpProtobuf
            );
        }
        // Port 4318 or a /v1/traces path means HTTP; anything else gRPC.
        assert_eq!(
            endpoints(&settings(requested("http://c:4318"), &[])),
            (
                Protocol::HttpProtobuf,
                "http://c:4318/v1/traces",
                "http://c:4318/v1/metrics"
            )
        );
        assert_eq!(
            endpoints(&settings(
                requested("https://otlp.example.com/in/v1/traces"),
                &[]
            )),
            (
                Protocol::HttpProtobuf,
                "https://otlp.example.com/in/v1/traces",
                "https://otlp.example.com/in/v1/metrics"
            )
        );
        assert_eq!(
            endpoints(&settings(None, &[(ENDPOINT, "http://c:9999")])),
            (Protocol::Grpc, "http://c:9999", "http://c:9999")
        );
    }

    #[test]
    fn the_config_endpoint_wins_and_per_signal_variables_are_used_as_given() {
        let env = [
            (ENDPOINT, "http://base:4318/"),
            (TRACES_ENDPOINT, "http://traces:4318/custom"),
            (METRICS_ENDPOINT, "http://metrics:4318/m"),
        ];
        assert_eq!(
            endpoints(&settings(requested("http://mine:4317"), &env)),
            (Protocol::Grpc, "http://mine:4317", "http://mine:4317")
        );
        assert_eq!(
            endpoints(&settings(None, &env)),
            (
                Protocol::HttpProtobuf,
                "http://traces:4318/custom",
                "http://metrics:4318/m"
            )
        );
        // The base URL gets each signal's path over HTTP.
        assert_eq!(
            endpoints(&settings(None, &env[..2])),
            (
                Protocol::HttpProtobuf,
                "http://traces:4318/custom",
                "http://base:4318/v1/metrics"
            )
        );
    }

    #[test]
    fn service_name_and_resource_attributes_come_from_config_then_the_environment() {
        let env = [
            (SERVICE_NAME, "from-var"),
            (
                RESOURCE_ATTRIBUTES,
                "service.name=from-attrs, deployment.environment=prod%2Ceu ,team=a%3Db",
            ),
        ];
        let mine = Some(OtelConfig {
            service_name: Some("mine".to_owned()),
            ..OtelConfig::default()
        });
        assert_eq!(settings(mine, &env).service_name, "mine");
        let s = settings(Some(OtelConfig::default()), &env);
        assert_eq!(s.service_name, "from-var");
        assert_eq!(
            s.attributes,
            [
                ("deployment.environment", "prod,eu"),
                ("team", "a=b"),
                ("hyperloop.repository", "acme"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(
            settings(Some(OtelConfig::default()), &env[1..]).service_name,
            "from-attrs"
        );
    }

    #[test]
    fn headers_come_from_the_environment_and_never_show_their_values() {
        let s = settings(
            Some(OtelConfig::default()),
            &[(HEADERS, "authorization=Bearer%20s3cret,x-scope=team-a")],
        );
        assert_eq!(
            s.headers.0,
            [("authorization", "Bearer s3cret"), ("x-scope", "team-a")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let shown = format!("{s:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let error = resolve(
            Some(OtelConfig::default()),
            &[(HEADERS, "authorization=s3cret,no-equals-sign")],
        )
        .expect_err("malformed headers");
        let message = error.to_string();
        assert!(message.starts_with(HEADERS), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn unusable_variables_are_errors_that_name_them() {
        for (variable, value) in [
            (ENDPOINT, "collector:4317"),
            (TRACES_ENDPOINT, "ftp://c/v1/traces"),
            (PROTOCOL, "http/json"),
            (RESOURCE_ATTRIBUTES, "team"),
            (RESOURCE_ATTRIBUTES, "team=%zz"),
            (METRIC_EXPORT_INTERVAL, "0"),
            (METRIC_EXPORT_INTERVAL, "10s"),
        ] {
            let error =
                resolve(Some(OtelConfig::default()), &[(variable, value)]).expect_err(variable);
            assert!(
                error.to_string().starts_with(&format!("{variable}: ")),
                "{variable}={value}: {error}"
            );
        }
        assert_eq!(
            settings(
                Some(OtelConfig::default()),
                &[(METRIC_EXPORT_INTERVAL, "2500")]
            )
            .metric_interval,
            Duration::from_millis(2500)
        );
    }

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
