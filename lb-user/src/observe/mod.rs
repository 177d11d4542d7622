//! Seeing what the balancer does: one observation of the data plane (`view`), rendered by
//! `lb status` / `lb flows` (`status`, `table`) and by `/metrics` (`metrics`, `exposition`,
//! served with `/healthz` by `http`); the daemon's state file (`state`), written with the
//! metrics by the `observer`.
pub mod exposition;
pub mod http;
pub mod metrics;
pub mod observer;
pub mod state;
pub mod status;
pub mod table;
pub mod view;
