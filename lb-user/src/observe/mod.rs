//! Seeing what the balancer does: the daemon's state file (`state`), and `lb status` /
//! `lb flows` built from it and from the pinned maps (`status`).
pub mod metrics;
pub mod state;
pub mod status;
pub mod table;
