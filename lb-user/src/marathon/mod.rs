//! Following Marathon: its API types (`api`), marathon-lb's rules turning apps into services
//! (`translate`, pure), the HTTP client with failover (`client`), the event stream (`events`),
//! the task that decides when to read (`controller`), and the feed that translates each read
//! into the `Update` the daemon applies (`feed`). Nothing here knows the command line.
pub mod api;
pub mod backoff;
pub mod catalog;
pub mod client;
pub mod controller;
pub mod event_apps;
pub mod events;
pub mod feed;
pub mod translate;
