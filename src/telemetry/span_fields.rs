//! How the JSON log format stores a span's fields: written straight into the JSON object text the
//! event formatter later reads back (`{"request_id":"…"}`).
//!
//! Why not `tracing-subscriber`'s `JsonFields`: it collects every field into a `BTreeMap` of
//! `serde_json::Value`s and serializes that map, for every span, when the span is created, on the
//! request's own thread; callgrind (`bench/instructions.sh`) showed it as most of what creating the
//! request span cost with the JSON log on. The event formatter ([`super::json_log`]) only needs the
//! same JSON object text, so this writes it directly; `tracing-subscriber` offers no cheaper JSON
//! field formatter. The event formatter writes an event's own fields with the same [`Members`].

use std::fmt;
use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

/// Span fields as one JSON object (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut object = Members::new(&mut writer, false, true);
        fields.record(&mut object);
        object.close()
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Reopen the object (`{…}` → `{…`) and append; a repeated name appears twice, and the reader
        // keeps the last.
        let (opened, first) = if current.fields.ends_with('}') {
            current.fields.pop();
            (true, current.fields.len() <= 1)
        } else {
            current.fields.clear();
            (false, true)
        };
        let mut writer = current.as_writer();
        let mut object = Members::new(&mut writer, opened, first);
        fields.record(&mut object);
        object.close()
    }
}

/// Writes `"name":value` members: the opening brace first unless `opened`, a comma before each but
/// the `first`.
pub(super) struct Members<'a, 'w> {
    out: &'a mut Writer<'w>,
    first: bool,
    opened: bool,
    result: fmt::Result,
}

impl<'a, 'w> Members<'a, 'w> {
    pub(super) fn new(out: &'a mut Writer<'w>, opened: bool, first: bool) -> Self {
        Self {
            out,
            first,
            opened,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !self.opened {
                self.out.write_char('{')?;
                self.opened = true;
            }
            if !self.first {
                self.out.write_char(',')?;
            }
            self.first = false;
            write_json_string(self.out, field.name())?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }

    /// The members written, for an object its caller goes on writing (the event line).
    pub(super) fn finish(self) -> fmt::Result {
        self.result
    }

    /// Ends the object (`{}` when there was no field at all).
    fn close(self) -> fmt::Result {
        self.result?;
        if !self.opened {
            self.out.write_char('{')?;
        }
        self.out.write_char('}')
    }
}

impl Visit for Members<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| write_json_string(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those become strings.
        if value.is_finite() {
            // `ryu` (shortest round-trip digits, as `serde_json` writes floats) is several times
            // cheaper than `Display` for f64, and these are per-line (latency, ttft, …).
            self.member(field, |out| {
                out.write_str(ryu::Buffer::new().format_finite(value))
            });
        } else {
            self.member(field, |out| write_json_string(out, &value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Formatted straight into the line, escaped on the way (messages, `%` and `?` fields).
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaped(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// `s` as a JSON string literal.
pub(super) fn write_json_string(out: &mut Writer<'_>, s: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(&mut *out).write_str(s)?;
    out.write_char('"')
}

/// Writes what it is given as the contents of a JSON string, escaped as `serde_json` escapes: `"`,
/// `\` and control characters (`\n`-style where JSON has a short form, `\u00XX` otherwise); runs
/// of other characters pass through in one write. By hand because `serde_json` escapes only into an
/// `io::Write`, and a log line is a `fmt::Write`; a test compares the two on every ASCII character.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let short = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            // Escaped bytes are ASCII, so `i` is a character boundary.
            self.0.write_str(&s[start..i])?;
            if short.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(short)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::prelude::*;

    use super::super::json_log::tests::Buf;
    use super::*;

    /// Log lines of a JSON layer using [`JsonSpanFields`], as parsed JSON.
    fn lines(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .fmt_fields(JsonSpanFields)
                .with_writer(move || out.clone()),
        );
        tracing::subscriber::with_default(subscriber, emit);
        buf.lines()
    }

    #[test]
    fn span_fields_of_every_kind_reach_the_lines_inside_the_span() {
        let lines = lines(|| {
            let span = tracing::info_span!(
                "request",
                request_id = "01-a",
                quoted = "say \"hi\"\n\\",
                n = 7_u64,
                neg = -3_i64,
                ok = true,
                ratio = 0.5,
                nan = f64::NAN,
                debug = ?Some("x"),
                later = tracing::field::Empty,
            );
            span.in_scope(|| tracing::info!("inside"));
            span.record("later", "set");
            span.record("n", 8_u64);
            span.in_scope(|| tracing::info!("after record"));
            tracing::info_span!("empty").in_scope(|| tracing::info!("no fields"));
            // Fields recorded only later, into an object that started empty.
            let late =
                tracing::info_span!("late", a = tracing::field::Empty, b = tracing::field::Empty);
            late.record("a", 1_u64);
            late.record("b", "two");
            late.in_scope(|| tracing::info!("late fields"));
        });
        assert_eq!(lines.len(), 4, "{lines:?}");
        let span = &lines[0]["span"];
        assert_eq!(span["name"], "request");
        assert_eq!(span["request_id"], "01-a");
        assert_eq!(span["quoted"], "say \"hi\"\n\\");
        assert_eq!(span["n"], 7);
        assert_eq!(span["neg"], -3);
        assert_eq!(span["ok"], true);
        assert_eq!(span["ratio"], 0.5);
        assert_eq!(span["nan"], "NaN");
        assert_eq!(span["debug"], "Some(\"x\")");
        assert!(span.get("later").is_none());
        let recorded = &lines[1]["span"];
        assert_eq!(recorded["later"], "set");
        assert_eq!(recorded["n"], 8, "the value recorded last wins");
        assert_eq!(recorded["request_id"], "01-a");
        assert_eq!(lines[2]["span"]["name"], "empty");
        assert_eq!(lines[3]["span"]["a"], 1);
        assert_eq!(lines[3]["span"]["b"], "two");
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut every_ascii: String = (0_u8..=0x7f).map(char::from).collect();
        every_ascii.push_str("✓ é 🦀 \"quoted\" back\\slash");
        for s in [
            every_ascii.as_str(),
            "",
            "plain",
            "\u{1f}\n",
            "ends with \\",
        ] {
            let mut ours = String::new();
            write_json_string(&mut Writer::new(&mut ours), s).unwrap();
            assert_eq!(ours, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }
}
