//! File watching (inotify through `notify`): manifest inputs and the attachment records directory
//! turn into [`Event::Path`]s for the controller.

use crate::controller::Event;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

/// The live watches; dropping this stops them.
pub struct Watches {
    watcher: RecommendedWatcher,
    attachments: PathBuf,
    attachments_watched: bool,
}

impl Watches {
    /// Watches each manifest directory, the directory of each manifest file (editors and
    /// `kubectl`-style tools replace files by rename), and the attachment records recursively.
    pub fn start(
        manifests: &[PathBuf],
        attachments: &Path,
        tx: Sender<Event>,
    ) -> notify::Result<Watches> {
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    for p in ev.paths {
                        let _ = tx.send(Event::Path(p));
                    }
                }
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
            attachments: attachments.to_path_buf(),
            attachments_watched: false,
        };
        w.retry_attachments();
        Ok(w)
    }

    /// Starts watching the records directory if that failed before (it may not exist yet).
    pub fn retry_attachments(&mut self) {
        if self.attachments_watched {
            return;
        }
        match self
            .watcher
            .watch(&self.attachments, RecursiveMode::Recursive)
        {
            Ok(()) => {
                self.attachments_watched = true;
                log::info!(
                    "watching attachment records in {}",
                    self.attachments.display()
                );
            }
            Err(e) => log::warn!(
                "attachment records {}: {e}; retrying at the next resync",
                self.attachments.display()
            ),
        }
    }
}
