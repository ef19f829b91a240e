//! The attachment-record source: the pods cni-bridge attached on this node
//! (`<stateDir>/<network>/<containerId>.<ifname>.json`, phase `ready`), with their addresses and
//! labels, for Services that have a selector and no EndpointSlice. The directory may not exist
//! yet (no pod on the node so far); it is followed from the moment it appears.

use super::watch::{self, PathWatch};
use super::Outbox;
use crate::metrics::Metrics;
use crate::objects::{Kind, Object, ObjectRef, Pod};
use crate::store::{Delta, SourceId};
use nodenet::attachment::{self, Attachment};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default cni-bridge state directory (`--attachments`).
pub const DEFAULT_STATE_DIR: &str = attachment::DEFAULT_STATE_DIR;

/// The pod a record stands for, named `<network>/<file stem>`; `None` unless the ADD completed.
pub fn pod_of(att: &Attachment) -> Option<Pod> {
    if !att.is_ready() {
        return None;
    }
    let file = att.file_name();
    let stem = file.strip_suffix(".json").unwrap_or(&file);
    Some(crate::validate::pod(
        format!("{}/{stem}", att.network),
        att.pod_namespace.as_deref(),
        att.addresses(),
        att.labels.clone(),
    ))
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

    /// Reads one record file: `None` when it is gone, not ready, or refused (logged). The file
    /// is opened without following symlinks and without blocking on a FIFO.
    fn load(&self, path: &Path) -> Option<Pod> {
        match attachment::read_file(path) {
            Ok(att) => att.as_ref().and_then(pod_of),
            Err(e) => {
                log::warn!("ignored: {e}");
                self.metrics.invalid_object(SourceId::Records);
                None
            }
        }
    }

    /// All record files (one level of network directories).
    fn list(&self) -> Vec<PathBuf> {
        attachment::record_files(&self.dir).unwrap_or_else(|e| {
            log::warn!("attachment records: {e}");
            Vec::new()
        })
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
            if attachment::is_record_file(p) {
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
    use std::net::IpAddr;

    fn record(network: &str, id: &str, phase: &str, extra: &str) -> String {
        format!(
            r#"{{"version":1,"network":"{network}","containerId":"{id}","ifname":"eth0","phase":"{phase}","ips":["10.0.0.11/24"]{extra}}}"#
        )
    }

    fn parse(text: &str) -> Option<Pod> {
        pod_of(&attachment::parse(text.as_bytes(), Path::new("/s/home/c1.eth0.json")).unwrap())
    }

    #[test]
    fn ready_records_count_and_namespace_defaults() {
        let pod = parse(&record(
            "home",
            "c1",
            "ready",
            r#","labels":{"component":"app"}"#,
        ))
        .unwrap();
        assert_eq!(pod.namespace, "default");
        assert_eq!(pod.name, "home/c1.eth0");
        assert_eq!(pod.addresses, vec!["10.0.0.11".parse::<IpAddr>().unwrap()]);
        let sel = BTreeMap::from([("component".to_string(), "app".to_string())]);
        assert!(pod.matches("default", &sel));
        assert!(!pod.matches("prod", &sel));
        let pod = parse(&record("home", "c1", "ready", r#","podNamespace":"prod""#)).unwrap();
        assert_eq!(pod.namespace, "prod");
    }

    #[test]
    fn adding_records_do_not_count() {
        assert_eq!(parse(&record("home", "c1", "adding", "")), None);
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn state_dir(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("svc-proxy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.clone(), dir.join("home")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        Dir(dir)
    }

    #[test]
    fn records_are_listed_then_followed() {
        let d = state_dir("records");
        let dir = &d.0;
        std::fs::write(
            dir.join("home/c1.eth0.json"),
            record("home", "c1", "ready", ""),
        )
        .unwrap();
        std::fs::write(
            dir.join("home/c2.eth0.json"),
            record("home", "c2", "adding", ""),
        )
        .unwrap();
        let mut s = RecordSource::new(dir.clone(), Arc::new(Metrics::default()));
        let first = s.rescan();
        assert!(
            matches!(&first[..], [Delta::Replace { kind: Kind::Pod, objects, .. }] if objects.len() == 1),
            "{first:?}"
        );
        std::fs::write(
            dir.join("home/c2.eth0.json"),
            record("home", "c2", "ready", ""),
        )
        .unwrap();
        std::fs::remove_file(dir.join("home/c1.eth0.json")).unwrap();
        let deltas = s.paths_changed(&BTreeSet::from([
            dir.join("home/c1.eth0.json"),
            dir.join("home/c2.eth0.json"),
        ]));
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

    #[test]
    fn misplaced_fifo_and_broken_records_are_refused_without_blocking() {
        let d = state_dir("records-bad");
        let dir = &d.0;
        let metrics = Arc::new(Metrics::default());
        // Content naming another attachment than the file it is in.
        std::fs::write(
            dir.join("home/c1.eth0.json"),
            record("home", "c9", "ready", ""),
        )
        .unwrap();
        // Another network's record copied here.
        std::fs::write(
            dir.join("home/c2.eth0.json"),
            record("work", "c2", "ready", ""),
        )
        .unwrap();
        // A FIFO where a record should be: refused, not waited on.
        nix::unistd::mkfifo(
            &dir.join("home/c3.eth0.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::fs::write(dir.join("home/c4.eth0.json"), b"{not json").unwrap();
        std::fs::write(
            dir.join("home/c5.eth0.json"),
            record("home", "c5", "ready", ""),
        )
        .unwrap();
        let mut s = RecordSource::new(dir.clone(), metrics);
        let first = s.rescan();
        match &first[..] {
            [Delta::Replace { objects, .. }] => {
                let names: Vec<_> = objects.iter().map(|o| o.reference().key.name).collect();
                assert_eq!(names, vec!["home/c5.eth0".to_string()]);
            }
            other => panic!("{other:?}"),
        }
    }
}
