//! The inputs: manifest files (last good content per file) and attachment records (ready pods),
//! re-read per changed path or rescanned, and combined into the desired state.
//! Another source (the Kubernetes API) would feed the same objects into [`Sources::rebuild`].

use crate::attachments::{self, Pod};
use crate::manifest::{self, Object};
use crate::model::Desired;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// File identity used to skip unchanged files on rescans: modification time and length.
type Stamp = (Option<SystemTime>, u64);

/// The last good content of one manifest file.
struct ManifestFile {
    stamp: Stamp,
    objects: Vec<Object>,
}

/// Manifest inputs and attached pods.
pub struct Sources {
    /// Manifest files and directories named on the command line (absolute).
    manifests: Vec<PathBuf>,
    /// cni-bridge state directory (absolute).
    attachments: PathBuf,
    files: BTreeMap<PathBuf, ManifestFile>,
    pods: BTreeMap<PathBuf, Pod>,
    /// Invalid manifest loads since start.
    pub errors: usize,
}

impl Sources {
    pub fn new(manifests: Vec<PathBuf>, attachments: PathBuf) -> Sources {
        Sources {
            manifests,
            attachments,
            files: BTreeMap::new(),
            pods: BTreeMap::new(),
            errors: 0,
        }
    }

    /// Re-reads everything that changed; true if any input changed.
    pub fn rescan(&mut self) -> bool {
        let m = self.rescan_manifests();
        self.rescan_attachments() || m
    }

    /// Re-reads what `paths` name; true if any input changed.
    pub fn paths_changed(&mut self, paths: &BTreeSet<PathBuf>) -> bool {
        let mut changed = false;
        for p in paths {
            if p.starts_with(&self.attachments) {
                if attachments::is_record_name(p) {
                    changed |= self.reload_pod(p);
                } else if p.is_dir() || p == &self.attachments {
                    changed |= self.rescan_attachments();
                }
            } else if self.manifests.contains(p) && p.is_dir() {
                changed |= self.rescan_manifests();
            } else if self.is_manifest_path(p) {
                // A burst of events for one write shows the same file again: read it once.
                let now = stamp(p);
                if now.is_none() || self.files.get(p).is_none_or(|f| Some(f.stamp) != now) {
                    changed |= self.reload_manifest(p, now);
                }
            }
        }
        changed
    }

    fn is_manifest_path(&self, p: &Path) -> bool {
        self.manifests.iter().any(|m| m == p)
            || (manifest::is_manifest_name(p)
                && p.parent()
                    .is_some_and(|d| self.manifests.iter().any(|m| m == d && m.is_dir())))
    }

    /// Re-reads changed manifest files and forgets removed ones; true if anything changed.
    fn rescan_manifests(&mut self) -> bool {
        let mut present = BTreeSet::new();
        for input in &self.manifests {
            match std::fs::read_dir(input) {
                Ok(entries) => present.extend(
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| manifest::is_manifest_name(p)),
                ),
                Err(_) if input.is_file() => {
                    present.insert(input.clone());
                }
                Err(e) => log::warn!("manifest input {}: {e}", input.display()),
            }
        }
        let mut changed = false;
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            changed |= self.reload_manifest(&p, None);
        }
        for p in &present {
            let stamp = stamp(p);
            if self.files.get(p).is_none_or(|f| Some(f.stamp) != stamp) {
                changed |= self.reload_manifest(p, stamp);
            }
        }
        changed
    }

    /// Re-reads one manifest file; a file that fails keeps its last good objects. True if the
    /// objects changed.
    fn reload_manifest(&mut self, path: &Path, stamp_hint: Option<Stamp>) -> bool {
        let Some(stamp) = stamp_hint.or_else(|| stamp(path)) else {
            let gone = self.files.remove(path);
            if gone.as_ref().is_some_and(|f| !f.objects.is_empty()) {
                log::info!("{}: removed", path.display());
            }
            return gone.is_some_and(|f| !f.objects.is_empty());
        };
        match manifest::load_file(path) {
            // Seen between an editor's truncate and its write; deleting the file removes objects.
            Ok(objects)
                if objects.is_empty()
                    && self.files.get(path).is_some_and(|f| !f.objects.is_empty()) =>
            {
                log::warn!(
                    "{}: no objects (a write in progress?); keeping its last good state",
                    path.display()
                );
                self.files
                    .entry(path.to_path_buf())
                    .and_modify(|f| f.stamp = stamp);
                false
            }
            Ok(objects) => {
                let old = self
                    .files
                    .insert(path.to_path_buf(), ManifestFile { stamp, objects });
                let objects = &self.files[path].objects;
                let changed = old.is_none_or(|o| o.objects != *objects);
                if changed {
                    log::info!("{}: loaded {} object(s)", path.display(), objects.len());
                }
                changed
            }
            Err(e) => {
                log::error!("{e}; keeping this file's last good state");
                self.errors += 1;
                self.files
                    .entry(path.to_path_buf())
                    .and_modify(|f| f.stamp = stamp)
                    .or_insert(ManifestFile {
                        stamp,
                        objects: Vec::new(),
                    });
                false
            }
        }
    }

    /// Re-reads all attachment records; true if the set of ready pods changed.
    fn rescan_attachments(&mut self) -> bool {
        let mut pods = BTreeMap::new();
        for p in attachments::list(&self.attachments) {
            if let Some(pod) = attachments::load(&p) {
                pods.insert(p, pod);
            }
        }
        let changed = pods != self.pods;
        self.pods = pods;
        changed
    }

    fn reload_pod(&mut self, path: &Path) -> bool {
        match attachments::load(path) {
            Some(pod) => self.pods.insert(path.to_path_buf(), pod.clone()) != Some(pod),
            None => self.pods.remove(path).is_some(),
        }
    }

    /// The desired state from the last good inputs. An object defined in two files is taken from
    /// the first (in path order); the other copy and any VIP:port clash are logged.
    pub fn rebuild(&self, scheduler: &str) -> Desired {
        let mut seen: HashMap<String, &Path> = HashMap::new();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for (path, file) in &self.files {
            for o in &file.objects {
                if let Some(first) = seen.get(&o.id()) {
                    log::error!(
                        "{}: {} is already defined in {}; ignored",
                        path.display(),
                        o.id(),
                        first.display()
                    );
                    continue;
                }
                seen.insert(o.id(), path);
                match o {
                    Object::Service(s) => services.push(s),
                    Object::EndpointSlice(e) => slices.push(e),
                }
            }
        }
        let pods: Vec<&Pod> = self.pods.values().collect();
        let (desired, conflicts) = crate::desired::build(&services, &slices, &pods, scheduler);
        for c in conflicts {
            log::error!("{c}");
        }
        desired
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

/// The desired state as `ipvsadm -Ln` would list it, with the Service each entry comes from.
pub fn listing(desired: &Desired) -> String {
    let mut out = String::new();
    for (key, s) in &desired.services {
        let proto = key.protocol.as_str().to_uppercase();
        let _ = write!(
            out,
            "{proto:<5}{} {}",
            std::net::SocketAddr::new(key.addr, key.port),
            s.service.scheduler
        );
        if let Some(t) = s.service.persistence {
            let _ = write!(out, " persistent {t}");
        }
        let _ = writeln!(out, "  # {}", s.origin);
        for ep in &s.endpoints {
            let _ = writeln!(
                out,
                "  -> {ep:<24} Masq    {}",
                crate::model::ENDPOINT_WEIGHT
            );
        }
    }
    let _ = writeln!(
        out,
        "loop-back set {}: {} entries",
        crate::model::LOOPBACK_SET,
        desired.loopback.len()
    );
    out
}
