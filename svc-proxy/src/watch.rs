//! File watching (inotify through `notify`): manifest inputs and the attachment records directory
//! turn into [`Event::Path`]s for the controller.

use crate::controller::Event;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

/// The live watches; dropping this stops them.
pub struct Watches {
    watcher: RecommendedWatcher,
    /// The manifest directories watched (never unwatched here).
    dirs: BTreeSet<PathBuf>,
    attachments: PathBuf,
    attachments_watched: bool,
    /// While the records directory does not exist: its nearest existing ancestor, watched so
    /// that the directory's creation (cni-bridge's first ADD on the node) is seen at once.
    ancestor: Option<PathBuf>,
}

impl Watches {
    /// Watches each manifest directory, the directory of each manifest file (editors and
    /// `kubectl`-style tools replace files by rename), and the attachment records recursively.
    /// A lost event (the kernel's inotify queue overflowed) rescans every input.
    pub fn start(
        manifests: &[PathBuf],
        attachments: &Path,
        tx: Sender<Event>,
    ) -> notify::Result<Watches> {
        let roots: Vec<PathBuf> = manifests
            .iter()
            .chain(std::iter::once(&attachments.to_path_buf()))
            .cloned()
            .collect();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) if ev.need_rescan() => {
                    log::warn!("file watch lost events; rescanning every input");
                    for p in &roots {
                        let _ = tx.send(Event::Path(p.clone()));
                    }
                }
                Ok(ev) if changes_content(&ev.kind) => {
                    log::trace!("watch: {:?} {:?}", ev.kind, ev.paths);
                    for p in ev.paths {
                        let _ = tx.send(Event::Path(p));
                    }
                }
                Ok(_) => {}
                Err(e) => log::warn!("file watch: {e}"),
            })?;
        let mut dirs = BTreeSet::new();
        for m in manifests {
            if m.is_dir() {
                dirs.insert(m.clone());
            } else if let Some(parent) = m.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        for d in &dirs {
            watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
        let mut w = Watches {
            watcher,
            dirs,
            attachments: attachments.to_path_buf(),
            attachments_watched: false,
            ancestor: None,
        };
        w.retry_attachments();
        Ok(w)
    }

    /// Starts watching the records directory if it was not watched yet (it may not exist yet;
    /// until it does, its nearest existing ancestor is watched). True when it has just become
    /// watched: records written before that are found only by a rescan.
    pub fn retry_attachments(&mut self) -> bool {
        if self.attachments_watched {
            return false;
        }
        let error = match self
            .watcher
            .watch(&self.attachments, RecursiveMode::Recursive)
        {
            Ok(()) => {
                self.attachments_watched = true;
                self.watch_ancestor(None);
                log::info!(
                    "watching attachment records in {}",
                    self.attachments.display()
                );
                return true;
            }
            Err(e) => e,
        };
        let nearest = self
            .attachments
            .ancestors()
            .skip(1)
            .find(|p| p.is_dir())
            .map(Path::to_path_buf);
        if nearest != self.ancestor {
            match &nearest {
                Some(n) => log::info!(
                    "attachment records {}: {error}; watching {} until it appears",
                    self.attachments.display(),
                    n.display()
                ),
                None => log::warn!(
                    "attachment records {}: {error}; retrying at the next resync",
                    self.attachments.display()
                ),
            }
            self.watch_ancestor(nearest);
        }
        false
    }

    /// Moves the ancestor watch to `to` (or drops it); a manifest directory's watch stays.
    fn watch_ancestor(&mut self, to: Option<PathBuf>) {
        if let Some(old) = self.ancestor.take() {
            if !self.dirs.contains(&old) {
                let _ = self.watcher.unwatch(&old);
            }
        }
        if let Some(new) = to {
            if self.dirs.contains(&new)
                || self
                    .watcher
                    .watch(&new, RecursiveMode::NonRecursive)
                    .is_ok()
            {
                self.ancestor = Some(new);
            }
        }
    }
}

/// Whether an event can mean changed content. Opening and reading are not: the daemon's own
/// reads of its inputs raise them (inotify reports every open), and following those would make
/// every read trigger another.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{Change, Sources};
    use std::time::Duration;

    fn service(i: usize, endpoint: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec: {{clusterIP: 10.96.0.{i}, ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n- addresses: [{endpoint}]\n"
        )
    }

    /// Paths reported until the watch is quiet for 300 ms.
    fn drain(rx: &std::sync::mpsc::Receiver<Event>) -> BTreeSet<PathBuf> {
        let mut paths = BTreeSet::new();
        while let Ok(Event::Path(p)) = rx.recv_timeout(Duration::from_millis(300)) {
            paths.insert(p);
        }
        paths
    }

    /// What the watch reports for one edit, what the sources make of it, and what the watch
    /// reports after the sources read it (nothing, or every read would cause another).
    fn edit(
        tag: &str,
        write: impl FnOnce(&Path),
    ) -> (BTreeSet<PathBuf>, Change, BTreeSet<PathBuf>) {
        let dir =
            std::env::temp_dir().join(format!("svc-proxy-watch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("m")).unwrap();
        for i in 1..=3 {
            std::fs::write(dir.join(format!("m/s{i}.yaml")), service(i, "10.1.0.1")).unwrap();
        }
        let mut sources = Sources::new(vec![dir.join("m")], dir.join("state"));
        sources.rescan();
        sources.derive_all("rr");
        let (tx, rx) = std::sync::mpsc::channel();
        let _w = Watches::start(&[dir.join("m")], &dir.join("state"), tx).unwrap();
        write(&dir.join("m"));
        let paths = drain(&rx);
        let change = sources.paths_changed(&paths);
        // What a directory event costs: a rescan, which opens the directory.
        sources.paths_changed(&BTreeSet::from([dir.join("m")]));
        let echo = drain(&rx);
        let _ = std::fs::remove_dir_all(&dir);
        (paths, change, echo)
    }

    #[test]
    fn replacing_a_file_by_rename_re_derives_only_its_service() {
        let (paths, change, echo) = edit("rename", |m| {
            std::fs::write(m.join(".s2.tmp"), service(2, "10.1.0.9")).unwrap();
            std::fs::rename(m.join(".s2.tmp"), m.join("s2.yaml")).unwrap();
        });
        assert_eq!(
            change,
            Change::Services(BTreeSet::from(["default/s2".to_string()])),
            "{paths:?}"
        );
        assert_eq!(echo, BTreeSet::new(), "reading the inputs woke the watch");
    }

    #[test]
    fn writing_a_file_in_place_re_derives_only_its_service() {
        let (paths, change, echo) = edit("in-place", |m| {
            std::fs::write(m.join("s3.yaml"), service(3, "10.1.0.9")).unwrap();
        });
        assert_eq!(
            change,
            Change::Services(BTreeSet::from(["default/s3".to_string()])),
            "{paths:?}"
        );
        assert_eq!(echo, BTreeSet::new(), "reading the inputs woke the watch");
    }

    /// A node where svc-proxy starts before the first pod: the records directory does not exist.
    /// Its creation wakes the daemon at once (not at the next resync), the directory is then
    /// watched, and records written into it are reported.
    #[test]
    fn a_records_directory_created_later_is_watched_at_once() {
        let dir = std::env::temp_dir().join(format!("svc-proxy-watch-late-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("m")).unwrap();
        let records = dir.join("var/state");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut w = Watches::start(&[dir.join("m")], &records, tx).unwrap();
        assert!(!w.retry_attachments(), "nothing to watch yet");

        std::fs::create_dir_all(records.join("home")).unwrap();
        assert!(
            matches!(rx.recv_timeout(Duration::from_secs(5)), Ok(Event::Path(_))),
            "the directory's creation woke nobody"
        );
        assert!(
            w.retry_attachments(),
            "the records directory is watched now"
        );
        drain(&rx);
        let record = records.join("home/c1.eth0.json");
        std::fs::write(&record, "{}").unwrap();
        let paths = drain(&rx);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(paths.contains(&record), "{paths:?}");
    }

    #[test]
    fn only_content_events_count() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind};
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Any)));
        assert!(changes_content(&EventKind::Remove(RemoveKind::File)));
    }
}
