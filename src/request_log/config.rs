//! `[request_log]` config: where the database lives, whether bodies are captured, queue and retention.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[request_log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLogConfig {
    /// Log requests at all (default true).
    pub enabled: bool,
    /// The SQLite database file (default `sluice-requests.db`); created if missing, its directory must
    /// exist.
    pub path: PathBuf,
    /// Store request and response bodies, redacted (default false).
    pub capture_bodies: bool,
    /// Bodies longer than this are cut, with a marker naming the original size (default 16 KiB).
    pub max_body_bytes: usize,
    /// Records waiting for the writer; beyond it new records are shed and counted (default 10 000).
    pub queue_capacity: usize,
    /// Records older than this are deleted (default 7 days).
    #[serde(with = "humantime_serde")]
    pub retention_age: Duration,
    /// At most this many records are kept, the most recently received ones (default 1 000 000).
    pub retention_max_rows: u64,
}

impl Default for RequestLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from("sluice-requests.db"),
            capture_bodies: false,
            max_body_bytes: 16 * 1024,
            queue_capacity: 10_000,
            retention_age: Duration::from_hours(7 * 24),
            retention_max_rows: 1_000_000,
        }
    }
}

impl RequestLogConfig {
    /// The largest accepted `queue_capacity`: records are held in memory, bodies included.
    pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;

    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.path.as_os_str().is_empty() {
            return Err("request_log.path must not be empty".to_owned());
        }
        if self.queue_capacity == 0 || self.queue_capacity > Self::MAX_QUEUE_CAPACITY {
            return Err(format!(
                "request_log.queue_capacity must be between 1 and {}",
                Self::MAX_QUEUE_CAPACITY
            ));
        }
        if self.retention_age.is_zero() {
            return Err("request_log.retention_age must be greater than 0".to_owned());
        }
        if self.retention_max_rows == 0 || i64::try_from(self.retention_max_rows).is_err() {
            return Err("request_log.retention_max_rows must be between 1 and 2^63-1".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let config: RequestLogConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, RequestLogConfig::default());
        assert!(config.enabled);
        assert!(!config.capture_bodies);
        assert_eq!(config.path, PathBuf::from("sluice-requests.db"));
        assert_eq!(config.max_body_bytes, 16_384);
        assert_eq!(config.queue_capacity, 10_000);
        assert_eq!(config.retention_age, Duration::from_hours(168));
        assert_eq!(config.retention_max_rows, 1_000_000);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn humantime_retention_and_unknown_fields() {
        let config: RequestLogConfig =
            serde_json::from_str(r#"{"retention_age":"36h","capture_bodies":true}"#).unwrap();
        assert_eq!(config.retention_age, Duration::from_hours(36));
        assert!(config.capture_bodies);
        let err = serde_json::from_str::<RequestLogConfig>(r#"{"retention":"1d"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `retention`"),
            "{err}"
        );
    }

    #[test]
    fn validation() {
        let bad = |f: fn(&mut RequestLogConfig)| {
            let mut c = RequestLogConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.queue_capacity = 0).contains("queue_capacity"));
        assert!(bad(|c| c.retention_age = Duration::ZERO).contains("retention_age"));
        assert!(bad(|c| c.retention_max_rows = 0).contains("retention_max_rows"));
        assert!(bad(|c| c.path = PathBuf::new()).contains("path"));
        let disabled = RequestLogConfig {
            enabled: false,
            queue_capacity: 0,
            ..RequestLogConfig::default()
        };
        assert_eq!(disabled.validate(), Ok(()));
    }
}
