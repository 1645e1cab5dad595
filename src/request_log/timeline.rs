//! How a timeline is stored in the `timeline` column: compact JSON, one array per event,
//! `[[0,"received"],[97,"upstream_attempt"],[14749,"done","upstream_error"]]`: microseconds since the
//! request arrived (an integer; `null` when the time was not finite), the name, and the detail when
//! there is one.
//!
//! Schema 1 stored each event as an object (`{"at_ms":0.096635,"name":"upstream_attempt",
//! "detail":null}`): with six events that was ~340 of a row's ~655 bytes (table and indexes), and
//! every byte of a row is written twice per batch, into the WAL and by the checkpoint into the
//! database, and synced to disk both times. In this form the same timeline is ~130 bytes: 17–26 %
//! fewer WAL frames per batch (`bench/checkpoint_cost.py`; the more digits the old form's floats had,
//! the more). Microseconds are finer than anything a timeline is read for, and the admin API still
//! shows milliseconds (`at_ms`).
//! Reading accepts both forms, so a schema-1 database needs no rewrite (`store::migrate`).

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

use super::record::TimelineEvent;

/// A timeline in its stored form, for `serde_json::to_writer`.
pub(crate) struct Stored<'a>(pub &'a [TimelineEvent]);

impl Serialize for Stored<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for event in self.0 {
            let at_us = micros(event.at_ms);
            match &event.detail {
                None => seq.serialize_element(&(at_us, &event.name))?,
                Some(detail) => seq.serialize_element(&(at_us, &event.name, detail))?,
            }
        }
        seq.end()
    }
}

/// Whole microseconds, or `None` for a time that is not finite or beyond 2^53 µs (285 years), where
/// an `f64` stops holding every integer.
fn micros(at_ms: f64) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let us = (at_ms * 1000.0).round();
    if !(us.is_finite() && us.abs() <= EXACT) {
        return None;
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a whole number within ±2^53: the cast is exact"
    )]
    Some(us as i64)
}

/// One stored event, in either schema's form (untagged: the JSON's shape decides).
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredEvent {
    /// `[µs, name]`.
    Short(Option<f64>, String),
    /// `[µs, name, detail]`.
    Long(Option<f64>, String, Option<String>),
    /// Schema 1: `{"at_ms": …, "name": …, "detail": …}`.
    Object(TimelineEvent),
}

/// Reads a stored timeline, written by this schema or by schema 1.
pub(crate) fn parse(json: &str) -> serde_json::Result<Vec<TimelineEvent>> {
    let events: Vec<StoredEvent> = serde_json::from_str(json)?;
    let at_ms = |us: Option<f64>| us.map_or(f64::NAN, |us| us / 1000.0);
    Ok(events
        .into_iter()
        .map(|event| match event {
            StoredEvent::Short(us, name) => TimelineEvent::new(at_ms(us), name),
            StoredEvent::Long(us, name, detail) => TimelineEvent {
                at_ms: at_ms(us),
                name: name.into(),
                detail: detail.map(Into::into),
            },
            StoredEvent::Object(event) => event,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(events: &[TimelineEvent]) -> String {
        serde_json::to_string(&Stored(events)).unwrap()
    }

    #[test]
    fn events_are_stored_as_short_arrays_of_microseconds() {
        let events = [
            TimelineEvent::new(0.0, "received"),
            TimelineEvent::new(0.096_635, "upstream_attempt"),
            TimelineEvent::new(14.689_015_999_999_999, "upstream_first_byte"),
            TimelineEvent::with_detail(14.748_706, "done", "upstream_error"),
            TimelineEvent::with_detail(f64::NAN, "cut", "quote \" and ✓"),
        ];
        let json = stored(&events);
        assert_eq!(
            json,
            r#"[[0,"received"],[97,"upstream_attempt"],[14689,"upstream_first_byte"],[14749,"done","upstream_error"],[null,"cut","quote \" and ✓"]]"#
        );
        let back = parse(&json).unwrap();
        assert_eq!(back.len(), events.len());
        assert!((back[1].at_ms - 0.097).abs() < 1e-12, "{}", back[1].at_ms);
        assert!((back[3].at_ms - 14.749).abs() < 1e-12, "{}", back[3].at_ms);
        assert_eq!(back[3].detail.as_deref(), Some("upstream_error"));
        assert!(back[4].at_ms.is_nan());
        assert_eq!(back[4].detail.as_deref(), Some("quote \" and ✓"));
        for (a, b) in back.iter().zip(&events) {
            assert_eq!(a.name, b.name);
        }
    }

    #[test]
    fn times_beyond_exact_microseconds_are_null() {
        assert_eq!(micros(1e12), Some(1_000_000_000_000_000));
        assert_eq!(micros(1e13), None);
        assert_eq!(micros(-1.5), Some(-1500));
        assert_eq!(micros(f64::INFINITY), None);
    }

    #[test]
    fn schema_1_objects_are_read() {
        let json = r#"[{"at_ms":0.0,"name":"received","detail":null},{"at_ms":1.5,"name":"upstream_attempt","detail":"anthropic#1"},{"at_ms":null,"name":"done","detail":null}]"#;
        let back = parse(json).unwrap();
        assert_eq!(back[0], TimelineEvent::new(0.0, "received"));
        assert_eq!(
            back[1],
            TimelineEvent::with_detail(1.5, "upstream_attempt", "anthropic#1")
        );
        assert!(back[2].at_ms.is_nan());
    }

    #[test]
    fn malformed_timelines_are_errors() {
        for bad in ["[[1]]", r#"[[1,"a","b","c"]]"#, r#"[["x","a"]]"#, "{}", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
