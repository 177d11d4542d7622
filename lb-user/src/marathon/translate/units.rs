//! marathon-lb's grouping of apps (`get_apps`): apps sharing `HAPROXY_DEPLOYMENT_GROUP` merge
//! into one unit (a zero-downtime deployment), the others stand alone.
use std::collections::BTreeMap;

use super::{Skipped, skip};
use crate::marathon::api::{App, Task};

/// What marathon-lb balances as one app: a plain app, or the apps of one zero-downtime
/// deployment group merged under the group's name.
pub(crate) struct Unit<'a> {
    /// The id the backend name comes from: the app's, or `/<HAPROXY_DEPLOYMENT_GROUP>`.
    pub name_id: String,
    /// The app whose definition (labels, ports, networking) applies: for a deployment, the old one.
    pub app: &'a App,
    pub tasks: Vec<UnitTask<'a>>,
    /// Every app merged into this unit, in id order.
    pub members: Vec<&'a App>,
    /// What the merge left out.
    pub skipped: Vec<Skipped>,
}

#[derive(Clone, Copy)]
pub(crate) struct UnitTask<'a> {
    pub task: &'a Task,
    /// Real id of the app the task belongs to.
    pub app_id: &'a str,
    /// An old task being replaced in a deployment: it takes no new flows.
    pub draining: bool,
}

impl<'a> Unit<'a> {
    fn plain(name_id: String, app: &'a App) -> Self {
        let tasks = app
            .tasks
            .iter()
            .map(|task| UnitTask {
                task,
                app_id: &app.id,
                draining: false,
            })
            .collect();
        Self {
            name_id,
            app,
            tasks,
            members: vec![app],
            skipped: Vec::new(),
        }
    }
}

/// Which unit an app belongs to: its own, or its deployment group's. Everything a unit
/// translates to depends on the apps with its key alone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum UnitKey {
    /// A plain app, by id.
    App(String),
    /// A deployment group, by name id (`/<HAPROXY_DEPLOYMENT_GROUP>`).
    Group(String),
}

pub(crate) fn unit_key(app: &App) -> UnitKey {
    // marathon-lb would crash on an empty group name; an empty label means no group here.
    match app.labels.get("HAPROXY_DEPLOYMENT_GROUP") {
        Some(g) if !g.is_empty() => UnitKey::Group(if g.starts_with('/') {
            g.clone()
        } else {
            format!("/{g}")
        }),
        _ => UnitKey::App(app.id.clone()),
    }
}

/// Groups the apps as marathon-lb's `get_apps` does: apps sharing `HAPROXY_DEPLOYMENT_GROUP`
/// merge into one, the others stand alone. Apps are taken in id order so that the result does
/// not depend on Marathon's listing order (marathon-lb's does, when start times tie). Units
/// come in (name id, defining app id) order: the order in which they claim listeners.
pub(crate) fn units<'a>(apps: impl IntoIterator<Item = &'a App>) -> Vec<Unit<'a>> {
    let mut sorted: Vec<&App> = apps.into_iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut units = Vec::new();
    let mut groups: BTreeMap<String, Unit<'a>> = BTreeMap::new();
    for app in sorted {
        let name_id = match unit_key(app) {
            UnitKey::App(id) => {
                units.push(Unit::plain(id, app));
                continue;
            }
            UnitKey::Group(name_id) => name_id,
        };
        let cur = Unit::plain(name_id.clone(), app);
        let merged = match groups.remove(&name_id) {
            None => cur,
            Some(prev) => merge_deployment(prev, cur),
        };
        groups.insert(name_id, merged);
    }
    units.extend(groups.into_values());
    units.sort_by(|a, b| (&a.name_id, &a.app.id).cmp(&(&b.name_id, &b.app.id)));
    units
}

/// marathon-lb's zero-downtime-deployment merge: the older app's definition stays, both apps'
/// tasks serve, and as many old tasks as there are healthy new ones are drained (never below
/// `HAPROXY_DEPLOYMENT_TARGET_INSTANCES` in total).
fn merge_deployment<'a>(prev: Unit<'a>, cur: Unit<'a>) -> Unit<'a> {
    let started = |u: &Unit<'_>| {
        u.app
            .labels
            .get("HAPROXY_DEPLOYMENT_STARTED_AT")
            .and_then(|s| timestamp(s))
    };
    // A later start makes `cur` the new app; on a tie (or no dates) `prev` counts as new, as in
    // marathon-lb. A missing or unreadable date counts as the earliest possible.
    let cur_is_new = started(&prev) < started(&cur);
    let cur_has_health_checks = !cur.app.health_checks.is_empty();
    let (mut old, mut new) = if cur_is_new { (prev, cur) } else { (cur, prev) };

    let mut merge_skipped = Vec::new();
    let target = match new.app.labels.get("HAPROXY_DEPLOYMENT_NEW_INSTANCES") {
        Some(_) => {
            // marathon-lb tests the label's presence only (its `!= 0` compares a string).
            let scaled = |u: &Unit<'_>| {
                u.app
                    .version_info
                    .as_ref()?
                    .last_scaling_at
                    .as_deref()
                    .and_then(timestamp)
            };
            if scaled(&old) > scaled(&new) {
                std::mem::swap(&mut old, &mut new);
            }
            let label = new.app.labels.get("HAPROXY_DEPLOYMENT_TARGET_INSTANCES");
            match label.and_then(|v| v.trim().parse::<i64>().ok()) {
                Some(t) => Some(t),
                None => {
                    // marathon-lb would stop altogether; draining nothing keeps every task serving.
                    merge_skipped.push(skip(
                        &new.app.id,
                        None,
                        None,
                        format!(
                            "HAPROXY_DEPLOYMENT_TARGET_INSTANCES {:?} is not a number: no old task \
                             of deployment group {} is drained",
                            label.map_or("(missing)", String::as_str),
                            new.name_id
                        ),
                    ));
                    None
                }
            }
        }
        None => Some(1),
    };

    // As in marathon-lb, whether health counts is decided by the app met last (`cur`).
    let healthy_new = if cur_has_health_checks {
        new.tasks.iter().filter(|t| alive(t.task)).count() as i64
    } else {
        new.app.instances
    };
    old.tasks.sort_by(|a, b| a.task.id.cmp(&b.task.id));
    if let Some(target) = target {
        let drainable = (healthy_new + old.app.instances - target).max(0);
        let n = (old.tasks.len() as i64)
            .min(healthy_new)
            .min(drainable)
            .max(0) as usize;
        for t in &mut old.tasks[..n] {
            t.draining = true;
        }
    }
    old.tasks.extend(new.tasks);
    old.members.extend(new.members);
    old.skipped.extend(new.skipped);
    old.skipped.extend(merge_skipped);
    old
}

pub(crate) fn alive(task: &Task) -> bool {
    task.health_check_results.iter().any(|r| r.alive)
}

/// An ISO-8601 date and time as comparable numbers, time zone ignored (marathon-lb's zdd.py
/// writes local times without one). None when unreadable.
pub(crate) fn timestamp(s: &str) -> Option<[u64; 7]> {
    let s = s.trim();
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, ""));
    let mut parts = [0u64; 7];
    let mut d = date.split('-');
    for part in &mut parts[..3] {
        *part = d.next()?.parse().ok()?;
    }
    if d.next().is_some() {
        return None;
    }
    let time = time.split(['Z', 'z', '+', '-']).next().unwrap_or("");
    if !time.is_empty() {
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        for (part, v) in parts[3..6].iter_mut().zip(hms.split(':')) {
            *part = v.parse().ok()?;
        }
        if !frac.is_empty() {
            let digits: String = frac.chars().take(9).collect();
            parts[6] = format!("{digits:0<9}").parse().ok()?;
        }
    }
    Some(parts)
}
