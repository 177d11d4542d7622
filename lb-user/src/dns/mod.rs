//! DNS for Marathon tasks, as Mesos-DNS and dcos-net name them: `names` (the naming rules),
//! `zone` (the names and records, a pure function of the catalog's apps), `answer` (a zone as
//! records, and the lookup), `server` (UDP and TCP, hickory-server), `http` (Mesos-DNS's
//! `/v1` interface), `stats` (counters for `lb status` and `/metrics`), `query` (`lb dns`).
use std::net::SocketAddr;

use clap::Args;

pub mod answer;
pub mod http;
pub mod names;
pub mod query;
pub mod server;
pub mod stats;
pub mod zone;

/// `lb run`'s DNS flags.
#[derive(Clone, Debug, Args)]
pub struct DnsArgs {
    /// Answer DNS for Marathon's tasks on ADDR:PORT, UDP and TCP (repeatable). Off by default:
    /// the agent's own resolver may hold port 53.
    #[arg(long = "dns-listen", value_name = "ADDR:PORT")]
    pub dns_listen: Vec<SocketAddr>,

    /// Mesos-DNS's HTTP interface (its `HttpPort`, 8123) on ADDR:PORT too (it is always on the
    /// metrics listener): `/v1/version`, `/v1/config`, `/v1/hosts/{host}`,
    /// `/v1/services/{service}`, `/v1/enumerate`. Needs --dns-listen.
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_http_listen: Option<SocketAddr>,

    /// Mesos-DNS's domain: tasks are `<app>.marathon.<domain>`.
    #[arg(long, default_value = "mesos", value_parser = parse_domain)]
    pub dns_domain: String,

    /// TTL of every answer, seconds (short: records change as Marathon's events arrive).
    #[arg(long, default_value_t = 5)]
    pub dns_ttl: u32,

    /// Forward questions outside the zones to this server (ADDR or ADDR:PORT); without it
    /// they are refused.
    #[arg(long, value_name = "ADDR", value_parser = parse_upstream)]
    pub dns_upstream: Option<SocketAddr>,

    /// Opt-in: A queries for names with at most 8 addresses that arrive at the first IPv4
    /// `--dns-listen` address over an interface where XDP may send (`--hook xdp`,
    /// `--xdp-redirect`) are answered by the XDP program itself, without reaching this server.
    /// On a veth, the peer must run an XDP program for such answers to be delivered.
    #[arg(long)]
    pub dns_fast_path: bool,
}

impl DnsArgs {
    /// Where the XDP program answers, given the addresses the server is bound to.
    pub fn fast_path(&self, bound: &[SocketAddr]) -> Option<crate::dataplane::loader::FastDns> {
        if !self.dns_fast_path {
            return None;
        }
        bound.iter().find_map(|a| match a {
            SocketAddr::V4(v4) => Some(crate::dataplane::loader::FastDns {
                addr: (!v4.ip().is_unspecified()).then_some(*v4.ip()),
                port: v4.port(),
                ttl: self.dns_ttl,
            }),
            SocketAddr::V6(_) => None,
        })
    }
}

fn parse_domain(s: &str) -> Result<String, String> {
    let d = s.trim().trim_matches('.').to_ascii_lowercase();
    let valid = !d.is_empty()
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(d)
    } else {
        Err(format!(
            "{s:?} is not a domain name (labels of a-z, 0-9 and -)"
        ))
    }
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is neither ADDR nor ADDR:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked() {
        assert_eq!(parse_domain("Mesos."), Ok("mesos".into()));
        assert_eq!(parse_domain("dc1.example"), Ok("dc1.example".into()));
        assert!(parse_domain("a b").is_err());
        assert!(parse_domain("").is_err());
        assert_eq!(
            parse_upstream("10.0.0.53"),
            Ok("10.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("127.0.0.1:5300"),
            Ok("127.0.0.1:5300".parse().unwrap())
        );
        assert!(parse_upstream("dns.example").is_err());
    }
}
