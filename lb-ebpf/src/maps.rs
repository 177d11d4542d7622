//! Every map of the data plane, declared with BTF so `bpftool map dump` prints field names.
//! Who writes and who reads each one is documented on its name in `lb-common`.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    macros::btf_map,
};
use lb_common::{
    AclData, Backend, BackendKey, Config, Counters, DNS_STAT_COUNT, DnsAddrs, DnsName, DnsStat,
    Flow, FlowKey, LocalAddr, MAX_ACL_ENTRIES, MAX_BACKEND_IDS, MAX_BACKEND_SLOTS, MAX_DNS_NAMES,
    MAX_FLOW_ENTRIES, MAX_LOCAL_ADDRS, MAX_PEER_IFS, MAX_SERVICES, MAX_XDP_TX, PORT_BACKEND,
    PORT_GATE_WORDS, PORT_SERVICE, STAT_COUNT, Service, ServiceKey, Stat, port_gate_slot,
};

#[btf_map]
pub static LB_SERVICES: HashMap<ServiceKey, Service, { MAX_SERVICES as usize }> = HashMap::new();

#[btf_map]
pub static LB_BACKENDS: HashMap<BackendKey, Backend, { MAX_BACKEND_SLOTS as usize }> =
    HashMap::new();

#[btf_map]
pub static LB_FLOWS: LruHashMap<FlowKey, Flow, { MAX_FLOW_ENTRIES as usize }> = LruHashMap::new();

#[btf_map]
pub static LB_LOCAL_ADDRS: HashMap<u32, LocalAddr, { MAX_LOCAL_ADDRS as usize }> = HashMap::new();

#[btf_map]
pub static LB_XDP_TX: HashMap<u32, u32, { MAX_XDP_TX as usize }> = HashMap::new();

#[btf_map]
pub static LB_PEER_IFS: HashMap<u32, u32, { MAX_PEER_IFS as usize }> = HashMap::new();

#[btf_map]
pub static LB_CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub static LB_RR: Array<u32, { MAX_SERVICES as usize }> = Array::new();

#[btf_map]
pub static LB_NAT_CURSOR: Array<u32, { MAX_BACKEND_IDS as usize }> = Array::new();

#[btf_map]
pub static LB_PORTS: Array<u64, { PORT_GATE_WORDS as usize }> = Array::new();

#[btf_map]
pub static LB_SVC_STATS: PerCpuArray<Counters, { MAX_SERVICES as usize }> = PerCpuArray::new();

#[btf_map]
pub static LB_BE_STATS: PerCpuArray<Counters, { MAX_BACKEND_IDS as usize }> = PerCpuArray::new();

#[btf_map]
pub static LB_SVC_REFUSED: PerCpuArray<u64, { MAX_SERVICES as usize }> = PerCpuArray::new();

#[btf_map]
pub static LB_STATS: PerCpuArray<u64, { STAT_COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static LB_DNS_A: HashMap<DnsName, DnsAddrs, { MAX_DNS_NAMES as usize }> = HashMap::new();

#[btf_map]
pub static LB_DNS_STATS: PerCpuArray<u64, { DNS_STAT_COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static LB_ACL: LpmTrie<AclData, u32, { MAX_ACL_ENTRIES as usize }> = LpmTrie::new();

#[btf_map]
pub static LB_SVC_DENIED: PerCpuArray<u64, { MAX_SERVICES as usize }> = PerCpuArray::new();

#[btf_map]
pub static LB_BE_LIVE: Array<u64, { MAX_BACKEND_IDS as usize }> = Array::new();

/// Whether `client` (network order) is inside one of the allowed ranges of `service_id`.
#[inline(always)]
pub fn allowed(service_id: u32, client: u32) -> bool {
    let key = Key::new(
        64,
        AclData {
            service_id,
            addr: client,
        },
    );
    LB_ACL.get(&key).is_some()
}

/// Counts a packet refused by a service's allowed ranges.
#[inline(always)]
pub fn count_denied(service_id: u32) {
    if let Some(c) = LB_SVC_DENIED.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_dns(stat: DnsStat) {
    if let Some(c) = LB_DNS_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
        unsafe { *c += 1 };
    }
}

/// The port gate: false when neither the destination is a service port nor the source a
/// backend port (of this protocol), so the packet can be no flow's and no service's.
#[inline(always)]
pub fn may_be_ours(key: &FlowKey) -> bool {
    let set = |kind, port: u16| {
        let (word, bit) = port_gate_slot(kind, key.proto, u16::from_be(port));
        LB_PORTS.get(word).is_some_and(|w| *w & bit != 0)
    };
    set(PORT_SERVICE, key.dport) || set(PORT_BACKEND, key.sport)
}

/// Counts `stat` in `LB_STATS` (`DropDenied` has no slot there and is counted per service).
#[inline(always)]
pub fn count(stat: Stat) {
    if stat as u32 >= STAT_COUNT {
        return;
    }
    if let Some(c) = LB_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
        unsafe { *c += 1 };
    }
}

/// Adds one forwarded packet of `bytes` to a service's and a backend's counters.
#[inline(always)]
pub fn count_traffic(service_id: u32, backend_id: u32, bytes: u64) {
    if let Some(c) = LB_SVC_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
    if let Some(c) = LB_BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// The daemon's route generation (see `Config::route_gen`), read in place.
#[inline(always)]
pub fn route_gen() -> u32 {
    match LB_CONFIG.get(0) {
        Some(c) => c.route_gen,
        None => 0,
    }
}

#[inline(always)]
pub fn config() -> Config {
    match LB_CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}
