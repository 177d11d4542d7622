//! `Dataplane`: the one owner of the loaded programs, the handles to every map and the
//! applied state. The daemon, the tests and the benchmark drive the data plane through it.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use aya::Ebpf;
use tracing::warn;

use super::{
    ifaces,
    loader::{self, Capacities, FastDns},
    maps::{self, Maps},
    pins::PinLayout,
    plan::{ApplyReport, Planner},
};
use crate::services::Desired;

pub struct Dataplane {
    /// The programs (attached by `attach`, run by the tests); the maps are in `maps`.
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub caps: Capacities,
    /// What the maps hold, as services.
    pub planner: Planner,
    /// Full-NAT source address by backend address, until routes change.
    nat_sources: HashMap<Ipv4Addr, Ipv4Addr>,
}

impl Dataplane {
    /// Loads the programs with maps sized by `caps`, pinned under `pins` (adopting what an
    /// earlier daemon left there) or unpinned, and rebuilds the applied state from the maps.
    pub fn load(caps: Capacities, pins: Option<&PinLayout>) -> Result<Self> {
        Self::load_with_dns(caps, pins, None)
    }

    /// As `load`, with the XDP program answering DNS A queries at `dns` from `LB_DNS_A`.
    pub fn load_with_dns(
        caps: Capacities,
        pins: Option<&PinLayout>,
        dns: Option<FastDns>,
    ) -> Result<Self> {
        let mut ebpf = loader::load(pins, &caps, dns).context("loading the data plane")?;
        if let Some(layout) = pins {
            layout.make_maps_private()?;
        }
        let mut maps = Maps::take(&mut ebpf, &caps)?;
        let planner = adopt(&mut maps, &caps)?;
        Ok(Self {
            ebpf,
            maps,
            caps,
            planner,
            nat_sources: HashMap::new(),
        })
    }

    /// Rebuilds the applied state from what the maps hold, as a restarted daemon does, and
    /// rewrites the port gate from it.
    pub fn readopt(&mut self) -> Result<()> {
        self.planner = adopt(&mut self.maps, &self.caps)?;
        Ok(())
    }

    /// Writes the difference between what is applied and `desired`. Services that cannot be
    /// applied (no free id) are reported in the error after the others are applied.
    pub fn apply(&mut self, desired: &Desired) -> Result<ApplyReport> {
        let cache = &mut self.nat_sources;
        let plan = self
            .planner
            .apply(desired, &mut |a| nat_source(cache, a), Instant::now());
        if let Err(e) = maps::execute(&mut self.maps, &plan.ops) {
            // The maps are not what the planner thinks: read them back rather than guess.
            self.readopt()?;
            return Err(e);
        }
        if !plan.refused.is_empty() {
            bail!("services not applied: {}", plan.refused.join("; "));
        }
        Ok(plan.report)
    }

    /// Old generations past their grace go; ids no live flow uses any more are freed.
    pub fn tick(&mut self, in_use: &BTreeSet<u32>, services_in_use: &BTreeSet<u32>) -> Result<()> {
        let ops = self.planner.tick(Instant::now(), in_use, services_in_use);
        maps::execute(&mut self.maps, &ops)
    }

    /// Writes the live flows of leastconn services' backends, as the sweep counted them.
    pub fn count_live(&mut self, live: &BTreeMap<u32, u64>) -> Result<()> {
        let ops = self.planner.live_counts(live);
        maps::execute(&mut self.maps, &ops)
    }

    /// Forgets cached NAT sources (routes or addresses changed).
    pub fn routes_changed(&mut self) {
        self.nat_sources.clear();
    }
}

/// The applied state rebuilt from what `maps` hold, with the port gate rewritten from it.
fn adopt(maps: &mut Maps, caps: &Capacities) -> Result<Planner> {
    let (planner, ops) = Planner::adopt(maps, caps, Instant::now());
    maps::execute(maps, &ops)?;
    Ok(planner)
}

fn nat_source(cache: &mut HashMap<Ipv4Addr, Ipv4Addr>, addr: SocketAddrV4) -> Ipv4Addr {
    if let Some(a) = cache.get(addr.ip()) {
        return *a;
    }
    let nat = ifaces::source_for(addr).unwrap_or_else(|e| {
        warn!(backend = %addr, "no route to backend ({e}); full NAT will use 0.0.0.0 until one appears");
        Ipv4Addr::UNSPECIFIED
    });
    if !nat.is_unspecified() {
        cache.insert(*addr.ip(), nat);
    }
    nat
}
