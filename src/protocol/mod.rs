//! Wire formats, shared by the API layer (what clients send) and the providers (what upstreams speak):
//! the canonical OpenAI types, Anthropic's Messages types, and pure translations between them.

pub mod anthropic;
pub mod assemble;
pub mod openai;
pub mod translate;
