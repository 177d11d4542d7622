//! Marathon's state as last read, app by app, with each unit's translation kept: a full read
//! replaces it all, a single-app read changes one app and re-translates only that app's unit.
//!
//! A unit (a plain app, or the apps of one deployment group) translates on its own; only the
//! clashes between units (two apps claiming one listener) look at all of them, and settling
//! those is a walk over the kept candidates. So a per-app update gives exactly the `Desired`
//! a full translation of the same apps would (tests/catalog.rs checks this on every fixture and
//! on random sequences of changes).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use super::{
    api::{App, AppError},
    translate::{
        Assigned, Part, Resolver, TranslateOptions, Translation, UnitKey, assign, needs_ports,
        settle, unit_key, units,
    },
};

#[derive(Debug, Default)]
pub struct Catalog {
    opts: TranslateOptions,
    apps: BTreeMap<String, App>,
    /// Apps of the last full read that did not parse, until read again.
    unreadable: Vec<AppError>,
    /// Deployment group name id -> its apps' ids.
    groups: BTreeMap<String, BTreeSet<String>>,
    /// Where each unit's part is kept in `parts`.
    orders: HashMap<UnitKey, (String, String)>,
    /// Each unit's translation, in the order units claim listeners.
    parts: BTreeMap<(String, String), Part>,
    /// Apps that get service ports made up (IP-per-task without any), and those ports: they
    /// depend on every such app (clashes), so a change to one can move another's.
    ip_per_task: BTreeSet<String>,
    assigned: Assigned,
}

impl Catalog {
    pub fn new(opts: TranslateOptions) -> Self {
        Self {
            opts,
            ..Self::default()
        }
    }

    pub fn options(&self) -> &TranslateOptions {
        &self.opts
    }

    /// The apps, by id.
    pub fn apps(&self) -> &BTreeMap<String, App> {
        &self.apps
    }

    /// Apps of the last full read that did not parse (and were not read since).
    pub fn unreadable(&self) -> &[AppError] {
        &self.unreadable
    }

    /// A full read: everything is replaced and translated anew. Returns the ids of the apps that
    /// changed (new, different, or gone). Apps are taken one at a time, each replacing its old
    /// self as it comes, so a full read never holds two copies of the state. Marathon's app ids
    /// are unique; should one repeat, the last listed counts.
    pub fn replace(
        &mut self,
        apps: impl IntoIterator<Item = Result<App, AppError>>,
        resolve: &mut dyn FnMut(&str) -> Option<Ipv4Addr>,
    ) -> BTreeSet<String> {
        let mut old = std::mem::take(&mut self.apps);
        let mut changed = BTreeSet::new();
        self.unreadable.clear();
        for app in apps {
            match app {
                Ok(app) => {
                    if old.remove(&app.id).as_ref() != Some(&app) {
                        changed.insert(app.id.clone());
                    }
                    self.apps.insert(app.id.clone(), app);
                }
                Err(e) => self.unreadable.push(e),
            }
        }
        changed.extend(old.into_keys().filter(|id| !self.apps.contains_key(id)));
        self.groups.clear();
        self.ip_per_task.clear();
        for app in self.apps.values() {
            if let UnitKey::Group(g) = unit_key(app) {
                self.groups.entry(g).or_default().insert(app.id.clone());
            }
            if needs_ports(app) {
                self.ip_per_task.insert(app.id.clone());
            }
        }
        self.orders.clear();
        self.parts.clear();
        let mut resolver = Resolver::new(resolve);
        let units = units(self.apps.values());
        self.assigned = assign(&units, self.opts.ip_per_task_ports);
        for unit in units {
            let key = unit_key(unit.app);
            let part = Part::of(unit, &self.opts, &self.assigned, &mut resolver);
            self.orders.insert(key, part.order.clone());
            self.parts.insert(part.order.clone(), part);
        }
        changed
    }

    /// A single-app read: `app` is the app `id` now, `None` when Marathon no longer has it.
    /// Re-translates the unit the app left and the unit it joined (the same one, mostly).
    pub fn set_app(
        &mut self,
        id: &str,
        app: Option<App>,
        resolve: &mut dyn FnMut(&str) -> Option<Ipv4Addr>,
    ) {
        self.unreadable.retain(|e| e.app_id.as_deref() != Some(id));
        let mut touched = BTreeSet::new();
        self.ip_per_task.remove(id);
        if let Some(old) = self.apps.remove(id) {
            let key = unit_key(&old);
            if let UnitKey::Group(g) = &key
                && let Some(members) = self.groups.get_mut(g)
            {
                members.remove(id);
                if members.is_empty() {
                    self.groups.remove(g);
                }
            }
            touched.insert(key);
        }
        if let Some(app) = app {
            let key = unit_key(&app);
            if let UnitKey::Group(g) = &key {
                self.groups
                    .entry(g.clone())
                    .or_default()
                    .insert(id.to_owned());
            }
            touched.insert(key);
            if needs_ports(&app) {
                self.ip_per_task.insert(id.to_owned());
            }
            self.apps.insert(id.to_owned(), app);
        }
        let assigned = self.assignment();
        for (app_id, _) in assigned
            .iter()
            .filter(|(k, v)| self.assigned.get(*k) != Some(v))
            .chain(
                self.assigned
                    .iter()
                    .filter(|(k, _)| !assigned.contains_key(*k)),
            )
        {
            if let Some(app) = self.apps.get(app_id) {
                touched.insert(unit_key(app));
            }
        }
        self.assigned = assigned;
        // All old parts go first: a unit's place can be the one another touched unit had (app
        // `/x` leaving deployment group `/x` for a unit of its own).
        for key in &touched {
            if let Some(order) = self.orders.remove(key) {
                self.parts.remove(&order);
            }
        }
        let mut resolver = Resolver::new(resolve);
        for key in touched {
            self.retranslate(key, &mut resolver);
        }
    }

    fn retranslate(&mut self, key: UnitKey, resolver: &mut Resolver<'_>) {
        let members: Vec<&App> = match &key {
            UnitKey::App(id) => self
                .apps
                .get(id)
                .filter(|a| unit_key(a) == key)
                .into_iter()
                .collect(),
            UnitKey::Group(g) => self
                .groups
                .get(g)
                .into_iter()
                .flatten()
                .filter_map(|id| self.apps.get(id))
                .collect(),
        };
        // The apps of one key form exactly one unit.
        for unit in units(members) {
            let part = Part::of(unit, &self.opts, &self.assigned, resolver);
            self.orders.insert(key.clone(), part.order.clone());
            self.parts.insert(part.order.clone(), part);
        }
    }

    /// The made-up ports of every app that needs them, from those apps (and the other members
    /// of their deployment groups, which decide the unit's defining app) alone.
    fn assignment(&self) -> Assigned {
        if self.ip_per_task.is_empty() {
            return Assigned::new();
        }
        let mut members: BTreeSet<&str> = BTreeSet::new();
        for id in &self.ip_per_task {
            let Some(app) = self.apps.get(id) else {
                continue;
            };
            match unit_key(app) {
                UnitKey::App(_) => {
                    members.insert(id);
                }
                UnitKey::Group(g) => {
                    members.extend(
                        self.groups
                            .get(&g)
                            .into_iter()
                            .flatten()
                            .map(String::as_str),
                    );
                }
            }
        }
        let units = units(members.into_iter().filter_map(|id| self.apps.get(id)));
        assign(&units, self.opts.ip_per_task_ports)
    }

    /// The services, settled across units: what `translate` gives for `apps()`.
    pub fn translation(&self) -> Translation {
        settle(self.parts.values())
    }
}
