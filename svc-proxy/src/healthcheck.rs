//! Health check node ports of `externalTrafficPolicy: Local` load balancers, answered as
//! kube-proxy answers them: one HTTP server per port on the node-port addresses, 200 while the
//! Service has local ready endpoints and the proxy is healthy, else 503; the body names the
//! Service and the count, and `X-Load-Balancing-Endpoint-Weight` carries the count.

use crate::health::Health;
use crate::objects::NamespacedName;
use axum::extract::State;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One health check node port being served.
struct Server {
    service: NamespacedName,
    endpoints: Arc<AtomicUsize>,
    /// Dropping it stops the server.
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Clone)]
struct Answer {
    service: NamespacedName,
    endpoints: Arc<AtomicUsize>,
    health: Arc<Health>,
}

/// The servers, kept in step with the health check ports the desired state asks for.
pub struct HealthChecks {
    /// Where servers run; `None`: nothing is served (tests, `--once`), the wanted state is kept.
    rt: Option<tokio::runtime::Handle>,
    health: Arc<Health>,
    /// Addresses to listen on (`None`: every address, as kube-proxy with default
    /// `--nodeport-addresses`).
    addresses: Option<Vec<IpAddr>>,
    servers: BTreeMap<u16, Server>,
    /// What was last asked for: port -> (Service, local ready endpoints).
    wanted: BTreeMap<u16, (NamespacedName, usize)>,
}

impl HealthChecks {
    pub fn new(rt: Option<tokio::runtime::Handle>, health: Arc<Health>) -> HealthChecks {
        HealthChecks {
            rt,
            health,
            addresses: None,
            servers: BTreeMap::new(),
            wanted: BTreeMap::new(),
        }
    }

    /// Listen on `addresses` only (from `--nodeport-addresses`); servers already running keep
    /// their sockets until their port is closed.
    pub fn listen_on(&mut self, addresses: Option<Vec<IpAddr>>) {
        self.addresses = addresses;
    }

    /// What is wanted now: port -> (Service, local ready endpoints).
    pub fn wanted(&self) -> &BTreeMap<u16, (NamespacedName, usize)> {
        &self.wanted
    }

    /// Opens the ports newly wanted, closes the ones no longer wanted, updates the counts.
    pub fn sync(&mut self, wanted: &BTreeMap<u16, (NamespacedName, usize)>) {
        self.wanted = wanted.clone();
        let Some(rt) = self.rt.clone() else {
            return;
        };
        self.servers.retain(|port, s| {
            let keep = wanted.get(port).is_some_and(|(n, _)| *n == s.service);
            if !keep {
                log::info!("closing health check node port {port} of {}", s.service);
            }
            keep
        });
        for (port, (service, count)) in wanted {
            if let Some(s) = self.servers.get(port) {
                s.endpoints.store(*count, Ordering::Relaxed);
                continue;
            }
            let endpoints = Arc::new(AtomicUsize::new(*count));
            let answer = Answer {
                service: service.clone(),
                endpoints: endpoints.clone(),
                health: self.health.clone(),
            };
            let addrs: Vec<SocketAddr> = match &self.addresses {
                Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, *port)).collect(),
                // Every address of both families; IPv4 alone where IPv6 is off.
                None => vec![SocketAddr::from(([0u16; 8], *port))],
            };
            let mut listeners = Vec::new();
            for addr in &addrs {
                let bound = std::net::TcpListener::bind(addr).or_else(|e| match addr {
                    SocketAddr::V6(a) if a.ip().is_unspecified() => {
                        std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], *port)))
                    }
                    _ => Err(e),
                });
                match bound.and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok(l)
                }) {
                    Ok(l) => listeners.push(l),
                    Err(e) => log::error!(
                        "health check node port {port} of {service}: binding {addr}: {e}"
                    ),
                }
            }
            if listeners.is_empty() {
                continue;
            }
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let app = Router::new().fallback(get(answer_check)).with_state(answer);
            rt.spawn(async move {
                let mut tasks = Vec::new();
                for l in listeners {
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => {
                            let app = app.clone();
                            tasks.push(tokio::spawn(async move { axum::serve(l, app).await }))
                        }
                        Err(e) => log::error!("health check listener: {e}"),
                    }
                }
                let _ = stopped.await;
                for t in tasks {
                    t.abort();
                }
            });
            log::info!("serving health check node port {port} of {service}");
            self.servers.insert(
                *port,
                Server {
                    service: service.clone(),
                    endpoints,
                    _stop: stop,
                },
            );
        }
    }
}

async fn answer_check(State(a): State<Answer>) -> impl IntoResponse {
    let count = a.endpoints.load(Ordering::Relaxed);
    let healthy = a.health.report(Instant::now(), true).healthy;
    let status = if count != 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "service": {"namespace": a.service.namespace, "name": a.service.name},
        "localEndpoints": count,
        "serviceProxyHealthy": healthy,
    });
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                HeaderName::from_static("x-load-balancing-endpoint-weight"),
                count.to_string(),
            ),
        ],
        body.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn get(port: u16) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out[9..12].parse().unwrap();
        (code, out)
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn answers_200_with_local_endpoints_503_without_and_closes_when_unwanted() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let health = Arc::new(Health::new(Duration::from_secs(60), false));
        let mut hc = HealthChecks::new(Some(rt.handle().clone()), health);
        hc.listen_on(Some(vec!["127.0.0.1".parse().unwrap()]));
        let port = free_port();
        let svc = NamespacedName::new("shop", "web");
        hc.sync(&BTreeMap::from([(port, (svc.clone(), 2))]));
        let (code, text) = get(port);
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("\"localEndpoints\":2"), "{text}");
        assert!(text.contains("\"name\":\"web\"") && text.contains("\"namespace\":\"shop\""));
        assert!(
            text.to_lowercase()
                .contains("x-load-balancing-endpoint-weight: 2"),
            "{text}"
        );
        hc.sync(&BTreeMap::from([(port, (svc, 0))]));
        let (code, text) = get(port);
        assert_eq!(code, 503, "{text}");
        hc.sync(&BTreeMap::new());
        // Closed: nothing listens there any more.
        let closed = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        });
        assert!(closed);
    }
}
