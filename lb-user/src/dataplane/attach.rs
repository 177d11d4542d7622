//! Attaching the programs to every interface that matches `--iface`, including ones that
//! appear later, through pinned BPF links: a link outlives the daemon, and a new daemon
//! swaps the program inside it atomically instead of detaching the interface.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use lb_common::{MAP_PEER_IFS, MAP_XDP_TX, PROG_TC, PROG_XDP};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    Dataplane,
    ifaces::{self, Iface, glob_match},
    pins::PinLayout,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// XDP for the fast path, with the TC program beside it for what XDP cannot redirect.
    Xdp,
    /// TC (clsact ingress) only: works on every interface.
    Tc,
    /// XDP (with TC) on physical NICs where the driver takes it; TC alone on virtual
    /// interfaces, whose XDP sees partial checksums and gains nothing.
    Auto,
}

pub const XDP: &str = "xdp";
pub const TC: &str = "tc";

/// What is attached where, as the daemon last left it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub ifindex: u32,
    pub xdp: bool,
    pub tc: bool,
    pub xdp_redirect: bool,
}

pub struct Attacher {
    pub layout: PinLayout,
    pub hook: Hook,
    pub patterns: Vec<String>,
    /// Interfaces that may receive XDP redirects; empty means "the non-virtual ones".
    pub redirect_patterns: Vec<String>,
    /// Whether TC may hand packets to task veths' peers (`LB_PEER_IFS`; `--redirect-peer`).
    pub redirect_peer: bool,
    /// The veths it may do so for (`--redirect-peer-iface`); empty means every one.
    pub redirect_peer_patterns: Vec<String>,
    pub attached: BTreeMap<String, Attached>,
}

impl Attacher {
    fn wants(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| glob_match(p, name))
    }

    fn redirect_ok(&self, iface: &Iface) -> bool {
        if self.redirect_patterns.is_empty() {
            !iface.is_virtual
        } else {
            self.redirect_patterns
                .iter()
                .any(|p| glob_match(p, &iface.name))
        }
    }

    /// Brings attachments in line with the interfaces that exist now. Errors on one
    /// interface are logged and do not stop the others.
    /// Attaches to every matching interface not yet attached, forgets the ones gone, and
    /// rewrites `LB_XDP_TX` (so every cached route is invalidated).
    pub fn reconcile(&mut self, dp: &mut Dataplane) -> Result<()> {
        let ebpf = &mut dp.ebpf;
        let present = ifaces::list();
        // Interfaces gone: their links died with them; drop the pins.
        for (ifname, _, path) in self.layout.pinned_links() {
            if !present.contains_key(&ifname) || !self.wants(&ifname) {
                let _ = fs::remove_file(&path);
                if self.attached.remove(&ifname).is_some() {
                    info!(iface = %ifname, "interface gone or no longer matched: detached");
                }
            }
        }
        let matched: Vec<&Iface> = present.values().filter(|i| self.wants(&i.name)).collect();
        for iface in matched {
            if self
                .attached
                .get(&iface.name)
                .is_some_and(|a| a.ifindex == iface.index)
            {
                continue;
            }
            match self.attach(ebpf, iface) {
                Ok(a) => {
                    info!(iface = %iface.name, xdp = a.xdp, tc = a.tc, "attached");
                    self.attached.insert(iface.name.clone(), a);
                }
                Err(e) => warn!(iface = %iface.name, "not attached: {e:#}"),
            }
        }
        self.attached.retain(|name, _| present.contains_key(name));
        let peers = if self.redirect_peer {
            let named: BTreeMap<String, Iface> = present
                .iter()
                .filter(|(name, _)| {
                    self.redirect_peer_patterns.is_empty()
                        || self
                            .redirect_peer_patterns
                            .iter()
                            .any(|p| glob_match(p, name))
                })
                .map(|(name, i)| (name.clone(), i.clone()))
                .collect();
            ifaces::peer_veths(&named)
        } else {
            Vec::new()
        };
        let written = self
            .write_redirect_map(&mut dp.maps.xdp_tx, &present)
            .and_then(|()| write_set(&mut dp.maps.peer_ifs, MAP_PEER_IFS, &peers));
        // Cached routes carry LB_XDP_TX's and LB_PEER_IFS's verdicts: none may stand, also
        // when a write failed half-way.
        dp.maps.bump_route_gen()?;
        written
    }

    fn write_redirect_map(
        &mut self,
        tx: &mut HashMap<MapData, u32, u32>,
        present: &BTreeMap<String, Iface>,
    ) -> Result<()> {
        let ok: Vec<String> = self
            .attached
            .keys()
            .filter(|name| present.get(*name).is_some_and(|i| self.redirect_ok(i)))
            .cloned()
            .collect();
        let mut want = Vec::new();
        for (name, a) in self.attached.iter_mut() {
            a.xdp_redirect = ok.contains(name);
            if a.xdp_redirect {
                want.push(a.ifindex);
            }
        }
        write_set(tx, MAP_XDP_TX, &want)
    }

    fn attach(&self, ebpf: &mut Ebpf, iface: &Iface) -> Result<Attached> {
        let mut a = Attached {
            ifindex: iface.index,
            ..Attached::default()
        };
        let xdp_wanted = match self.hook {
            Hook::Xdp => true,
            Hook::Tc => false,
            Hook::Auto => !iface.is_virtual,
        };
        if xdp_wanted {
            match self.attach_xdp(ebpf, iface) {
                Ok(()) => a.xdp = true,
                Err(e) if self.hook == Hook::Auto => {
                    warn!(iface = %iface.name, "XDP not available, using TC alone: {e:#}");
                }
                Err(e) => return Err(e),
            }
        } else {
            let _ = fs::remove_file(self.layout.link(&iface.name, XDP));
        }
        self.attach_tc(ebpf, iface)?;
        a.tc = true;
        Ok(a)
    }

    fn attach_xdp(&self, ebpf: &mut Ebpf, iface: &Iface) -> Result<()> {
        let prog: &mut Xdp = ebpf.program_mut(PROG_XDP).context("lb_xdp")?.try_into()?;
        let path = self.layout.link(&iface.name, XDP);
        if let Some(link) = adopt::<XdpLink>(&path) {
            match prog.attach_to_link(link) {
                Ok(id) => {
                    // The pin keeps the link; our handle can go.
                    drop(prog.take_link(id)?);
                    return Ok(());
                }
                Err(e) => {
                    warn!(iface = %iface.name, "pinned XDP link unusable ({e}); attaching anew");
                    fs::remove_file(&path).ok();
                }
            }
        }
        let id = prog
            .attach_to_if_index(iface.index, XdpMode::default())
            .with_context(|| format!("attaching XDP to {}", iface.name))?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .context("XDP link is not a bpf_link")?;
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok(())
    }

    fn attach_tc(&self, ebpf: &mut Ebpf, iface: &Iface) -> Result<()> {
        let prog: &mut SchedClassifier = ebpf.program_mut(PROG_TC).context("lb_tc")?.try_into()?;
        let path = self.layout.link(&iface.name, TC);
        if let Some(link) = adopt::<SchedClassifierLink>(&path) {
            match prog.attach_to_link(link) {
                Ok(id) => {
                    drop(prog.take_link(id)?);
                    return Ok(());
                }
                Err(e) => {
                    warn!(iface = %iface.name, "pinned TC link unusable ({e}); attaching anew");
                    fs::remove_file(&path).ok();
                }
            }
        }
        let id = prog
            .attach(&iface.name, TcAttachType::Ingress)
            .with_context(|| format!("attaching TC ingress to {}", iface.name))?;
        let link: FdLink = match prog.take_link(id)?.try_into() {
            Ok(l) => l,
            Err(_) => bail!(
                "TC on {} attached without tcx (kernel < 6.6): cannot pin",
                iface.name
            ),
        };
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok(())
    }
}

/// Opens a pinned link as the program's link type, if one is pinned at `path`.
fn adopt<L: TryFrom<FdLink>>(path: &Path) -> Option<L> {
    let pinned = PinnedLink::from_pin(path).ok()?;
    L::try_from(FdLink::from(pinned)).ok()
}

/// Removes every pinned link under the layout (the kernel detaches each one as its last
/// reference goes), then the maps.
pub fn detach_all(layout: &PinLayout) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for (ifname, hook, path) in layout.pinned_links() {
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        removed.push(format!("{ifname} ({hook})"));
    }
    for hook in super::pins::HOOKS {
        let _ = fs::remove_dir(layout.links_dir().join(hook));
    }
    let _ = fs::remove_dir(layout.links_dir());
    for name in lb_common::ALL_MAPS {
        let path = layout.map(name);
        if path.exists() {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(removed)
}

/// Makes a `u32 ifindex -> 1` map (`LB_XDP_TX`, `LB_PEER_IFS`) hold exactly `want`.
fn write_set(map: &mut HashMap<MapData, u32, u32>, name: &str, want: &[u32]) -> Result<()> {
    // A set: an agent may have thousands of task veths, and `stale` asks of each key.
    let wanted: BTreeSet<u32> = want.iter().copied().collect();
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(k))
        .collect();
    for k in stale {
        let _ = map.remove(&k);
    }
    for &k in want {
        map.insert(k, 1, 0)
            .with_context(|| format!("{name}[{k}]"))?;
    }
    Ok(())
}
