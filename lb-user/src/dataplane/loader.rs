//! Loads the BPF object, its maps sized and pinned by the map table of `lb-common`: maps
//! already pinned (by an earlier `lb run`) are adopted with their contents, so flows and
//! counters survive restarts.
use aya::{
    Ebpf, EbpfLoader,
    maps::MapData,
    programs::{SchedClassifier, Xdp},
};
use lb_common::{MAPS, MapSize, PROG_TC, PROG_XDP};
use thiserror::Error;

use super::{maps::mismatch, pins::PinLayout};

/// Table sizes, fixed when the maps are first created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    pub services: u32,
    pub backend_slots: u32,
    pub backend_ids: u32,
    /// Flow-table entries; each flow takes two (one per direction).
    pub flow_entries: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            services: lb_common::MAX_SERVICES,
            backend_slots: lb_common::MAX_BACKEND_SLOTS,
            backend_ids: lb_common::MAX_BACKEND_IDS,
            flow_entries: lb_common::MAX_FLOW_ENTRIES,
        }
    }
}

impl Capacities {
    /// Entries of a map of the table (`lb_common::MAPS`) at these capacities.
    pub fn entries(&self, size: MapSize) -> u32 {
        match size {
            MapSize::Fixed(n) => n,
            MapSize::Services => self.services,
            MapSize::BackendSlots => self.backend_slots,
            MapSize::BackendIds => self.backend_ids,
            MapSize::FlowEntries => self.flow_entries,
        }
    }
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "pinned map {path} has {what} {found}, this build needs {want}; \
         run `lb detach --pin-path {root}` (drops tracked flows) or use the earlier sizes"
    )]
    Incompatible {
        path: String,
        root: String,
        what: &'static str,
        found: u64,
        want: u64,
    },
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("loading program {name} into the kernel: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
}

/// Refuses to adopt pinned maps whose layout differs from this build's (an older `lb`).
fn check_pinned(layout: &PinLayout, caps: &Capacities) -> Result<(), LoadError> {
    for def in &MAPS {
        let path = layout.map(def.name);
        let Ok(map) = MapData::from_pin(&path) else {
            continue;
        };
        if let Some(m) = mismatch(def, &map, Some(caps)) {
            return Err(LoadError::Incompatible {
                path: path.display().to_string(),
                root: layout.root.display().to_string(),
                what: m.what,
                found: m.found,
                want: m.want,
            });
        }
    }
    Ok(())
}

/// Loads both programs into the kernel (not yet attached), sized by `caps`, with every map
/// pinned under `pins` (or unpinned: tests and the benchmark).
pub fn load(pins: Option<&PinLayout>, caps: &Capacities) -> Result<Ebpf, LoadError> {
    let mut loader = EbpfLoader::new();
    let paths: Vec<_> = match pins {
        Some(layout) => {
            check_pinned(layout, caps)?;
            MAPS.iter().map(|d| (d.name, layout.map(d.name))).collect()
        }
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    for def in &MAPS {
        loader.map_max_entries(def.name, caps.entries(def.size));
    }
    let mut ebpf = loader.load(super::OBJECT)?;
    let xdp: &mut Xdp = ebpf
        .program_mut(PROG_XDP)
        .and_then(|p| p.try_into().ok())
        .expect("the object defines lb_xdp");
    xdp.load().map_err(|source| LoadError::Program {
        name: PROG_XDP,
        source,
    })?;
    let tc: &mut SchedClassifier = ebpf
        .program_mut(PROG_TC)
        .and_then(|p| p.try_into().ok())
        .expect("the object defines lb_tc");
    tc.load().map_err(|source| LoadError::Program {
        name: PROG_TC,
        source,
    })?;
    Ok(ebpf)
}
