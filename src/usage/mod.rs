//! Usage accounting: what a call cost, and how many tokens it used when the upstream did not say.
//!
//! - [`pricing`]: the versioned built-in price table (`prices.toml`, compiled in), config overrides,
//!   and the exact decimal cost of a call's [`TokenUsage`].
//! - [`decimal_text`]: a cost's text (what `Decimal`'s `Display` writes) without an allocation, for
//!   the cost header, the access line and the request log.
//! - [`model_names`]: how a model name finds its entry in a built-in table (prefixes, snapshots).
//! - [`tokens`]: tiktoken counts of prompt messages and output text, for upstreams that send no usage
//!   and for streams cut off before their usage chunk (exact for OpenAI models, estimates otherwise).
//!
//! Both are pure: no I/O, no network, no global state beyond data parsed once on first use.

pub mod decimal_text;
pub mod model_names;
pub mod pricing;
pub mod tokens;

pub use pricing::{Price, PriceConfig, PriceError, PriceTable, TokenUsage, cost};
pub use tokens::{Encoding, count_messages, count_text, is_estimate};
