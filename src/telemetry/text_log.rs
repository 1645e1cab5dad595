//! The text log line for terminals: `tracing-subscriber`'s full format, with the id of the request
//! being served ([`super::request_scope`]) as a last field, `request_id="…"`, on the lines written
//! inside a request.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::request_scope::with_request_id;

/// The text event format (see the module docs).
#[derive(Debug, Clone)]
pub struct TextEvent {
    inner: Format<Full, SystemTime>,
}

impl TextEvent {
    /// With ANSI colours or without.
    pub fn new(ansi: bool) -> Self {
        Self {
            // Set on the format, not only the layer: a line inside a request is first written to a
            // buffer of its own (below), whose writer knows nothing of colours.
            inner: Format::default().with_ansi(ansi),
        }
    }
}

impl<S, N> FormatEvent<S, N> for TextEvent
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        with_request_id(|id| {
            // The full format ends its line itself: write it aside, then the id before the newline.
            let mut line = String::new();
            self.inner
                .format_event(ctx, Writer::new(&mut line), event)?;
            writer.write_str(line.strip_suffix('\n').unwrap_or(&line))?;
            writeln!(writer, " request_id={id:?}")
        })
        .unwrap_or_else(|| self.inner.format_event(ctx, writer.by_ref(), event))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tracing_subscriber::prelude::*;

    use super::super::json_log::tests::Buf;
    use super::super::request_scope::in_request;
    use super::*;

    fn lines(ansi: bool) -> Vec<String> {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(TextEvent::new(ansi))
                .with_ansi(ansi)
                .with_writer(move || out.clone()),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(answer = 42, "outside");
            runtime.block_on(in_request(Arc::from("r-\"9\""), async {
                tracing::warn!(answer = 42, "inside");
            }));
        });
        buf.text().lines().map(str::to_owned).collect()
    }

    #[test]
    fn lines_inside_a_request_end_with_its_id() {
        let plain = lines(false);
        assert_eq!(plain.len(), 2, "{plain:?}");
        assert!(
            plain[0].ends_with("WARN sluice::telemetry::text_log::tests: outside answer=42"),
            "{plain:?}"
        );
        assert!(
            plain[1].ends_with(
                r#"WARN sluice::telemetry::text_log::tests: inside answer=42 request_id="r-\"9\"""#
            ),
            "{plain:?}"
        );
        assert!(!plain.iter().any(|l| l.contains('\u{1b}')), "{plain:?}");
        let coloured = lines(true);
        assert!(
            coloured.iter().all(|l| l.contains("\u{1b}[")),
            "colours inside and outside a request: {coloured:?}"
        );
        assert!(
            coloured[1].ends_with(r#" request_id="r-\"9\"""#),
            "{coloured:?}"
        );
    }
}
