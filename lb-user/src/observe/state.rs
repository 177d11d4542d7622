//! The daemon's own state, written atomically to a JSON file at every change and tick, so
//! `lb status` can show names, interfaces and sync health from any process, daemon or not.
use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
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
    /// Live flows by backend id, as the last sweep (every 2 s) counted them.
    #[serde(default)]
    pub live_flows: BTreeMap<u32, u64>,
    /// The DNS server, when `--dns-listen` is given.
    #[serde(default)]
    pub dns: Option<crate::dns::stats::DnsView>,
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
    /// Writes the state atomically, readable by its owner only (it names every backend).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        // A directory this creates (the default /run/lb) is root-only; one that exists (the
        // operator's choice) keeps its mode.
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let tmp = path.with_extension("json.tmp");
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // Compact: with thousands of services the file is rewritten at every change. Written
        // as it is serialized, not built whole first (6 MB with 10,000 services).
        let mut out = io::BufWriter::new(f);
        serde_json::to_writer(&mut out, self).map_err(io::Error::other)?;
        let f = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        // A file left by an earlier build with wider permissions is narrowed too.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        drop(f);
        fs::rename(&tmp, path)
    }

    pub fn read(path: &Path) -> Option<Self> {
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_written_whole_and_owner_only() {
        let dir = std::env::temp_dir().join(format!("lb-state-{}", std::process::id()));
        let path = dir.join("s.json");
        let state = DaemonState {
            pid: 7,
            ..DaemonState::default()
        };
        state.write(&path).unwrap();
        assert_eq!(DaemonState::read(&path), Some(state));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
