//! How the JSON log format stores a span's fields: written straight into the JSON object text the
//! event formatter later reads back (`{"request_id":"…"}`).
//!
//! Why not `tracing-subscriber`'s `JsonFields`: it collects every field into a `BTreeMap` of
//! `serde_json::Value`s and serializes that map, for every span, when the span is created, on the
//! request's own thread; callgrind (`bench/instructions.sh`) showed it as most of what creating the
//! request span cost with the JSON log on. The event formatter ([`super::json_log`]) only needs the
//! same JSON object text, so this writes it directly; `tracing-subscriber` offers no cheaper JSON
//! field formatter. The event formatter writes an event's own fields with the same [`Members`].
//!
//! Sluice's own log subscriber lets no span through (a line finds its request's id in
//! [`super::request_scope`]); this stays the JSON layer's field format so that a span, if one is
//! ever let through, is written as `format::Json` would.

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
        self.member(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
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
        while let Some(i) = s
            .as_bytes()
            .get(start..)
            .and_then(next_escape)
            .map(|p| p + start)
        {
            // Escaped bytes are ASCII, so `i` and `i + 1` are character boundaries.
            self.0.write_str(s.get(start..i).unwrap_or_default())?;
            match s.as_bytes().get(i).copied().unwrap_or_default() {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                0x08 => self.0.write_str("\\b")?,
                0x0c => self.0.write_str("\\f")?,
                b => write!(self.0, "\\u{b:04x}")?,
            }
            start = i + 1;
        }
        self.0.write_str(s.get(start..).unwrap_or_default())
    }
}

/// Whether a JSON string must escape `b`: `"`, `\` and the control characters.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Where the first byte that [`needs_escape`] is. Eight bytes at a time: log strings (ids, routes,
/// model names, messages) rarely hold one, and a byte at a time was ~3,500 instructions per access
/// line (callgrind, `STREAM=1 bench/instructions.sh`, run instr-20261128T214849Z).
fn next_escape(bytes: &[u8]) -> Option<usize> {
    let mut clean = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0_u8; 8];
        word.copy_from_slice(chunk);
        if any_needs_escape(u64::from_le_bytes(word)) {
            break;
        }
        clean += 8;
    }
    bytes
        .get(clean..)?
        .iter()
        .position(|&b| needs_escape(b))
        .map(|p| p + clean)
}

/// Whether any of the eight bytes in `word` [`needs_escape`]. The classic zero-byte test
/// (`(v - 0x01…) & !v & 0x80…` is non-zero exactly when some byte of `v` is zero, and with `0x20…`
/// when some byte is below 0x20): exact about whether one does, not about which, so the caller
/// looks for it byte by byte in that word.
fn any_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |v: u64, n: u64| v.wrapping_sub(ONES * n) & !v & HIGH;
    let control = below(word, 0x20);
    let quote = below(word ^ (ONES * u64::from(b'"')), 1);
    let backslash = below(word ^ (ONES * u64::from(b'\\')), 1);
    control | quote | backslash != 0
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

    /// Strings are scanned eight bytes at a time: every byte that needs escaping, and one that does
    /// not but is next to those in value (`#`, `]`, `\x7f`, a byte of `é`), at every position of
    /// the first two words and the tail, alone and followed by another escaped byte.
    #[test]
    fn escapes_are_found_at_every_position_of_a_word() {
        let specials: Vec<char> = (0_u8..0x20)
            .map(char::from)
            .chain(['"', '\\', '#', ']', '\x7f', ' ', 'é'])
            .collect();
        for len in 0..=19 {
            for at in 0..len {
                for &c in &specials {
                    let mut s: String = "abcdefghijklmnopqrs".chars().take(len).collect();
                    s.replace_range(at..=at, c.encode_utf8(&mut [0; 4]));
                    let mut twice = s.clone();
                    twice.push('"');
                    for s in [s, twice] {
                        let mut ours = String::new();
                        write_json_string(&mut Writer::new(&mut ours), &s).unwrap();
                        assert_eq!(ours, serde_json::to_string(&s).unwrap(), "{s:?}");
                    }
                }
            }
        }
    }

    /// Span fields are what `JsonSpanFields` writes (event fields here go through `format::Json`;
    /// `json_log`'s comparison covers ours for events).
    #[test]
    fn integer_fields_are_written_in_full() {
        let lines = lines(|| {
            tracing::info_span!(
                "numbers",
                max = u64::MAX,
                min = i64::MIN,
                zero = 0_u64,
                neg = -1_i64
            )
            .in_scope(|| tracing::info!("inside"));
        });
        let span = &lines[0]["span"];
        assert_eq!(span["max"], u64::MAX);
        assert_eq!(span["min"], i64::MIN);
        assert_eq!(span["zero"], 0);
        assert_eq!(span["neg"], -1);
    }
}
