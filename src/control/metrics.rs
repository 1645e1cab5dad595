//! Metric families of access control, registered into the gateway's registry.
//!
//! Labels are bounded: `scope`/`limit`/`reason` take fixed values, `key` only ids of keys that have a
//! budget (created by an operator, so their number is the operator's choice).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::telemetry::metrics::Label;

/// `scope` (`key`, `model`), `limit` (`requests`, `tokens`, `concurrency`, `budget`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    /// Whose limit.
    pub scope: &'static str,
    /// Which limit.
    pub limit: &'static str,
}

/// `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailureLabels {
    /// `missing`, `malformed`, `unknown`, `revoked`, `expired`, `model_not_allowed`.
    pub reason: &'static str,
}

/// `key` (key id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// Key id.
    pub key: Label,
}

/// `op` (`admit`, `settle`, `keys`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Which operation failed.
    pub op: &'static str,
}

/// The families.
#[derive(Clone, Default)]
pub struct ControlMetrics {
    /// `sluice_ratelimit_rejections_total`.
    pub rejections: Family<RejectionLabels, Counter>,
    /// `sluice_auth_failures_total`.
    pub auth_failures: Family<AuthFailureLabels, Counter>,
    /// `sluice_budget_spend_usd`: spend of the current period, per key with a budget.
    pub budget_spend: Family<KeyLabels, Gauge<f64, AtomicU64>>,
    /// `sluice_budget_remaining_usd`.
    pub budget_remaining: Family<KeyLabels, Gauge<f64, AtomicU64>>,
    /// `sluice_budget_soft_limit_warnings_total`.
    pub budget_warnings: Family<KeyLabels, Counter>,
    /// `sluice_state_backend_errors_total`.
    pub backend_errors: Family<BackendLabels, Counter>,
    /// `sluice_state_backend_up`: 1 while the shared backend answers (always 1 for `memory`).
    pub backend_up: Gauge,
    /// `sluice_state_fallback_admissions_total`: calls admitted on local limits while Redis was down.
    pub fallback_admissions: Counter,
}

impl ControlMetrics {
    /// Registers the families.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ratelimit_rejections",
            "Calls refused by a rate, concurrency or budget limit",
            self.rejections.clone(),
        );
        registry.register(
            "auth_failures",
            "Calls refused by authentication (401) or model permission (403)",
            self.auth_failures.clone(),
        );
        registry.register(
            "budget_spend_usd",
            "Spend of the current budget period, per key with a budget",
            self.budget_spend.clone(),
        );
        registry.register(
            "budget_remaining_usd",
            "Budget left in the current period, per key with a budget",
            self.budget_remaining.clone(),
        );
        registry.register(
            "budget_soft_limit_warnings",
            "Times a key passed its budget's soft threshold (once per period and process)",
            self.budget_warnings.clone(),
        );
        registry.register(
            "state_backend_errors",
            "Failed operations on the shared state backend (Redis)",
            self.backend_errors.clone(),
        );
        registry.register(
            "state_backend_up",
            "1 while the state backend answers, 0 while it is unreachable",
            self.backend_up.clone(),
        );
        registry.register(
            "state_fallback_admissions",
            "Calls admitted on this process's own limits while the shared backend was unreachable",
            self.fallback_admissions.clone(),
        );
    }
}
