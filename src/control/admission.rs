//! [`Control::admit`]: the checks of one call, the decision, the `x-ratelimit-*` headers, and the
//! [`Admission`] that settles the reservations when the call is over.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use http::{HeaderName, HeaderValue};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive as _;

use super::keys::{Limits, Period, VirtualKey};
use super::limiter::{BackendError, Check, Limiter, Nanos, Outcome, Settle};
use super::metrics::{KeyLabels, RejectionLabels};
use super::{Caller, Control, Estimate};
use crate::error::GatewayError;
use crate::telemetry::metrics::Label;
use crate::usage::Price;

/// Whose limit a check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Key,
    Model,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Model => "model",
        }
    }
}

/// USD to nano-USD, rounded up (a reservation never under-counts).
pub fn to_nanos(usd: Decimal) -> Nanos {
    (usd * Decimal::from(1_000_000_000_i64))
        .ceil()
        .to_i64()
        .unwrap_or(Nanos::MAX)
}

/// Nano-USD to USD.
pub fn from_nanos(nanos: Nanos) -> Decimal {
    Decimal::from(nanos) / Decimal::from(1_000_000_000_i64)
}

/// The bucket id of a period containing `now_ms` (UTC), and how long its bucket must live.
pub fn period_bucket(period: Period, now_ms: i64) -> (String, Duration) {
    use chrono::{Datelike as _, TimeZone as _};
    let now = chrono::Utc
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_default();
    let day = Duration::from_hours(24);
    match period {
        Period::Day => (now.format("%Y-%m-%d").to_string(), day * 2),
        Period::Month => {
            // Until the end of the month plus a day's margin, at most 32 days.
            let days_left = 32 - u64::from(now.day()).min(31);
            (
                now.format("%Y-%m").to_string(),
                day * (u32::try_from(days_left).unwrap_or(32) + 1),
            )
        }
        Period::Total => ("total".to_owned(), Duration::from_hours(10 * 365 * 24)),
    }
}

/// The budget bucket of `key` for the period containing `now_ms`.
pub fn budget_bucket(key_id: &str, period: Period, now_ms: i64) -> (Arc<str>, Duration) {
    let (id, ttl) = period_bucket(period, now_ms);
    (Arc::from(format!("k:{key_id}:budget:{id}")), ttl)
}

/// A reservation to settle later.
#[derive(Debug, Clone)]
enum Pending {
    Tokens {
        bucket: Arc<str>,
        per_minute: u64,
        reserved: u64,
    },
    Concurrency {
        bucket: Arc<str>,
    },
    Budget {
        bucket: Arc<str>,
        reserved: Nanos,
        ttl: Duration,
    },
}

fn push_limits(
    checks: &mut Vec<(Scope, Check)>,
    scope: Scope,
    prefix: &str,
    limits: &Limits,
    tokens: u64,
) {
    if let Some(rpm) = limits.rpm {
        checks.push((
            scope,
            Check::Requests {
                bucket: Arc::from(format!("{prefix}:rpm")),
                per_minute: u64::from(rpm),
            },
        ));
    }
    if let Some(tpm) = limits.tpm {
        checks.push((
            scope,
            Check::Tokens {
                bucket: Arc::from(format!("{prefix}:tpm")),
                per_minute: tpm,
                reserve: tokens,
            },
        ));
    }
    if let Some(max) = limits.max_concurrent {
        checks.push((
            scope,
            Check::Concurrency {
                bucket: Arc::from(format!("{prefix}:concurrency")),
                max: u64::from(max),
            },
        ));
    }
}

/// The outcome of [`Control::admit`]: the `x-ratelimit-*` headers for the response (set on refusals
/// too) and, when admitted, the reservations to settle.
pub struct Decision {
    /// Headers for the response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The admission, or why not.
    pub result: Result<Admission, GatewayError>,
}

impl Control {
    /// 403 when `caller`'s key may not use `model`.
    pub fn permit(&self, caller: &Caller, model: &str) -> Result<(), GatewayError> {
        match caller {
            Caller::Key(key) if !key.allows_model(model) => {
                self.metrics
                    .auth_failures
                    .get_or_create(&super::metrics::AuthFailureLabels {
                        reason: "model_not_allowed",
                    })
                    .inc();
                Err(GatewayError::Forbidden(format!(
                    "this API key may not use model `{model}`"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether a call of `caller` on `model` reserves tokens or money, so needs a token estimate.
    pub fn needs_estimate(&self, caller: &Caller, model: &str) -> bool {
        let key_needs = match caller {
            Caller::Key(key) => key.limits.tpm.is_some() || key.budget.is_some(),
            Caller::Anonymous => false,
        };
        key_needs
            || self
                .model_limits
                .get(model)
                .is_some_and(|l| l.tpm.is_some())
    }

    /// Checks `caller` against `model` (403 when the key may not use it), then every limit of the key
    /// and of the model at once.
    pub async fn admit(
        &self,
        caller: &Caller,
        model: &str,
        estimate: Estimate,
        price: Option<&Price>,
    ) -> Decision {
        if let Err(error) = self.permit(caller, model) {
            return Decision {
                headers: Vec::new(),
                result: Err(error),
            };
        }
        let key = match caller {
            Caller::Key(key) => Some(key),
            Caller::Anonymous => None,
        };
        let checks = self.checks(key, model, estimate, price);
        if checks.is_empty() {
            return Decision {
                headers: Vec::new(),
                result: Ok(Admission::none()),
            };
        }
        let lease = uuid::Uuid::now_v7().simple().to_string();
        let only_checks: Vec<Check> = checks.iter().map(|(_, c)| c.clone()).collect();
        let outcome = match self.limiter.admit(&only_checks, &lease).await {
            Ok(outcome) => outcome,
            Err(e) => {
                return Decision {
                    headers: Vec::new(),
                    result: Err(self.backend_failed("admit", &e)),
                };
            }
        };
        let headers = rate_limit_headers(&checks, &outcome);
        if !outcome.admitted() {
            return Decision {
                headers,
                result: Err(self.refusal(&checks, &outcome)),
            };
        }
        let pending = pending_of(checks);
        Decision {
            headers,
            result: Ok(Admission {
                settler: (!pending.is_empty()).then(|| Settler {
                    limiter: Arc::clone(&self.limiter),
                    tasks: self.tasks.clone(),
                    metrics: self.metrics.clone(),
                    warned: Arc::clone(&self.warned),
                    lease,
                    pending,
                    budget_key: key.filter(|k| k.budget.is_some()).cloned(),
                }),
            }),
        }
    }

    /// Every limit that applies to a call of `key` on `model`.
    fn checks(
        &self,
        key: Option<&Arc<VirtualKey>>,
        model: &str,
        estimate: Estimate,
        price: Option<&Price>,
    ) -> Vec<(Scope, Check)> {
        let tokens = estimate.tokens();
        let mut checks: Vec<(Scope, Check)> = Vec::new();
        if let Some(key) = key {
            push_limits(
                &mut checks,
                Scope::Key,
                &format!("k:{}", key.id),
                &key.limits,
                tokens,
            );
            if let Some(budget) = &key.budget {
                let (bucket, ttl) = budget_bucket(&key.id, budget.period, super::unix_ms());
                let reserve = price.map_or(0, |p| {
                    to_nanos(crate::usage::pricing::cost(
                        p,
                        &crate::usage::pricing::TokenUsage {
                            input: estimate.input_tokens,
                            output: estimate.max_output_tokens.unwrap_or(0),
                            ..Default::default()
                        },
                    ))
                });
                checks.push((
                    Scope::Key,
                    Check::Budget {
                        bucket,
                        limit: to_nanos(budget.usd),
                        reserve,
                        ttl,
                    },
                ));
            }
        }
        if let Some(limits) = self.model_limits.get(model) {
            push_limits(
                &mut checks,
                Scope::Model,
                &format!("m:{model}"),
                limits,
                tokens,
            );
        }
        checks
    }

    /// The spend of `key`'s current budget period, as shown by the admin API; `None` without a
    /// budget.
    pub async fn spend_of(
        &self,
        key: &VirtualKey,
    ) -> Result<Option<serde_json::Value>, BackendError> {
        let Some(budget) = &key.budget else {
            return Ok(None);
        };
        let now = super::unix_ms();
        let (period, _) = period_bucket(budget.period, now);
        let (bucket, _) = budget_bucket(&key.id, budget.period, now);
        let (spent, reserved) = self.limiter.spend(&bucket).await?;
        let spent = from_nanos(spent);
        Ok(Some(serde_json::json!({
            "period": period,
            "spent_usd": spent.normalize().to_string(),
            "reserved_usd": from_nanos(reserved).normalize().to_string(),
            "remaining_usd": (budget.usd - spent).max(Decimal::ZERO).normalize().to_string(),
        })))
    }

    fn backend_failed(&self, op: &'static str, error: &BackendError) -> GatewayError {
        self.metrics
            .backend_errors
            .get_or_create(&super::metrics::BackendLabels { op })
            .inc();
        tracing::warn!(error = %error, op, "state backend unavailable: call refused");
        GatewayError::StateUnavailable(
            "rate limits cannot be checked right now; retry shortly".to_owned(),
        )
    }

    fn refusal(&self, checks: &[(Scope, Check)], outcome: &Outcome) -> GatewayError {
        let Some(((scope, check), verdict)) = checks
            .iter()
            .zip(&outcome.verdicts)
            .find(|(_, v)| v.refused)
        else {
            return GatewayError::Internal("a refused call without a refusing limit".to_owned());
        };
        let limit = match check {
            Check::Requests { .. } => "requests",
            Check::Tokens { .. } => "tokens",
            Check::Concurrency { .. } => "concurrency",
            Check::Budget { .. } => "budget",
        };
        self.metrics
            .rejections
            .get_or_create(&RejectionLabels {
                scope: scope.as_str(),
                limit,
            })
            .inc();
        let whose = match scope {
            Scope::Key => "this API key",
            Scope::Model => "this model",
        };
        let message = match check {
            Check::Requests { per_minute, .. } => {
                format!("rate limit exceeded: {whose} allows {per_minute} requests per minute")
            }
            Check::Tokens {
                per_minute,
                reserve,
                ..
            } if *reserve > *per_minute => format!(
                "this request needs about {reserve} tokens (prompt plus max_tokens), more than the \
                 {per_minute} tokens per minute {whose} allows"
            ),
            Check::Tokens { per_minute, .. } => format!(
                "rate limit exceeded: {whose} allows {per_minute} tokens per minute \
                 (prompt plus max_tokens are reserved until the call ends)"
            ),
            Check::Concurrency { max, .. } => {
                format!("too many requests in flight: {whose} allows {max} at once")
            }
            Check::Budget { limit, .. } => {
                return GatewayError::QuotaExceeded(format!(
                    "budget exhausted: {whose} may spend {} USD in the current period",
                    from_nanos(*limit).normalize()
                ));
            }
        };
        GatewayError::RateLimited {
            message,
            retry_after: verdict.retry_after,
        }
    }
}

/// What an admitted call must settle: everything but request counts.
fn pending_of(checks: Vec<(Scope, Check)>) -> Vec<Pending> {
    checks
        .into_iter()
        .filter_map(|(_, check)| match check {
            Check::Requests { .. } => None,
            Check::Tokens {
                bucket,
                per_minute,
                reserve,
            } => Some(Pending::Tokens {
                bucket,
                per_minute,
                reserved: reserve,
            }),
            Check::Concurrency { bucket, .. } => Some(Pending::Concurrency { bucket }),
            Check::Budget {
                bucket,
                reserve,
                ttl,
                ..
            } => Some(Pending::Budget {
                bucket,
                reserved: reserve,
                ttl,
            }),
        })
        .collect()
}

/// OpenAI's `x-ratelimit-*` headers, from the most constrained request and token limits.
fn rate_limit_headers(
    checks: &[(Scope, Check)],
    outcome: &Outcome,
) -> Vec<(HeaderName, HeaderValue)> {
    let tightest = |want_tokens: bool| {
        checks
            .iter()
            .zip(&outcome.verdicts)
            .filter(|((_, c), _)| match c {
                Check::Requests { .. } => !want_tokens,
                Check::Tokens { .. } => want_tokens,
                _ => false,
            })
            .map(|(_, v)| *v)
            .min_by_key(|v| v.remaining)
    };
    let mut headers = Vec::new();
    for (suffix, verdict) in [("requests", tightest(false)), ("tokens", tightest(true))] {
        let Some(v) = verdict else { continue };
        let mut push = |name: String, value: String| {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                headers.push((n, v));
            }
        };
        push(format!("x-ratelimit-limit-{suffix}"), v.limit.to_string());
        push(
            format!("x-ratelimit-remaining-{suffix}"),
            v.remaining.to_string(),
        );
        push(format!("x-ratelimit-reset-{suffix}"), format_reset(v.reset));
    }
    headers
}

/// A duration as OpenAI writes resets: `20ms`, `1s`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let s = format!("{secs:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    let whole = d.as_secs();
    format!("{}m{}s", whole / 60, whole % 60)
}

/// The reservations of an admitted call. Settle it with the real usage when the call is over; dropped
/// unsettled (the call failed before any usage), it releases everything it reserved.
#[derive(Default)]
pub struct Admission {
    settler: Option<Settler>,
}

struct Settler {
    limiter: Arc<dyn Limiter>,
    tasks: tokio_util::task::TaskTracker,
    metrics: super::metrics::ControlMetrics,
    warned: Arc<std::sync::Mutex<std::collections::HashSet<Arc<str>>>>,
    lease: String,
    pending: Vec<Pending>,
    budget_key: Option<Arc<VirtualKey>>,
}

impl Admission {
    /// Nothing reserved (no limit applies).
    pub fn none() -> Self {
        Self { settler: None }
    }

    /// Settles with the call's real token count and exact cost (`None`: nothing was used).
    pub fn settle(mut self, tokens: Option<u64>, cost: Option<Decimal>) {
        if let Some(settler) = self.settler.take() {
            settler.run(tokens.unwrap_or(0), cost.map_or(0, to_nanos));
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(settler) = self.settler.take() {
            settler.run(0, 0);
        }
    }
}

impl Settler {
    fn run(self, tokens: u64, cost: Nanos) {
        let items: Vec<Settle> = self
            .pending
            .iter()
            .map(|p| match p {
                Pending::Tokens {
                    bucket,
                    per_minute,
                    reserved,
                } => Settle::Tokens {
                    bucket: Arc::clone(bucket),
                    per_minute: *per_minute,
                    reserved: *reserved,
                    used: tokens,
                },
                Pending::Concurrency { bucket } => Settle::Concurrency {
                    bucket: Arc::clone(bucket),
                },
                Pending::Budget {
                    bucket,
                    reserved,
                    ttl,
                } => Settle::Budget {
                    bucket: Arc::clone(bucket),
                    reserved: *reserved,
                    spent: cost,
                    ttl: *ttl,
                },
            })
            .collect();
        let budget_bucket = self.pending.iter().find_map(|p| match p {
            Pending::Budget { bucket, .. } => Some(Arc::clone(bucket)),
            _ => None,
        });
        let tasks = self.tasks.clone();
        let work = async move {
            if let Err(e) = self.limiter.settle(&items, &self.lease).await {
                self.metrics
                    .backend_errors
                    .get_or_create(&super::metrics::BackendLabels { op: "settle" })
                    .inc();
                tracing::warn!(error = %e, "could not settle a call's reservations");
            }
            if let (Some(key), Some(bucket)) = (&self.budget_key, budget_bucket)
                && let Ok((spent, _)) = self.limiter.spend(&bucket).await
            {
                self.report_budget(key, &bucket, spent);
            }
        };
        // The memory backend settles synchronously; a remote one finishes in a tracked task.
        let mut work = Box::pin(work);
        if (&mut work).now_or_never().is_none() {
            tasks.spawn(work);
        }
    }

    fn report_budget(&self, key: &VirtualKey, bucket: &Arc<str>, spent: Nanos) {
        let Some(budget) = &key.budget else { return };
        let labels = KeyLabels {
            key: Label(Arc::from(key.id.as_str())),
        };
        let spent_usd = from_nanos(spent);
        let remaining = (budget.usd - spent_usd).max(Decimal::ZERO);
        self.metrics
            .budget_spend
            .get_or_create(&labels)
            .set(spent_usd.to_f64().unwrap_or(0.0));
        self.metrics
            .budget_remaining
            .get_or_create(&labels)
            .set(remaining.to_f64().unwrap_or(0.0));
        let threshold =
            budget.usd * Decimal::try_from(budget.soft_threshold).unwrap_or(Decimal::ONE);
        if spent_usd >= threshold {
            let first = self
                .warned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(Arc::clone(bucket));
            if first {
                self.metrics.budget_warnings.get_or_create(&labels).inc();
                tracing::warn!(
                    key_id = %key.id,
                    spent_usd = %spent_usd.normalize(),
                    budget_usd = %budget.usd,
                    "API key passed the soft threshold of its budget"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_written_like_openai() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_mins(6)), "6m0s");
        assert_eq!(format_reset(Duration::ZERO), "0ms");
    }

    #[test]
    fn nanos_round_up_and_back() {
        assert_eq!(to_nanos(Decimal::new(12, 3)), 12_000_000);
        // A reservation never under-counts a fraction of a nano-dollar.
        assert_eq!(to_nanos(Decimal::new(1, 10)), 1);
        assert_eq!(from_nanos(48_000_000).normalize().to_string(), "0.048");
    }

    #[test]
    fn periods_are_utc_calendar_buckets() {
        // 2026-11-27T07:00:00Z
        let now = 1_795_762_800_000;
        assert_eq!(period_bucket(Period::Day, now).0, "2026-11-27");
        assert_eq!(period_bucket(Period::Month, now).0, "2026-11");
        assert_eq!(period_bucket(Period::Total, now).0, "total");
        let (bucket, ttl) = budget_bucket("key_1", Period::Month, now);
        assert_eq!(&*bucket, "k:key_1:budget:2026-11");
        // Lives past the end of the month (4 days left) but not for ever.
        assert!(ttl >= Duration::from_hours(4 * 24) && ttl <= Duration::from_hours(33 * 24));
    }
}
