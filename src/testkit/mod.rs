//! Test support shared by integration tests and benchmarks: the mock LLM upstream, an OTLP receiver, and
//! a private Redis server, and a scripted RAG judge.

pub mod judge;
pub mod otlp;
pub mod redis;
pub mod upstream;
