//! The daemon's own state, written atomically to a JSON file at every change and tick, so
//! `lb status` can show names, interfaces and sync health from any process, daemon or not.
use std::{
    collections::BTreeMap,
    fs, io,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::dataplane::{
    attach::Attached,
    plan::{AppliedService, DrainingBackend},
};

/// Where desired state comes from and how that is going.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncView {
    /// `config` or `marathon`.
    pub source: String,
    /// Unix seconds of the last successful full read (file or `/v2/apps`).
    pub last_full_sync: Option<f64>,
    pub last_event: Option<f64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<f64>,
    pub skipped: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    pub running: bool,
    pub started_at: f64,
    pub updated_at: f64,
    pub hook: String,
    pub mode: String,
    pub interfaces: BTreeMap<String, Attached>,
    pub services: Vec<AppliedService>,
    pub draining: Vec<DrainingBackend>,
    pub sync: SyncView,
    pub flow_entries: u64,
    pub flow_capacity: u64,
    pub flow_evictions: u64,
}

pub fn unix_now() -> f64 {
    unix(SystemTime::now())
}

pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl DaemonState {
    pub fn write(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(io::Error::other)?,
        )?;
        fs::rename(&tmp, path)
    }

    pub fn read(path: &Path) -> Option<Self> {
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }
}
