//! cni-bridge attachment records (`<stateDir>/<network>/<containerId>.<ifname>.json`): the pods
//! attached on this node, with their addresses and labels, for Services that have a selector and
//! no EndpointSlice.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Default cni-bridge state directory (`--attachments`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/cni-bridge";

/// A pod attached on this node, as far as svc-proxy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// `podNamespace`, "default" when the record has none.
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
}

impl Pod {
    /// Whether every `key: value` of `selector` is among the pod's labels.
    pub fn matches(&self, namespace: &str, selector: &BTreeMap<String, String>) -> bool {
        self.namespace == namespace && selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    version: u32,
    phase: String,
    #[serde(default)]
    ips: Vec<String>,
    pod_namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Whether `path` looks like a record file (`<containerId>.<ifname>.json`, not a temp file).
pub fn is_record_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.starts_with('.') && n.ends_with(".json") && n.matches('.').count() >= 2)
}

/// Parses one record; `Ok(None)` for a record that does not count (not `ready`).
pub fn parse(text: &str) -> Result<Option<Pod>, String> {
    let r: Record = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if r.version != 1 {
        return Err(format!("unsupported record version {}", r.version));
    }
    if r.phase != "ready" {
        return Ok(None);
    }
    let mut addresses = Vec::new();
    for ip in &r.ips {
        let addr = ip.split('/').next().unwrap_or_default();
        addresses.push(
            addr.parse()
                .map_err(|_| format!("ips: {ip:?} is not an address"))?,
        );
    }
    Ok(Some(Pod {
        namespace: r.pod_namespace.unwrap_or_else(|| "default".to_string()),
        addresses,
        labels: r.labels,
    }))
}

/// Reads one record file: `None` when it is gone, not ready, or unreadable (logged).
pub fn load(path: &Path) -> Option<Pod> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("attachment record {}: {e}", path.display());
            return None;
        }
    };
    match parse(&text) {
        Ok(pod) => pod,
        Err(e) => {
            log::warn!("attachment record {}: ignored: {e}", path.display());
            None
        }
    }
}

/// All record files under `state_dir` (one level of network directories).
pub fn list(state_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(networks) = std::fs::read_dir(state_dir) else {
        return out;
    };
    for net in networks.flatten() {
        if let Ok(files) = std::fs::read_dir(net.path()) {
            out.extend(
                files
                    .flatten()
                    .map(|f| f.path())
                    .filter(|p| is_record_name(p)),
            );
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_records_count_and_namespace_defaults() {
        let pod = parse(r#"{"version":1,"network":"home","containerId":"c1","ifname":"eth0","netns":"/proc/1/ns/net","phase":"ready","bridge":"bridge_home","hostVeth":"veth1","ips":["10.0.0.11/24"],"gateways":["10.0.0.1"],"labels":{"component":"app"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(pod.namespace, "default");
        assert_eq!(pod.addresses, vec!["10.0.0.11".parse::<IpAddr>().unwrap()]);
        let sel = BTreeMap::from([("component".to_string(), "app".to_string())]);
        assert!(pod.matches("default", &sel));
        assert!(!pod.matches("prod", &sel));
        assert!(!pod.matches(
            "default",
            &BTreeMap::from([("component".to_string(), "db".to_string())])
        ));
    }

    #[test]
    fn adding_records_and_bad_records_do_not_count() {
        assert_eq!(
            parse(r#"{"version":1,"phase":"adding","ips":["10.0.0.11/24"]}"#),
            Ok(None)
        );
        assert_eq!(
            parse(r#"{"version":2,"phase":"ready"}"#),
            Err("unsupported record version 2".into())
        );
        assert_eq!(
            parse(r#"{"version":1,"phase":"ready","ips":["x/24"]}"#),
            Err("ips: \"x/24\" is not an address".into())
        );
        assert!(is_record_name(Path::new("/s/home/c1.eth0.json")));
        assert!(!is_record_name(Path::new("/s/home/.c1.eth0.json.tmp")));
        assert!(!is_record_name(Path::new("/s/home/lock")));
    }
}
