//! A zone made ready to answer from: hickory records built once per zone change, and the
//! lookup that turns a question into the sections of an answer (pure: no sockets, so the
//! rules — NODATA, NXDOMAIN with the SOA, rotation, glue — are tested on the host).
use std::{
    cmp::Ordering,
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use hickory_proto::{
    op::ResponseCode,
    rr::{
        LowerName, Name, RData, Record, RecordType,
        rdata::{A, NS, SOA, SRV},
    },
};

use super::{
    names::DCOS_DOMAIN,
    zone::{Records, Zone},
};

/// One apex `lb` is authoritative for, with its SOA and NS records.
struct Apex {
    name: LowerName,
    soa: Record,
    ns: Record,
}

#[derive(Debug, Default, PartialEq)]
struct Node {
    a: Vec<Record>,
    srv: Vec<Record>,
}

/// The zone as records, ready to answer from.
pub struct Answers {
    ttl: u32,
    apexes: Vec<Apex>,
    /// Shared with the answers of the zone before: a change copies the table, not the records.
    nodes: HashMap<LowerName, Arc<Node>>,
    /// Names that exist (NOERROR), with how many names of the zone are at or below each; the
    /// apexes count once more, so they always exist.
    existing: HashMap<LowerName, u32>,
    /// The zone these answers are of: the next one is compared with it.
    zone: Arc<Zone>,
    pub names: usize,
    pub records: usize,
    pub serial: u32,
}

/// What a question gets: the response code and the three sections.
#[derive(Debug, Default, PartialEq)]
pub struct Lookup {
    pub code: ResponseCode,
    /// False outside the zones (a refusal or an upstream's answer).
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

fn name(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// The apexes of `domain`, with their SOA (carrying `serial`) and NS records.
fn apexes(domain: &str, ttl: u32, serial: u32) -> Vec<Apex> {
    [
        (
            domain,
            format!("ns1.{domain}"),
            format!("root.ns1.{domain}"),
        ),
        (
            DCOS_DOMAIN,
            "ns.spartan".to_owned(),
            "support.mesosphere.com".to_owned(),
        ),
    ]
    .into_iter()
    .filter_map(|(apex, mname, rname)| {
        let apex = name(apex)?;
        let (mname, rname) = (name(&mname)?, name(&rname)?);
        // The SOA's minimum bounds how long resolvers cache NXDOMAIN: the records' TTL,
        // so a new app's name is not refused for longer than a changed one is stale.
        let soa = SOA::new(mname.clone(), rname, serial, 60, 180, 86400, ttl);
        Some(Apex {
            name: LowerName::from(&apex),
            soa: Record::from_rdata(apex.clone(), ttl, RData::SOA(soa)),
            ns: Record::from_rdata(apex, ttl, RData::NS(NS(mname))),
        })
    })
    .collect()
}

/// `records` of the name `owner` as hickory records.
fn node(owner: &Name, records: &Records, ttl: u32) -> Node {
    Node {
        a: records
            .a
            .iter()
            .map(|ip| Record::from_rdata(owner.clone(), ttl, RData::A(A(*ip))))
            .collect(),
        srv: records
            .srv
            .iter()
            .filter_map(|s| {
                let target = name(&s.target)?;
                Some(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::SRV(SRV::new(0, 0, s.port, target)),
                ))
            })
            .collect(),
    }
}

impl Answers {
    /// Records for `zone`, with `ttl` on every record and `serial` in the SOAs. Names that are
    /// not valid DNS names (a cleaned label plus the task suffix over 63 characters) are left
    /// out.
    pub fn new(zone: &Zone, ttl: u32, serial: u32) -> Self {
        Self::of(Arc::new(zone.clone()), ttl, serial)
    }

    /// As `new`, for a zone that is shared.
    pub fn of(zone: Arc<Zone>, ttl: u32, serial: u32) -> Self {
        let empty = Zone {
            domain: zone.domain.clone(),
            ..Zone::default()
        };
        let apexes = apexes(&empty.domain, ttl, serial);
        let existing = apexes.iter().map(|a| (a.name.clone(), 1)).collect();
        let start = Self {
            ttl,
            apexes,
            nodes: HashMap::new(),
            existing,
            zone: Arc::new(empty),
            names: 0,
            records: 0,
            serial,
        };
        start.next(zone, serial)
    }

    /// The answers for `zone`, built from these: only the names whose records differ are
    /// made again.
    pub fn next(&self, zone: Arc<Zone>, serial: u32) -> Self {
        if zone.domain != self.zone.domain {
            return Self::of(zone, self.ttl, serial);
        }
        let mut nodes = self.nodes.clone();
        let mut existing = self.existing.clone();
        let mut records = self.records;
        let apexes = zone.apexes();
        for (n, old, new) in differences(&self.zone, &zone) {
            // The names above a name exist even when the name itself is not a valid one.
            let delta: i64 = i64::from(new.is_some()) - i64::from(old.is_some());
            if delta != 0 {
                for up in ancestry(n, apexes).filter_map(name) {
                    let up = LowerName::from(&up);
                    let count = existing.entry(up.clone()).or_default();
                    *count = count.saturating_add_signed(delta as i32);
                    if *count == 0 {
                        existing.remove(&up);
                    }
                }
            }
            let Some(owner) = name(n) else { continue };
            let key = LowerName::from(&owner);
            if let Some(gone) = nodes.remove(&key) {
                records -= gone.a.len() + gone.srv.len();
            }
            if let Some(new) = new {
                let made = node(&owner, new, self.ttl);
                records += made.a.len() + made.srv.len();
                nodes.insert(key, Arc::new(made));
            }
        }
        Self {
            ttl: self.ttl,
            apexes: self::apexes(&zone.domain, self.ttl, serial),
            names: nodes.len(),
            nodes,
            existing,
            zone,
            records,
            serial,
        }
    }

    /// The zone these answers are of.
    pub fn zone(&self) -> &Arc<Zone> {
        &self.zone
    }

    /// Whether `qname` is under one of the zones.
    pub fn in_zone(&self, qname: &LowerName) -> bool {
        self.apex(qname).is_some()
    }

    fn apex(&self, qname: &LowerName) -> Option<&Apex> {
        self.apexes.iter().find(|a| a.name.zone_of(qname))
    }

    /// The answer to `qtype` for `qname`, address lists rotated by `turn`; `None` outside the
    /// zones.
    pub fn lookup(&self, qname: &LowerName, qtype: RecordType, turn: usize) -> Option<Lookup> {
        let apex = self.apex(qname)?;
        let mut out = Lookup {
            authoritative: true,
            ..Lookup::default()
        };
        let node = self.nodes.get(qname);
        let exists = node.is_some() || self.existing.contains_key(qname);
        if !exists {
            out.code = ResponseCode::NXDomain;
            out.authorities.push(apex.soa.clone());
            return Some(out);
        }
        let at_apex = &apex.name == qname;
        let empty = Node::default();
        let node = node.map_or(&empty, |n| &**n);
        match qtype {
            RecordType::A => out.answers = rotated(&node.a, turn),
            RecordType::SRV => {
                out.answers = rotated(&node.srv, turn);
                out.additionals = self.glue(&out.answers);
            }
            RecordType::ANY => {
                out.answers = rotated(&node.a, turn);
                out.answers.extend(rotated(&node.srv, turn));
                if at_apex {
                    out.answers.push(apex.soa.clone());
                    out.answers.push(apex.ns.clone());
                }
            }
            RecordType::SOA if at_apex => out.answers.push(apex.soa.clone()),
            RecordType::NS if at_apex => out.answers.push(apex.ns.clone()),
            _ => {}
        }
        if out.answers.is_empty() {
            // NOERROR without data: the name exists, the type does not (RFC 2308).
            out.authorities.push(apex.soa.clone());
        }
        Some(out)
    }

    /// The A records of the SRV targets, in the order of the targets.
    fn glue(&self, srv: &[Record]) -> Vec<Record> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in srv {
            let RData::SRV(s) = &r.data else { continue };
            let target = LowerName::from(&s.target);
            if !seen.insert(target.clone()) {
                continue;
            }
            if let Some(n) = self.nodes.get(&target) {
                out.extend(n.a.iter().cloned());
            }
        }
        out
    }
}

/// The names whose records differ between `old` and `new`, with the records of each side
/// (`None`: not there), in name order.
fn differences<'z>(
    old: &'z Zone,
    new: &'z Zone,
) -> impl Iterator<Item = (&'z str, Option<&'z Records>, Option<&'z Records>)> {
    let mut a = old.names.iter().peekable();
    let mut b = new.names.iter().peekable();
    std::iter::from_fn(move || {
        loop {
            let step = match (a.peek(), b.peek()) {
                (None, None) => return None,
                (Some((n, r)), None) => (n.as_str(), Some(*r), None, true, false),
                (None, Some((n, r))) => (n.as_str(), None, Some(*r), false, true),
                (Some((na, ra)), Some((nb, rb))) => match na.cmp(nb) {
                    Ordering::Less => (na.as_str(), Some(*ra), None, true, false),
                    Ordering::Greater => (nb.as_str(), None, Some(*rb), false, true),
                    Ordering::Equal => (na.as_str(), Some(*ra), Some(*rb), true, true),
                },
            };
            let (n, ra, rb, take_a, take_b) = step;
            if take_a {
                a.next();
            }
            if take_b {
                b.next();
            }
            if ra != rb {
                return Some((n, ra, rb));
            }
        }
    })
}

/// `name` and the names above it, up to the apex it is under (or the top).
fn ancestry<'n>(name: &'n str, apexes: [&str; 2]) -> impl Iterator<Item = &'n str> {
    let mut next = Some(name);
    std::iter::from_fn(move || {
        let n = next?;
        next = if apexes.contains(&n) {
            None
        } else {
            n.split_once('.').map(|(_, parent)| parent)
        };
        Some(n)
    })
}

/// `records` starting at `turn` (modulo their number): each query gets the next rotation, as
/// Mesos-DNS's shuffle and dcos-net's rotation spread clients over the tasks.
fn rotated(records: &[Record], turn: usize) -> Vec<Record> {
    if records.is_empty() {
        return Vec::new();
    }
    let k = turn % records.len();
    records[k..].iter().chain(&records[..k]).cloned().collect()
}

/// The addresses of an answer's A records, in order (for tests and `lb dns`).
pub fn addresses(records: &[Record]) -> Vec<Ipv4Addr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::dns::zone::{Records, SrvTarget};

    fn zone() -> Zone {
        let mut z = Zone {
            domain: "mesos".into(),
            ..Zone::default()
        };
        z.names.insert(
            "nginx.marathon.mesos".into(),
            Records {
                a: vec![
                    "192.168.0.1".parse().unwrap(),
                    "192.168.0.2".parse().unwrap(),
                    "192.168.0.3".parse().unwrap(),
                ],
                srv: vec![],
            },
        );
        z.names.insert(
            "nginx-abcde-s1.marathon.mesos".into(),
            Records {
                a: vec!["192.168.0.1".parse().unwrap()],
                srv: vec![],
            },
        );
        z.names.insert(
            "_nginx._tcp.marathon.mesos".into(),
            Records {
                a: vec![],
                srv: vec![SrvTarget {
                    target: "nginx-abcde-s1.marathon.mesos".into(),
                    port: 80,
                }],
            },
        );
        z
    }

    fn q(s: &str) -> LowerName {
        LowerName::from_str(s).unwrap()
    }

    #[test]
    fn answers_rotate_per_query() {
        let a = Answers::new(&zone(), 5, 1);
        let l0 = a
            .lookup(&q("nginx.marathon.mesos."), RecordType::A, 0)
            .unwrap();
        let l1 = a
            .lookup(&q("NGINX.Marathon.mesos."), RecordType::A, 1)
            .unwrap();
        assert_eq!(l0.code, ResponseCode::NoError);
        assert!(l0.authoritative);
        assert_eq!(addresses(&l0.answers)[0].to_string(), "192.168.0.1");
        assert_eq!(addresses(&l1.answers)[0].to_string(), "192.168.0.2");
        assert_eq!(l1.answers.len(), 3);
        assert!(l1.answers.iter().all(|r| r.ttl == 5));
        assert_eq!((a.names, a.records), (3, 5));
    }

    #[test]
    fn srv_answers_carry_their_targets_addresses() {
        let a = Answers::new(&zone(), 5, 1);
        let l = a
            .lookup(&q("_nginx._tcp.marathon.mesos."), RecordType::SRV, 7)
            .unwrap();
        assert_eq!(l.answers.len(), 1);
        assert_eq!(addresses(&l.additionals).len(), 1);
    }

    #[test]
    fn nodata_nxdomain_and_outside() {
        let a = Answers::new(&zone(), 5, 9);
        // Known name, other type: NOERROR, no data, SOA.
        let l = a
            .lookup(&q("nginx.marathon.mesos."), RecordType::AAAA, 0)
            .unwrap();
        assert_eq!(l.code, ResponseCode::NoError);
        assert!(l.answers.is_empty());
        assert_eq!(l.authorities[0].record_type(), RecordType::SOA);
        // A name above a record exists too (an empty non-terminal).
        let l = a.lookup(&q("marathon.mesos."), RecordType::A, 0).unwrap();
        assert_eq!(l.code, ResponseCode::NoError);
        // Unknown: NXDOMAIN with the SOA, serial and minimum as given.
        let l = a
            .lookup(&q("nope.marathon.mesos."), RecordType::A, 0)
            .unwrap();
        assert_eq!(l.code, ResponseCode::NXDomain);
        let RData::SOA(soa) = &l.authorities[0].data else {
            panic!("SOA in authority: {l:?}")
        };
        assert_eq!((soa.serial, soa.minimum), (9, 5));
        // The apexes answer SOA and NS; dcos-net's zone exists even when empty.
        let l = a.lookup(&q("mesos."), RecordType::SOA, 0).unwrap();
        assert_eq!(l.answers[0].record_type(), RecordType::SOA);
        let l = a
            .lookup(
                &q("x.marathon.containerip.dcos.thisdcos.directory."),
                RecordType::A,
                0,
            )
            .unwrap();
        assert_eq!(l.code, ResponseCode::NXDomain);
        assert!(a.lookup(&q("example.com."), RecordType::A, 0).is_none());
        assert!(a.lookup(&q("notmesos."), RecordType::A, 0).is_none());
    }

    #[test]
    fn answers_made_from_the_last_equal_answers_made_afresh() {
        use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

        use crate::dns::zone::existing_names;
        // Few names, deep and shallow, so that names appear, change, vanish and share parents.
        const NAMES: [&str; 7] = [
            "web.marathon.mesos",
            "web-abcde-s1.marathon.mesos",
            "_web._tcp.marathon.mesos",
            "api.prod.marathon.mesos",
            "x.y.prod.marathon.mesos",
            "web.marathon.containerip.dcos.thisdcos.directory",
            "bad..name.mesos",
        ];
        for seed in 0..100 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut z = Zone {
                domain: "mesos".into(),
                ..Zone::default()
            };
            let mut answers = Answers::new(&z, 5, 0);
            for step in 1..30 {
                for _ in 0..rng.random_range(1..3) {
                    let n = NAMES[rng.random_range(0..NAMES.len())];
                    if rng.random_bool(0.3) {
                        z.names.remove(n);
                    } else {
                        let records = Records {
                            a: (0..rng.random_range(0..3))
                                .map(|i| Ipv4Addr::new(10, 0, 0, i + rng.random_range(0..2)))
                                .collect(),
                            srv: (0..rng.random_range(0..2))
                                .map(|_| SrvTarget {
                                    target: NAMES[1].into(),
                                    port: 80,
                                })
                                .collect(),
                        };
                        z.names.insert(n.into(), records);
                    }
                }
                answers = answers.next(Arc::new(z.clone()), step);
                let fresh = Answers::new(&z, 5, step);
                let at = format!("seed {seed}, step {step}");
                assert_eq!(answers.nodes, fresh.nodes, "{at}");
                assert_eq!(answers.existing, fresh.existing, "{at}");
                assert_eq!(
                    (answers.names, answers.records),
                    (fresh.names, fresh.records),
                    "{at}"
                );
                let want: HashSet<LowerName> = existing_names(&z)
                    .iter()
                    .filter_map(|n| name(n).map(|n| LowerName::from(&n)))
                    .collect();
                let have: HashSet<LowerName> = answers.existing.keys().cloned().collect();
                assert_eq!(have, want, "{at}");
            }
        }
    }
}
