//! Serde types for Marathon's `GET /v2/apps?embed=apps.tasks` (1.4 to 1.10), only the fields the
//! translation reads; `parse_apps` parses app by app so that one malformed app costs only itself.
//!
//! Marathon 1.4 writes empty fields as `null` where 1.5+ leaves them out, so every field treats
//! missing, `null` and empty alike. Unknown fields are ignored: each release adds some.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Why a whole response could not be used (a single bad app is reported in `ParsedApps::errors`).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Marathon's /v2/apps response is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("Marathon's /v2/apps response has no \"apps\" array (top-level keys: {0})")]
    NoApps(String),
}

/// A `/v2/apps` response: the apps that parsed, and one entry per app that did not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedApps {
    pub apps: Vec<App>,
    pub errors: Vec<AppError>,
}

/// An app of the response that did not parse.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppError {
    /// Position in the `apps` array.
    pub index: usize,
    /// The app's `id`, when it has a string one.
    pub app_id: Option<String>,
    pub error: String,
}

/// Parses a `GET /v2/apps?embed=apps.tasks` body.
pub fn parse_apps(body: &[u8]) -> Result<ParsedApps, ApiError> {
    let value: Value = serde_json::from_slice(body)?;
    let apps = match value {
        Value::Object(mut top) => match top.remove("apps") {
            Some(Value::Array(apps)) => apps,
            // An empty Marathon may write `"apps": null` in old versions.
            Some(Value::Null) => Vec::new(),
            _ => {
                return Err(ApiError::NoApps(
                    top.keys().cloned().collect::<Vec<_>>().join(", "),
                ));
            }
        },
        other => {
            return Err(ApiError::NoApps(format!(
                "not an object but {}",
                kind(&other)
            )));
        }
    };
    let mut parsed = ParsedApps::default();
    for (index, value) in apps.into_iter().enumerate() {
        let app_id = value.get("id").and_then(Value::as_str).map(str::to_owned);
        match parse_app(value) {
            Ok(app) => parsed.apps.push(app),
            Err(e) => parsed.errors.push(AppError {
                index,
                app_id,
                error: e.to_string(),
            }),
        }
    }
    Ok(parsed)
}

/// Parses one app object (an element of `apps`, or the `app` of `GET /v2/apps/{id}`).
///
/// Its tasks parse one by one: a task that does not parse is left out and described in
/// `App::task_errors`, so the app's other tasks still serve.
pub fn parse_app(mut value: Value) -> Result<App, serde_json::Error> {
    let tasks = match value.as_object_mut() {
        Some(obj) => obj.remove("tasks"),
        None => None,
    };
    let mut app = App::deserialize(value)?;
    if let Some(Value::Array(tasks)) = tasks {
        for (index, task) in tasks.into_iter().enumerate() {
            let id = task.get("id").and_then(Value::as_str).map(str::to_owned);
            match Task::deserialize(task) {
                Ok(task) => app.tasks.push(task),
                Err(e) => app.task_errors.push(match id {
                    Some(id) => format!("task {id} (tasks[{index}]) does not parse: {e}"),
                    None => format!("tasks[{index}] does not parse: {e}"),
                }),
            }
        }
    }
    Ok(app)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `null` reads as the type's default, like a missing field (with `#[serde(default)]`).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// One Marathon app. Ports are `i64` so that a nonsensical number (negative, too large) costs
/// only its port in the translation, not the whole app.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub instances: i64,
    /// Service ports of host-networked apps before `portDefinitions` (kept by 1.4 beside them).
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<i64>,
    #[serde(default, deserialize_with = "null_default")]
    pub port_definitions: Vec<PortDefinition>,
    #[serde(default)]
    pub container: Option<Container>,
    /// 1.4's IP-per-task (`USER` network) settings; `null` otherwise.
    #[serde(default)]
    pub ip_address: Option<IpAddress>,
    /// 1.5+'s networks; the last one's `mode` decides the networking mode.
    #[serde(default, deserialize_with = "null_default")]
    pub networks: Vec<Network>,
    #[serde(default, deserialize_with = "null_default")]
    pub health_checks: Vec<HealthCheck>,
    #[serde(default)]
    pub version_info: Option<VersionInfo>,
    #[serde(default, deserialize_with = "null_default")]
    pub tasks: Vec<Task>,
    /// Tasks of the response that did not parse (filled by `parse_app`, never by serde).
    #[serde(skip)]
    pub task_errors: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDefinition {
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub docker: Option<Docker>,
    /// 1.5+ place of the port mappings (any container type).
    #[serde(default, deserialize_with = "null_default")]
    pub port_mappings: Vec<PortMapping>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Docker {
    /// 1.4 only: `HOST`, `BRIDGE` or `USER`.
    #[serde(default)]
    pub network: Option<String>,
    /// 1.4 place of the port mappings.
    #[serde(default, deserialize_with = "null_default")]
    pub port_mappings: Vec<PortMapping>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    #[serde(default)]
    pub container_port: Option<i64>,
    #[serde(default)]
    pub host_port: Option<i64>,
    #[serde(default)]
    pub service_port: Option<i64>,
    /// `tcp`, `udp` or `udp,tcp`; missing means `tcp`.
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAddress {
    #[serde(default)]
    pub network_name: Option<String>,
    #[serde(default)]
    pub discovery: Option<Discovery>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Discovery {
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<DiscoveryPort>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryPort {
    #[serde(default)]
    pub number: Option<i64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// `container`, `container/bridge` or `host`; missing means `container`.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port_index: Option<i64>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    #[serde(default)]
    pub last_scaling_at: Option<String>,
    #[serde(default)]
    pub last_config_change_at: Option<String>,
}

/// One task as embedded in its app (`embed=apps.tasks`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: String,
    /// The agent's hostname or address; empty for tasks not yet placed.
    #[serde(default, deserialize_with = "null_default")]
    pub host: String,
    /// `TASK_RUNNING` etc.; missing in old captures (marathon-lb then keeps the task).
    #[serde(default)]
    pub state: Option<String>,
    /// Host ports, by port index.
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<i64>,
    #[serde(default, deserialize_with = "null_default")]
    pub service_ports: Vec<i64>,
    #[serde(default, deserialize_with = "null_default")]
    pub ip_addresses: Vec<TaskIpAddress>,
    /// Missing until Marathon has a result, which is not the same as healthy.
    #[serde(default, deserialize_with = "null_default")]
    pub health_check_results: Vec<HealthCheckResult>,
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub slave_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskIpAddress {
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// One health check's verdict; 1.4 keys it by `taskId`, 1.5+ by `instanceId`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckResult {
    #[serde(default, deserialize_with = "null_default")]
    pub alive: bool,
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub consecutive_failures: Option<i64>,
}
