//! A zone made ready to answer from: hickory records built once per zone change, and the
//! lookup that turns a question into the sections of an answer (pure: no sockets, so the
//! rules — NODATA, NXDOMAIN with the SOA, rotation, glue — are tested on the host).
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
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
    zone::{Zone, existing_names},
};

/// One apex `lb` is authoritative for, with its SOA and NS records.
struct Apex {
    name: LowerName,
    soa: Record,
    ns: Record,
}

#[derive(Default)]
struct Node {
    a: Vec<Record>,
    srv: Vec<Record>,
}

/// The zone as records, ready to answer from.
pub struct Answers {
    apexes: Vec<Apex>,
    nodes: HashMap<LowerName, Node>,
    /// Names that exist without records of their own (`marathon.mesos`): NOERROR, no data.
    existing: HashSet<LowerName>,
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

impl Answers {
    /// Records for `zone`, with `ttl` on every record and `serial` in the SOAs. Names that are
    /// not valid DNS names (a cleaned label plus the task suffix over 63 characters) are left
    /// out.
    pub fn new(zone: &Zone, ttl: u32, serial: u32) -> Self {
        let domain = zone.domain.as_str();
        let apexes = [
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
        .collect();
        let mut nodes: HashMap<LowerName, Node> = HashMap::with_capacity(zone.names.len());
        let mut records = 0;
        for (n, r) in &zone.names {
            let Some(owner) = name(n) else { continue };
            let node = Node {
                a: r.a
                    .iter()
                    .map(|ip| Record::from_rdata(owner.clone(), ttl, RData::A(A(*ip))))
                    .collect(),
                srv: r
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
            };
            records += node.a.len() + node.srv.len();
            nodes.insert(LowerName::from(&owner), node);
        }
        let existing = existing_names(zone)
            .iter()
            .filter_map(|n| name(n).map(|n| LowerName::from(&n)))
            .collect();
        Self {
            apexes,
            names: nodes.len(),
            nodes,
            existing,
            records,
            serial,
        }
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
        let exists = node.is_some() || self.existing.contains(qname);
        if !exists {
            out.code = ResponseCode::NXDomain;
            out.authorities.push(apex.soa.clone());
            return Some(out);
        }
        let at_apex = &apex.name == qname;
        let empty = Node::default();
        let node = node.unwrap_or(&empty);
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
}
