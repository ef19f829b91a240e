//! Health as kube-proxy reports it on its healthz port: healthy unless a change has waited longer
//! than the health timeout (twice the sync period) without a sync; `/healthz` also requires the
//! node to be eligible for traffic (its Node known, not being deleted, not tainted
//! `ToBeDeletedByClusterAutoscaler`), `/livez` does not.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    /// No API source: there is no Node to consult, the node is taken as eligible.
    NotWatched,
    /// Watching, but this node's Node object is not known (yet).
    Unknown,
    Known {
        eligible: bool,
    },
}

#[derive(Debug)]
struct Inner {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<Instant>,
    node: NodeState,
}

/// Shared between the controller (which reports queued changes and syncs) and the HTTP server.
#[derive(Debug)]
pub struct Health {
    timeout: Duration,
    inner: Mutex<Inner>,
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub healthy: bool,
    /// `None` for `/livez`, which does not look at the node.
    pub node_eligible: Option<bool>,
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
}

impl Report {
    /// The HTTP status: 200 or 503.
    pub fn ok(&self) -> bool {
        self.healthy && self.node_eligible != Some(false)
    }

    /// kube-proxy's JSON body.
    pub fn json(&self) -> String {
        let time = |t: SystemTime| {
            k8s_openapi::jiff::Timestamp::try_from(t)
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        // A healthy answer reports the current time as the last update, as kube-proxy does.
        let last = if self.ok() {
            Some(self.current_time)
        } else {
            self.last_updated
        };
        let mut v = serde_json::json!({
            "lastUpdated": last.map(time).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "currentTime": time(self.current_time),
            "healthy": self.healthy,
        });
        if let Some(e) = self.node_eligible {
            v["nodeEligible"] = serde_json::Value::Bool(e);
        }
        v.to_string()
    }
}

impl Health {
    /// `timeout`: how long a change may wait for its sync; `node_watched`: whether this node's
    /// Node object comes from the API.
    pub fn new(timeout: Duration, node_watched: bool) -> Health {
        Health {
            timeout,
            inner: Mutex::new(Inner {
                last_updated: None,
                oldest_pending: None,
                node: if node_watched {
                    NodeState::Unknown
                } else {
                    NodeState::NotWatched
                },
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A change arrived that needs a sync.
    pub fn queued(&self, now: Instant) {
        self.with(|i| {
            i.oldest_pending.get_or_insert(now);
        })
    }

    /// A sync completed: nothing is pending.
    pub fn updated(&self) {
        self.with(|i| {
            i.oldest_pending = None;
            i.last_updated = Some(SystemTime::now());
        })
    }

    /// This node's Node object as last seen (`None`: not known).
    pub fn node(&self, eligible: Option<bool>) {
        self.with(|i| {
            if i.node != NodeState::NotWatched {
                i.node = match eligible {
                    None => NodeState::Unknown,
                    Some(eligible) => NodeState::Known { eligible },
                };
            }
        })
    }

    /// The answer at `now`; `live` for `/livez`.
    pub fn report(&self, now: Instant, live: bool) -> Report {
        self.with(|i| {
            let healthy = i
                .oldest_pending
                .is_none_or(|t| now.saturating_duration_since(t) < self.timeout);
            let node_eligible = match (live, i.node) {
                (true, _) => None,
                (false, NodeState::NotWatched) => Some(true),
                (false, NodeState::Unknown) => Some(false),
                (false, NodeState::Known { eligible }) => Some(eligible),
            };
            Report {
                healthy,
                node_eligible,
                last_updated: i.last_updated,
                current_time: SystemTime::now(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_only_when_a_change_waits_past_the_timeout() {
        let h = Health::new(Duration::from_secs(60), false);
        let t0 = Instant::now();
        assert!(h.report(t0, false).ok(), "nothing pending");
        h.queued(t0);
        h.queued(t0 + Duration::from_secs(30));
        assert!(h.report(t0 + Duration::from_secs(59), false).ok());
        let late = h.report(t0 + Duration::from_secs(60), false);
        assert!(!late.ok() && !late.healthy);
        assert!(late.json().contains("\"healthy\":false"), "{}", late.json());
        h.updated();
        assert!(h.report(t0 + Duration::from_secs(61), true).ok());
    }

    #[test]
    fn healthz_needs_an_eligible_node_livez_does_not() {
        let h = Health::new(Duration::from_secs(60), true);
        let now = Instant::now();
        assert_eq!(
            h.report(now, false).node_eligible,
            Some(false),
            "Node not known yet"
        );
        assert!(!h.report(now, false).ok());
        assert!(h.report(now, true).ok());
        h.node(Some(true));
        assert!(h.report(now, false).ok());
        assert!(h
            .report(now, false)
            .json()
            .contains("\"nodeEligible\":true"));
        h.node(Some(false));
        assert!(!h.report(now, false).ok());
        assert!(h.report(now, true).ok());
        assert!(!h.report(now, true).json().contains("nodeEligible"));
    }
}
