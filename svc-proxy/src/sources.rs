//! The inputs: manifest files (last good content per file) and attachment records (ready pods),
//! re-read per changed path or rescanned, and combined into the desired state.
//! Another source (the Kubernetes API) would feed the same objects into [`Sources::rebuild`].

use crate::attachments::{self, Pod};
use crate::manifest::{self, EndpointSlice, Object, Service};
use crate::model::{Desired, LoopbackEntry, ServiceKey};
use crate::plan::Subset;
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
    /// Position of each Service by `namespace/name` (unique within a file: `parse` rejects
    /// duplicates), so a lookup does not scan a large `List` file.
    services: HashMap<String, usize>,
    /// Positions of the EndpointSlices of each Service (`namespace/name`).
    slices: HashMap<String, Vec<usize>>,
}

impl ManifestFile {
    fn new(stamp: Stamp, objects: Vec<Object>) -> ManifestFile {
        let mut services = HashMap::new();
        let mut slices: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, o) in objects.iter().enumerate() {
            match o {
                Object::Service(s) => {
                    services.insert(service_name(&s.namespace, &s.name), i);
                }
                Object::EndpointSlice(e) => slices
                    .entry(service_name(&e.namespace, &e.service_name))
                    .or_default()
                    .push(i),
            }
        }
        ManifestFile {
            stamp,
            objects,
            services,
            slices,
        }
    }

    fn service(&self, name: &str) -> Option<&Service> {
        match &self.objects[*self.services.get(name)?] {
            Object::Service(s) => Some(s),
            Object::EndpointSlice(_) => None,
        }
    }

    /// The EndpointSlices of Service `name` in this file.
    fn slices_of<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        let at = self.slices.get(name).map_or(&[][..], |v| &v[..]);
        at.iter().filter_map(|&i| match &self.objects[i] {
            Object::EndpointSlice(e) => Some(e),
            Object::Service(_) => None,
        })
    }
}

/// What an input change asks to re-derive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    None,
    /// Everything (a directory was rescanned, or an index could not follow).
    All,
    /// These Services (`namespace/name`), with their EndpointSlices.
    Services(BTreeSet<String>),
}

impl Change {
    fn add(&mut self, names: BTreeSet<String>) {
        match self {
            Change::All => {}
            Change::None if names.is_empty() => {}
            Change::None => *self = Change::Services(names),
            Change::Services(s) => s.extend(names),
        }
    }
}

/// Manifest inputs and attached pods, and the desired state derived from them, kept up to date
/// per changed Service so one change costs the same at any number of Services.
pub struct Sources {
    /// Manifest files and directories named on the command line (absolute).
    manifests: Vec<PathBuf>,
    /// cni-bridge state directory (absolute).
    attachments: PathBuf,
    files: BTreeMap<PathBuf, ManifestFile>,
    pods: BTreeMap<PathBuf, Pod>,
    /// Invalid manifest loads since start.
    pub errors: usize,
    desired: Desired,
    /// The virtual services each Service (`namespace/name`) contributes to `desired`.
    keys_of: HashMap<String, Vec<ServiceKey>>,
    /// How many desired virtual services want each loop-back entry.
    loop_refs: HashMap<LoopbackEntry, usize>,
    endpoints: usize,
    /// The file defining each object (by [`Object::id`]).
    owner: HashMap<String, PathBuf>,
    /// The files holding EndpointSlices of each Service (`namespace/name`).
    slice_files: HashMap<String, BTreeSet<PathBuf>>,
    /// Services with a selector, filed under one `(namespace, key, value)` of it: a pod can only
    /// match the Services filed under one of its own labels.
    by_label: HashMap<Label, BTreeSet<String>>,
    /// Where each Service with a selector is filed in `by_label`.
    label_of: HashMap<String, Label>,
    /// No duplicate object and no VIP:port clash: per-Service updates equal a full derive.
    exact: bool,
}

impl Sources {
    pub fn new(manifests: Vec<PathBuf>, attachments: PathBuf) -> Sources {
        Sources {
            manifests,
            attachments,
            files: BTreeMap::new(),
            pods: BTreeMap::new(),
            errors: 0,
            desired: Desired::default(),
            keys_of: HashMap::new(),
            loop_refs: HashMap::new(),
            endpoints: 0,
            owner: HashMap::new(),
            slice_files: HashMap::new(),
            by_label: HashMap::new(),
            label_of: HashMap::new(),
            exact: false,
        }
    }

    /// The desired state as last derived.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Number of real servers over all desired services.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints
    }

    /// Re-reads everything that changed; true if any input changed.
    pub fn rescan(&mut self) -> bool {
        let m = self.rescan_manifests();
        self.rescan_attachments() || m
    }

    /// Re-reads what `paths` name; says what must be re-derived.
    pub fn paths_changed(&mut self, paths: &BTreeSet<PathBuf>) -> Change {
        let mut change = Change::None;
        for p in paths {
            if p.starts_with(&self.attachments) {
                if attachments::is_record_name(p) {
                    let new = attachments::load(p);
                    let old = match &new {
                        Some(pod) => self.pods.insert(p.clone(), pod.clone()),
                        None => self.pods.remove(p),
                    };
                    if old != new {
                        change.add(self.selecting(old.iter().chain(new.iter())));
                    }
                } else if (p.is_dir() || p == &self.attachments) && self.rescan_attachments() {
                    change = Change::All;
                }
            } else if self.manifests.contains(p) && p.is_dir() {
                if self.rescan_manifests() {
                    change = Change::All;
                }
            } else if self.is_manifest_path(p) {
                // A burst of events for one write shows the same file again: read it once.
                let now = stamp(p);
                if now.is_none() || self.files.get(p).is_none_or(|f| Some(f.stamp) != now) {
                    let before = self.refs(p);
                    if self.reload_manifest(p, now) {
                        change.add(self.reindex(p, before));
                    }
                }
            }
        }
        if !self.exact && change != Change::None {
            change = Change::All;
        }
        change
    }

    /// The Services with a selector that matches one of `pods`: only those filed under the
    /// pods' labels are looked at.
    fn selecting<'a>(&self, pods: impl Iterator<Item = &'a Pod>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for pod in pods {
            for (k, v) in &pod.labels {
                let label = (pod.namespace.clone(), k.clone(), v.clone());
                for name in self.by_label.get(&label).into_iter().flatten() {
                    let selects = self.service(name).and_then(|s| {
                        s.selector
                            .as_ref()
                            .map(|sel| pod.matches(&s.namespace, sel))
                    });
                    if selects == Some(true) {
                        out.insert(name.clone());
                    }
                }
            }
        }
        out
    }

    /// The definition in effect of Service `name` (`namespace/name`).
    fn service(&self, name: &str) -> Option<&Service> {
        self.files
            .get(self.owner.get(&format!("Service {name}"))?)?
            .service(name)
    }

    /// Files Service `name` in `by_label` under its current definition (or removes it).
    fn index_selector(&mut self, name: &str) {
        if let Some(old) = self.label_of.remove(name) {
            if let Some(names) = self.by_label.get_mut(&old) {
                names.remove(name);
                if names.is_empty() {
                    self.by_label.remove(&old);
                }
            }
        }
        let label = self.service(name).and_then(|s| {
            let (k, v) = s.selector.as_ref()?.iter().next()?;
            Some((s.namespace.clone(), k.clone(), v.clone()))
        });
        if let Some(label) = label {
            self.by_label
                .entry(label.clone())
                .or_default()
                .insert(name.to_string());
            self.label_of.insert(name.to_string(), label);
        }
    }

    /// What file `p` holds for the indexes: object ids, Services it names (its Services and the
    /// Services of its EndpointSlices), and the Services of its EndpointSlices.
    fn refs(&self, p: &Path) -> FileRefs {
        let mut r = FileRefs::default();
        for o in self.files.get(p).map_or(&[][..], |f| &f.objects[..]) {
            r.ids.push(o.id());
            match o {
                Object::Service(s) => {
                    r.names.insert(service_name(&s.namespace, &s.name));
                }
                Object::EndpointSlice(e) => {
                    let n = service_name(&e.namespace, &e.service_name);
                    r.names.insert(n.clone());
                    r.slices.insert(n);
                }
            }
        }
        r
    }

    /// Moves file `p` in the indexes from `before` to its current objects; returns the Services
    /// it named before or now. A duplicate object turns exact updates off until the next derive.
    fn reindex(&mut self, p: &Path, before: FileRefs) -> BTreeSet<String> {
        for id in &before.ids {
            if self.owner.get(id).is_some_and(|o| o == p) {
                self.owner.remove(id);
            }
        }
        for n in &before.slices {
            if let Some(files) = self.slice_files.get_mut(n) {
                files.remove(p);
                if files.is_empty() {
                    self.slice_files.remove(n);
                }
            }
        }
        let now = self.refs(p);
        for id in now.ids {
            if self.owner.insert(id, p.to_path_buf()).is_some() {
                self.exact = false;
            }
        }
        for n in now.slices {
            self.slice_files
                .entry(n)
                .or_default()
                .insert(p.to_path_buf());
        }
        let mut names = before.names;
        names.extend(now.names);
        for n in &names {
            self.index_selector(n);
        }
        names
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
                    .insert(path.to_path_buf(), ManifestFile::new(stamp, objects));
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
                    .or_insert(ManifestFile::new(stamp, Vec::new()));
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

    /// The desired state from the last good inputs. An object defined in two files is taken from
    /// the first (in path order); the other copy and any VIP:port clash are logged.
    pub fn rebuild(&self, scheduler: &str) -> Desired {
        self.build_all(scheduler).0
    }

    /// [`Sources::rebuild`], and whether it was free of duplicates and clashes.
    fn build_all(&self, scheduler: &str) -> (Desired, bool) {
        let mut seen: HashMap<String, &Path> = HashMap::new();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut exact = true;
        for (path, file) in &self.files {
            for o in &file.objects {
                if let Some(first) = seen.get(&o.id()) {
                    log::error!(
                        "{}: {} is already defined in {}; ignored",
                        path.display(),
                        o.id(),
                        first.display()
                    );
                    exact = false;
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
        for c in &conflicts {
            log::error!("{c}");
        }
        (desired, exact && conflicts.is_empty())
    }

    /// Derives the whole desired state and its indexes from the last good inputs.
    pub fn derive_all(&mut self, scheduler: &str) {
        let (desired, exact) = self.build_all(scheduler);
        self.exact = exact;
        self.owner.clear();
        self.slice_files.clear();
        self.keys_of.clear();
        self.by_label.clear();
        self.label_of.clear();
        for (path, file) in &self.files {
            for o in &file.objects {
                self.owner
                    .entry(o.id())
                    .or_insert_with(|| path.to_path_buf());
                match o {
                    Object::Service(s) => {
                        self.keys_of
                            .insert(service_name(&s.namespace, &s.name), service_keys(s));
                    }
                    Object::EndpointSlice(e) => {
                        self.slice_files
                            .entry(service_name(&e.namespace, &e.service_name))
                            .or_default()
                            .insert(path.to_path_buf());
                    }
                }
            }
        }
        let names: Vec<String> = self.keys_of.keys().cloned().collect();
        for n in &names {
            self.index_selector(n);
        }
        self.loop_refs.clear();
        for (key, s) in &desired.services {
            for ep in &s.endpoints {
                *self
                    .loop_refs
                    .entry(LoopbackEntry::for_endpoint(*ep, key.protocol))
                    .or_default() += 1;
            }
        }
        self.endpoints = desired.endpoint_count();
        self.desired = desired;
    }

    /// Applies `change` to the desired state. Returns what it touched, or `None` when it derived
    /// everything (a change that is not per Service, or a duplicate or clash to resolve).
    pub fn derive(&mut self, change: &Change, scheduler: &str) -> Option<Subset> {
        let names = match change {
            Change::Services(names) if self.exact => names,
            _ => {
                self.derive_all(scheduler);
                return None;
            }
        };
        let (part, keys) = self.build_services(names, scheduler);
        let mut subset = Subset::default();
        for name in names {
            for key in self.keys_of.remove(name).unwrap_or_default() {
                subset.keys.insert(key);
                let Some(old) = self.desired.services.remove(&key) else {
                    continue;
                };
                self.endpoints -= old.endpoints.len();
                for ep in &old.endpoints {
                    let entry = LoopbackEntry::for_endpoint(*ep, key.protocol);
                    subset.loopback.insert(entry);
                    let refs = self.loop_refs.entry(entry).or_default();
                    *refs = refs.saturating_sub(1);
                    if *refs == 0 {
                        self.loop_refs.remove(&entry);
                        self.desired.loopback.remove(&entry);
                    }
                }
            }
        }
        let Some(part) = part.filter(|p| {
            p.services
                .keys()
                .all(|k| !self.desired.services.contains_key(k))
        }) else {
            self.derive_all(scheduler);
            return None;
        };
        self.keys_of.extend(keys);
        for (key, s) in part.services {
            subset.keys.insert(key);
            self.endpoints += s.endpoints.len();
            for ep in &s.endpoints {
                let entry = LoopbackEntry::for_endpoint(*ep, key.protocol);
                subset.loopback.insert(entry);
                *self.loop_refs.entry(entry).or_default() += 1;
                self.desired.loopback.insert(entry);
            }
            self.desired.services.insert(key, s);
        }
        Some(subset)
    }

    /// The desired state of just the Services `names` (`None` on a clash among them), and the
    /// virtual services each of them claims.
    fn build_services(
        &self,
        names: &BTreeSet<String>,
        scheduler: &str,
    ) -> (Option<Desired>, KeysOf) {
        let mut services: Vec<&Service> = Vec::new();
        let mut slices: Vec<&EndpointSlice> = Vec::new();
        for name in names {
            services.extend(self.service(name));
            for p in self.slice_files.get(name).into_iter().flatten() {
                slices.extend(
                    self.files
                        .get(p)
                        .into_iter()
                        .flat_map(|f| f.slices_of(name)),
                );
            }
        }
        let pods: Vec<&Pod> = self.pods.values().collect();
        let (part, conflicts) = crate::desired::build(&services, &slices, &pods, scheduler);
        let keys = services
            .iter()
            .map(|s| (service_name(&s.namespace, &s.name), service_keys(s)))
            .collect();
        (conflicts.is_empty().then_some(part), keys)
    }
}

/// A `(namespace, label key, label value)` a selector asks for.
type Label = (String, String, String);

/// The virtual services of each Service (`namespace/name`).
type KeysOf = Vec<(String, Vec<ServiceKey>)>;

/// The index entries of one file (see [`Sources::refs`]).
#[derive(Default)]
struct FileRefs {
    ids: Vec<String>,
    names: BTreeSet<String>,
    slices: BTreeSet<String>,
}

fn service_name(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The virtual services a Service asks for (as [`crate::desired::build`] derives them).
fn service_keys(s: &Service) -> Vec<ServiceKey> {
    crate::desired::virtual_services(s)
        .into_iter()
        .map(|(_, key)| key)
        .collect()
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
    for v6 in [false, true] {
        let n = desired
            .loopback
            .iter()
            .filter(|e| e.ip.is_ipv6() == v6)
            .count();
        if n > 0 || !v6 {
            let _ = writeln!(
                out,
                "loop-back set {}: {n} entries",
                crate::model::loopback_set(v6)
            );
        }
    }
    out
}
