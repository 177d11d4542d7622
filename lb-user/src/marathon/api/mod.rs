//! Serde types for Marathon's `GET /v2/apps?embed=apps.tasks` and `GET /v2/apps/{id}?embed=app.tasks`
//! (1.4 to 1.10), only the fields the translation reads, parsed straight from the bytes (no
//! `serde_json::Value` tree): the document is split into its apps as raw slices, and each app
//! parses on its own, so that one malformed app (or task) costs only itself.
//!
//! Marathon 1.4 writes empty fields as `null` where 1.5+ leaves them out, so every field treats
//! missing, `null` and empty alike. Unknown fields are ignored: each release adds some.
use std::{borrow::Cow, collections::BTreeMap, fmt, ops::Range};

use bytes::Bytes;

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{IgnoredAny, MapAccess, Visitor},
};
use serde_json::value::RawValue;

/// Why a whole response could not be used (a single bad app is reported in `ParsedApps::errors`).
/// Messages give positions and key names only: the body holds app environments, which may hold
/// secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("the body is truncated JSON")]
    Truncated,
    #[error("the body is JSON but not an object: it is {0}")]
    NotAnObject(&'static str),
    #[error("the body has no {key:?} object or array (top-level keys: {keys})")]
    Missing { key: &'static str, keys: String },
    #[error("the body's {key:?} is {kind}, not what Marathon sends")]
    WrongKind {
        key: &'static str,
        kind: &'static str,
    },
}

impl ApiError {
    fn from_json(e: &serde_json::Error) -> Self {
        match e.classify() {
            serde_json::error::Category::Eof => ApiError::Truncated,
            _ => ApiError::NotJson {
                line: e.line(),
                column: e.column(),
            },
        }
    }
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

/// Parses a `GET /v2/apps?embed=apps.tasks` body, all of it at once (tests, the benchmark, the
/// catalog's own tests); the daemon takes an `AppsBody` app by app instead.
pub fn parse_apps(body: &[u8]) -> Result<ParsedApps, ApiError> {
    let spans = app_spans(body)?;
    Ok(spans
        .iter()
        .enumerate()
        .map(|(index, span)| parse_listed(body, index, span))
        .collect())
}

/// A `GET /v2/apps?embed=apps.tasks` body checked at the top level and cut into its apps, which
/// are not parsed yet: the catalog parses each as it takes it, so a full read of a large cluster
/// never holds the whole state twice (the apps it replaces and all the new ones).
#[derive(Clone, PartialEq)]
pub struct AppsBody {
    body: Bytes,
    /// Where each element of `apps` lies in `body`.
    apps: Vec<Range<usize>>,
}

impl AppsBody {
    /// Accepts a body whose top level is what Marathon sends (an object with an `apps` array, or
    /// `null`), and finds its apps; nothing inside an app is looked at yet.
    pub fn split(body: Bytes) -> Result<Self, ApiError> {
        let apps = app_spans(&body)?;
        Ok(Self { body, apps })
    }

    /// How many apps the body lists.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// The apps, each parsed on its own when the iterator reaches it: an app that does not parse
    /// is an `AppError` at its place, and the others are unaffected.
    pub fn apps(&self) -> impl Iterator<Item = Result<App, AppError>> + '_ {
        self.apps
            .iter()
            .enumerate()
            .map(|(index, span)| parse_listed(&self.body, index, span))
    }

    /// Every app parsed at once.
    pub fn parsed(&self) -> ParsedApps {
        self.apps().collect()
    }
}

impl fmt::Debug for AppsBody {
    /// The size only: the body holds app environments, which may hold secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AppsBody({} apps, {} bytes)",
            self.len(),
            self.body.len()
        )
    }
}

impl FromIterator<Result<App, AppError>> for ParsedApps {
    fn from_iter<I: IntoIterator<Item = Result<App, AppError>>>(apps: I) -> Self {
        let mut parsed = ParsedApps::default();
        for app in apps {
            match app {
                Ok(app) => parsed.apps.push(app),
                Err(e) => parsed.errors.push(e),
            }
        }
        parsed
    }
}

/// Where each app of a `/v2/apps` body lies in it, once its top level is found sound.
fn app_spans(body: &[u8]) -> Result<Vec<Range<usize>>, ApiError> {
    let Some(raw) = top_level(body, "apps")? else {
        return Ok(Vec::new());
    };
    let start = body.as_ptr() as usize;
    Ok(raw_array(raw, "apps")?
        .into_iter()
        .map(|app| {
            let at = app.get().as_ptr() as usize - start;
            at..at + app.get().len()
        })
        .collect())
}

/// The app at `span` of a `/v2/apps` body, the `index`th listed.
fn parse_listed(body: &[u8], index: usize, span: &Range<usize>) -> Result<App, AppError> {
    let raw = &body[span.clone()];
    parse_app(raw).map_err(|e| AppError {
        index,
        app_id: id_of(raw),
        error: e.to_string(),
    })
}

/// Parses a `GET /v2/apps/{id}?embed=app.tasks` body, `{"app": {...}}`. Unlike in `parse_apps`,
/// an app that does not parse fails the whole answer: there is nothing else in it.
pub fn parse_app_answer(body: &[u8]) -> Result<App, AppAnswerError> {
    let raw = top_level(body, "app")?.ok_or(ApiError::WrongKind {
        key: "app",
        kind: "null",
    })?;
    if raw.get().starts_with('{') {
        parse_app(raw.get().as_bytes()).map_err(|e| AppAnswerError::App(e.to_string()))
    } else {
        Err(ApiError::WrongKind {
            key: "app",
            kind: kind(raw),
        }
        .into())
    }
}

/// Why a single-app answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppAnswerError {
    #[error(transparent)]
    Body(#[from] ApiError),
    #[error("the app does not parse: {0}")]
    App(String),
}

/// Parses one app object (an element of `apps`, or the `app` of `GET /v2/apps/{id}`).
///
/// Its tasks parse one by one: a task that does not parse is left out and described in
/// `App::task_errors`, so the app's other tasks still serve.
pub fn parse_app(json: &[u8]) -> Result<App, serde_json::Error> {
    let mut app: App = serde_json::from_slice(json)?;
    app.tasks.reserve_exact(app.read_tasks.len());
    for (index, task) in std::mem::take(&mut app.read_tasks).into_iter().enumerate() {
        match task {
            Ok(task) => app.tasks.push(task),
            Err((Some(id), e)) => app
                .task_errors
                .push(format!("task {id} (tasks[{index}]) does not parse: {e}")),
            Err((None, e)) => app
                .task_errors
                .push(format!("tasks[{index}] does not parse: {e}")),
        }
    }
    Ok(app)
}

/// The value of `key` in a top-level object, unparsed; `None` when it is `null`. Any other shape
/// of document is an error naming what was found instead.
fn top_level<'a>(body: &'a [u8], key: &'static str) -> Result<Option<&'a RawValue>, ApiError> {
    let top: TopLevel<'a> = {
        let mut de = serde_json::Deserializer::from_slice(body);
        let top = TopLevelSeed { key }
            .deserialize_top(&mut de)
            .map_err(|e| ApiError::from_json(&e))?;
        de.end().map_err(|e| ApiError::from_json(&e))?;
        top
    };
    match top {
        TopLevel::Other(kind) => Err(ApiError::NotAnObject(kind)),
        TopLevel::Object { found: None, keys } => Err(ApiError::Missing {
            key,
            keys: keys.join(", "),
        }),
        TopLevel::Object {
            found: Some(raw), ..
        } => Ok((raw.get() != "null").then_some(raw)),
    }
}

/// The elements of a raw JSON array, unparsed.
fn raw_array<'a>(raw: &'a RawValue, key: &'static str) -> Result<Vec<&'a RawValue>, ApiError> {
    if !raw.get().starts_with('[') {
        return Err(ApiError::WrongKind {
            key,
            kind: kind(raw),
        });
    }
    serde_json::from_str(raw.get()).map_err(|e| ApiError::from_json(&e))
}

/// The `id` of a raw app or task, when it has a string one.
fn id_of(raw: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Id>(raw).ok().map(|i| i.id)
}

/// What kind of JSON value `raw` is, judged by its first byte (it is valid JSON).
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

enum TopLevel<'a> {
    Object {
        found: Option<&'a RawValue>,
        /// The other keys, to say what the document is when `found` is missing.
        keys: Vec<String>,
    },
    Other(&'static str),
}

/// Reads the top level of a document, keeping only `key`'s value (unparsed) and the other keys'
/// names: what `parse_apps` needs to accept or refuse a body without building it.
struct TopLevelSeed {
    key: &'static str,
}

impl TopLevelSeed {
    fn deserialize_top<'de, D: Deserializer<'de>>(self, d: D) -> Result<TopLevel<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevelSeed {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object with {:?}", self.key)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut keys = Vec::new();
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            if k == self.key && found.is_none() {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
                keys.push(k.into_owned());
            }
        }
        Ok(TopLevel::Object { found, keys })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other("an array"))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a string"))
    }
}

/// A task as read: parsed, or (its id when it has a string one, why not).
type ReadTask = Result<Task, (Option<String>, String)>;

/// `tasks` parsed element by element; anything but an array reads as no tasks, as before.
fn lenient_tasks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ReadTask>, D::Error> {
    let Some(raw) = Option::<&'de RawValue>::deserialize(d)? else {
        return Ok(Vec::new());
    };
    if !raw.get().starts_with('[') {
        return Ok(Vec::new());
    }
    let tasks: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
    Ok(tasks
        .into_iter()
        .map(|raw| {
            serde_json::from_str::<Task>(raw.get())
                .map_err(|e| (id_of(raw.get().as_bytes()), e.to_string()))
        })
        .collect())
}

/// `null` reads as the type's default, like a missing field (with `#[serde(default)]`).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// Like `null_default`, for a list, which keeps no spare room: serde grows a list as it reads it
/// (to 4 places for one element), and the catalog keeps tens of thousands of these.
fn null_default_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let mut v = Option::<Vec<T>>::deserialize(d)?.unwrap_or_default();
    v.shrink_to_fit();
    Ok(v)
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
    #[serde(default, deserialize_with = "null_default_vec")]
    pub ports: Vec<i64>,
    #[serde(default, deserialize_with = "null_default_vec")]
    pub port_definitions: Vec<PortDefinition>,
    #[serde(default)]
    pub container: Option<Container>,
    /// 1.4's IP-per-task (`USER` network) settings; `null` otherwise.
    #[serde(default)]
    pub ip_address: Option<IpAddress>,
    /// 1.5+'s networks; the last one's `mode` decides the networking mode.
    #[serde(default, deserialize_with = "null_default_vec")]
    pub networks: Vec<Network>,
    #[serde(default, deserialize_with = "null_default_vec")]
    pub health_checks: Vec<HealthCheck>,
    #[serde(default)]
    pub version_info: Option<VersionInfo>,
    /// The tasks that parsed (filled by `parse_app` from `read_tasks`).
    #[serde(skip)]
    pub tasks: Vec<Task>,
    /// Tasks of the response that did not parse (filled by `parse_app`).
    #[serde(skip)]
    pub task_errors: Vec<String>,
    /// `tasks` as serde reads it, each task on its own; emptied by `parse_app`.
    #[serde(default, rename = "tasks", deserialize_with = "lenient_tasks")]
    read_tasks: Vec<ReadTask>,
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
    #[serde(default, deserialize_with = "null_default_vec")]
    pub port_mappings: Vec<PortMapping>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Docker {
    /// 1.4 only: `HOST`, `BRIDGE` or `USER`.
    #[serde(default)]
    pub network: Option<String>,
    /// 1.4 place of the port mappings.
    #[serde(default, deserialize_with = "null_default_vec")]
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
    #[serde(default, deserialize_with = "null_default_vec")]
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
    #[serde(default, deserialize_with = "null_default_vec")]
    pub ports: Vec<i64>,
    #[serde(default, deserialize_with = "null_default_vec")]
    pub ip_addresses: Vec<TaskIpAddress>,
    /// The Mesos agent's id (`…-S3`): Mesos-DNS's per-task names end with its last field.
    #[serde(default, alias = "agentId", deserialize_with = "null_default")]
    pub slave_id: String,
    /// Missing until Marathon has a result, which is not the same as healthy.
    #[serde(default, deserialize_with = "null_default_vec")]
    pub health_check_results: Vec<HealthCheckResult>,
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

#[cfg(test)]
mod tests;
