//! The zone kept up to date app by app: each app's fragment is kept, and a change to one app
//! rebuilds only the names that app gave or gives. The result is the zone `Zone::build` makes
//! of the same apps (the tests check it on random sequences of changes); at 1,000 apps an
//! update costs a copy of the zone instead of a build of it (23 ms).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use super::{Fragment, Zone, ZoneOptions, clean_domain, merged};
use crate::marathon::{
    api::App,
    translate::{Resolver, TranslateOptions},
};

#[derive(Debug)]
pub struct LiveZone {
    domain: String,
    /// Each app's fragment, by app id.
    fragments: BTreeMap<String, Fragment>,
    /// The apps that give records to each name (one, mostly).
    owners: HashMap<String, Vec<String>>,
    zone: Arc<Zone>,
    /// Some app's skipped reasons changed: the zone's list is made again when next asked for.
    skipped_changed: bool,
}

impl LiveZone {
    pub fn new(opts: &ZoneOptions) -> Self {
        let domain = clean_domain(opts);
        Self {
            zone: Arc::new(Zone {
                domain: domain.clone(),
                ..Zone::default()
            }),
            domain,
            fragments: BTreeMap::new(),
            owners: HashMap::new(),
            skipped_changed: false,
        }
    }

    /// The zone as it stands (shared: the next change copies it if it is still in use).
    pub fn zone(&mut self) -> Arc<Zone> {
        if std::mem::take(&mut self.skipped_changed) {
            Arc::make_mut(&mut self.zone).skipped = self
                .fragments
                .values()
                .flat_map(|f| f.skipped.iter().cloned())
                .collect();
        }
        Arc::clone(&self.zone)
    }

    /// Apps whose fragment may change without the app changing (an agent that did not
    /// resolve): a full read builds them again.
    pub fn unresolved(&self) -> impl Iterator<Item = &str> {
        self.fragments
            .iter()
            .filter(|(_, f)| f.unresolved)
            .map(|(id, _)| id.as_str())
    }

    /// App `id` is now `app` (`None`: gone).
    pub fn set_app(
        &mut self,
        id: &str,
        app: Option<&App>,
        opts: &TranslateOptions,
        resolve: &mut dyn FnMut(&str) -> Option<Ipv4Addr>,
    ) {
        let mut resolver = Resolver::new(resolve);
        let new = app.map(|a| Fragment::of(a, opts, &self.domain, &mut resolver));
        let old = self.fragments.remove(id);
        if old == new {
            if let Some(f) = old {
                self.fragments.insert(id.to_owned(), f);
            }
            return;
        }
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for name in old.iter().flat_map(|f| f.names.keys()) {
            if let Some(ids) = self.owners.get_mut(name) {
                ids.retain(|o| o != id);
            }
            touched.insert(name.clone());
        }
        for name in new.iter().flat_map(|f| f.names.keys()) {
            self.owners
                .entry(name.clone())
                .or_default()
                .push(id.to_owned());
            touched.insert(name.clone());
        }
        self.skipped_changed |=
            old.as_ref().map(|f| &f.skipped) != new.as_ref().map(|f| &f.skipped);
        let zone = Arc::make_mut(&mut self.zone);
        match &new {
            Some(f) => zone.tasks.insert(id.to_owned(), Arc::clone(&f.tasks)),
            None => zone.tasks.remove(id),
        };
        if let Some(f) = new {
            self.fragments.insert(id.to_owned(), f);
        }
        for name in touched {
            let ids = self.owners.get(&name).filter(|ids| !ids.is_empty());
            match ids {
                None => {
                    self.owners.remove(&name);
                    zone.names.remove(&name);
                }
                Some(ids) => {
                    let records = merged(
                        ids.iter()
                            .filter_map(|o| self.fragments.get(o)?.names.get(&name)),
                    );
                    zone.names.insert(name, records);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
    use serde_json::json;

    use super::*;
    use crate::marathon::api::parse_apps;

    fn resolve(host: &str) -> Option<Ipv4Addr> {
        (host == "agent-a.example").then_some(Ipv4Addr::new(1, 2, 3, 11))
    }

    /// A random app among a few ids, so that names collide (`/a/b` and `/b.a`, cleaned alike)
    /// and apps come and go.
    fn random_app(rng: &mut StdRng, id: &str) -> serde_json::Value {
        let tasks: Vec<serde_json::Value> = (0..rng.random_range(0..4))
            .map(|t| {
                json!({"id": format!("{}.{t}", id.trim_start_matches('/').replace('/', "_")),
                       "host": if rng.random_bool(0.5) { "agent-a.example" } else { "nowhere.example" },
                       "state": if rng.random_bool(0.8) { "TASK_RUNNING" } else { "TASK_STAGING" },
                       "slaveId": format!("s-{}", rng.random_range(0..3)),
                       "ports": [31_000 + t],
                       "ipAddresses": [{"ipAddress": format!("192.168.0.{}", rng.random_range(1..6)), "protocol": "IPv4"}]})
            })
            .collect();
        if rng.random_bool(0.5) {
            json!({"id": id, "networks": [{"mode": "container", "name": "calico"}],
                   "container": {"type": "MESOS", "portMappings": [
                       {"containerPort": 80, "protocol": if rng.random_bool(0.5) { "tcp" } else { "udp,tcp" }}]},
                   "tasks": tasks})
        } else {
            json!({"id": id, "portDefinitions": [{"port": 0}], "tasks": tasks})
        }
    }

    #[test]
    fn a_live_zone_equals_a_zone_built_from_the_same_apps() {
        const IDS: [&str; 6] = ["/a/b", "/b.a", "/web", "/prod/web", "/web-prod", "/x_y"];
        let opts = TranslateOptions::default();
        let zopts = ZoneOptions::default();
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut live = LiveZone::new(&zopts);
            let mut apps: BTreeMap<String, App> = BTreeMap::new();
            for step in 0..20 {
                let id = IDS[rng.random_range(0..IDS.len())];
                let app = if rng.random_bool(0.25) {
                    None
                } else {
                    let doc = json!({"apps": [random_app(&mut rng, id)]});
                    let mut parsed = parse_apps(doc.to_string().as_bytes()).expect("parses");
                    parsed.apps.pop()
                };
                match &app {
                    Some(a) => apps.insert(id.to_owned(), a.clone()),
                    None => apps.remove(id),
                };
                live.set_app(id, app.as_ref(), &opts, &mut resolve);
                let built = Zone::build(apps.values(), &opts, &zopts, &mut resolve);
                assert_eq!(*live.zone(), built, "seed {seed}, step {step}");
            }
        }
    }
}
