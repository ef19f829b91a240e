//! Sources: pluggable watchers that report typed [`Delta`]s into the controller's channel. Each
//! runs on its own (a thread for files and records, tokio tasks for the Kubernetes API), holds
//! only what it needs to tell changes, and reports its initial list as a `Replace`.

pub mod files;
pub mod kube;
pub mod records;
pub mod watch;

use crate::store::{Delta, SourceId};
use std::sync::mpsc::Sender;

/// What wakes the controller.
#[derive(Debug)]
pub enum Event {
    /// A source reports a change (boxed: an object is large beside `Shutdown`).
    Delta(SourceId, Box<Delta>),
    Shutdown,
}

/// A source's way into the controller's channel.
#[derive(Clone)]
pub struct Outbox {
    source: SourceId,
    tx: Sender<Event>,
}

impl Outbox {
    pub fn new(source: SourceId, tx: Sender<Event>) -> Outbox {
        Outbox { source, tx }
    }

    /// Sends one delta; false when the controller is gone (the source should stop).
    pub fn send(&self, delta: Delta) -> bool {
        self.tx
            .send(Event::Delta(self.source, Box::new(delta)))
            .is_ok()
    }

    /// Sends every delta in order; false when the controller is gone.
    pub fn send_all(&self, deltas: impl IntoIterator<Item = Delta>) -> bool {
        deltas.into_iter().all(|d| self.send(d))
    }
}
