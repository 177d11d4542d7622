//! Helpers shared by the integration and end-to-end tests.
pub mod marathon_standin;
