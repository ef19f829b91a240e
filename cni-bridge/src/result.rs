//! The CNI result (`interfaces`, `ips`, `routes`, `dns`): parsed from IPAM plugins and
//! `prevResult` of any supported version, printed in the format of the config's version.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{code, CniError, Result};
use crate::strict::object_only;
use crate::version::Version;

/// One interface of the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(remote = "Self")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Set for the container-side interface: the namespace path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}
object_only!(Interface, serialize);

/// One address of the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// One route of the result (and of IPAM's `routes` config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RouteConf {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}
object_only!(RouteConf, serialize);

/// DNS settings (`dns` in configs and results).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(remote = "Self")]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}
object_only!(Dns, serialize);

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// A whole result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConf>,
    pub dns: Dns,
}

#[derive(Deserialize)]
#[serde(remote = "Self")]
struct RawIp {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<usize>,
}
object_only!(RawIp);

#[derive(Deserialize)]
#[serde(remote = "Self")]
struct RawResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<RawIp>,
    #[serde(default)]
    routes: Vec<RouteConf>,
    #[serde(default)]
    dns: Dns,
}
object_only!(RawResult);

fn bad(what: &str, detail: impl std::fmt::Display) -> CniError {
    CniError::new(code::DECODE_FAILURE, format!("{what}: {detail}"))
}

impl CniResult {
    /// Parses a result of any supported version (the 0.3/0.4 `version` field is ignored).
    pub fn from_value(v: &Value, what: &str) -> Result<CniResult> {
        let raw: RawResult =
            <RawResult as Deserialize>::deserialize(v).map_err(|e| bad(what, e))?;
        let mut ips = Vec::with_capacity(raw.ips.len());
        for ip in raw.ips {
            let address: IpNetwork = ip
                .address
                .parse()
                .map_err(|e| bad(what, format!("address {:?}: {e}", ip.address)))?;
            let gateway = match ip.gateway.as_deref() {
                None | Some("") => None,
                Some(g) => Some(
                    g.parse()
                        .map_err(|e| bad(what, format!("gateway {g:?}: {e}")))?,
                ),
            };
            ips.push(IpConfig {
                address,
                gateway,
                interface: ip.interface,
            });
        }
        Ok(CniResult {
            interfaces: raw.interfaces,
            ips,
            routes: raw.routes,
            dns: raw.dns,
        })
    }

    /// The result as the given spec version prints it.
    pub fn to_value(&self, version: Version) -> Value {
        let old = version < Version::V100;
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = serde_json::Map::new();
                if old {
                    let fam = if ip.address.is_ipv4() { "4" } else { "6" };
                    o.insert("version".into(), json!(fam));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(g) = ip.gateway {
                    o.insert("gateway".into(), json!(g.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            out.insert("interfaces".into(), json!(self.interfaces));
        }
        if !ips.is_empty() {
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            out.insert("routes".into(), json!(self.routes));
        }
        out.insert("dns".into(), json!(self.dns));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "0a:00:00:00:00:01".into(),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:00:00:00:00:02".into(),
                    sandbox: Some("/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.0.0.11/24".parse().unwrap(),
                gateway: Some("10.0.0.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![RouteConf {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.0.0.1".parse().unwrap()),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn v1_result_has_no_ip_version() {
        let v = sample().to_value(Version::V100);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["ips"][0]["address"], "10.0.0.11/24");
        assert_eq!(v["routes"][0]["gw"], "10.0.0.1");
        assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/p");
        assert!(v["interfaces"][0].get("sandbox").is_none());
    }

    #[test]
    fn v03_and_v04_results_carry_ip_version() {
        for ver in [Version::V030, Version::V031, Version::V040] {
            let v = sample().to_value(ver);
            assert_eq!(v["ips"][0]["version"], "4", "{ver:?}");
        }
    }

    #[test]
    fn round_trip_through_any_version() {
        for ver in [Version::V031, Version::V110] {
            let v = sample().to_value(ver);
            assert_eq!(CniResult::from_value(&v, "prevResult").unwrap(), sample());
        }
    }

    #[test]
    fn malformed_result_is_a_decode_failure() {
        let v = json!({"ips": [{"address": "10.0.0.300/24"}]});
        assert_eq!(
            CniResult::from_value(&v, "prevResult").unwrap_err().code,
            code::DECODE_FAILURE
        );
    }
}
