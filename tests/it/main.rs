//! End-to-end tests: the real server on 127.0.0.1:0 against in-process mock upstreams speaking the real
//! OpenAI and Anthropic wire formats. One test binary (faster to build and link than one per file).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code, helpers included: failing loudly is the point, and tests spawn freely"
)]

mod access;
mod anthropic;
mod cache;
mod chat;
mod chat_stream;
mod cli;
mod common;
mod errors;
mod halueval;
mod load;
mod observability;
mod rag;
mod rag_cli;
mod replicas;
mod sdk;
mod sessions;
mod shutdown;
mod snapshots;
