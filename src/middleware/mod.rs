//! The layers between the router and the handlers. Their order is documented and assembled in `app.rs`.

pub mod admin;
pub mod auth;
pub mod observe;
