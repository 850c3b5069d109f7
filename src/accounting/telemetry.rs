//! OpenTelemetry traces, following the GenAI semantic conventions, exported over OTLP/HTTP
//! (protobuf) in batches by the maintained `opentelemetry` crates; off unless `[otel]`
//! names an endpoint.
//!
//! Each request is two spans, written when its record is finished (from the record, with its
//! own start and end times, so the hot path only draws ids):
//! - a **server** span `{operation} {alias}`: `gen_ai.operation.name`, `gen_ai.request.model`
//!   (the alias), `gen_ai.response.model` (what the deployment serves), `gen_ai.usage.*`,
//!   `gen_ai.response.finish_reasons`, the deployment and status, `error.type` when it
//!   failed, and an event at the first token (`gen_ai.server.time_to_first_token`);
//! - a **client** span for the upstream call, from dispatch to the end of the answer, whose
//!   context is the `traceparent` the upstream receives.
//!
//! A client's `traceparent` is honoured: its trace goes on, its span is the parent, and its
//! sampled flag decides (the SDK's parent-based sampler).

use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider};

use super::RequestRecord;
use crate::config::OtelConfig;

/// The ids of one request's spans, drawn when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: [u8; 16],
    pub server: [u8; 8],
    pub client: [u8; 8],
    /// The client's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
}

impl Trace {
    /// A trace for a request: the one its `traceparent` names, or a new one.
    pub fn start(traceparent: Option<&str>) -> Trace {
        let server = nonzero_span();
        let client = nonzero_span();
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, sampled)) => Trace { trace_id, server, client, parent: Some(parent), sampled },
            None => {
                let mut trace_id = rand::random::<[u8; 16]>();
                trace_id[0] |= 1;
                Trace { trace_id, server, client, parent: None, sampled: true }
            }
        }
    }

    /// The `traceparent` the upstream receives: the client span's context.
    pub fn upstream_traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", hex::encode(self.trace_id), hex::encode(self.client), u8::from(self.sampled))
    }
}

fn nonzero_span() -> [u8; 8] {
    let mut s = rand::random::<[u8; 8]>();
    s[0] |= 1;
    s
}

/// `00-{32 hex}-{16 hex}-{2 hex}` (W3C Trace Context), neither id all zeros.
fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = v.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace: [u8; 16] = hex::decode(trace).ok()?.try_into().ok()?;
    let span: [u8; 8] = hex::decode(span).ok()?.try_into().ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span, flags & 1 == 1))
}

/// The tracer and its batch exporter.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    pub fn start(cfg: &OtelConfig) -> Result<Telemetry, String> {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_otlp::{Protocol, WithExportConfig};
        let url = format!("{}/v1/traces", cfg.endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .build()
            .map_err(|e| format!("otel: the OTLP exporter: {e}"))?;
        // Room for a second of spans at the rate one core serves (a full queue drops them),
        // sent 512 at a time (larger batches stall the core that serves for longer).
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(cfg.batch_delay)
            .with_max_queue_size(16_384)
            .with_max_export_batch_size(512)
            .build();
        let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(cfg.service_name.clone()).build();
        let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
        let tracer = provider.tracer("tollgate");
        Ok(Telemetry { provider, tracer })
    }

    /// Writes a finished request's spans (they leave in the next batch).
    pub fn export(&self, rec: &RequestRecord) {
        let Some(t) = &rec.trace else { return };
        let start = UNIX_EPOCH + Duration::from_millis(rec.started_at_ms);
        let at = |ms: f64| start + Duration::from_secs_f64(ms.max(0.0) / 1000.0);
        let end = at(rec.total_ms);
        let trace_id = TraceId::from_bytes(t.trace_id);
        let flags = if t.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let parent = match t.parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                SpanId::from_bytes(p),
                flags,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let operation = operation(rec.endpoint);
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", operation),
            KeyValue::new("gen_ai.request.model", rec.alias.clone()),
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.response.status_code", i64::from(rec.status)),
            KeyValue::new("tollgate.request_id", rec.request_id.clone()),
        ];
        let mut common = Vec::new();
        if let Some(m) = &rec.upstream_model {
            common.push(KeyValue::new("gen_ai.response.model", m.clone()));
        }
        if rec.prompt_tokens + rec.completion_tokens > 0 {
            common.push(KeyValue::new("gen_ai.usage.input_tokens", rec.prompt_tokens as i64));
            common.push(KeyValue::new("gen_ai.usage.output_tokens", rec.completion_tokens as i64));
        }
        if let Some(f) = &rec.finish_reason {
            common.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                opentelemetry::Value::Array(vec![opentelemetry::StringValue::from(f.clone())].into()),
            ));
        }
        if let Some(d) = &rec.deployment {
            common.push(KeyValue::new("tollgate.deployment", d.clone()));
        }
        if let Some(v) = &rec.model_version {
            common.push(KeyValue::new("tollgate.model_version", v.clone()));
        }
        if let Some(k) = &rec.key {
            attrs.push(KeyValue::new("tollgate.key", k.clone()));
        }
        if let Some(e) = rec.error {
            attrs.push(KeyValue::new("error.type", e));
        }
        attrs.extend(common);
        let events = rec
            .ttft_ms
            .map(|ms| {
                let secs = KeyValue::new("gen_ai.server.time_to_first_token", ms / 1000.0);
                vec![Event::new("gen_ai.first_token", at(ms), vec![secs], 0)]
            })
            .unwrap_or_default();
        let mut server = SpanBuilder::from_name(format!("{operation} {}", rec.alias))
            .with_kind(SpanKind::Server)
            .with_trace_id(trace_id)
            .with_span_id(SpanId::from_bytes(t.server))
            .with_start_time(start)
            .with_attributes(attrs)
            .with_events(events)
            .start_with_context(&self.tracer, &parent);
        let failed = rec.status >= 400;
        if failed {
            server.set_status(Status::error(rec.error.unwrap_or("error")));
        }
        if let (Some(dispatched), Some(kind)) = (rec.dispatched_ms, rec.backend_kind) {
            let server_cx = Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                SpanId::from_bytes(t.server),
                flags,
                false,
                TraceState::default(),
            ));
            // The usage and outcome are the server span's: the client span says only whom it
            // called and how often (a smaller batch to encode and send).
            let mut attrs: Vec<KeyValue> = rec
                .upstream_model
                .iter()
                .map(|m| KeyValue::new("gen_ai.response.model", m.clone()))
                .chain(rec.deployment.iter().map(|d| KeyValue::new("tollgate.deployment", d.clone())))
                .collect();
            attrs.push(KeyValue::new("gen_ai.operation.name", operation));
            attrs.push(KeyValue::new("gen_ai.provider.name", provider(kind)));
            attrs.push(KeyValue::new("tollgate.attempts", i64::from(rec.attempts)));
            let name = format!("{operation} {}", rec.upstream_model.as_deref().unwrap_or(&rec.alias));
            let mut client = SpanBuilder::from_name(name)
                .with_kind(SpanKind::Client)
                .with_trace_id(trace_id)
                .with_span_id(SpanId::from_bytes(t.client))
                .with_start_time(at(dispatched))
                .with_attributes(attrs)
                .start_with_context(&self.tracer, &server_cx);
            if failed && rec.status >= 500 {
                client.set_status(Status::error(rec.error.unwrap_or("error")));
            }
            client.end_with_timestamp(end.max(at(dispatched)));
        }
        server.end_with_timestamp(end);
    }

    /// Sends what is waiting (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!("otel: the last spans were not all sent: {e}");
        }
    }
}

/// `gen_ai.operation.name` for an endpoint.
fn operation(endpoint: &str) -> &'static str {
    match endpoint {
        "completions" => "text_completion",
        "embeddings" => "embeddings",
        _ => "chat",
    }
}

/// `gen_ai.provider.name` for a deployment kind.
fn provider(kind: &str) -> &'static str {
    match kind {
        "local" => "llama.cpp",
        "ollama" => "ollama",
        _ => "openai",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_honoured_or_a_trace_begins() {
        let t = Trace::start(Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert_eq!(hex::encode(t.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(t.parent.map(hex::encode).as_deref(), Some("b7ad6b7169203331"));
        assert!(t.sampled);
        let up = t.upstream_traceparent();
        assert!(up.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && up.ends_with("-01"), "{up}");
        assert_ne!(&up[36..52], "b7ad6b7169203331", "the upstream's parent is the gateway's client span");
        let unsampled = Trace::start(Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"));
        assert!(!unsampled.sampled && unsampled.upstream_traceparent().ends_with("-00"));
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            let t = Trace::start(Some(bad));
            assert!(t.parent.is_none() && t.sampled, "{bad}");
        }
    }
}
