//! Conversation sessions: server-side history for chats, fitted into the model's context window, stored
//! durably (SQLite) or shared by replicas (Redis).

#[cfg(test)]
mod conformance;
pub mod model;
pub mod redis;
pub mod sqlite;
pub mod store;
pub mod window;
