//! The daemon's servers (metrics and /healthz, DNS and Mesos-DNS's HTTP interface, the HTTP
//! front end): bound before the kernel is touched, so that a port in use fails the start with
//! nothing applied, then started on the daemon's channels once it runs.
use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail};
use tokio::net::TcpListener;
use tracing::info;

use super::{Daemon, Source};
use crate::{
    cli::RunArgs,
    dataplane::loader::FastDns,
    dns::{self, zone::ZoneOptions},
    http::FrontEnd,
    observe::http,
};

pub(super) struct Listeners {
    /// The DNS server's sockets (`--dns-listen`).
    dns: Option<dns::server::Bound>,
    /// Mesos-DNS's HTTP interface on a port of its own (`--dns-http-listen`).
    dns_http: Option<TcpListener>,
    /// The HTTP virtual hosts' front end (:80/:443).
    front: Option<FrontEnd>,
    /// `--metrics`: /metrics, /healthz and, with DNS on, Mesos-DNS's HTTP interface.
    metrics: TcpListener,
}

impl Listeners {
    /// Binds every port the flags ask for; DNS turns on the Marathon feed's zone.
    pub(super) async fn bind(args: &RunArgs, source: &mut Source) -> Result<Self> {
        let dns = match (&args.dns.dns_listen[..], &mut *source) {
            ([], _) => None,
            (_, Source::File(_)) => {
                bail!("--dns-listen needs --marathon: the names come from Marathon's apps")
            }
            (listen, Source::Marathon(cfg)) => {
                cfg.dns = Some(ZoneOptions {
                    domain: args.dns.dns_domain.clone(),
                });
                Some(dns::server::bind(listen).await?)
            }
        };
        let dns_http = match (args.dns.dns_http_listen, &dns) {
            (None, _) => None,
            (Some(_), None) => bail!("--dns-http-listen needs --dns-listen"),
            (Some(addr), Some(_)) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding --dns-http-listen {addr}"))?,
            ),
        };
        let front = match &*source {
            Source::Marathon(_) if !args.http.no_vhost => {
                Some(FrontEnd::start(args.http.front_config()).await?)
            }
            _ => None,
        };
        let metrics = TcpListener::bind(args.metrics)
            .await
            .with_context(|| format!("binding --metrics {}", args.metrics))?;
        Ok(Self {
            dns,
            dns_http,
            front,
            metrics,
        })
    }

    /// The DNS fast path's settings, when DNS is on and the fast path wanted.
    pub(super) fn fast_dns(&self, args: &RunArgs) -> Option<FastDns> {
        self.dns.as_ref().and_then(|b| args.dns.fast_path(&b.addrs))
    }

    /// Starts each server on its listener, fed by the daemon's channels.
    pub(super) fn serve(self, d: &mut Daemon, args: &RunArgs) -> Result<()> {
        let metrics_addr = self.metrics.local_addr()?;
        // Mesos-DNS's HTTP interface: on the metrics listener whenever DNS is on, and on
        // --dns-http-listen too when given.
        let dns_routes = |http_listen: SocketAddr| {
            self.dns.as_ref().map(|bound| {
                dns::http::router(
                    dns::http::HttpConfig {
                        domain: args.dns.dns_domain.clone(),
                        ttl: args.dns.dns_ttl,
                        dns_listen: bound.addrs.clone(),
                        http_listen,
                    },
                    d.dns_zone.subscribe(),
                )
            })
        };
        let on_metrics = dns_routes(metrics_addr);
        let alone = match self.dns_http {
            Some(l) => Some((l.local_addr()?, l)),
            None => None,
        }
        .and_then(|(addr, l)| Some((l, dns_routes(addr)?)));
        info!(addr = %metrics_addr, mesos_dns = on_metrics.is_some(), "metrics and /healthz");
        tokio::spawn(http::serve(
            self.metrics,
            d.metrics.clone(),
            d.health.subscribe(),
            on_metrics.unwrap_or_default(),
        ));
        if let Some(front) = self.front {
            tokio::spawn(front.run(d.routes.subscribe(), d.metrics.http.clone()));
        }
        if let Some((listener, routes)) = alone {
            info!(addr = %listener.local_addr()?, "Mesos-DNS HTTP interface");
            tokio::spawn(dns::http::serve(listener, routes));
        }
        if let Some(bound) = self.dns {
            d.dns = Some((bound.addrs.clone(), args.dns.dns_domain.clone()));
            dns::server::spawn(
                bound,
                dns::server::ServeConfig {
                    domain: args.dns.dns_domain.clone(),
                    ttl: args.dns.dns_ttl,
                    upstream: args.dns.dns_upstream,
                },
                d.dns_zone.subscribe(),
                d.metrics.dns.clone(),
            );
        }
        Ok(())
    }
}
