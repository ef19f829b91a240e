//! Attachment records: `<stateDir>/<network>/<containerId>.<ifname>.json`, one per attachment,
//! written atomically (temp file + rename) in directories of mode 0700. The format is the
//! contract with svc-proxy and is documented in `docs/ATTACHMENTS.md`.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_error, Result};

/// Format version written in every record.
pub const RECORD_VERSION: u32 = 1;

/// Where an ADD got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Written before any kernel object exists; names everything the ADD may create.
    Adding,
    /// The ADD completed.
    Ready,
}

/// One attachment of a container to the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub version: u32,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub phase: Phase,
    pub bridge: String,
    pub host_veth: String,
    /// Addresses with prefix (`10.0.0.11/24`).
    pub ips: Vec<String>,
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The masquerade ipset the addresses were added to (`ipMasq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masq_set: Option<String>,
    /// `cni-bridge-ipam`, the delegated plugin's type, or empty for L2 only.
    pub ipam: String,
}

/// The record directory of one network.
pub fn network_dir(state_dir: &Path, network: &str) -> PathBuf {
    state_dir.join(network)
}

/// The record file of one attachment. Callers pass validated names only.
pub fn path(state_dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    network_dir(state_dir, network).join(format!("{container_id}.{ifname}.json"))
}

impl Attachment {
    /// This record's file.
    pub fn path(&self, state_dir: &Path) -> PathBuf {
        path(state_dir, &self.network, &self.container_id, &self.ifname)
    }

    /// Writes the record atomically, creating the directories (mode 0700) as needed.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let dir = network_dir(state_dir, &self.network);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error("creating", &dir, e))?;
        let target = self.path(state_dir);
        let tmp = dir.join(format!(
            ".{}.{}.tmp.{}",
            self.container_id,
            self.ifname,
            std::process::id()
        ));
        let body = serde_json::to_vec_pretty(self).expect("record serializes");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            std::fs::rename(&tmp, &target)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error("writing", &target, e)
        })
    }

    /// Reads a record; `None` if absent or unreadable as a record (a corrupt record is treated as
    /// absent so DEL stays best effort).
    pub fn load(
        state_dir: &Path,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Option<Attachment> {
        Self::load_file(&path(state_dir, network, container_id, ifname))
    }

    fn load_file(p: &Path) -> Option<Attachment> {
        let data = std::fs::read(p).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Removes the record, and temporary files a killed writer of it left; absent is fine.
    pub fn remove(state_dir: &Path, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        Self::sweep_temp_files(state_dir, network, Some((container_id, ifname)));
        let p = path(state_dir, network, container_id, ifname);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("removing", &p, e)),
        }
    }

    /// Removes temporary files that a writer killed between write and rename left behind
    /// (their names end in the writer's PID); a live writer's file is left alone.
    /// `only` limits the sweep to one attachment's files.
    pub fn sweep_temp_files(state_dir: &Path, network: &str, only: Option<(&str, &str)>) {
        let prefix = match only {
            Some((container_id, ifname)) => format!(".{container_id}.{ifname}.tmp."),
            None => ".".to_string(),
        };
        let Ok(rd) = std::fs::read_dir(network_dir(state_dir, network)) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Some((_, pid)) = name.rsplit_once(".tmp.") else {
                continue;
            };
            let dead = pid.parse::<u32>().is_ok_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            });
            if name.starts_with(&prefix) && dead {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Every record of a network.
    pub fn list(state_dir: &Path, network: &str) -> Result<Vec<Attachment>> {
        let dir = network_dir(state_dir, network);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("listing", &dir, e)),
        };
        let mut out: Vec<Attachment> = rd
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".json") && !n.starts_with('.')
            })
            .filter_map(|e| Self::load_file(&e.path()))
            .collect();
        out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Attachment {
        Attachment {
            version: RECORD_VERSION,
            network: "podnet".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/p".into(),
            phase: Phase::Adding,
            bridge: "cni0".into(),
            host_veth: "veth1a2b3c4d".into(),
            ips: vec!["10.0.0.11/24".into()],
            gateways: vec!["10.0.0.1".into()],
            pod_namespace: Some("default".into()),
            pod_name: None,
            labels: [("component".to_string(), "app".to_string())].into(),
            masq_set: Some("CNIB-0011aabb".into()),
            ipam: "cni-bridge-ipam".into(),
        }
    }

    #[test]
    fn json_field_names_follow_the_contract() {
        let v = serde_json::to_value(sample()).unwrap();
        for key in [
            "version",
            "network",
            "containerId",
            "ifname",
            "netns",
            "phase",
            "bridge",
            "hostVeth",
            "ips",
            "gateways",
            "podNamespace",
            "labels",
            "masqSet",
            "ipam",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert!(v.get("podName").is_none());
        assert_eq!(v["phase"], "adding");
        assert_eq!(v["labels"]["component"], "app");
    }

    #[test]
    fn sweep_removes_only_dead_writers_temp_files() {
        let dir = std::env::temp_dir().join(format!("cnib-sweep-{}", std::process::id()));
        let net = network_dir(&dir, "podnet");
        std::fs::create_dir_all(&net).unwrap();
        // PID 0 is never a process; our own PID is a live writer.
        let dead = net.join(".c1.eth0.tmp.0");
        let live = net.join(format!(".c2.eth0.tmp.{}", std::process::id()));
        std::fs::write(&dead, b"{").unwrap();
        std::fs::write(&live, b"{").unwrap();
        let other = net.join(".c3.eth0.tmp.0");
        std::fs::write(&other, b"{").unwrap();
        Attachment::sweep_temp_files(&dir, "podnet", Some(("c1", "eth0")));
        assert!(!dead.exists());
        assert!(other.exists());
        Attachment::sweep_temp_files(&dir, "podnet", None);
        assert!(!other.exists());
        assert!(live.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_load_list_remove() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cnib-rec-{}", std::process::id()));
        let mut a = sample();
        a.save(&dir).unwrap();
        a.phase = Phase::Ready;
        a.save(&dir).unwrap();
        let mode = std::fs::metadata(network_dir(&dir, "podnet"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            Attachment::load(&dir, "podnet", "c1", "eth0"),
            Some(a.clone())
        );
        assert_eq!(Attachment::list(&dir, "podnet").unwrap(), vec![a]);
        Attachment::remove(&dir, "podnet", "c1", "eth0").unwrap();
        Attachment::remove(&dir, "podnet", "c1", "eth0").unwrap();
        assert!(Attachment::list(&dir, "podnet").unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
