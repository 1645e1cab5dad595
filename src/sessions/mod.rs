//! Conversation sessions: server-side history for chats, fitted into the model's context window, stored
//! durably (SQLite) or shared by replicas (Redis).

pub mod model;
pub mod store;
pub mod sqlite;
#[cfg(test)]
mod conformance;
