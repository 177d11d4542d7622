//! Which apps a Marathon event is about, so that the controller re-reads only those. Anything
//! less than certain (no app named, a deployment, data that does not parse) answers `None`,
//! which means: read everything.
use serde::Deserialize;

use super::events::SseEvent;

/// The events that carry the id of the one app they change, and where.
const APP_ID_EVENTS: &[&str] = &[
    "status_update_event",
    "health_status_changed_event",
    "app_terminated_event",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventData {
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    app_id: Option<String>,
    #[serde(default)]
    app_definition: Option<AppDefinition>,
}

#[derive(Deserialize)]
struct AppDefinition {
    #[serde(default)]
    id: Option<String>,
}

/// The ids of the apps `event` changes, or `None` when it does not name them all for sure.
/// `data` may hold several JSON objects (Marathon does that): each must name its app.
pub fn apps_named(event: &SseEvent) -> Option<Vec<String>> {
    let mut ids = Vec::new();
    for data in serde_json::Deserializer::from_str(&event.data).into_iter::<EventData>() {
        let data = data.ok()?;
        let kind = event.event.as_deref().or(data.event_type.as_deref())?;
        let id = match kind {
            k if APP_ID_EVENTS.contains(&k) => data.app_id,
            "api_post_event" => data.app_definition.and_then(|d| d.id),
            _ => None,
        }?;
        ids.push(absolute(id)?);
    }
    (!ids.is_empty()).then_some(ids)
}

/// Marathon's app ids are absolute paths; a relative one (as in app definitions) is taken from
/// the root. An empty one names nothing.
fn absolute(id: String) -> Option<String> {
    let id = id.trim().to_owned();
    match id.as_str() {
        "" | "/" => None,
        _ if id.starts_with('/') => Some(id),
        _ => Some(format!("/{id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marathon::events::{SseItem, SseParser};

    fn event(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: name.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    fn named(name: &str, data: &str) -> Option<Vec<String>> {
        apps_named(&event(Some(name), data))
    }

    /// Marathon's own example of its event stream, read in place.
    #[test]
    fn the_event_stream_fixture_names_its_apps() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/marathon/marathon__events.txt");
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut items = Vec::new();
        SseParser::new().feed(&body, &mut items);
        let named: Vec<(Option<String>, Option<Vec<String>>)> = items
            .into_iter()
            .filter_map(|i| match i {
                SseItem::Event(e) => Some((e.event.clone(), apps_named(&e))),
                SseItem::Heartbeat => None,
            })
            .collect();
        assert_eq!(
            named,
            [
                (Some("event_stream_attached".into()), None),
                (
                    Some("status_update_event".into()),
                    Some(vec!["/foo".into()])
                ),
                (
                    Some("status_update_event".into()),
                    Some(vec!["/test-app".into()])
                ),
            ]
        );
    }

    /// The shapes of Marathon's event serializers (`core/event/Events.scala`), one per type.
    #[test]
    fn every_subscribed_event_type() {
        let one = |id: &str| Some(vec![id.to_owned()]);
        assert_eq!(
            named(
                "health_status_changed_event",
                r#"{"appId":"/web/api","taskId":"web_api.1","instanceId":"web_api.marathon-1","version":"2021-01-01T00:00:00.000Z","alive":true,"eventType":"health_status_changed_event","timestamp":"2021-01-01T00:00:01.000Z"}"#
            ),
            one("/web/api")
        );
        assert_eq!(
            named(
                "app_terminated_event",
                r#"{"appId":"/gone","eventType":"app_terminated_event","timestamp":"2021-01-01T00:00:01.000Z"}"#
            ),
            one("/gone")
        );
        assert_eq!(
            named(
                "api_post_event",
                r#"{"clientIp":"10.0.0.1","uri":"/v2/apps/new","appDefinition":{"id":"/new","instances":2,"labels":{}},"eventType":"api_post_event","timestamp":"2021-01-01T00:00:01.000Z"}"#
            ),
            one("/new")
        );
        // Deployments name plans, not one app: read everything.
        assert_eq!(
            named(
                "deployment_success",
                r#"{"id":"867ed450-f6a8-4d33-9b0e-e11c5513990b","plan":{"steps":[]},"eventType":"deployment_success"}"#
            ),
            None
        );
        assert_eq!(
            named(
                "deployment_failed",
                r#"{"id":"d1","eventType":"deployment_failed"}"#
            ),
            None
        );
    }

    #[test]
    fn doubt_reads_everything() {
        // No app, garbage, an empty id, an api_post_event without a definition (the stand-in's).
        assert_eq!(
            named("status_update_event", r#"{"taskStatus":"TASK_RUNNING"}"#),
            None
        );
        assert_eq!(named("status_update_event", "{not json"), None);
        assert_eq!(named("status_update_event", ""), None);
        assert_eq!(named("status_update_event", r#"{"appId":""}"#), None);
        assert_eq!(
            named(
                "api_post_event",
                r#"{"eventType":"api_post_event","timestamp":"2015-09-30T12:44:30.061Z"}"#
            ),
            None
        );
        // Several objects: all must name an app.
        assert_eq!(
            named(
                "status_update_event",
                r#"{"appId":"/a"}{"taskStatus":"TASK_RUNNING"}"#
            ),
            None
        );
        assert_eq!(
            named(
                "status_update_event",
                "{\"appId\":\"/a\"}\n{\"appId\":\"b\"}"
            ),
            Some(vec!["/a".into(), "/b".into()])
        );
        // Unnamed (old Marathons): the data's own eventType decides.
        assert_eq!(
            apps_named(&event(
                None,
                r#"{"eventType":"status_update_event","appId":"/a"}"#
            )),
            Some(vec!["/a".into()])
        );
        assert_eq!(apps_named(&event(None, r#"{"appId":"/a"}"#)), None);
    }
}
