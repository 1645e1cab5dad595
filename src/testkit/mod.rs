//! Test support shared by integration tests and benchmarks: the mock LLM upstream and an OTLP receiver.

pub mod otlp;
pub mod upstream;
