//! The `lb` daemon and CLI as a library, so the tests drive the same code the binary runs.
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod dns;
pub mod http;
pub mod marathon;
pub mod observe;
pub mod services;
pub mod task;
