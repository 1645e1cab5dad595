//! The JSON log line: one object per event, in the shape of `tracing-subscriber`'s JSON format
//! (`flatten_event`, current span, no span list), written straight into the line buffer. A line
//! written while a request is served, outside any span, names the request as a `request` span
//! around it would (`"span":{"request_id":"…","name":"request"}`), from [`super::request_scope`].
//!
//! ```text
//! {"timestamp":"2026-11-28T04:30:00.123456Z","level":"INFO","message":"request finished",
//!  "request_id":"…","status":200,…,"target":"sluice::access","span":{"request_id":"…","name":"request"}}
//! ```
//!
//! Why not `tracing-subscriber`'s `format::Json`: it records every field through `tracing-serde`'s
//! visitor into a `serde_json` map serializer that writes through an adaptor validating each piece
//! as UTF-8 again, and reparses the span's stored fields into a map for every line. Callgrind
//! (`STREAM=1 bench/instructions.sh`, run instr-20261128T041050Z) counted ~33,000 instructions per
//! access line there, three quarters of the telemetry thread's work and about a third of all the
//! background work of a request with everything on; this formatter's first version took ~19,500
//! (instr-20261128T041853Z; floats through `ryu` and the escaping writer came after). It writes the
//! same members with the field writer the span fields use ([`super::span_fields`]); a test checks it
//! against `format::Json` line by line. One difference: a non-finite float field is the string `"NaN"` (as in span
//! fields) where `format::Json` wrote `null`.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::request_scope::with_request_id;
use super::span_fields::{JsonSpanFields, Members, write_json_string};

/// 10000-01-01T00:00:00Z in seconds since the epoch: `humantime` formats only times before it.
const HUMANTIME_END_SECS: u64 = 253_402_300_800;

/// `now` in RFC 3339, UTC, with microseconds (as `fmt::time::SystemTime` writes it; nothing in it
/// needs escaping), when `humantime` can write it: `None` before 1970 or after 9999 (a broken clock).
/// `humantime` fills a fixed buffer where `SystemTime` goes through `write!` for each part (~4,000
/// instructions a line, callgrind run instr-20261128T214849Z).
pub(super) fn timestamp(now: std::time::SystemTime) -> Option<humantime::Rfc3339Timestamp> {
    now.duration_since(std::time::UNIX_EPOCH)
        .is_ok_and(|d| d.as_secs() < HUMANTIME_END_SECS)
        .then(|| humantime::format_rfc3339_micros(now))
}

/// The JSON event format (see the module docs). Span fields must be stored by [`JsonSpanFields`]:
/// their text is copied into the line as it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonEvent;

impl<S> FormatEvent<S, JsonSpanFields> for JsonEvent
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonSpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Records of the `log` crate (bridged by `tracing-log`) carry their own target and level.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        // A time `humantime` cannot write is written by `SystemTime`.
        if let Some(now) = timestamp(std::time::SystemTime::now()) {
            write!(writer, "{now}")?;
        } else {
            SystemTime.format_time(&mut writer)?;
        }
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = Members::new(&mut writer, true, false);
        event.record(&mut fields);
        fields.finish()?;
        writer.write_str(",\"target\":")?;
        write_json_string(&mut writer, meta.target())?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(",\"span\":")?;
            let extensions = span.extensions();
            // `{"a":1}` (or nothing, for a span without fields) → `{"a":1,"name":"…"}`.
            let stored = extensions
                .get::<FormattedFields<JsonSpanFields>>()
                .map_or("", |f| f.fields.as_str());
            match stored.strip_suffix('}') {
                Some(open) if open.len() > 1 => {
                    writer.write_str(open)?;
                    writer.write_char(',')?;
                }
                _ => writer.write_char('{')?,
            }
            writer.write_str("\"name\":")?;
            write_json_string(&mut writer, span.name())?;
            writer.write_char('}')?;
        } else if let Some(written) = with_request_id(|id| {
            // The member a `request` span around the line would write (`request_scope`).
            writer.write_str(",\"span\":{\"request_id\":")?;
            write_json_string(&mut writer, id)?;
            writer.write_str(",\"name\":\"request\"}")
        }) {
            written?;
        }
        writer.write_str("}\n")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::prelude::*;

    use super::*;

    /// Captures log output; [`Buf::lines`] parses it, one JSON value per line.
    #[derive(Clone, Default)]
    pub(in crate::telemetry) struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        /// What was written, as text.
        pub(in crate::telemetry) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        pub(in crate::telemetry) fn lines(&self) -> Vec<Value> {
            self.text()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    /// Events of every shape: fields of each kind, escaping, inside spans with and without fields,
    /// with an explicit parent, and outside any span.
    fn emit() {
        tracing::info!(target: "sluice::access", parent: None,
            request_id = "r-1", status = 200_u64, latency_ms = 1.25, cut = false,
            missing = Option::<&str>::None, neg = -4_i64, max = u64::MAX, min = i64::MIN,
            quoted = "say \"hi\"\n\\ ✓", shown = %"display", debugged = ?("a", 1),
            "request finished");
        let request = tracing::info_span!("request", request_id = "r-2");
        request.in_scope(|| tracing::warn!(error.kind = "upstream", "upstream failed"));
        tracing::info_span!("bare").in_scope(|| tracing::error!("no span fields"));
        let late = tracing::info_span!("late", a = tracing::field::Empty);
        late.record("a", 7_u64);
        tracing::info!(parent: &late, "explicit parent");
        tracing::info!("outside: {} {}", 1, "two");
        // A `log` record, as libraries using `log` emit them (the subscriber's `try_init` installs
        // the bridge in the binary; another test may have installed it already).
        drop(tracing_log::LogTracer::init());
        log::warn!(target: "some_crate::module", "from the log crate");
    }

    #[test]
    fn lines_match_tracing_subscribers_json_format() {
        let ours = Buf::default();
        let theirs = Buf::default();
        let (a, b) = (ours.clone(), theirs.clone());
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonSpanFields)
                    .event_format(JsonEvent)
                    .with_writer(move || a.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(move || b.clone()),
            );
        tracing::subscriber::with_default(subscriber, emit);
        let (mut ours, mut theirs) = (ours.lines(), theirs.lines());
        assert_eq!(ours.len(), 6, "{ours:?}");
        // The same instant as `format::Json` wrote (the two layers format one event in turn).
        for (a, b) in ours.iter().zip(&theirs) {
            let time = |line: &Value| humantime::parse_rfc3339(line["timestamp"].as_str().unwrap());
            let (a, b) = (time(a).unwrap(), time(b).unwrap());
            let apart = a.duration_since(b).unwrap_or_else(|e| e.duration());
            assert!(apart < std::time::Duration::from_secs(1), "{a:?} {b:?}");
        }
        for line in ours.iter_mut().chain(theirs.iter_mut()) {
            let stamp = line
                .as_object_mut()
                .unwrap()
                .remove("timestamp")
                .expect("a timestamp");
            let stamp = stamp.as_str().unwrap();
            // RFC 3339, UTC, microseconds: 2026-11-28T04:30:00.123456Z
            assert!(
                stamp.len() == 27 && stamp.as_bytes()[10] == b'T' && stamp.ends_with('Z'),
                "{stamp}"
            );
        }
        assert_eq!(ours, theirs);
        // Spot checks, so that a shared mistake cannot pass.
        assert_eq!(ours[0]["message"], "request finished");
        assert_eq!(ours[0]["quoted"], "say \"hi\"\n\\ ✓");
        assert_eq!(ours[0]["latency_ms"], 1.25);
        assert_eq!(ours[0]["shown"], "display");
        assert!(ours[0].get("span").is_none() && ours[0].get("missing").is_none());
        assert_eq!(ours[1]["level"], "WARN");
        assert_eq!(ours[1]["span"]["request_id"], "r-2");
        assert_eq!(ours[1]["span"]["name"], "request");
        assert_eq!(ours[2]["span"], serde_json::json!({"name": "bare"}));
        assert_eq!(ours[3]["span"]["a"], 7);
        assert_eq!(ours[4]["message"], "outside: 1 two");
        assert_eq!(ours[4]["target"], module_path!());
        assert_eq!(ours[5]["target"], "some_crate::module");
        assert_eq!(ours[5]["level"], "WARN");
        assert_eq!(ours[5]["message"], "from the log crate");
    }

    #[test]
    fn lines_inside_a_request_name_it_and_a_span_comes_first() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonSpanFields)
                .event_format(JsonEvent)
                .with_writer(move || out.clone()),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let request = super::super::request_scope::in_request(Arc::from("r-\"3\""), async {
                tracing::warn!("inside");
                tracing::info_span!("inner", a = 1_u64).in_scope(|| tracing::warn!("in a span"));
            });
            runtime.block_on(request);
            tracing::warn!("after");
        });
        let lines = buf.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[0]["span"],
            serde_json::json!({"request_id": "r-\"3\"", "name": "request"})
        );
        assert_eq!(
            lines[1]["span"],
            serde_json::json!({"a": 1, "name": "inner"})
        );
        assert!(lines[2].get("span").is_none(), "{lines:?}");
    }
}
