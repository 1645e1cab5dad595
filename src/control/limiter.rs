//! Limits and budgets checked together, all or nothing: the [`Limiter`] trait and the in-process
//! implementation ([`MemoryLimiter`]); the Redis one is in `control::redis`.
//!
//! **One algorithm for every rate.** Requests per minute and tokens per minute are both GCRA (the
//! generic cell rate algorithm, as in `governor` and Redis-cell): a limit of `n` per minute has an
//! emission interval `T = 60 s / n` and lets a burst of `n` through; each bucket keeps one number, the
//! theoretical arrival time `tat`. A call costing `c` is admitted when `max(tat, now) + c·T - now ≤ n·T`,
//! and then `tat` moves to that value. Tokens are reserved before the call (`c` = prompt estimate +
//! `max_tokens`) and reconciled after it: the difference to the real usage moves `tat` back (refund) or
//! forward (debt). `governor` implements the same GCRA but can neither check several limits atomically
//! nor refund, so the few lines of arithmetic are written here, and mirrored line for line in the Redis
//! script so both backends agree exactly.
//!
//! **Concurrency** is a count of held slots; a slot is released when the call is settled (for a stream,
//! after its last byte). **Budgets** keep `spent` and `reserved` (nano-USD) per key and period; a call is
//! refused when `spent + reserved + its estimate` would pass the limit, its estimate stays reserved until
//! the call is settled with its exact cost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;

/// Money in nano-USD (10⁻⁹ USD): exact for every price in the table, and an integer Redis can add.
pub type Nanos = i64;

/// One limit to check. Buckets are named by the caller (`k:{key_id}:rpm`, `m:{model}:tpm`,
/// `b:{key_id}:2026-11`...); a bucket's parameters must not change between calls unless its limit was
/// reconfigured.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Requests per minute.
    Requests {
        /// Bucket name.
        bucket: Arc<str>,
        /// The limit.
        per_minute: u64,
    },
    /// Tokens per minute, reserving `reserve` tokens.
    Tokens {
        /// Bucket name.
        bucket: Arc<str>,
        /// The limit.
        per_minute: u64,
        /// Tokens to reserve now.
        reserve: u64,
    },
    /// Calls in flight.
    Concurrency {
        /// Bucket name.
        bucket: Arc<str>,
        /// The limit.
        max: u64,
    },
    /// Spend per period.
    Budget {
        /// Bucket name (includes the period).
        bucket: Arc<str>,
        /// The budget.
        limit: Nanos,
        /// Estimated cost to reserve now.
        reserve: Nanos,
        /// How long the bucket must be kept (until the period ends, plus a margin).
        ttl: Duration,
    },
}

impl Check {
    /// The bucket name.
    pub fn bucket(&self) -> &Arc<str> {
        match self {
            Self::Requests { bucket, .. }
            | Self::Tokens { bucket, .. }
            | Self::Concurrency { bucket, .. }
            | Self::Budget { bucket, .. } => bucket,
        }
    }
}

/// The state of one checked limit after the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The limit (requests, tokens, calls, or nano-USD).
    pub limit: u64,
    /// What is left after this call (0 when refused).
    pub remaining: u64,
    /// Until the bucket is full again (rates) — zero for concurrency and budgets.
    pub reset: Duration,
    /// Set when this limit refused the call: when a retry could pass it (`None` for budgets, which
    /// only a new period or a raised budget fixes).
    pub refused: bool,
    /// When to retry (rates and concurrency).
    pub retry_after: Option<Duration>,
}

/// The decision on a set of checks: admitted only if every check passed; then every reservation was
/// made, else none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// One verdict per check, in order.
    pub verdicts: Vec<Verdict>,
}

impl Outcome {
    /// Whether every check passed.
    pub fn admitted(&self) -> bool {
        self.verdicts.iter().all(|v| !v.refused)
    }
}

/// What to undo or reconcile once a call is over.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    /// Reconcile a token reservation with the real usage.
    Tokens {
        /// Bucket name.
        bucket: Arc<str>,
        /// The limit (to convert tokens to time).
        per_minute: u64,
        /// Tokens reserved at admission.
        reserved: u64,
        /// Tokens the call really used.
        used: u64,
    },
    /// Release a concurrency slot.
    Concurrency {
        /// Bucket name.
        bucket: Arc<str>,
    },
    /// Replace a budget reservation by the exact cost.
    Budget {
        /// Bucket name.
        bucket: Arc<str>,
        /// Reserved at admission.
        reserved: Nanos,
        /// The exact cost.
        spent: Nanos,
        /// Bucket lifetime, as at admission.
        ttl: Duration,
    },
}

/// The backend could not be reached or answered nonsense.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// Where limits and spend live.
pub trait Limiter: Send + Sync + 'static {
    /// Checks every limit at once, for one call identified by `lease` (unique per call; names its
    /// concurrency slots). All reservations are made only if all checks pass.
    fn admit<'a>(
        &'a self,
        checks: &'a [Check],
        lease: &'a str,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>>;

    /// Settles a finished call (`lease` as given to `admit`).
    fn settle<'a>(
        &'a self,
        items: &'a [Settle],
        lease: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Spent and reserved nano-USD of a budget bucket.
    fn spend<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, Result<(Nanos, Nanos), BackendError>>;
}

// === GCRA arithmetic, shared by the memory backend and mirrored in the Redis script ===

/// Milliseconds of one unit (request or token) at `per_minute`.
fn emission_ms(per_minute: u64) -> f64 {
    60_000.0 / float(per_minute.max(1))
}

/// Counts as floats: limits and costs are far below 2^52, where `f64` is exact.
#[expect(
    clippy::cast_precision_loss,
    reason = "token and request counts stay far below 2^52"
)]
fn float(n: u64) -> f64 {
    n as f64
}

/// A non-negative float rounded down to a count (negative values give 0).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "clamped to >= 0 first; values are bounded by the limit, a u64"
)]
fn floor_count(x: f64) -> u64 {
    x.max(0.0).floor() as u64
}

/// Float tolerance for comparisons of millisecond times.
const EPSILON_MS: f64 = 1e-6;

/// The GCRA decision for a bucket whose theoretical arrival time is `tat` (ms), at `now` (ms), for a
/// call costing `cost` units against `per_minute`. Returns the verdict and the new `tat` if admitted.
fn gcra(tat: f64, now: f64, cost: u64, per_minute: u64) -> (Verdict, Option<f64>) {
    let t = emission_ms(per_minute);
    let capacity = t * float(per_minute);
    let base = tat.max(now);
    let new_tat = base + t * float(cost);
    let ms = |x: f64| Duration::from_secs_f64(x.max(0.0) / 1000.0);
    if new_tat - now <= capacity + EPSILON_MS {
        let remaining = floor_count((capacity - (new_tat - now)) / t + EPSILON_MS);
        (
            Verdict {
                limit: per_minute,
                remaining,
                reset: ms(new_tat - now),
                refused: false,
                retry_after: None,
            },
            Some(new_tat),
        )
    } else {
        let remaining = floor_count((capacity - (base - now)) / t + EPSILON_MS);
        // A cost above the whole capacity can never pass: no retry time.
        let retry = (cost <= per_minute).then(|| ms(new_tat - now - capacity));
        (
            Verdict {
                limit: per_minute,
                remaining,
                reset: ms(base - now),
                refused: true,
                retry_after: retry,
            },
            None,
        )
    }
}

// === In-process backend ===

/// Budget counters of one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetState {
    /// Settled spend.
    pub spent: Nanos,
    /// Estimates of calls in flight.
    pub reserved: Nanos,
    /// When the bucket may be forgotten (ms on the limiter's clock).
    expires_ms: u64,
    /// Changed since the last [`MemoryLimiter::take_dirty_spend`].
    dirty: bool,
}

#[derive(Default)]
struct State {
    /// Theoretical arrival time per rate bucket, ms since `epoch`.
    rates: HashMap<Arc<str>, f64>,
    /// Held slots per concurrency bucket.
    slots: HashMap<Arc<str>, u64>,
    /// Budget buckets.
    budgets: HashMap<Arc<str>, BudgetState>,
    /// Admissions since the last sweep of idle buckets.
    since_sweep: u32,
}

/// Admissions between sweeps of buckets that hold no information any more.
const SWEEP_EVERY: u32 = 4096;

/// Limits in this process: exact and cheap (one mutex, no I/O), but each replica counts alone, so N
/// replicas admit up to N times every limit. Budgets are made durable by the caller through
/// [`MemoryLimiter::take_dirty_spend`] / [`MemoryLimiter::load_spend`].
pub struct MemoryLimiter {
    state: Mutex<State>,
    epoch: std::time::Instant,
    /// Wall-clock ms at `epoch`, to give budget expiry a wall-clock meaning.
    epoch_unix_ms: u64,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            epoch: std::time::Instant::now(),
            epoch_unix_ms: crate::control::unix_ms().try_into().unwrap_or_default(),
        }
    }

    fn now_ms(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1000.0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks and, if all pass, reserves. Synchronous: the memory backend never waits.
    pub fn admit_now(&self, checks: &[Check]) -> Outcome {
        let now = self.now_ms();
        let mut state = self.lock();
        let mut verdicts = Vec::with_capacity(checks.len());
        let mut new_tats = Vec::with_capacity(checks.len());
        for check in checks {
            let (verdict, tat) = match check {
                Check::Requests { bucket, per_minute } => {
                    let tat = state.rates.get(bucket).copied().unwrap_or(now);
                    gcra(tat, now, 1, *per_minute)
                }
                Check::Tokens {
                    bucket,
                    per_minute,
                    reserve,
                } => {
                    let tat = state.rates.get(bucket).copied().unwrap_or(now);
                    gcra(tat, now, *reserve, *per_minute)
                }
                Check::Concurrency { bucket, max } => {
                    let held = state.slots.get(bucket).copied().unwrap_or(0);
                    let refused = held >= *max;
                    (
                        Verdict {
                            limit: *max,
                            remaining: if refused { 0 } else { max - held - 1 },
                            reset: Duration::ZERO,
                            refused,
                            retry_after: refused.then_some(Duration::from_secs(1)),
                        },
                        None,
                    )
                }
                Check::Budget {
                    bucket,
                    limit,
                    reserve,
                    ..
                } => {
                    let b = state.budgets.get(bucket).copied().unwrap_or_default();
                    (budget_verdict(b.spent, b.reserved, *limit, *reserve), None)
                }
            };
            verdicts.push(verdict);
            new_tats.push(tat);
        }
        let outcome = Outcome { verdicts };
        if outcome.admitted() {
            let now_u = floor_count(now);
            for (check, tat) in checks.iter().zip(new_tats) {
                match check {
                    Check::Requests { bucket, .. } | Check::Tokens { bucket, .. } => {
                        if let Some(tat) = tat {
                            state.rates.insert(Arc::clone(bucket), tat);
                        }
                    }
                    Check::Concurrency { bucket, .. } => {
                        *state.slots.entry(Arc::clone(bucket)).or_default() += 1;
                    }
                    Check::Budget {
                        bucket,
                        reserve,
                        ttl,
                        ..
                    } => {
                        let b = state.budgets.entry(Arc::clone(bucket)).or_default();
                        b.reserved += reserve;
                        b.expires_ms = b
                            .expires_ms
                            .max(now_u + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
                    }
                }
            }
        }
        state.since_sweep += 1;
        if state.since_sweep >= SWEEP_EVERY {
            state.since_sweep = 0;
            sweep(&mut state, now);
        }
        outcome
    }

    /// Settles a finished call.
    pub fn settle_now(&self, items: &[Settle]) {
        let now = self.now_ms();
        let mut state = self.lock();
        for item in items {
            match item {
                Settle::Tokens {
                    bucket,
                    per_minute,
                    reserved,
                    used,
                } => {
                    let t = emission_ms(*per_minute);
                    if let Some(tat) = state.rates.get_mut(bucket) {
                        // Refund (used < reserved) or debt (used > reserved); a refund never moves the
                        // bucket to before `now` (unused capacity does not accumulate past full).
                        let delta = (float(*used) - float(*reserved)) * t;
                        *tat = (*tat + delta).max(now);
                    } else if used > reserved {
                        state
                            .rates
                            .insert(Arc::clone(bucket), now + float(used - reserved) * t);
                    }
                }
                Settle::Concurrency { bucket } => {
                    if let Some(held) = state.slots.get_mut(bucket) {
                        *held = held.saturating_sub(1);
                        if *held == 0 {
                            state.slots.remove(bucket);
                        }
                    }
                }
                Settle::Budget {
                    bucket,
                    reserved,
                    spent,
                    ttl,
                } => {
                    let b = state.budgets.entry(Arc::clone(bucket)).or_default();
                    b.reserved = (b.reserved - reserved).max(0);
                    b.spent += spent;
                    b.dirty = true;
                    b.expires_ms = b
                        .expires_ms
                        .max(floor_count(now) + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
                }
            }
        }
    }

    /// Spent and reserved of a budget bucket.
    pub fn spend_now(&self, bucket: &str) -> (Nanos, Nanos) {
        self.lock()
            .budgets
            .get(bucket)
            .map_or((0, 0), |b| (b.spent, b.reserved))
    }

    /// Budget buckets changed since the last call: `(bucket, spent, expires_unix_ms)`, for the ledger.
    pub fn take_dirty_spend(&self) -> Vec<(Arc<str>, Nanos, u64)> {
        let mut state = self.lock();
        let epoch = self.epoch_unix_ms;
        state
            .budgets
            .iter_mut()
            .filter(|(_, b)| b.dirty)
            .map(|(bucket, b)| {
                b.dirty = false;
                (Arc::clone(bucket), b.spent, epoch + b.expires_ms)
            })
            .collect()
    }

    /// Restores settled spend from the ledger (at start-up); expired rows are skipped.
    pub fn load_spend(&self, rows: impl IntoIterator<Item = (String, Nanos, u64)>) {
        let now_unix = self.epoch_unix_ms + floor_count(self.now_ms());
        let mut state = self.lock();
        for (bucket, spent, expires_unix_ms) in rows {
            if expires_unix_ms <= now_unix {
                continue;
            }
            state.budgets.insert(
                Arc::from(bucket),
                BudgetState {
                    spent,
                    reserved: 0,
                    expires_ms: expires_unix_ms.saturating_sub(self.epoch_unix_ms),
                    dirty: false,
                },
            );
        }
    }
}

fn budget_verdict(spent: Nanos, reserved: Nanos, limit: Nanos, reserve: Nanos) -> Verdict {
    let committed = spent.saturating_add(reserved);
    // Refused when the limit is already reached, or this call's estimate would pass it.
    let refused = committed >= limit || committed.saturating_add(reserve) > limit;
    let left = |x: Nanos| u64::try_from(limit.saturating_sub(x)).unwrap_or(0);
    Verdict {
        limit: u64::try_from(limit).unwrap_or(0),
        remaining: if refused {
            left(committed)
        } else {
            left(committed.saturating_add(reserve))
        },
        reset: Duration::ZERO,
        refused,
        retry_after: None,
    }
}

/// Drops buckets that carry no information: rates back to full, budgets past their period.
fn sweep(state: &mut State, now: f64) {
    state.rates.retain(|_, tat| *tat > now);
    let now_u = floor_count(now);
    state
        .budgets
        .retain(|_, b| b.expires_ms > now_u || b.reserved > 0 || b.dirty);
}

impl Limiter for MemoryLimiter {
    fn admit<'a>(
        &'a self,
        checks: &'a [Check],
        _lease: &'a str,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>> {
        let outcome = self.admit_now(checks);
        Box::pin(std::future::ready(Ok(outcome)))
    }

    fn settle<'a>(
        &'a self,
        items: &'a [Settle],
        _lease: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        self.settle_now(items);
        Box::pin(std::future::ready(Ok(())))
    }

    fn spend<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, Result<(Nanos, Nanos), BackendError>> {
        Box::pin(std::future::ready(Ok(self.spend_now(bucket))))
    }
}
