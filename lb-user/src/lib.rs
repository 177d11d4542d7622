//! The `lb` daemon and CLI as a library, so the tests drive the same code the binary runs.
pub mod marathon;
pub mod services;
