//! The manifest-file source: files and directories of Service / EndpointSlice manifests, watched
//! and re-read per changed file (a periodic rescan catches anything missed). A file that fails
//! keeps its last good objects; an object defined in two files is taken from the first in path
//! order. Reports only objects whose effective version changed.

use super::watch::{self, PathWatch};
use super::Outbox;
use crate::manifest;
use crate::metrics::Metrics;
use crate::objects::{Kind, Object, ObjectRef};
use crate::store::{Delta, SourceId};
use crate::validate::Filter;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// File identity used to skip unchanged files on rescans: modification time and length.
type Stamp = (Option<SystemTime>, u64);

/// How long a burst of file events must settle before it is read.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// The last good content of one manifest file.
struct ManifestFile {
    stamp: Stamp,
    objects: HashMap<ObjectRef, Object>,
}

/// The manifest inputs and what they hold.
pub struct FileSource {
    /// Files and directories named on the command line (absolute).
    inputs: Vec<PathBuf>,
    filter: Filter,
    metrics: Arc<Metrics>,
    files: BTreeMap<PathBuf, ManifestFile>,
    /// The files defining each object; the first is in effect.
    defs: HashMap<ObjectRef, BTreeSet<PathBuf>>,
    /// Whether the initial list was reported.
    listed: bool,
    /// A daemon keeps a rejected file's last good objects (and says so); `check` has none.
    keeps_state: bool,
    /// Invalid manifest loads since start.
    pub errors: usize,
}

impl FileSource {
    pub fn new(inputs: Vec<PathBuf>, filter: Filter, metrics: Arc<Metrics>) -> FileSource {
        FileSource {
            inputs,
            filter,
            metrics,
            files: BTreeMap::new(),
            defs: HashMap::new(),
            listed: false,
            keeps_state: true,
            errors: 0,
        }
    }

    /// A source for one read (`svc-proxy check`): a rejected file is reported as such, with no
    /// talk of a state it keeps.
    pub fn once(inputs: Vec<PathBuf>, filter: Filter, metrics: Arc<Metrics>) -> FileSource {
        FileSource {
            keeps_state: false,
            ..FileSource::new(inputs, filter, metrics)
        }
    }

    /// The object in effect for `r`, with the change time of its file.
    fn effective(&self, r: &ObjectRef) -> Option<(&Object, Option<SystemTime>)> {
        let path = self.defs.get(r)?.first()?;
        let file = self.files.get(path)?;
        Some((file.objects.get(r)?, file.stamp.0))
    }

    /// Re-reads every input. The first time: the initial list of each kind (`Replace`); after
    /// that, the objects whose effective version changed.
    pub fn rescan(&mut self) -> Vec<Delta> {
        let mut present = BTreeSet::new();
        for input in &self.inputs {
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
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        let mut deltas = Vec::new();
        for p in gone {
            deltas.extend(self.reload(&p, None));
        }
        for p in &present {
            let stamp = stamp(p);
            if self.files.get(p).is_none_or(|f| Some(f.stamp) != stamp) {
                deltas.extend(self.reload(p, stamp));
            }
        }
        if self.listed {
            return deltas;
        }
        self.listed = true;
        self.initial_list()
    }

    /// Everything in effect, as one `Replace` per kind.
    fn initial_list(&self) -> Vec<Delta> {
        let mut by_kind: BTreeMap<Kind, Vec<Object>> = BTreeMap::from([
            (Kind::Service, Vec::new()),
            (Kind::EndpointSlice, Vec::new()),
        ]);
        let refs: BTreeSet<&ObjectRef> = self.defs.keys().collect();
        for r in refs {
            if let Some((o, changed)) = self.effective(r) {
                by_kind
                    .entry(r.kind)
                    .or_default()
                    .push(with_change_time(o, changed));
            }
        }
        by_kind
            .into_iter()
            .map(|(kind, objects)| Delta::Replace {
                kind,
                objects,
                kept: Vec::new(),
            })
            .collect()
    }

    /// Re-reads what `paths` name (files, or directories holding them).
    pub fn paths_changed(&mut self, paths: &BTreeSet<PathBuf>) -> Vec<Delta> {
        let mut deltas = Vec::new();
        for p in paths {
            if self.inputs.contains(p) && p.is_dir() {
                deltas.extend(self.rescan());
            } else if self.is_manifest_path(p) {
                // A burst of events for one write shows the same file again: read it once.
                let now = stamp(p);
                if now.is_none() || self.files.get(p).is_none_or(|f| Some(f.stamp) != now) {
                    deltas.extend(self.reload(p, now));
                }
            }
        }
        deltas
    }

    fn is_manifest_path(&self, p: &Path) -> bool {
        self.inputs.iter().any(|m| m == p)
            || (manifest::is_manifest_name(p)
                && p.parent()
                    .is_some_and(|d| self.inputs.iter().any(|m| m == d && m.is_dir())))
    }

    /// Re-reads one file (`stamp` `None`: it is gone); returns the deltas for the objects whose
    /// effective version changed. A file that fails keeps its last good objects.
    fn reload(&mut self, path: &Path, stamp: Option<Stamp>) -> Vec<Delta> {
        let new: HashMap<ObjectRef, Object> = match stamp {
            None => {
                if self.files.get(path).is_some_and(|f| !f.objects.is_empty()) {
                    log::info!("{}: removed", path.display());
                }
                HashMap::new()
            }
            Some(stamp) => match manifest::load_file(path, &self.filter) {
                // Seen between an editor's truncate and its write; deleting the file removes
                // its objects.
                Ok(objects)
                    if objects.is_empty()
                        && self.files.get(path).is_some_and(|f| !f.objects.is_empty()) =>
                {
                    log::warn!(
                        "{}: no objects (a write in progress?); keeping its last good objects",
                        path.display()
                    );
                    self.files
                        .entry(path.to_path_buf())
                        .and_modify(|f| f.stamp = stamp);
                    return Vec::new();
                }
                Ok(objects) => objects.into_iter().map(|o| (o.reference(), o)).collect(),
                Err(e) => {
                    if self.keeps_state {
                        log::error!("{e}; keeping this file's last good objects");
                    } else {
                        log::error!("{e}");
                    }
                    self.errors += 1;
                    self.metrics.invalid_object(SourceId::Files);
                    self.files
                        .entry(path.to_path_buf())
                        .and_modify(|f| f.stamp = stamp)
                        .or_insert(ManifestFile {
                            stamp,
                            objects: HashMap::new(),
                        });
                    return Vec::new();
                }
            },
        };
        let old_refs: Vec<ObjectRef> = self
            .files
            .get(path)
            .map(|f| f.objects.keys().cloned().collect())
            .unwrap_or_default();
        if self.files.get(path).is_some_and(|f| f.objects == new) {
            if let (Some(f), Some(stamp)) = (self.files.get_mut(path), stamp) {
                f.stamp = stamp;
            }
            return Vec::new();
        }
        if !new.is_empty() {
            log::info!("{}: loaded {} object(s)", path.display(), new.len());
        }
        let touched: BTreeSet<ObjectRef> =
            old_refs.into_iter().chain(new.keys().cloned()).collect();
        let before: Vec<(ObjectRef, Option<Object>)> = touched
            .into_iter()
            .map(|r| {
                let b = self.effective(&r).map(|(o, _)| o.clone());
                (r, b)
            })
            .collect();
        for (r, _) in &before {
            let defs = self.defs.entry(r.clone()).or_default();
            if new.contains_key(r) {
                defs.insert(path.to_path_buf());
                if defs.len() > 1 {
                    let first = defs.first().expect("two definitions");
                    if first != path {
                        log::error!(
                            "{}: {r} is already defined in {}; ignored",
                            path.display(),
                            first.display()
                        );
                    } else if let Some(other) = defs.iter().nth(1) {
                        log::error!(
                            "{}: {r} is already defined in {}; that copy is ignored",
                            path.display(),
                            other.display()
                        );
                    }
                }
            } else {
                defs.remove(path);
                if defs.is_empty() {
                    self.defs.remove(r);
                }
            }
        }
        match stamp {
            Some(stamp) => {
                self.files.insert(
                    path.to_path_buf(),
                    ManifestFile {
                        stamp,
                        objects: new,
                    },
                );
            }
            None => {
                self.files.remove(path);
            }
        }
        let mut deltas = Vec::new();
        for (r, b) in before {
            let after = self.effective(&r);
            if after.map(|(o, _)| o) == b.as_ref() {
                continue;
            }
            deltas.push(match after {
                Some((o, changed)) => Delta::Apply(with_change_time(o, changed)),
                None => Delta::Delete(r),
            });
        }
        deltas
    }

    /// Runs the source on a thread of its own: the initial list, then one read per settled burst
    /// of file events, and a rescan every `rescan` (events can be missed). Stops when the
    /// controller is gone.
    pub fn spawn(
        mut self,
        out: Outbox,
        rescan: Duration,
    ) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watch = PathWatch::new(tx)?;
        watch.inputs(&self.inputs)?;
        let first = self.rescan();
        Ok(std::thread::Builder::new()
            .name("manifests".into())
            .spawn(move || {
                let _watch = watch;
                if !out.send_all(first) {
                    return;
                }
                let mut next_rescan = Instant::now() + rescan;
                loop {
                    let wait = next_rescan.saturating_duration_since(Instant::now());
                    let deltas = match rx.recv_timeout(wait) {
                        Ok(c) => {
                            let Some((paths, lost)) = watch::settle(&rx, c, DEBOUNCE) else {
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
                    if !out.send_all(deltas) {
                        return;
                    }
                }
            })?)
    }
}

/// An object as reported: an EndpointSlice without a change-time annotation takes its file's
/// modification time (the programming latency metric measures from it).
fn with_change_time(o: &Object, changed: Option<SystemTime>) -> Object {
    match o {
        Object::EndpointSlice(e) if e.trigger_time.is_none() => {
            let mut e = e.clone();
            e.trigger_time = changed;
            Object::EndpointSlice(e)
        }
        other => other.clone(),
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::watch::PathWatch;

    fn service(i: usize, endpoint: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec: {{clusterIP: 10.96.0.{i}, ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n- addresses: [{endpoint}]\n"
        )
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("svc-proxy-files-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(d.join("m")).unwrap();
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn source(d: &Dir) -> FileSource {
        FileSource::new(
            vec![d.0.join("m")],
            Filter::default(),
            Arc::new(Metrics::default()),
        )
    }

    fn refs(deltas: &[Delta]) -> Vec<String> {
        deltas
            .iter()
            .map(|d| match d {
                Delta::Apply(o) => format!("apply {}", o.reference()),
                Delta::Delete(r) => format!("delete {r}"),
                Delta::Replace { kind, objects, .. } => {
                    format!("replace {kind} ({})", objects.len())
                }
            })
            .collect()
    }

    #[test]
    fn the_first_scan_lists_each_kind_then_only_changes_are_reported() {
        let d = Dir::new("list");
        for i in 1..=3 {
            std::fs::write(d.0.join(format!("m/s{i}.yaml")), service(i, "10.1.0.1")).unwrap();
        }
        let mut s = source(&d);
        assert_eq!(
            refs(&s.rescan()),
            vec!["replace Service (3)", "replace EndpointSlice (3)"]
        );
        assert_eq!(refs(&s.rescan()), Vec::<String>::new(), "nothing changed");
        std::fs::write(d.0.join("m/s2.yaml"), service(2, "10.1.0.9")).unwrap();
        std::fs::remove_file(d.0.join("m/s3.yaml")).unwrap();
        assert_eq!(
            refs(&s.rescan()),
            vec![
                "delete Service default/s3",
                "delete EndpointSlice default/s3-1",
                "apply EndpointSlice default/s2-1"
            ]
        );
    }

    /// An object in two files is taken from the first in path order; removing that file brings
    /// the second copy into effect.
    #[test]
    fn a_duplicate_across_files_takes_the_first_and_falls_back() {
        let d = Dir::new("dup");
        std::fs::write(d.0.join("m/a.yaml"), service(1, "10.1.0.1")).unwrap();
        std::fs::write(d.0.join("m/b.yaml"), service(1, "10.1.0.2")).unwrap();
        let mut s = source(&d);
        let first = s.rescan();
        let Delta::Replace { objects, .. } = &first[1] else {
            panic!("{first:?}")
        };
        let Object::EndpointSlice(e) = &objects[0] else {
            panic!()
        };
        assert_eq!(e.endpoints[0].addresses[0].to_string(), "10.1.0.1");
        std::fs::remove_file(d.0.join("m/a.yaml")).unwrap();
        let deltas = s.paths_changed(&BTreeSet::from([d.0.join("m/a.yaml")]));
        assert_eq!(refs(&deltas), vec!["apply EndpointSlice default/s1-1"]);
        let Delta::Apply(Object::EndpointSlice(e)) = &deltas[0] else {
            panic!()
        };
        assert_eq!(e.endpoints[0].addresses[0].to_string(), "10.1.0.2");
        assert!(e.trigger_time.is_some(), "the file's modification time");
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_objects() {
        let d = Dir::new("broken");
        let f = d.0.join("m/s1.yaml");
        std::fs::write(&f, service(1, "10.1.0.1")).unwrap();
        let mut s = source(&d);
        s.rescan();
        std::fs::write(&f, "kind: [unclosed\n").unwrap();
        assert_eq!(s.paths_changed(&BTreeSet::from([f.clone()])), vec![]);
        assert_eq!(s.errors, 1);
        std::fs::write(&f, "").unwrap();
        assert_eq!(s.paths_changed(&BTreeSet::from([f.clone()])), vec![]);
        std::fs::remove_file(&f).unwrap();
        assert_eq!(
            refs(&s.paths_changed(&BTreeSet::from([f]))),
            vec![
                "delete Service default/s1",
                "delete EndpointSlice default/s1-1"
            ]
        );
    }

    /// What the watch reports for one edit, what the source makes of it, and what the watch
    /// reports after the source read it (nothing, or every read would cause another).
    fn edit(tag: &str, write: impl FnOnce(&Path)) -> (Vec<String>, BTreeSet<PathBuf>) {
        let d = Dir::new(tag);
        for i in 1..=3 {
            std::fs::write(d.0.join(format!("m/s{i}.yaml")), service(i, "10.1.0.1")).unwrap();
        }
        let mut s = source(&d);
        s.rescan();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut w = PathWatch::new(tx).unwrap();
        w.inputs(&[d.0.join("m")]).unwrap();
        write(&d.0.join("m"));
        let paths = watch::tests::drain(&rx);
        let deltas = s.paths_changed(&paths);
        // What a directory event costs: a rescan, which opens the directory.
        s.paths_changed(&BTreeSet::from([d.0.join("m")]));
        let echo = watch::tests::drain(&rx);
        (refs(&deltas), echo)
    }

    #[test]
    fn replacing_a_file_by_rename_reports_only_its_objects() {
        let (deltas, echo) = edit("rename", |m| {
            std::fs::write(m.join(".s2.tmp"), service(2, "10.1.0.9")).unwrap();
            std::fs::rename(m.join(".s2.tmp"), m.join("s2.yaml")).unwrap();
        });
        assert_eq!(deltas, vec!["apply EndpointSlice default/s2-1"]);
        assert_eq!(echo, BTreeSet::new(), "reading the inputs woke the watch");
    }

    #[test]
    fn writing_a_file_in_place_reports_only_its_objects() {
        let (deltas, echo) = edit("in-place", |m| {
            std::fs::write(m.join("s3.yaml"), service(3, "10.1.0.9")).unwrap();
        });
        assert_eq!(deltas, vec!["apply EndpointSlice default/s3-1"]);
        assert_eq!(echo, BTreeSet::new(), "reading the inputs woke the watch");
    }
}
