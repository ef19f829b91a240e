//! File watching (inotify through `notify`) for the file-based sources: changed paths, or "rescan
//! everything" when events were lost.

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

/// What a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Something changed at this path (a file, or a directory holding them).
    Path(PathBuf),
    /// Events were lost (the kernel's inotify queue overflowed): everything must be re-read.
    Rescan,
}

/// The live watches of one source; dropping this stops them.
pub struct PathWatch {
    watcher: RecommendedWatcher,
    /// Directories watched non-recursively (never unwatched).
    dirs: BTreeSet<PathBuf>,
    /// A directory watched recursively once it exists, and whether it is watched yet.
    tree: Option<(PathBuf, bool)>,
    /// While `tree` does not exist: its nearest existing ancestor, watched so that its creation
    /// is seen at once.
    ancestor: Option<PathBuf>,
}

impl PathWatch {
    pub fn new(tx: Sender<Change>) -> notify::Result<PathWatch> {
        let watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) if ev.need_rescan() => {
                    log::warn!("file watch lost events; rescanning");
                    let _ = tx.send(Change::Rescan);
                }
                Ok(ev) if changes_content(&ev.kind) => {
                    log::trace!("watch: {:?} {:?}", ev.kind, ev.paths);
                    for p in ev.paths {
                        let _ = tx.send(Change::Path(p));
                    }
                }
                Ok(_) => {}
                Err(e) => log::warn!("file watch: {e}"),
            })?;
        Ok(PathWatch {
            watcher,
            dirs: BTreeSet::new(),
            tree: None,
            ancestor: None,
        })
    }

    /// Watches the inputs named on the command line: each directory, and the directory of each
    /// file (editors and `kubectl`-style tools replace files by rename).
    pub fn inputs(&mut self, inputs: &[PathBuf]) -> notify::Result<()> {
        for m in inputs {
            let dir = if m.is_dir() {
                m.clone()
            } else if let Some(parent) = m.parent() {
                parent.to_path_buf()
            } else {
                continue;
            };
            if !self.dirs.contains(&dir) {
                self.watcher.watch(&dir, RecursiveMode::NonRecursive)?;
                self.dirs.insert(dir);
            }
        }
        Ok(())
    }

    /// Watches `dir` recursively, now if it exists, else as soon as [`PathWatch::retry`] finds it.
    pub fn tree(&mut self, dir: &Path) -> bool {
        self.tree = Some((dir.to_path_buf(), false));
        self.retry()
    }

    /// Starts watching the tree if it was not watched yet (until it exists, its nearest existing
    /// ancestor is watched). True when it has just become watched: files written before that are
    /// found only by a rescan.
    pub fn retry(&mut self) -> bool {
        let Some((dir, false)) = self.tree.clone() else {
            return false;
        };
        let error = match self.watcher.watch(&dir, RecursiveMode::Recursive) {
            Ok(()) => {
                self.tree = Some((dir.clone(), true));
                self.watch_ancestor(None);
                log::info!("watching {}", dir.display());
                return true;
            }
            Err(e) => e,
        };
        let nearest = dir
            .ancestors()
            .skip(1)
            .find(|p| p.is_dir())
            .map(Path::to_path_buf);
        if nearest != self.ancestor {
            match &nearest {
                Some(n) => log::info!(
                    "{}: {error}; watching {} until it appears",
                    dir.display(),
                    n.display()
                ),
                None => log::warn!("{}: {error}; retrying at the next rescan", dir.display()),
            }
            self.watch_ancestor(nearest);
        }
        false
    }

    /// Moves the ancestor watch to `to` (or drops it); a directory watched as an input stays.
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

/// Whether an event can mean changed content. Opening and reading are not: a source's own reads
/// of its inputs raise them (inotify reports every open), and following those would make every
/// read trigger another.
pub fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Collects what arrives on `rx` until it has been quiet for `quiet` (a burst of events for one
/// write settles into one read). `None` when every sender is gone.
pub fn settle(
    rx: &std::sync::mpsc::Receiver<Change>,
    first: Change,
    quiet: std::time::Duration,
) -> Option<(BTreeSet<PathBuf>, bool)> {
    use std::sync::mpsc::RecvTimeoutError;
    let mut paths = BTreeSet::new();
    let mut rescan = false;
    let mut next = Some(first);
    while let Some(c) = next {
        match c {
            Change::Path(p) => {
                paths.insert(p);
            }
            Change::Rescan => rescan = true,
        }
        next = match rx.recv_timeout(quiet) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return None,
        };
    }
    Some((paths, rescan))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    /// Paths reported until the watch is quiet for 300 ms.
    pub(crate) fn drain(rx: &std::sync::mpsc::Receiver<Change>) -> BTreeSet<PathBuf> {
        let mut paths = BTreeSet::new();
        while let Ok(c) = rx.recv_timeout(Duration::from_millis(300)) {
            if let Change::Path(p) = c {
                paths.insert(p);
            }
        }
        paths
    }

    /// A node where svc-proxy starts before the first pod: the records directory does not exist.
    /// Its creation is reported at once (not at the next rescan), the directory is then watched,
    /// and files written into it are reported.
    #[test]
    fn a_tree_created_later_is_watched_at_once() {
        let dir = std::env::temp_dir().join(format!("svc-proxy-watch-late-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let records = dir.join("var/state");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut w = PathWatch::new(tx).unwrap();
        assert!(!w.tree(&records), "nothing to watch yet");

        std::fs::create_dir_all(records.join("home")).unwrap();
        assert!(
            matches!(rx.recv_timeout(Duration::from_secs(5)), Ok(Change::Path(_))),
            "the directory's creation woke nobody"
        );
        assert!(w.retry(), "the tree is watched now");
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
