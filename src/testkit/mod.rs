//! Test support shared by integration tests and benchmarks: the mock LLM upstream.

pub mod upstream;
