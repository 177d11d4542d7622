//! The DNS fast path's records: the A records of the zone that the XDP program can answer
//! (names of at most `DNS_NAME_MAX` wire bytes, 1 to `DNS_ADDRS_MAX` addresses), kept in
//! `LB_DNS_A` as the zone changes. The rest of the zone is the userspace server's alone, and so
//! are the names that find the map full (`--max-dns-names`): they are counted, not errors.
use std::collections::HashMap;

use anyhow::{Context as _, Result};
use aya::maps::MapError;
use lb_common::{DNS_ADDRS_MAX, DNS_NAME_MAX, DnsAddrs, DnsName, DnsStat};

use super::maps::Maps;
use crate::dns::zone::Zone;

/// `LB_DNS_A` as the daemon wrote it.
#[derive(Debug, Default)]
pub struct FastRecords {
    written: HashMap<DnsName, DnsAddrs>,
    /// Names of the last zone the map had no room for.
    left_out: usize,
}

/// The entries of `LB_DNS_A` for `zone`.
pub fn entries(zone: &Zone) -> HashMap<DnsName, DnsAddrs> {
    zone.a_wire()
        .filter(|(wire, addrs)| wire.len() <= DNS_NAME_MAX && addrs.len() <= DNS_ADDRS_MAX)
        .map(|(wire, addrs)| {
            let mut name = DnsName::default();
            name.wire[..wire.len()].copy_from_slice(&wire);
            let mut value = DnsAddrs {
                count: addrs.len() as u32,
                ..DnsAddrs::default()
            };
            for (slot, a) in value.addrs.iter_mut().zip(addrs) {
                *slot = u32::from(*a).to_be();
            }
            (name, value)
        })
        .collect()
}

/// Queries the XDP program has answered since `LB_DNS_STATS` was created.
pub fn answered(maps: &Maps) -> u64 {
    maps.dns_stats
        .get(&(DnsStat::Answered as u32), 0)
        .map_or(0, |per_cpu| per_cpu.iter().sum())
}

impl FastRecords {
    /// What the map holds now (a restarted daemon adopts it, so stale names go too).
    pub fn adopt(maps: &Maps) -> Self {
        Self {
            written: maps.dns_a.iter().filter_map(Result::ok).collect(),
            left_out: 0,
        }
    }

    /// Names of the last zone synced that the map had no room for (the userspace server
    /// answers them).
    pub fn left_out(&self) -> usize {
        self.left_out
    }

    /// Writes what differs between the map and `zone`, removals first; returns the names
    /// written and removed. A name that finds the map full is left out (`left_out`); one
    /// already held keeps its place.
    pub fn sync(&mut self, maps: &mut Maps, zone: &Zone) -> Result<(usize, usize)> {
        let want = entries(zone);
        let gone: Vec<DnsName> = self
            .written
            .keys()
            .filter(|name| !want.contains_key(*name))
            .copied()
            .collect();
        for name in &gone {
            match maps.dns_a.remove(name) {
                // Already gone (removed by hand, say): what was wanted.
                Ok(()) => {}
                Err(e) if is_absent(&e) => {}
                Err(e) => return Err(e).context("removing a name from LB_DNS_A"),
            }
            self.written.remove(name);
        }
        let mut written = 0;
        let mut left_out = 0;
        for (name, value) in &want {
            if self.written.get(name) == Some(value) {
                continue;
            }
            match maps.dns_a.insert(name, value, 0) {
                Ok(()) => {
                    self.written.insert(*name, *value);
                    written += 1;
                }
                // Only a new name can find the map full: the kernel replaces a held one's value
                // in place (spare preallocated entries), so no stale value stays behind.
                Err(e) if is_full(&e) => left_out += 1,
                Err(e) => {
                    self.left_out = left_out;
                    return Err(e).context("writing a name to LB_DNS_A");
                }
            }
        }
        self.left_out = left_out;
        Ok((written, gone.len()))
    }
}

/// Whether a hash map refused an insert for want of room (`E2BIG`).
pub(super) fn is_full(e: &MapError) -> bool {
    errno(e) == Some(libc::E2BIG)
}

/// Whether a removal found the name already gone (`ENOENT`).
fn is_absent(e: &MapError) -> bool {
    errno(e) == Some(libc::ENOENT)
}

fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dns::zone::Records;

    #[test]
    fn only_names_the_fast_path_can_answer_become_entries() {
        let mut z = Zone {
            domain: "mesos".into(),
            ..Zone::default()
        };
        let a = |n: u8| Ipv4Addr::new(192, 168, 0, n);
        z.names.insert(
            "web.marathon.mesos".into(),
            Records {
                a: vec![a(1), a(2)],
                srv: vec![],
            },
        );
        z.names.insert(
            "big.marathon.mesos".into(),
            Records {
                a: (1..=9).map(a).collect(),
                srv: vec![],
            },
        );
        z.names.insert(
            format!("{}.marathon.mesos", "x".repeat(50)),
            Records {
                a: vec![a(1)],
                srv: vec![],
            },
        );
        z.names
            .insert("_web._tcp.marathon.mesos".into(), Records::default());
        let e = entries(&z);
        assert_eq!(e.len(), 1, "{e:?}");
        let (name, value) = e.iter().next().unwrap();
        assert_eq!(&name.wire[..20], b"\x03web\x08marathon\x05mesos\x00");
        assert!(name.wire[20..].iter().all(|b| *b == 0));
        assert_eq!(value.count, 2);
        assert_eq!(
            value.addrs[..2],
            [u32::from(a(1)).to_be(), u32::from(a(2)).to_be()]
        );
    }
}
