//! Response caching (issue 6, in progress): [`key`] derives the exact-tier cache key of a chat request.
//! Nothing in the request path uses it yet.

pub mod key;
