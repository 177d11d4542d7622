//! Following Marathon: its API types (`api`), marathon-lb's rules turning apps into services
//! (`translate`, pure), the HTTP client with failover (`client`), the event stream (`events`)
//! and the task tying them together (`controller`).
pub mod api;
pub mod client;
pub mod controller;
pub mod events;
pub mod follow;
pub mod translate;
