//! The desired state: which services the agent answers on and which backends serve them.
//! Marathon (`marathon/`) and static files (`config.rs`) produce it; `dataplane/` applies it.
use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
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
    /// HAProxy's `leastconn`: the backend with the fewest live flows.
    #[serde(rename = "leastconn")]
    LeastConn,
}

impl Balance {
    /// HAProxy's name for it, as labels and `lb status` spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "roundrobin",
            Self::Source => "source",
            Self::LeastConn => "leastconn",
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
    /// The client ranges allowed to open connections (sorted, without duplicates); empty
    /// means every client, as in marathon-lb without `HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Cidr>,
}

/// An IPv4 range of client addresses: `10.0.0.0/8`, or one address (`10.1.2.3`, a /32), as
/// HAProxy's `src` ACL reads them. Bits past the prefix are cleared, as HAProxy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, String> {
        if len > 32 {
            return Err(format!("prefix length {len} is over 32"));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }

    pub const fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub const fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        Self::new(ip, self.len).is_ok_and(|c| c.addr == self.addr)
    }

    /// Sorted and deduplicated, as `ServiceSpec::allow` keeps them.
    pub fn normalize(mut ranges: Vec<Self>) -> Vec<Self> {
        ranges.sort();
        ranges.dedup();
        ranges
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (
                a,
                l.parse::<u8>()
                    .map_err(|_| format!("{s:?}: prefix length {l:?} is not a number 0-32"))?,
            ),
            None => (s, 32),
        };
        let addr = addr
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        Self::new(addr, len).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> Self {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The complete desired state. Two services never share a listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub services: Vec<ServiceSpec>,
}

impl Desired {
    /// Gives `ranges` (`--allow`) to every service that has no allowed ranges of its own.
    pub fn allow_by_default(mut self, ranges: &[Cidr]) -> Self {
        if !ranges.is_empty() {
            let ranges = Cidr::normalize(ranges.to_vec());
            for s in self.services.iter_mut().filter(|s| s.allow.is_empty()) {
                s.allow = ranges.clone();
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_haproxy_reads_them() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "167.114.239.226".parse().unwrap();
        assert_eq!(one.to_string(), "167.114.239.226/32");
        assert!(one.contains("167.114.239.226".parse().unwrap()));
        assert!(!one.contains("167.114.239.227".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.0/",
            "::1/128",
            "10.0.0.0/8/8",
            "x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn ranges_round_trip_through_json() {
        let spec: Vec<Cidr> = serde_json::from_str(r#"["10.0.0.0/8", "1.2.3.4"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            r#"["10.0.0.0/8","1.2.3.4/32"]"#
        );
        assert!(serde_json::from_str::<Vec<Cidr>>(r#"["10.0.0.0/40"]"#).is_err());
    }
}
