//! OTLP/protobuf encoding of finished spans, written straight from the SDK's `SpanData` into one
//! buffer: an `ExportTraceServiceRequest` (opentelemetry-proto's `trace_service.proto`), byte for byte
//! the message the SDK's exporter sends, without building it first.
//!
//! **Why by hand.** The SDK's OTLP exporter converts each batch into opentelemetry-proto's generated
//! structs (a fresh `String` for every attribute key and value, a `HashMap` to group the spans by
//! scope) and then lets prost encode them, which walks every nested message twice more to compute
//! lengths. With everything on, that was ~27,000 instructions per request on the export thread, a
//! third of Sluice's background work (`bench/instructions.sh`, session 14 in `docs/BENCHMARKS.md`),
//! on the core the request threads use. Here each field is written once, with prost's varint
//! primitives: an attribute (most of the bytes) has its size computed and written before it; a span
//! and the messages around the spans are written in place and their length put in front of them
//! afterwards (one move of their bytes). The tests below check the result against the SDK's own
//! conversion of the same spans, byte for byte; every other telemetry test decodes what the exporter
//! sends with opentelemetry-proto. Measured: 28,868 → 14,562 instructions per request on the export
//! thread (`bench/instructions.sh`, trace export alone).
//!
//! Only what `SpanData` can hold is written; values of kinds a later `opentelemetry` adds (its value
//! enums are non-exhaustive) are sent as their string form rather than dropped.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use prost::encoding::{encode_varint, encoded_len_varint};

use super::background::Pacer;

/// Spans encoded between yields of the core. A span is ~3,600 instructions to encode (callgrind,
/// `bench/instructions.sh`, session 16), so a piece is ~29,000, about what the other background
/// threads do between yields, where a batch of 64 was one run of ~230,000 on the core the request
/// threads share.
pub(super) const SPANS_PER_YIELD: u32 = 8;

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: the flags say whether the parent is remote (`trace.proto`).
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// A varint; most are one byte (tags, short lengths), written without prost's loop.
fn varint(buf: &mut Vec<u8>, value: u64) {
    match u8::try_from(value) {
        Ok(byte) if byte < 0x80 => buf.push(byte),
        _ => encode_varint(value, buf),
    }
}

fn key(buf: &mut Vec<u8>, tag: u32, wire_type: u32) {
    varint(buf, u64::from(tag << 3 | wire_type));
}

/// The encoded size of a field with `tag` whose content is `len` bytes long (length-delimited).
fn len_field_size(tag: u32, len: usize) -> usize {
    encoded_len_varint(u64::from(tag << 3 | LEN)) + encoded_len_varint(len as u64) + len
}

fn bytes_field(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        string_field_always(buf, tag, bytes);
    }
}

fn string_field(buf: &mut Vec<u8>, tag: u32, s: &str) {
    bytes_field(buf, tag, s.as_bytes());
}

fn varint_field(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        key(buf, tag, VARINT);
        varint(buf, value);
    }
}

fn fixed64_field(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        key(buf, tag, FIXED64);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32_field(buf: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        key(buf, tag, FIXED32);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

/// A nested message (always written, even when empty, as prost writes a `Some` message): `write`
/// appends its fields, then their length is put in front of them.
fn message(buf: &mut Vec<u8>, tag: u32, write: impl FnOnce(&mut Vec<u8>)) {
    key(buf, tag, LEN);
    let start = buf.len();
    write(buf);
    let len = (buf.len() - start) as u64;
    varint(buf, len);
    buf[start..].rotate_right(encoded_len_varint(len));
}

/// The encoded size of an `AnyValue` holding a scalar, `None` for an array (its size is found by
/// writing it).
fn scalar_size(value: &Value) -> Option<usize> {
    Some(match value {
        Value::String(s) => len_field_size(1, s.as_str().len()),
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + encoded_len_varint(u64::from_ne_bytes(i.to_ne_bytes())),
        Value::F64(_) => 9,
        Value::Array(_) => return None,
        other => len_field_size(1, other.as_str().len()),
    })
}

/// `AnyValue`: a oneof, so the variant is written even when it holds its default.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => string_field_always(buf, 1, s.as_str().as_bytes()),
        Value::Bool(b) => {
            key(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        Value::I64(i) => {
            key(buf, 3, VARINT);
            varint(buf, u64::from_ne_bytes(i.to_ne_bytes()));
        }
        Value::F64(f) => {
            key(buf, 4, FIXED64);
            buf.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Array(array) => message(buf, 5, |buf| array_value(buf, array)),
        other => string_field_always(buf, 1, other.as_str().as_bytes()),
    }
}

/// `ArrayValue`: `values` (1), each an `AnyValue`.
fn array_value(buf: &mut Vec<u8>, array: &Array) {
    let each = |buf: &mut Vec<u8>, value: Value| message(buf, 1, |buf| any_value(buf, &value));
    match array {
        Array::Bool(values) => values.iter().for_each(|v| each(buf, Value::Bool(*v))),
        Array::I64(values) => values.iter().for_each(|v| each(buf, Value::I64(*v))),
        Array::F64(values) => values.iter().for_each(|v| each(buf, Value::F64(*v))),
        Array::String(values) => {
            for v in values {
                message(buf, 1, |buf| {
                    string_field_always(buf, 1, v.as_str().as_bytes());
                });
            }
        }
        other => each(buf, Value::String(other.to_string().into())),
    }
}

/// A length-delimited field written even when empty (a oneof's string, a message's bytes).
fn string_field_always(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    key(buf, tag, LEN);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Repeated `KeyValue`s at `tag`: `key` (1), `value` (2). Scalars (nearly every attribute) have
/// their sizes computed and written first; an array is written in place and moved (`message`).
fn attributes<'a>(
    buf: &mut Vec<u8>,
    tag: u32,
    kvs: impl IntoIterator<Item = (&'a Key, &'a Value)>,
) {
    for (k, v) in kvs {
        let Some(value_len) = scalar_size(v) else {
            message(buf, tag, |buf| {
                string_field(buf, 1, k.as_str());
                message(buf, 2, |buf| any_value(buf, v));
            });
            continue;
        };
        let key_size = match k.as_str().len() {
            0 => 0,
            len => len_field_size(1, len),
        };
        key(buf, tag, LEN);
        varint(buf, (key_size + len_field_size(2, value_len)) as u64);
        string_field(buf, 1, k.as_str());
        key(buf, 2, LEN);
        varint(buf, value_len as u64);
        any_value(buf, v);
    }
}

/// The SDK's `KeyValue`s as the pairs [`attributes`] takes (a `Resource` iterates as pairs already).
fn pairs<'a>(
    kvs: impl IntoIterator<Item = &'a KeyValue>,
) -> impl Iterator<Item = (&'a Key, &'a Value)> {
    kvs.into_iter().map(|kv| (&kv.key, &kv.value))
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    let mut flags = u32::from(trace_flags) | CONTEXT_HAS_IS_REMOTE;
    if parent_is_remote {
        flags |= CONTEXT_IS_REMOTE;
    }
    flags
}

/// One `Span`.
fn span(buf: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes_field(buf, 1, &context.trace_id().to_bytes());
    bytes_field(buf, 2, &context.span_id().to_bytes());
    string_field(buf, 3, &context.trace_state().header());
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes_field(buf, 4, &span.parent_span_id.to_bytes());
    }
    string_field(buf, 5, &span.name);
    varint_field(buf, 6, span_kind(&span.span_kind));
    fixed64_field(buf, 7, nanos(span.start_time));
    fixed64_field(buf, 8, nanos(span.end_time));
    attributes(buf, 9, pairs(&span.attributes));
    varint_field(buf, 10, u64::from(span.dropped_attributes_count));
    for event in &span.events.events {
        message(buf, 11, |buf| {
            fixed64_field(buf, 1, nanos(event.timestamp));
            string_field(buf, 2, &event.name);
            attributes(buf, 3, pairs(&event.attributes));
            varint_field(buf, 4, u64::from(event.dropped_attributes_count));
        });
    }
    varint_field(buf, 12, u64::from(span.events.dropped_count));
    for link in &span.links.links {
        message(buf, 13, |buf| {
            let context = &link.span_context;
            bytes_field(buf, 1, &context.trace_id().to_bytes());
            bytes_field(buf, 2, &context.span_id().to_bytes());
            string_field(buf, 3, &context.trace_state().header());
            attributes(buf, 4, pairs(&link.attributes));
            varint_field(buf, 5, u64::from(link.dropped_attributes_count));
            fixed32_field(
                buf,
                6,
                flags(context.is_remote(), context.trace_flags().to_u8()),
            );
        });
    }
    varint_field(buf, 14, u64::from(span.links.dropped_count));
    message(buf, 15, |buf| match &span.status {
        Status::Unset => {}
        Status::Ok => varint_field(buf, 3, 1),
        Status::Error { description } => {
            string_field(buf, 2, description);
            varint_field(buf, 3, 2);
        }
    });
    // Last, as prost writes fields in tag order (it comes after `parent_span_id` in `trace.proto`).
    fixed32_field(
        buf,
        16,
        flags(span.parent_span_is_remote, context.trace_flags().to_u8()),
    );
}

/// `InstrumentationScope`: name (1), version (2), attributes (3).
fn scope(buf: &mut Vec<u8>, scope: &InstrumentationScope) {
    string_field(buf, 1, scope.name());
    string_field(buf, 2, scope.version().unwrap_or_default());
    attributes(buf, 3, pairs(scope.attributes()));
}

/// The resource part of every request, encoded once (the SDK hands it to the exporter at start-up).
#[derive(Debug, Clone, Default)]
pub(super) struct EncodedResource {
    /// A `Resource` message's fields: its attributes (1).
    fields: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub(super) fn new(resource: &Resource) -> Self {
        let mut fields = Vec::new();
        attributes(&mut fields, 1, resource);
        Self {
            fields,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// Appends an `ExportTraceServiceRequest` for `spans` to `buf`: one `ResourceSpans`, one `ScopeSpans`
/// per instrumentation scope (in order of first appearance), spans in batch order. `pacer` is ticked
/// once per span: a batch is encoded in pieces of [`SPANS_PER_YIELD`] spans with the core yielded
/// between them, as every background thread does (`telemetry::background`'s docs).
pub(super) fn export_request(
    buf: &mut Vec<u8>,
    resource: &EncodedResource,
    spans: &[SpanData],
    pacer: &mut Pacer,
) {
    message(buf, 1, |buf| {
        message(buf, 1, |buf| buf.extend_from_slice(&resource.fields));
        // Sluice's spans share one scope; the general case costs a scan of the scopes seen so far.
        let mut scopes: Vec<&InstrumentationScope> = Vec::with_capacity(1);
        for s in spans {
            if !scopes.contains(&&s.instrumentation_scope) {
                scopes.push(&s.instrumentation_scope);
            }
        }
        for this in scopes {
            message(buf, 2, |buf| {
                message(buf, 1, |buf| scope(buf, this));
                for s in spans.iter().filter(|s| &s.instrumentation_scope == this) {
                    message(buf, 2, |buf| span(buf, s));
                    pacer.tick();
                }
                string_field(buf, 3, this.schema_url().unwrap_or_default());
            });
        }
        string_field(buf, 3, &resource.schema_url);
    });
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry::{KeyValue, StringValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    fn context(trace: u128, span: u64, remote: bool, state: &str) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            TraceState::from_key_value([("vendor", state)]).unwrap(),
        )
    }

    fn spans() -> Vec<SpanData> {
        let sluice = InstrumentationScope::builder("sluice")
            .with_version("1.2.3")
            .with_attributes([KeyValue::new("scope.attr", true)])
            .build();
        let other = InstrumentationScope::builder("other")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .build();
        let t0 = UNIX_EPOCH + Duration::from_nanos(1_764_400_000_123_456_789);
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "gen_ai.choice",
            t0 + Duration::from_micros(5),
            vec![KeyValue::new("index", 0_i64)],
            2,
        ));
        events.dropped_count = 1;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            context(7, 8, true, "x"),
            vec![KeyValue::new("link", "yes")],
            0,
        ));
        let full = SpanData {
            span_context: context(
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
                false,
                "s",
            ),
            parent_span_id: SpanId::from(0x1234),
            parent_span_is_remote: true,
            span_kind: SpanKind::Client,
            name: Cow::Borrowed("chat gpt-4o"),
            start_time: t0,
            end_time: t0 + Duration::from_millis(15),
            attributes: vec![
                KeyValue::new("gen_ai.request.model", "gpt-4o"),
                KeyValue::new("gen_ai.usage.input_tokens", 12_i64),
                KeyValue::new("negative", -3_i64),
                KeyValue::new("gen_ai.request.temperature", 0.7),
                KeyValue::new("zero", 0.0),
                KeyValue::new("empty", ""),
                KeyValue::new("false", false),
                KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    Value::Array(Array::String(vec![
                        StringValue::from("stop"),
                        StringValue::from(""),
                    ])),
                ),
                KeyValue::new("ints", Value::Array(Array::I64(vec![1, -1, 0]))),
                KeyValue::new("floats", Value::Array(Array::F64(vec![0.5]))),
                KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("unicode ✓", "naïve \u{0} text"),
                KeyValue::new("", "an empty key"),
            ],
            dropped_attributes_count: 3,
            events,
            links,
            status: Status::error("upstream timed out"),
            instrumentation_scope: sluice.clone(),
        };
        let bare = SpanData {
            span_context: context(1, 2, false, "t"),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Owned("POST /v1/chat/completions".to_owned()),
            start_time: UNIX_EPOCH,
            end_time: t0,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Ok,
            instrumentation_scope: sluice,
        };
        let mut internal = bare.clone();
        internal.span_kind = SpanKind::Internal;
        internal.status = Status::Unset;
        internal.instrumentation_scope = other;
        vec![full, internal, bare]
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_service_name("sluice")
            .with_attribute(KeyValue::new("service.version", "0.1.0"))
            .with_schema_url([], "https://opentelemetry.io/schemas/1.30.0")
            .build()
    }

    /// What the SDK's own OTLP exporter would send for the same spans.
    fn sdk_encoding(spans: Vec<SpanData>, resource: &Resource) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(resource),
            ),
        }
    }

    #[test]
    fn decodes_to_what_the_sdk_would_send() {
        let resource = resource();
        let mut buf = Vec::new();
        let mut pacer = Pacer::new(SPANS_PER_YIELD);
        export_request(
            &mut buf,
            &EncodedResource::new(&resource),
            &spans(),
            &mut pacer,
        );
        // One tick per span, so a batch is encoded in pieces.
        assert_eq!(pacer.pending(), 3);
        let ours = ExportTraceServiceRequest::decode(buf.as_slice()).unwrap();
        let theirs = sdk_encoding(spans(), &resource);
        assert_eq!(ours, theirs);
        // Same fields in the same order, so the same bytes.
        assert_eq!(buf, theirs.encode_to_vec());
        assert_eq!(ours.resource_spans[0].scope_spans.len(), 2);
    }

    #[test]
    fn an_empty_batch_and_a_bare_resource_are_well_formed() {
        let resource = Resource::builder_empty().build();
        let mut buf = Vec::new();
        export_request(
            &mut buf,
            &EncodedResource::new(&resource),
            &[],
            &mut Pacer::new(SPANS_PER_YIELD),
        );
        let ours = ExportTraceServiceRequest::decode(buf.as_slice()).unwrap();
        assert_eq!(ours, sdk_encoding(Vec::new(), &resource));
    }

    #[test]
    fn long_values_get_multi_byte_lengths() {
        let mut one = spans().swap_remove(2);
        one.attributes = vec![KeyValue::new("big", "x".repeat(70_000))];
        let resource = resource();
        let mut buf = Vec::new();
        export_request(
            &mut buf,
            &EncodedResource::new(&resource),
            std::slice::from_ref(&one),
            &mut Pacer::new(SPANS_PER_YIELD),
        );
        assert_eq!(
            ExportTraceServiceRequest::decode(buf.as_slice()).unwrap(),
            sdk_encoding(vec![one], &resource)
        );
    }
}
