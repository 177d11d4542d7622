//! DNS for Marathon tasks, as Mesos-DNS and dcos-net name them: `names` (the naming rules),
//! `zone` (the names and records, derived from the catalog's apps).
pub mod names;
pub mod zone;
