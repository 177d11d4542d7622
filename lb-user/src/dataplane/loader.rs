//! Loads the BPF object with its maps pinned by name: maps already pinned (by an earlier
//! `lb run`) are adopted with their contents, so flows and counters survive restarts.
use aya::{
    Ebpf, EbpfLoader,
    maps::MapData,
    programs::{SchedClassifier, Xdp},
};
use lb_common::{
    Backend, BackendKey, Config, Counters, Flow, FlowKey, LocalAddr, MAP_BACKEND_STATS,
    MAP_BACKENDS, MAP_CONFIG, MAP_FLOWS, MAP_LOCAL_ADDRS, MAP_NAT_CURSOR, MAP_PORTS, MAP_RR,
    MAP_SERVICE_STATS, MAP_SERVICES, MAP_STATS, MAP_XDP_TX, MAX_LOCAL_ADDRS, MAX_XDP_TX,
    PORT_GATE_WORDS, PROG_TC, PROG_XDP, STAT_COUNT, Service, ServiceKey,
};
use thiserror::Error;

use super::pins::PinLayout;

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
    /// (map, key size, value size, max entries) as this build creates them.
    fn expected(&self) -> [(&'static str, usize, usize, u32); 12] {
        use std::mem::size_of;
        [
            (
                MAP_SERVICES,
                size_of::<ServiceKey>(),
                size_of::<Service>(),
                self.services,
            ),
            (
                MAP_BACKENDS,
                size_of::<BackendKey>(),
                size_of::<Backend>(),
                self.backend_slots,
            ),
            (
                MAP_FLOWS,
                size_of::<FlowKey>(),
                size_of::<Flow>(),
                self.flow_entries,
            ),
            (MAP_LOCAL_ADDRS, 4, size_of::<LocalAddr>(), MAX_LOCAL_ADDRS),
            (MAP_XDP_TX, 4, 4, MAX_XDP_TX),
            (MAP_CONFIG, 4, size_of::<Config>(), 1),
            (MAP_RR, 4, 4, self.services),
            (MAP_NAT_CURSOR, 4, 4, self.backend_ids),
            (MAP_PORTS, 4, 8, PORT_GATE_WORDS),
            (MAP_SERVICE_STATS, 4, size_of::<Counters>(), self.services),
            (
                MAP_BACKEND_STATS,
                4,
                size_of::<Counters>(),
                self.backend_ids,
            ),
            (MAP_STATS, 4, 8, STAT_COUNT),
        ]
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
    for (name, key, value, entries) in caps.expected() {
        let path = layout.map(name);
        let Ok(map) = MapData::from_pin(&path) else {
            continue;
        };
        let Ok(info) = map.info() else { continue };
        let checks = [
            ("key size", info.key_size() as u64, key as u64),
            ("value size", info.value_size() as u64, value as u64),
            ("max_entries", info.max_entries() as u64, entries as u64),
        ];
        for (what, found, want) in checks {
            if found != want {
                return Err(LoadError::Incompatible {
                    path: path.display().to_string(),
                    root: layout.root.display().to_string(),
                    what,
                    found,
                    want,
                });
            }
        }
    }
    Ok(())
}

/// Loads both programs into the kernel (not yet attached), with every map pinned.
pub fn load(layout: &PinLayout, caps: &Capacities) -> Result<Ebpf, LoadError> {
    check_pinned(layout, caps)?;
    let paths: Vec<_> = caps
        .expected()
        .iter()
        .map(|(n, ..)| (*n, layout.map(n)))
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    for (name, _, _, entries) in caps.expected() {
        loader.map_max_entries(name, entries);
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
