//! Typed handles to every map of the data plane, opened once: taken out of a freshly loaded
//! object (the daemon, the tests, the benchmark) or opened from the pins (`lb status`, `lb
//! flows`). Each is checked against the map table of `lb-common` as it is opened, so a map of
//! another build is refused with its name rather than misread.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, Pod,
    maps::{
        Array, HashMap, IterableMap, Map, MapData, PerCpuArray, PerCpuValues, lpm_trie::LpmTrie,
    },
    util::nr_cpus,
};
use lb_common::{
    AclData, Backend, BackendKey, Config, Counters, DnsAddrs, DnsName, Flow, FlowKey, LocalAddr,
    MAP_ACL, MAP_BACKEND_LIVE, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_CONFIG, MAP_DNS_A,
    MAP_DNS_STATS, MAP_FLOWS, MAP_LOCAL_ADDRS, MAP_NAT_CURSOR, MAP_PEER_IFS, MAP_PORTS, MAP_RR,
    MAP_SERVICE_DENIED, MAP_SERVICE_REFUSED, MAP_SERVICE_STATS, MAP_SERVICES, MAP_STATS,
    MAP_XDP_TX, MAPS, MapDef, Service, ServiceKey,
};

use super::{
    convert::{acl_key, acl_range, be_ip, ip},
    loader::Capacities,
    pins::PinLayout,
    plan::Op,
};
use crate::services::Cidr;

pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, Service>,
    pub backends: HashMap<MapData, BackendKey, Backend>,
    pub flows: HashMap<MapData, FlowKey, Flow>,
    pub local_addrs: HashMap<MapData, u32, LocalAddr>,
    pub xdp_tx: HashMap<MapData, u32, u32>,
    pub peer_ifs: HashMap<MapData, u32, u32>,
    pub config: Array<MapData, Config>,
    pub rr: Array<MapData, u32>,
    pub nat_cursor: Array<MapData, u32>,
    pub ports: Array<MapData, u64>,
    pub service_stats: PerCpuArray<MapData, Counters>,
    pub backend_stats: PerCpuArray<MapData, Counters>,
    pub stats: PerCpuArray<MapData, u64>,
    pub service_refused: PerCpuArray<MapData, u64>,
    pub dns_a: HashMap<MapData, DnsName, DnsAddrs>,
    pub dns_stats: PerCpuArray<MapData, u64>,
    pub acl: LpmTrie<MapData, AclData, u32>,
    pub service_denied: PerCpuArray<MapData, u64>,
    pub backend_live: Array<MapData, u64>,
}

/// How a map as the kernel holds it differs from its row of the table; `caps` also checks
/// the sizes chosen at load (an adopted pin keeps the sizes it was created with). `None`
/// when it agrees (or its description cannot be read, which the kernel would refuse later).
pub fn mismatch(def: &MapDef, data: &MapData, caps: Option<&Capacities>) -> Option<Mismatch> {
    let info = data.info().ok()?;
    let mut checks = vec![
        ("key size", info.key_size() as u64, def.key_size as u64),
        (
            "value size",
            info.value_size() as u64,
            def.value_size as u64,
        ),
    ];
    if let Some(caps) = caps {
        checks.push((
            "max_entries",
            info.max_entries() as u64,
            caps.entries(def.size) as u64,
        ));
    }
    checks
        .into_iter()
        .find(|(_, found, want)| found != want)
        .map(|(what, found, want)| Mismatch { what, found, want })
}

#[derive(Debug)]
pub struct Mismatch {
    pub what: &'static str,
    pub found: u64,
    pub want: u64,
}

impl Maps {
    /// Takes every map out of a loaded object; the programs stay in it.
    pub fn take(ebpf: &mut Ebpf, caps: &Capacities) -> Result<Self> {
        Self::build(
            |name| {
                ebpf.take_map(name)
                    .with_context(|| format!("map {name} missing from the object"))
            },
            Some(caps),
        )
    }

    /// Opens the maps pinned under `layout`, as `lb run` left them.
    pub fn open_pinned(layout: &PinLayout) -> Result<Self> {
        Self::build(
            |name| {
                let path = layout.map(name);
                let data = MapData::from_pin(&path).with_context(|| {
                    format!(
                        "opening {} (is `lb run` using --pin-path {}?)",
                        path.display(),
                        layout.root.display()
                    )
                })?;
                Map::from_map_data(data)
                    .with_context(|| format!("{} has an unexpected map type", path.display()))
            },
            None,
        )
    }

    fn build(
        mut get: impl FnMut(&'static str) -> Result<Map>,
        caps: Option<&Capacities>,
    ) -> Result<Self> {
        let maps = Self {
            services: HashMap::try_from(get(MAP_SERVICES)?)?,
            backends: HashMap::try_from(get(MAP_BACKENDS)?)?,
            flows: HashMap::try_from(get(MAP_FLOWS)?)?,
            local_addrs: HashMap::try_from(get(MAP_LOCAL_ADDRS)?)?,
            xdp_tx: HashMap::try_from(get(MAP_XDP_TX)?)?,
            peer_ifs: HashMap::try_from(get(MAP_PEER_IFS)?)?,
            config: Array::try_from(get(MAP_CONFIG)?)?,
            rr: Array::try_from(get(MAP_RR)?)?,
            nat_cursor: Array::try_from(get(MAP_NAT_CURSOR)?)?,
            ports: Array::try_from(get(MAP_PORTS)?)?,
            service_stats: PerCpuArray::try_from(get(MAP_SERVICE_STATS)?)?,
            backend_stats: PerCpuArray::try_from(get(MAP_BACKEND_STATS)?)?,
            stats: PerCpuArray::try_from(get(MAP_STATS)?)?,
            service_refused: PerCpuArray::try_from(get(MAP_SERVICE_REFUSED)?)?,
            dns_a: HashMap::try_from(get(MAP_DNS_A)?)?,
            dns_stats: PerCpuArray::try_from(get(MAP_DNS_STATS)?)?,
            acl: LpmTrie::try_from(get(MAP_ACL)?)?,
            service_denied: PerCpuArray::try_from(get(MAP_SERVICE_DENIED)?)?,
            backend_live: Array::try_from(get(MAP_BACKEND_LIVE)?)?,
        };
        for def in &MAPS {
            if let Some(m) = mismatch(def, maps.data(def.name), caps) {
                bail!(
                    "map {} has {} {}, this build needs {}",
                    def.name,
                    m.what,
                    m.found,
                    m.want
                );
            }
        }
        Ok(maps)
    }

    /// The kernel object behind the map named `name` (one of `lb_common::ALL_MAPS`).
    fn data(&self, name: &str) -> &MapData {
        match name {
            MAP_SERVICES => self.services.map(),
            MAP_BACKENDS => self.backends.map(),
            MAP_FLOWS => self.flows.map(),
            MAP_LOCAL_ADDRS => self.local_addrs.map(),
            MAP_XDP_TX => self.xdp_tx.map(),
            MAP_PEER_IFS => self.peer_ifs.map(),
            MAP_CONFIG => self.config.map(),
            MAP_RR => self.rr.map(),
            MAP_NAT_CURSOR => self.nat_cursor.map(),
            MAP_PORTS => self.ports.map(),
            MAP_SERVICE_STATS => self.service_stats.map(),
            MAP_BACKEND_STATS => self.backend_stats.map(),
            MAP_STATS => self.stats.map(),
            MAP_SERVICE_REFUSED => self.service_refused.map(),
            MAP_DNS_A => self.dns_a.map(),
            MAP_DNS_STATS => self.dns_stats.map(),
            MAP_ACL => self.acl.map(),
            MAP_SERVICE_DENIED => self.service_denied.map(),
            MAP_BACKEND_LIVE => self.backend_live.map(),
            other => unreachable!("{other} is not in the map table"),
        }
    }

    pub fn config(&self) -> Config {
        self.config.get(&0, 0).unwrap_or_default()
    }

    /// Writes the data plane's configuration. The route generation always moves on from the
    /// one in force (also one left by an earlier daemon), so no flow keeps a route cached before.
    pub fn write_config(&mut self, cfg: &Config) -> Result<()> {
        let old = self.config.get(&0, 0).context("reading LB_CONFIG")?;
        let cfg = Config {
            route_gen: next_route_gen(old.route_gen),
            ..*cfg
        };
        self.config.set(0, cfg, 0).context("writing LB_CONFIG")
    }

    /// Invalidates every cached route (routes, neighbours, links or `LB_XDP_TX` changed): the
    /// configuration in force, written again, which moves the generation on.
    pub fn bump_route_gen(&mut self) -> Result<()> {
        let cfg = self.config.get(&0, 0).context("reading LB_CONFIG")?;
        self.write_config(&cfg)
    }

    /// Replaces the set of the agent's own addresses (where wildcard services answer).
    pub fn write_local_addrs(&mut self, addrs: &[(Ipv4Addr, u32)]) -> Result<()> {
        let want: BTreeMap<u32, u32> = addrs.iter().map(|(a, i)| (be_ip(*a), *i)).collect();
        let stale: Vec<u32> = self
            .local_addrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains_key(k))
            .collect();
        for k in stale {
            self.local_addrs.remove(&k).ok();
        }
        for (k, ifindex) in want {
            self.local_addrs
                .insert(k, LocalAddr { ifindex, _pad: 0 }, 0)
                .with_context(|| format!("LB_LOCAL_ADDRS[{}]", ip(k)))?;
        }
        Ok(())
    }
}

/// 0 means "no route cached" in a flow, so the generation skips it when it wraps.
const fn next_route_gen(gen_: u32) -> u32 {
    match gen_.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

/// What the planner needs of the maps: the writes it plans, and the reads that rebuild it
/// after a restart. `Maps` is the kernel's; host tests use a fake (`plan::tests`).
pub trait LbMaps {
    fn run(&mut self, op: &Op) -> Result<()>;
    fn services(&self) -> Vec<(ServiceKey, Service)>;
    fn backend(&self, key: &BackendKey) -> Option<Backend>;
    fn backend_keys(&self) -> Vec<BackendKey>;
    fn for_each_flow(&self, f: &mut dyn FnMut(&FlowKey, &Flow));
    /// Every allowed range in `LB_ACL`, with its service id.
    fn allowed(&self) -> Vec<(u32, Cidr)>;
}

/// Runs `ops` in order; stops at the first that fails.
pub fn execute(maps: &mut impl LbMaps, ops: &[Op]) -> Result<()> {
    ops.iter().try_for_each(|op| maps.run(op))
}

fn zero_counters<T: Pod + Default>(m: &mut PerCpuArray<MapData, T>, id: u32) -> Result<()> {
    let zeros = PerCpuValues::try_from(vec![T::default(); nr_cpus().map_err(|(_, e)| e)?])?;
    Ok(m.set(id, zeros, 0)?)
}

impl LbMaps for Maps {
    fn run(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::ZeroServiceCounters(id) => zero_counters(&mut self.service_stats, *id)
                .with_context(|| format!("{MAP_SERVICE_STATS}[{id}]"))
                .and_then(|()| {
                    zero_counters(&mut self.service_refused, *id)
                        .with_context(|| format!("{MAP_SERVICE_REFUSED}[{id}]"))
                })
                .and_then(|()| {
                    zero_counters(&mut self.service_denied, *id)
                        .with_context(|| format!("{MAP_SERVICE_DENIED}[{id}]"))
                }),
            Op::ZeroBackendCounters(id) => zero_counters(&mut self.backend_stats, *id)
                .with_context(|| format!("{MAP_BACKEND_STATS}[{id}]"))
                .and_then(|()| self.run(&Op::SetBackendLive(*id, 0))),
            Op::SetBackendLive(id, n) => self
                .backend_live
                .set(*id, *n, 0)
                .with_context(|| format!("{MAP_BACKEND_LIVE}[{id}]")),
            Op::PutBackend(k, b) => self
                .backends
                .insert(k, b, 0)
                .with_context(|| format!("writing backend {k:?}")),
            Op::DeleteBackend(k) => {
                // Already gone is fine: the goal is its absence.
                self.backends.remove(k).ok();
                Ok(())
            }
            Op::PutPortWord(w, bits) => self
                .ports
                .set(*w, *bits, 0)
                .with_context(|| format!("writing {MAP_PORTS}[{w}]")),
            Op::PutService(k, s) => self
                .services
                .insert(k, s, 0)
                .with_context(|| format!("writing service {k:?}")),
            Op::DeleteService(k) => {
                self.services.remove(k).ok();
                Ok(())
            }
            Op::PutAllow(id, range) => self
                .acl
                .insert(&acl_key(*id, range), 1, 0)
                .with_context(|| format!("writing {MAP_ACL}: service {id} allows {range}")),
            Op::DeleteAllow(id, range) => {
                self.acl.remove(&acl_key(*id, range)).ok();
                Ok(())
            }
        }
    }

    fn services(&self) -> Vec<(ServiceKey, Service)> {
        self.services.iter().filter_map(Result::ok).collect()
    }

    fn backend(&self, key: &BackendKey) -> Option<Backend> {
        self.backends.get(key, 0).ok()
    }

    fn backend_keys(&self) -> Vec<BackendKey> {
        self.backends.keys().filter_map(Result::ok).collect()
    }

    fn for_each_flow(&self, f: &mut dyn FnMut(&FlowKey, &Flow)) {
        for (k, v) in self.flows.iter().filter_map(Result::ok) {
            f(&k, &v);
        }
    }

    fn allowed(&self) -> Vec<(u32, Cidr)> {
        self.acl
            .keys()
            .filter_map(Result::ok)
            .filter_map(|k| acl_range(&k))
            .collect()
    }
}
