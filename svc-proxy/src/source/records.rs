//! The attachment-record source: the pods cni-bridge attached on this node
//! (`<stateDir>/<network>/<containerId>.<ifname>.json`, phase `ready`), with their addresses and
//! labels, for Services that have a selector and no EndpointSlice. The directory may not exist
//! yet (no pod on the node so far); it is followed from the moment it appears.

use super::watch::{self, PathWatch};
use super::Outbox;
use crate::metrics::Metrics;
use crate::objects::{Kind, Object, ObjectRef, Pod};
use crate::store::{Delta, SourceId};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default cni-bridge state directory (`--attachments`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/cni-bridge";
/// Largest record read; records are a few hundred bytes.
const MAX_RECORD_BYTES: u64 = 1 << 20;

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
pub fn parse(name: String, text: &str) -> Result<Option<Pod>, String> {
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
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("ips: {ip:?} is not an address"))?;
        addresses.push(addr);
    }
    Ok(Some(crate::validate::pod(
        name,
        r.pod_namespace.as_deref(),
        addresses,
        r.labels,
    )))
}

/// The pods cni-bridge attached, as last read.
pub struct RecordSource {
    dir: PathBuf,
    metrics: Arc<Metrics>,
    pods: BTreeMap<PathBuf, Pod>,
    listed: bool,
}

impl RecordSource {
    pub fn new(dir: PathBuf, metrics: Arc<Metrics>) -> RecordSource {
        RecordSource {
            dir,
            metrics,
            pods: BTreeMap::new(),
            listed: false,
        }
    }

    /// The record's identity: `<network>/<containerId>.<ifname>`.
    fn name_of(&self, path: &Path) -> String {
        let rel = path.strip_prefix(&self.dir).unwrap_or(path);
        rel.with_extension("").display().to_string()
    }

    /// Reads one record file: `None` when it is gone, not ready, or unreadable (logged).
    fn load(&self, path: &Path) -> Option<Pod> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warn!("attachment record {}: {e}", path.display());
                return None;
            }
        };
        if !meta.is_file() || meta.len() > MAX_RECORD_BYTES {
            log::warn!(
                "attachment record {}: not a regular file of at most {MAX_RECORD_BYTES} bytes; ignored",
                path.display()
            );
            return None;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warn!("attachment record {}: {e}", path.display());
                return None;
            }
        };
        match parse(self.name_of(path), &text) {
            Ok(pod) => pod,
            Err(e) => {
                log::warn!("attachment record {}: ignored: {e}", path.display());
                self.metrics.invalid_object(SourceId::Records);
                None
            }
        }
    }

    /// All record files (one level of network directories).
    fn list(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(networks) = std::fs::read_dir(&self.dir) else {
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

    /// Re-reads every record: the initial list the first time, changed pods after that.
    pub fn rescan(&mut self) -> Vec<Delta> {
        let mut pods = BTreeMap::new();
        for p in self.list() {
            if let Some(pod) = self.load(&p) {
                pods.insert(p, pod);
            }
        }
        let old = std::mem::replace(&mut self.pods, pods);
        if !self.listed {
            self.listed = true;
            return vec![Delta::Replace {
                kind: Kind::Pod,
                objects: self.pods.values().cloned().map(Object::Pod).collect(),
                kept: Vec::new(),
            }];
        }
        let paths: BTreeSet<&PathBuf> = old.keys().chain(self.pods.keys()).collect();
        paths
            .into_iter()
            .filter_map(|p| delta(old.get(p), self.pods.get(p)))
            .collect()
    }

    /// Re-reads what `paths` name (records, or directories holding them).
    pub fn paths_changed(&mut self, paths: &BTreeSet<PathBuf>) -> Vec<Delta> {
        let mut deltas = Vec::new();
        for p in paths {
            if !p.starts_with(&self.dir) {
                continue;
            }
            if is_record_name(p) {
                let new = self.load(p);
                let old = match &new {
                    Some(pod) => self.pods.insert(p.clone(), pod.clone()),
                    None => self.pods.remove(p),
                };
                deltas.extend(delta(old.as_ref(), new.as_ref()));
            } else if p.is_dir() || p == &self.dir {
                deltas.extend(self.rescan());
            }
        }
        deltas
    }

    /// Runs the source on a thread of its own, like the manifest source.
    pub fn spawn(
        mut self,
        out: Outbox,
        rescan: Duration,
    ) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watch = PathWatch::new(tx)?;
        watch.tree(&self.dir);
        let first = self.rescan();
        Ok(std::thread::Builder::new()
            .name("records".into())
            .spawn(move || {
                if !out.send_all(first) {
                    return;
                }
                let mut next_rescan = Instant::now() + rescan;
                loop {
                    let wait = next_rescan.saturating_duration_since(Instant::now());
                    let mut deltas = match rx.recv_timeout(wait) {
                        Ok(c) => {
                            let Some((paths, lost)) = watch::settle(&rx, c, super::files::DEBOUNCE)
                            else {
                                return;
                            };
                            if lost {
                                self.rescan()
                            } else {
                                self.paths_changed(&paths)
                            }
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            next_rescan = Instant::now() + rescan;
                            self.rescan()
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    };
                    // The directory appeared: what was written before the watch began is found
                    // by reading it all.
                    if watch.retry() {
                        deltas.extend(self.rescan());
                    }
                    if !out.send_all(deltas) {
                        return;
                    }
                }
            })?)
    }
}

fn delta(old: Option<&Pod>, new: Option<&Pod>) -> Option<Delta> {
    match (old, new) {
        (a, b) if a == b => None,
        (_, Some(p)) => Some(Delta::Apply(Object::Pod(p.clone()))),
        (Some(p), None) => Some(Delta::Delete(ObjectRef::new(
            Kind::Pod,
            &p.namespace,
            &p.name,
        ))),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_records_count_and_namespace_defaults() {
        let pod = parse("home/c1.eth0".into(), r#"{"version":1,"network":"home","containerId":"c1","ifname":"eth0","netns":"/proc/1/ns/net","phase":"ready","bridge":"bridge_home","hostVeth":"veth1","ips":["10.0.0.11/24"],"gateways":["10.0.0.1"],"labels":{"component":"app"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(pod.namespace, "default");
        assert_eq!(pod.name, "home/c1.eth0");
        assert_eq!(pod.addresses, vec!["10.0.0.11".parse::<IpAddr>().unwrap()]);
        let sel = BTreeMap::from([("component".to_string(), "app".to_string())]);
        assert!(pod.matches("default", &sel));
        assert!(!pod.matches("prod", &sel));
    }

    #[test]
    fn adding_records_and_bad_records_do_not_count() {
        assert_eq!(
            parse(
                "n".into(),
                r#"{"version":1,"phase":"adding","ips":["10.0.0.11/24"]}"#
            ),
            Ok(None)
        );
        assert_eq!(
            parse("n".into(), r#"{"version":2,"phase":"ready"}"#),
            Err("unsupported record version 2".into())
        );
        assert_eq!(
            parse(
                "n".into(),
                r#"{"version":1,"phase":"ready","ips":["x/24"]}"#
            ),
            Err("ips: \"x/24\" is not an address".into())
        );
        assert!(is_record_name(Path::new("/s/home/c1.eth0.json")));
        assert!(!is_record_name(Path::new("/s/home/.c1.eth0.json.tmp")));
        assert!(!is_record_name(Path::new("/s/home/lock")));
    }

    #[test]
    fn records_are_listed_then_followed() {
        let dir = std::env::temp_dir().join(format!("svc-proxy-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let record = |id: &str, phase: &str| {
            format!(
                r#"{{"version":1,"containerId":"{id}","ifname":"eth0","phase":"{phase}","ips":["10.0.0.11/24"]}}"#
            )
        };
        std::fs::write(dir.join("home/c1.eth0.json"), record("c1", "ready")).unwrap();
        std::fs::write(dir.join("home/c2.eth0.json"), record("c2", "adding")).unwrap();
        let mut s = RecordSource::new(dir.clone(), Arc::new(Metrics::default()));
        let first = s.rescan();
        assert!(
            matches!(&first[..], [Delta::Replace { kind: Kind::Pod, objects, .. }] if objects.len() == 1),
            "{first:?}"
        );
        std::fs::write(dir.join("home/c2.eth0.json"), record("c2", "ready")).unwrap();
        std::fs::remove_file(dir.join("home/c1.eth0.json")).unwrap();
        let deltas = s.paths_changed(&BTreeSet::from([
            dir.join("home/c1.eth0.json"),
            dir.join("home/c2.eth0.json"),
        ]));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            deltas,
            vec![
                Delta::Delete(ObjectRef::new(Kind::Pod, "default", "home/c1.eth0")),
                Delta::Apply(Object::Pod(Pod {
                    namespace: "default".into(),
                    name: "home/c2.eth0".into(),
                    addresses: vec!["10.0.0.11".parse().unwrap()],
                    labels: BTreeMap::new(),
                })),
            ]
        );
    }
}
