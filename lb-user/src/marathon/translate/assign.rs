//! Service ports for IP-per-task apps that Marathon gave none (Marathon #3636: apps with an
//! `ipAddress` and discovery ports, before 1.5), made up as marathon-lb's `ServicePortAssigner`
//! does so that every instance of lb and marathon-lb picks the same ones: for the app's n-th
//! container port, the first 8 hex digits of sha1("<app id>-<container port>-<try>") modulo
//! the range size, tried again on a clash up to 50 times, then the first free port; nothing
//! once the range is used up.
//!
//! marathon-lb assigns in the order it lists apps (Marathon's); lb in unit order (app ids), as
//! for every other clash. The two agree whenever no two apps' hashes meet, and lb's instances
//! always agree with each other.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use sha1::{Digest, Sha1};

use super::{
    ports::{Mode, container_ports, networking_mode, port_slots},
    units::Unit,
};
use crate::marathon::api::App;

/// marathon-lb's `MAX_CLASHES`.
const MAX_CLASHES: u32 = 50;

/// `--min-serv-port-ip-per-task` to `--max-serv-port-ip-per-task`, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl Default for PortRange {
    /// marathon-lb's defaults.
    fn default() -> Self {
        Self {
            min: 10050,
            max: 10100,
        }
    }
}

/// The ports assigned to each app (by id), by port index; `None` where none was left.
pub(crate) type Assigned = BTreeMap<String, Vec<Option<u16>>>;

/// Whether marathon-lb would make up service ports for `app`: it has an `ipAddress` (1.4's
/// IP-per-task), its ports carry no service port at all, and it has a first task with an
/// address (whose container ports are the ones hashed).
pub(crate) fn needs_ports(app: &App) -> bool {
    app.ip_address.is_some()
        && app
            .tasks
            .first()
            .is_some_and(|t| !t.ip_addresses.is_empty())
        && networking_mode(app) == Ok(Mode::Container)
        && {
            let slots = port_slots(app, Mode::Container);
            !slots.is_empty() && slots.iter().all(|s| s.service_port.is_none())
        }
}

/// Assigns ports to the units that need them, in the order given (the units' claim order).
pub(crate) fn assign<'a>(
    units: impl IntoIterator<Item = &'a Unit<'a>>,
    range: Option<PortRange>,
) -> Assigned {
    let Some(range) = range else {
        return Assigned::new();
    };
    let mut assigner = Assigner::new(range, sha1_prefix);
    let mut out = Assigned::new();
    for unit in units {
        let app = unit.app;
        if !needs_ports(app) {
            continue;
        }
        let ports = container_ports(app)
            .into_iter()
            .map(|(port, ..)| port.and_then(|p| assigner.port_for(&app.id, p)))
            .collect();
        out.insert(app.id.clone(), ports);
    }
    out
}

/// The first 8 hex digits of the SHA-1 of `s`, as a number (marathon-lb's `int(h[:8], 16)`).
fn sha1_prefix(s: &str) -> u32 {
    let d = Sha1::digest(s.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

struct Assigner {
    range: PortRange,
    hash: fn(&str) -> u32,
    /// (app id, container port) -> its port; `None` entries count towards the range's size,
    /// as in marathon-lb.
    by_key: HashMap<(String, i64), Option<u16>>,
    taken: BTreeSet<u16>,
}

impl Assigner {
    fn new(range: PortRange, hash: fn(&str) -> u32) -> Self {
        Self {
            range,
            hash,
            by_key: HashMap::new(),
            taken: BTreeSet::new(),
        }
    }

    fn port_for(&mut self, app_id: &str, task_port: i64) -> Option<u16> {
        let key = (app_id.to_owned(), task_port);
        if let Some(Some(p)) = self.by_key.get(&key) {
            return Some(*p);
        }
        let port = self.new_port(app_id, task_port);
        self.by_key.insert(key, port);
        if let Some(p) = port {
            self.taken.insert(p);
        }
        port
    }

    fn new_port(&self, app_id: &str, task_port: i64) -> Option<u16> {
        let PortRange { min, max } = self.range;
        let size = u32::from(max) - u32::from(min) + 1;
        if self.by_key.len() >= size as usize {
            return None;
        }
        for attempt in 0..MAX_CLASHES {
            let h = (self.hash)(&format!("{app_id}-{task_port}-{attempt}"));
            let port = (u32::from(min) + h % size) as u16;
            if !self.taken.contains(&port) {
                return Some(port);
            }
        }
        (min..=max).find(|p| !self.taken.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> PortRange {
        // The range of marathon-lb's own tests.
        PortRange {
            min: 10000,
            max: 10020,
        }
    }

    fn ports(a: &mut Assigner, app: &str, n: i64) -> Vec<Option<u16>> {
        (500..500 + n).map(|p| a.port_for(app, p)).collect()
    }

    #[test]
    fn the_hash_is_marathon_lbs() {
        // sha1("app-1-500-0") = 83a29047...
        assert_eq!(sha1_prefix("app-1-500-0"), 0x83a2_9047);
    }

    #[test]
    fn without_clashes_the_order_does_not_matter() {
        let mut a = Assigner::new(range(), sha1_prefix);
        let p1 = ports(&mut a, "app-1", 1);
        let p2 = ports(&mut a, "app-2", 1);
        assert_eq!(
            (p1.clone(), p2.clone()),
            (vec![Some(10010)], vec![Some(10017)])
        );
        assert_eq!(ports(&mut a, "app-1", 1), p1, "the same app keeps its port");
        let mut b = Assigner::new(range(), sha1_prefix);
        assert_eq!(ports(&mut b, "app-2", 1), p2);
        assert_eq!(ports(&mut b, "app-1", 1), p1);
    }

    #[test]
    fn with_clashes_the_first_comer_keeps_its_ports() {
        let mut a = Assigner::new(range(), sha1_prefix);
        let p1 = ports(&mut a, "app-1", 5);
        let p3 = ports(&mut a, "app-3", 5);
        let mut b = Assigner::new(range(), sha1_prefix);
        let q3 = ports(&mut b, "app-3", 5);
        let q1 = ports(&mut b, "app-1", 5);
        let some = |v: &[u16]| v.iter().copied().map(Some).collect::<Vec<_>>();
        assert_eq!(p1, some(&[10010, 10006, 10003, 10020, 10019]));
        assert_eq!(p3, some(&[10012, 10000, 10007, 10005, 10018]));
        assert_eq!(q3, some(&[10012, 10000, 10010, 10005, 10018]));
        assert_eq!(q1, some(&[10015, 10006, 10003, 10020, 10019]));
    }

    #[test]
    fn after_fifty_clashes_the_first_free_port() {
        let mut a = Assigner::new(range(), |_| 0);
        assert_eq!(
            ports(&mut a, "app-1", 10),
            (10000..10010).map(Some).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_exhausted_range_leaves_the_rest_without() {
        let mut a = Assigner::new(range(), sha1_prefix);
        let p = ports(&mut a, "app-1", 24);
        assert_eq!(p[21..], [None, None, None]);
        let mut got: Vec<u16> = p[..21].iter().map(|p| p.unwrap()).collect();
        got.sort();
        assert_eq!(got, (10000..=10020).collect::<Vec<_>>());
    }
}
