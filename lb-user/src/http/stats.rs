//! What the HTTP front end did, for `/metrics`: answers by status code (HAProxy's `hrsp_*`
//! counters), the connections to tasks its requests used, new or reused from the pool, and the
//! upgraded connections it relayed, by how.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabel {
    /// `new` or `reused`.
    pub connection: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabel {
    /// `splice` or `copy`.
    pub relay: &'static str,
}

/// Counters shared by every request's task and `/metrics`.
#[derive(Debug, Default)]
pub struct FrontStats {
    answers: Family<CodeLabel, Counter>,
    task_connections: Family<ConnectionLabel, Counter>,
    tunnels: Family<RelayLabel, Counter>,
}

impl FrontStats {
    /// Registers the counters in `registry` (they stay empty while no front end runs).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "lb_http_responses",
            "Responses the HTTP front end sent, its own (503, 301, 4xx) and the tasks', by status code",
            self.answers.clone(),
        );
        registry.register(
            "lb_http_task_connections",
            "Connections to tasks that the HTTP front end's requests went over: new, or reused idle ones",
            self.task_connections.clone(),
        );
        registry.register(
            "lb_http_tunnels",
            "Upgraded connections (101 Switching Protocols) the HTTP front end relayed: in the kernel (splice) or through its buffers (copy: TLS, --no-splice)",
            self.tunnels.clone(),
        );
    }

    pub fn answered(&self, code: u16) {
        self.answers.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn tunnel(&self, spliced: bool) {
        let relay = if spliced { "splice" } else { "copy" };
        self.tunnels.get_or_create(&RelayLabel { relay }).inc();
    }

    pub fn task_connection(&self, reused: bool) {
        let connection = if reused { "reused" } else { "new" };
        self.task_connections
            .get_or_create(&ConnectionLabel { connection })
            .inc();
    }
}
