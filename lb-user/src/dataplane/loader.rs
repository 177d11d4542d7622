//! Loads the BPF object, its maps sized and pinned by the map table of `lb-common`: maps
//! already pinned (by an earlier `lb run`) are adopted with their contents, so flows and
//! counters survive restarts.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, MapError},
    programs::{SchedClassifier, Xdp},
};
use lb_common::{DnsAddrs, DnsName, MAP_DNS_A, MAPS, MapSize, PROG_TC, PROG_XDP};
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
    /// Names the DNS fast path holds (`LB_DNS_A`).
    pub dns_names: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            services: lb_common::MAX_SERVICES,
            backend_slots: lb_common::MAX_BACKEND_SLOTS,
            backend_ids: lb_common::MAX_BACKEND_IDS,
            flow_entries: lb_common::MAX_FLOW_ENTRIES,
            dns_names: lb_common::MAX_DNS_NAMES,
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
            MapSize::DnsNames => self.dns_names,
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
    #[error("replacing pinned map {path}: {source}")]
    Replace {
        path: String,
        source: std::io::Error,
    },
    #[error("copying the names of pinned map {path} into its new table: {source}")]
    Refill { path: String, source: MapError },
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("loading program {name} into the kernel: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
}

/// A pinned `LB_DNS_A` of another size than asked for, replaced once the programs load.
struct Resized {
    path: PathBuf,
    old: MapData,
}

/// Refuses to adopt pinned maps whose layout differs from this build's (an older `lb`), but
/// for `LB_DNS_A` at another size: its names are the zone's, which the daemon writes again at
/// every start, so that map is made anew at the size asked for (`Resized`). Nothing is unpinned
/// here: a refused start leaves every pin as it was, for `lb status` and the running programs'
/// next owner.
fn check_pinned(layout: &PinLayout, caps: &Capacities) -> Result<Option<Resized>, LoadError> {
    let mut resized = None;
    for def in &MAPS {
        let path = layout.map(def.name);
        let Ok(map) = MapData::from_pin(&path) else {
            continue;
        };
        if let Some(m) = mismatch(def, &map, Some(caps)) {
            if def.name == MAP_DNS_A && m.what == "max_entries" {
                tracing::info!(
                    found = m.found,
                    want = m.want,
                    "{MAP_DNS_A}: made anew at the size asked for, with the names it held"
                );
                resized = Some(Resized { path, old: map });
                continue;
            }
            return Err(LoadError::Incompatible {
                path: path.display().to_string(),
                root: layout.root.display().to_string(),
                what: m.what,
                found: m.found,
                want: m.want,
            });
        }
    }
    Ok(resized)
}

impl Resized {
    /// Copies the old table's names into `new` (as many as it has room for: the zone's next
    /// sync settles the rest), so the fast path answers what it answered before from the
    /// first packet, then pins `new` in the old one's place in one step (a pin beside it,
    /// renamed over it).
    fn replace(self, new: &mut Map) -> Result<(), LoadError> {
        let Self { path, old } = self;
        let refill = |source| LoadError::Refill {
            path: path.display().to_string(),
            source,
        };
        let old: HashMap<MapData, DnsName, DnsAddrs> =
            HashMap::try_from(Map::HashMap(old)).map_err(refill)?;
        let mut table: HashMap<&mut MapData, DnsName, DnsAddrs> =
            HashMap::try_from(&mut *new).map_err(refill)?;
        for entry in old.iter() {
            let (name, addrs) = entry.map_err(refill)?;
            match table.insert(name, addrs, 0) {
                Ok(()) => {}
                Err(e) if super::fast_dns::is_full(&e) => break,
                Err(e) => return Err(refill(e)),
            }
        }
        let replace = |source| LoadError::Replace {
            path: path.display().to_string(),
            source,
        };
        let beside = beside(&path);
        // Left by a start that stopped between the pin and the rename: the next takes its name.
        let _ = std::fs::remove_file(&beside);
        new.pin(&beside)
            .map_err(|e| replace(std::io::Error::other(e)))?;
        std::fs::rename(&beside, &path).map_err(|e| {
            let _ = std::fs::remove_file(&beside);
            replace(e)
        })
    }
}

/// Where a map is pinned before it takes `path`'s place (bpffs refuses names with a dot).
fn beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("-resized");
    path.with_file_name(name)
}

/// Where the DNS server listens, for the XDP program to answer A queries there itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastDns {
    /// `None`: any local address.
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    /// Of every record it answers.
    pub ttl: u32,
}

/// Loads both programs into the kernel (not yet attached), sized by `caps`, with every map
/// pinned under `pins` (or unpinned: tests and the benchmark), and the DNS fast path on when
/// `dns` says where the server listens (set as constants: while it is off, the verifier
/// removes the path from the program).
pub fn load(
    pins: Option<&PinLayout>,
    caps: &Capacities,
    dns: Option<FastDns>,
) -> Result<Ebpf, LoadError> {
    // The loader borrows the values until it loads.
    let (port, addr, ttl) = dns.map_or((0, 0, 0), |d| {
        (
            d.port.to_be(),
            d.addr.map_or(0, |a| u32::from(a).to_be()),
            d.ttl,
        )
    });
    let mut loader = EbpfLoader::new();
    if dns.is_some() {
        loader
            .override_global("LB_DNS_PORT", &port, true)
            .override_global("LB_DNS_ADDR", &addr, true)
            .override_global("LB_DNS_TTL", &ttl, true);
    }
    let mut resized = None;
    let paths: Vec<_> = match pins {
        Some(layout) => {
            resized = check_pinned(layout, caps)?;
            MAPS.iter()
                // A resized table is created unpinned and pinned once the programs load.
                .filter(|d| resized.is_none() || d.name != MAP_DNS_A)
                .map(|d| (d.name, layout.map(d.name)))
                .collect()
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
    if let Some(resized) = resized {
        let new = ebpf
            .map_mut(MAP_DNS_A)
            .expect("the object defines LB_DNS_A");
        resized.replace(new)?;
    }
    Ok(ebpf)
}
