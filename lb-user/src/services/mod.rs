//! The desired state: which services the agent answers on and which backends serve them.
//! Marathon (`marathon/`) and static files (`config.rs`) produce it; `dataplane/` applies it.
use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn ip_proto(self) -> u8 {
        match self {
            Self::Tcp => lb_common::IPPROTO_TCP,
            Self::Udp => lb_common::IPPROTO_UDP,
        }
    }

    pub const fn from_ip_proto(proto: u8) -> Option<Self> {
        match proto {
            lb_common::IPPROTO_TCP => Some(Self::Tcp),
            lb_common::IPPROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// How a new flow picks its backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// HAProxy's `roundrobin` (marathon-lb's default).
    #[default]
    RoundRobin,
    /// HAProxy's `source`: a hash of the client address.
    Source,
}

impl Balance {
    /// HAProxy's name for it, as labels and `lb status` spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "roundrobin",
            Self::Source => "source",
        }
    }
}

/// Where a service listens: `bind` None means every address of the agent (`bind *:PORT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Listener {
    pub bind: Option<Ipv4Addr>,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bind {
            Some(a) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            None => write!(f, "*:{}/{}", self.port, self.protocol),
        }
    }
}

/// One balanced port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// marathon-lb's backend name, e.g. `nginx_10000`, or the name in a static file.
    pub name: String,
    pub listener: Listener,
    pub balance: Balance,
    /// Marathon app id (`/nginx`) and port index, when the service comes from Marathon.
    pub app_id: Option<String>,
    pub port_index: Option<usize>,
    /// Backends in a stable order (sorted), without duplicates.
    pub backends: Vec<SocketAddrV4>,
}

/// The complete desired state. Two services never share a listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub services: Vec<ServiceSpec>,
}
