//! cni-bridge's attachment records: one JSON file per attachment (container ID + interface) of
//! a network, the contract between the plugin, which writes them, and svc-proxy, which reads
//! them (`docs/ATTACHMENTS.md`). This module is the format's only definition.
//!
//! Layout: `<stateDir>/<network>/<containerId>.<ifname>.json`, where dots and `%` in the
//! interface name are escaped (`%2e`, `%25`) so that no two attachments share a file name (a
//! container ID may contain dots, an escaped interface name cannot, so the last dot before
//! `.json` separates the two). For the usual names (`eth0`, `net1`) this is the previous
//! version's file name unchanged; a record the previous version wrote under an unescaped dotted
//! name is still found, trusted only when its content names the attachment asked for, and moved
//! to its escaped name when next written. Every file is reached through [`PrivateDir`]: no
//! symlink is followed, special files are refused, reads are bounded.
//!
//! Beside the records, `<set>.masquerade` holds the masquerade rules cni-bridge last wrote for
//! one of the network's ipsets ([`Records::masquerade_rules`]); like the lock file it is no
//! record (not `*.json`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::files::{self, FilesError, LockFile, LockKind, PrivateDir};

/// Where cni-bridge keeps the records unless its config's `stateDir` says otherwise; svc-proxy's
/// default `--attachments`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/cni-bridge";
/// Format version written in every record; readers skip records of other versions.
pub const RECORD_VERSION: u32 = 1;
/// Largest record read (labels included); larger files are refused.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// The per-network lock file in the record directory (ignored by readers: not `*.json`).
const LOCK_FILE: &str = "lock";
const SUFFIX: &str = ".json";
const TEMP_MARK: &str = ".tmp.";
/// Suffix of the file naming the masquerade rules last written for a set.
const MASQUERADE_SUFFIX: &str = ".masquerade";
/// Largest masquerade rules file read: a few rules per exempt destination.
const MAX_MASQUERADE_BYTES: usize = 1 << 20;

/// Where an ADD got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Written before any kernel object exists; names everything the ADD may create.
    Adding,
    /// The ADD completed: the only phase svc-proxy uses.
    Ready,
}

/// One attachment of a container to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub version: u32,
    pub network: String,
    pub container_id: String,
    /// The interface inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// `CNI_NETNS` at ADD time.
    #[serde(default)]
    pub netns: String,
    pub phase: Phase,
    /// The bridge the host veth is a port of.
    #[serde(default)]
    pub bridge: String,
    /// Host end of the veth pair; empty when the ADD never created one of its own.
    #[serde(default)]
    pub host_veth: String,
    /// Addresses with their prefix length (`10.0.0.11/24`), in IPAM order.
    #[serde(default)]
    pub ips: Vec<IpNetwork>,
    /// Gateway per family, when there is one.
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The masquerade ipset of the network's IPv4 addresses (`ipMasq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masq_set: Option<String>,
    /// `cni-bridge-ipam`, the delegated plugin's type, or empty for L2 only.
    #[serde(default)]
    pub ipam: String,
}

impl Attachment {
    /// Whether the ADD completed (svc-proxy must use only these).
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// The pod's addresses without their prefix length.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ips.iter().map(IpNetwork::ip).collect()
    }

    /// The record's file name.
    pub fn file_name(&self) -> String {
        file_name(&self.container_id, &self.ifname)
    }

    fn is_named(&self, network: &str, container_id: &str, ifname: &str) -> bool {
        self.network == network && self.container_id == container_id && self.ifname == ifname
    }
}

/// Errors reading or writing records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read or written safely.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The file is not a record.
    #[error("attachment record {path}: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A record of a format version this program does not know.
    #[error("attachment record {path}: unsupported record version {version}")]
    Version { path: PathBuf, version: u32 },
    /// The file's name is not the one its content's attachment is stored under.
    #[error("attachment record {path}: its content is for {network}/{container_id}/{ifname}, which is not stored under this name")]
    Misplaced {
        path: PathBuf,
        network: String,
        container_id: String,
        ifname: String,
    },
}

type Result<T> = std::result::Result<T, RecordError>;

/// Escapes an interface name for a file name: `%` → `%25`, `.` → `%2e`.
fn escape_ifname(ifname: &str) -> String {
    let mut out = String::with_capacity(ifname.len());
    for c in ifname.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2e"),
            c => out.push(c),
        }
    }
    out
}

/// The stem of an attachment's files (`<containerId>.<escaped ifname>`).
fn stem(container_id: &str, ifname: &str) -> String {
    format!("{container_id}.{}", escape_ifname(ifname))
}

/// The record file name of an attachment. Callers pass validated names (container IDs without
/// `/` or `%`, interface names without `/`).
pub fn file_name(container_id: &str, ifname: &str) -> String {
    format!("{}{SUFFIX}", stem(container_id, ifname))
}

/// The name the previous version used (dots unescaped: ambiguous, hence checked on read).
fn legacy_file_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}.{ifname}{SUFFIX}")
}

/// Whether a directory entry is a record file by its name (`*.json`, not starting with `.`).
pub fn is_record_file_name(name: &str) -> bool {
    !name.starts_with('.') && name.len() > SUFFIX.len() && name.ends_with(SUFFIX)
}

/// Whether `path` names a record file (see [`is_record_file_name`]).
pub fn is_record_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_record_file_name)
}

/// Parses a record's bytes; a version other than [`RECORD_VERSION`] is an error.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Attachment> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned = serde_json::from_slice(bytes).map_err(|source| RecordError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    if v.version != RECORD_VERSION {
        return Err(RecordError::Version {
            path: path.to_path_buf(),
            version: v.version,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| RecordError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks that a record read from `name` is stored under its own name (escaped, or the
/// previous version's).
fn check_placement(att: &Attachment, network: &str, name: &str, path: &Path) -> Result<()> {
    let own = att.network == network
        && (name == att.file_name() || name == legacy_file_name(&att.container_id, &att.ifname));
    if own {
        Ok(())
    } else {
        Err(RecordError::Misplaced {
            path: path.to_path_buf(),
            network: att.network.clone(),
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
        })
    }
}

/// Reads one record file (e.g. after an inotify event): `None` when it is gone. The last path
/// component is not followed if it is a symlink; special files and files over
/// [`MAX_RECORD_BYTES`] are refused; a record whose content is not stored under this name (in
/// this network's directory) is [`RecordError::Misplaced`].
pub fn read_file(path: &Path) -> Result<Option<Attachment>> {
    let Some(bytes) = files::read_file_nofollow(path, MAX_RECORD_BYTES)? else {
        return Ok(None);
    };
    let att = parse(&bytes, path)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let network = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("");
    check_placement(&att, network, name, path)?;
    Ok(Some(att))
}

/// Every record file under `state_dir`, all networks, sorted: `<stateDir>/<network>/*.json`.
/// A network directory that is a symlink, or writable by others, is skipped (and logged).
pub fn record_files(state_dir: &Path) -> Result<Vec<PathBuf>> {
    let networks = match std::fs::read_dir(state_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(FilesError::Io {
                path: state_dir.to_path_buf(),
                source: e,
            }
            .into())
        }
    };
    let mut out = Vec::new();
    for net in networks.flatten() {
        let path = net.path();
        match PrivateDir::open(&path) {
            Ok(Some(dir)) => out.extend(
                dir.names()?
                    .into_iter()
                    .filter(|n| is_record_file_name(n))
                    .map(|n| dir.file_path(&n)),
            ),
            Ok(None) => {}
            // Not a network directory of ours (a file, a symlink, someone else's).
            Err(e) => log::warn!("attachment records: skipping {}: {e}", path.display()),
        }
    }
    out.sort();
    Ok(out)
}

/// What a [`Records::lock`] serializes.
#[derive(Debug, Clone, Copy)]
pub enum Lock<'a> {
    /// The whole network: shared by ADD/DEL/CHECK, exclusive for GC.
    Network,
    /// Writing the network's masquerade rules.
    Masquerade,
    /// One attachment: exclusive for its ADD, DEL and CHECK.
    Attachment(&'a str, &'a str),
}

/// The records of one network: its directory (private, checked) and its lock file.
#[derive(Debug)]
pub struct Records {
    dir: PrivateDir,
    network: String,
    lock: Option<LockFile>,
}

/// 64-bit FNV-1a of the parts joined by a 0 byte (which validated names never contain).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        let sep: &[u8] = if i > 0 { &[0] } else { &[] };
        for b in sep.iter().chain(p.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl Records {
    /// Opens (creating, mode 0700) `<stateDir>/<network>`.
    pub fn open(state_dir: &Path, network: &str) -> Result<Records> {
        Ok(Records {
            dir: PrivateDir::create(&state_dir.join(network))?,
            network: network.to_string(),
            lock: None,
        })
    }

    /// Waits for a lock held until this `Records` is dropped: byte ranges of one lock file
    /// (open-file-description locks), so each attachment has its own without a file of its own.
    pub fn lock(&mut self, what: Lock<'_>, kind: LockKind) -> Result<()> {
        let offset = match what {
            Lock::Network => 0,
            Lock::Masquerade => 1,
            // Two attachments sharing a hash only wait for each other.
            Lock::Attachment(id, ifname) => 2 + (fnv1a(&[id, ifname]) >> 2),
        };
        if self.lock.is_none() {
            self.lock = Some(self.dir.lock_file(LOCK_FILE)?);
        }
        let file = self.lock.as_ref().expect("opened above");
        file.lock(offset, kind)?;
        Ok(())
    }

    fn read_named(&self, name: &str) -> Result<Option<Attachment>> {
        let Some(bytes) = self.dir.read(name, MAX_RECORD_BYTES)? else {
            return Ok(None);
        };
        parse(&bytes, &self.dir.file_path(name)).map(Some)
    }

    /// The record of one attachment: `None` when there is none. A file under its name whose
    /// content names another attachment (a record of the previous version with a dotted
    /// interface name, or a forged one) is not its record.
    pub fn load(&self, container_id: &str, ifname: &str) -> Result<Option<Attachment>> {
        let canonical = file_name(container_id, ifname);
        let legacy = legacy_file_name(container_id, ifname);
        for name in [canonical.as_str(), legacy.as_str()] {
            match self.read_named(name) {
                Ok(Some(a)) if a.is_named(&self.network, container_id, ifname) => {
                    return Ok(Some(a))
                }
                Ok(Some(a)) => log::warn!(
                    "{}: holds the record of {}/{}/{}, not of {container_id}/{ifname}",
                    self.dir.file_path(name).display(),
                    a.network,
                    a.container_id,
                    a.ifname
                ),
                Ok(None) => {}
                Err(RecordError::Decode { path, source }) => {
                    log::warn!("{}: not a record ({source}); ignored", path.display())
                }
                Err(e) => return Err(e),
            }
            if canonical == legacy {
                break;
            }
        }
        Ok(None)
    }

    /// Writes the record atomically (temporary file, then rename). A previous version's record
    /// of another attachment under the same name is first moved to its own escaped name; this
    /// attachment's own record under a previous-version name is removed.
    pub fn save(&self, att: &Attachment) -> Result<()> {
        let name = att.file_name();
        // Only a name with a dot in the container ID or an escape in the interface name can
        // also be another attachment's name of the previous version.
        if att.container_id.contains('.') || att.ifname.contains(['.', '%']) {
            if let Ok(Some(other)) = self.read_named(&name) {
                if other.network == self.network
                    && !other.is_named(&att.network, &att.container_id, &att.ifname)
                    && legacy_file_name(&other.container_id, &other.ifname) == name
                {
                    self.write(&other)?;
                }
            }
        }
        self.write(att)?;
        let legacy = legacy_file_name(&att.container_id, &att.ifname);
        if legacy != name {
            if let Ok(Some(old)) = self.read_named(&legacy) {
                if old.is_named(&att.network, &att.container_id, &att.ifname) {
                    self.dir.remove(&legacy)?;
                }
            }
        }
        Ok(())
    }

    fn write(&self, att: &Attachment) -> Result<()> {
        let body = serde_json::to_vec_pretty(att).expect("record serializes");
        let temp = format!(
            ".{}{TEMP_MARK}{}",
            stem(&att.container_id, &att.ifname),
            std::process::id()
        );
        self.dir.write_replace(&att.file_name(), &temp, &body)?;
        Ok(())
    }

    /// The masquerade rules last written for the network's ipset `set`, as
    /// [`Records::save_masquerade_rules`] stored them; `None` when never stored. The kernel's
    /// reference count of the set proves how many rules use it, not which: this says which
    /// destinations they exempt, so a changed configuration is seen without an exec.
    pub fn masquerade_rules(&self, set: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .dir
            .read(&format!("{set}{MASQUERADE_SUFFIX}"), MAX_MASQUERADE_BYTES)?)
    }

    /// Stores `rules` as the masquerade rules just written for `set` (atomically: a reader sees
    /// the previous rules or these; a planted symlink or special file is replaced).
    pub fn save_masquerade_rules(&self, set: &str, rules: &[u8]) -> Result<()> {
        let name = format!("{set}{MASQUERADE_SUFFIX}");
        let temp = format!(".{name}{TEMP_MARK}{}", std::process::id());
        self.dir.write_replace(&name, &temp, rules)?;
        Ok(())
    }

    /// Removes the attachment's record (under either name, the previous version's only when it
    /// is this attachment's) and temporary files a killed writer of it left; absent is fine.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<()> {
        self.sweep_temp_files(Some((container_id, ifname)));
        let canonical = file_name(container_id, ifname);
        let legacy = legacy_file_name(container_id, ifname);
        if legacy != canonical {
            match self.read_named(&legacy) {
                Ok(Some(a)) if a.is_named(&self.network, container_id, ifname) => {
                    self.dir.remove(&legacy)?;
                }
                _ => {}
            }
        }
        // The canonical name is this attachment's alone, whatever the file holds.
        self.dir.remove(&canonical)?;
        Ok(())
    }

    /// Removes temporary files that a writer killed between write and rename left behind
    /// (their names end in the writer's PID); a live writer's file is left alone. `only`
    /// limits the sweep to one attachment's files.
    pub fn sweep_temp_files(&self, only: Option<(&str, &str)>) {
        let prefix = match only {
            Some((id, ifname)) => format!(".{}{TEMP_MARK}", stem(id, ifname)),
            None => ".".to_string(),
        };
        let Ok(names) = self.dir.names() else {
            return;
        };
        for name in names {
            let Some((_, pid)) = name.rsplit_once(TEMP_MARK) else {
                continue;
            };
            let dead = pid.parse::<u32>().is_ok_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            });
            if name.starts_with(&prefix) && dead {
                let _ = self.dir.remove(&name);
            }
        }
    }

    /// Every record of the network, sorted by (container ID, interface). Files that are not
    /// records of this network under their own name are skipped (and logged).
    pub fn list(&self) -> Result<Vec<Attachment>> {
        let mut by_attachment: BTreeMap<(String, String), (bool, Attachment)> = BTreeMap::new();
        for name in self.dir.names()? {
            if !is_record_file_name(&name) {
                continue;
            }
            let path = self.dir.file_path(&name);
            let read = self.read_named(&name).and_then(|a| match a {
                Some(a) => check_placement(&a, &self.network, &name, &path).map(|()| Some(a)),
                None => Ok(None),
            });
            let att = match read {
                Ok(Some(a)) => a,
                // Removed since the listing.
                Ok(None) => continue,
                Err(e) => {
                    log::warn!("{e}; skipped");
                    continue;
                }
            };
            let canonical = name == att.file_name();
            let key = (att.container_id.clone(), att.ifname.clone());
            match by_attachment.get(&key) {
                Some((true, _)) => {}
                _ => {
                    by_attachment.insert(key, (canonical, att));
                }
            }
        }
        Ok(by_attachment.into_values().map(|(_, a)| a).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "nodenet-records-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    /// A record exactly as the previous version of cni-bridge wrote it (`serde_json`
    /// pretty-printed, its field order), for `podnet`/`c1`/`eth0`.
    const PREVIOUS_VERSION: &str = r#"{
  "version": 1,
  "network": "podnet",
  "containerId": "c1",
  "ifname": "eth0",
  "netns": "/run/netns/p",
  "phase": "ready",
  "bridge": "cni0",
  "hostVeth": "veth1a2b3c4d",
  "ips": [
    "10.0.0.11/24",
    "fd00::b/64"
  ],
  "gateways": [
    "10.0.0.1",
    "fd00::1"
  ],
  "podNamespace": "default",
  "labels": {
    "component": "app"
  },
  "masqSet": "CNIB-8fe508ed",
  "ipam": "cni-bridge-ipam"
}"#;

    fn sample(id: &str, ifname: &str) -> Attachment {
        let mut a = parse(PREVIOUS_VERSION.as_bytes(), Path::new("x")).unwrap();
        a.container_id = id.into();
        a.ifname = ifname.into();
        a
    }

    #[test]
    fn records_of_the_previous_version_read_and_write_back_identically() {
        let a = parse(PREVIOUS_VERSION.as_bytes(), Path::new("x")).unwrap();
        assert_eq!(a.phase, Phase::Ready);
        assert!(a.is_ready());
        assert_eq!(
            a.addresses(),
            vec![
                "10.0.0.11".parse::<IpAddr>().unwrap(),
                "fd00::b".parse().unwrap()
            ]
        );
        assert_eq!(a.ips[0].prefix(), 24);
        assert_eq!(a.pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.pod_name, None);
        assert_eq!(a.labels["component"], "app");
        assert_eq!(
            String::from_utf8(serde_json::to_vec_pretty(&a).unwrap()).unwrap(),
            PREVIOUS_VERSION
        );
        // svc-proxy's minimal reading of it (only what it used) still parses.
        let minimal = r#"{"version":1,"network":"home","containerId":"c1","ifname":"eth0","netns":"/proc/1/ns/net","phase":"ready","bridge":"bridge_home","hostVeth":"veth1","ips":["10.0.0.11/24"],"gateways":["10.0.0.1"],"labels":{"component":"app"}}"#;
        let m = parse(minimal.as_bytes(), Path::new("x")).unwrap();
        assert_eq!(m.addresses(), vec!["10.0.0.11".parse::<IpAddr>().unwrap()]);
        assert_eq!(m.masq_set, None);
    }

    #[test]
    fn unknown_versions_and_bad_addresses_are_refused() {
        let v2 = PREVIOUS_VERSION.replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            parse(v2.as_bytes(), Path::new("x")),
            Err(RecordError::Version { version: 2, .. })
        ));
        let bad = PREVIOUS_VERSION.replace("10.0.0.11/24", "x/24");
        assert!(matches!(
            parse(bad.as_bytes(), Path::new("x")),
            Err(RecordError::Decode { .. })
        ));
        let adding = PREVIOUS_VERSION.replace("\"ready\"", "\"adding\"");
        assert!(!parse(adding.as_bytes(), Path::new("x")).unwrap().is_ready());
    }

    #[test]
    fn file_names_never_alias() {
        let shapes = [
            ("web.x", "eth0"),
            ("web", "x.eth0"),
            ("a.b.c", "d"),
            ("a.b", "c.d"),
            ("a", "b.c.d"),
            ("a", "b%2ec.d"),
            ("a", "b.c%2ed"),
        ];
        let names: std::collections::BTreeSet<String> =
            shapes.iter().map(|(i, n)| file_name(i, n)).collect();
        assert_eq!(names.len(), shapes.len(), "{names:?}");
        // Undotted interface names keep the previous version's file name.
        assert_eq!(file_name("c1", "eth0"), "c1.eth0.json");
        assert_eq!(file_name("web", "x.eth0"), "web.x%2eeth0.json");
        assert!(is_record_file_name("c1.eth0.json"));
        assert!(!is_record_file_name(".c1.eth0.tmp.5"));
        assert!(!is_record_file_name("lock"));
    }

    #[test]
    fn previous_version_records_under_dotted_names_are_found_and_moved() {
        let base = tmp("legacy");
        let dir = base.join("podnet");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // The previous version stored (web, x.eth0) as web.x.eth0.json, the name (web.x, eth0)
        // now has.
        let old = sample("web", "x.eth0");
        std::fs::write(
            dir.join("web.x.eth0.json"),
            serde_json::to_vec_pretty(&old).unwrap(),
        )
        .unwrap();
        let records = Records::open(&base, "podnet").unwrap();
        assert_eq!(records.load("web", "x.eth0").unwrap(), Some(old.clone()));
        assert_eq!(records.load("web.x", "eth0").unwrap(), None);
        assert_eq!(records.list().unwrap(), vec![old.clone()]);
        // Writing (web.x, eth0) moves the old record to its escaped name first.
        let new = sample("web.x", "eth0");
        records.save(&new).unwrap();
        assert_eq!(records.load("web", "x.eth0").unwrap(), Some(old.clone()));
        assert_eq!(records.load("web.x", "eth0").unwrap(), Some(new.clone()));
        assert!(dir.join("web.x%2eeth0.json").exists());
        assert_eq!(records.list().unwrap().len(), 2);
        // Saving the old one's attachment removes nothing of the other.
        records.save(&old).unwrap();
        records.remove("web", "x.eth0").unwrap();
        // The same with an interface name holding what is now an escape.
        let pct = sample("c9", "a%2eb");
        std::fs::write(
            dir.join("c9.a%2eb.json"),
            serde_json::to_vec_pretty(&pct).unwrap(),
        )
        .unwrap();
        let dotted = sample("c9", "a.b");
        records.save(&dotted).unwrap();
        assert_eq!(records.load("c9", "a%2eb").unwrap(), Some(pct.clone()));
        assert_eq!(records.load("c9", "a.b").unwrap(), Some(dotted.clone()));
        records.remove("c9", "a%2eb").unwrap();
        records.remove("c9", "a.b").unwrap();
        assert_eq!(records.list().unwrap(), vec![new.clone()]);
        assert_eq!(records.load("web.x", "eth0").unwrap(), Some(new));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn misplaced_and_forged_records_are_not_taken_for_others() {
        let base = tmp("forged");
        let records = Records::open(&base, "podnet").unwrap();
        let other = sample("c2", "eth0");
        // c2's content under c1's name.
        std::fs::write(
            base.join("podnet/c1.eth0.json"),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        assert_eq!(records.load("c1", "eth0").unwrap(), None);
        assert!(records.list().unwrap().is_empty());
        assert!(matches!(
            read_file(&base.join("podnet/c1.eth0.json")),
            Err(RecordError::Misplaced { .. })
        ));
        let mut foreign = sample("c3", "eth0");
        foreign.network = "othernet".into();
        std::fs::write(
            base.join("podnet/c3.eth0.json"),
            serde_json::to_vec(&foreign).unwrap(),
        )
        .unwrap();
        assert!(records.list().unwrap().is_empty());
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn readers_list_every_network_and_skip_unsafe_directories() {
        let base = tmp("readers");
        let a = Records::open(&base, "neta").unwrap();
        let b = Records::open(&base, "netb").unwrap();
        a.save(&Attachment {
            network: "neta".into(),
            ..sample("c1", "eth0")
        })
        .unwrap();
        b.save(&Attachment {
            network: "netb".into(),
            ..sample("c2", "x.eth0")
        })
        .unwrap();
        // A network directory that is a symlink is skipped.
        std::os::unix::fs::symlink(base.join("neta"), base.join("netc")).unwrap();
        let files = record_files(&base).unwrap();
        assert_eq!(
            files,
            vec![
                base.join("neta/c1.eth0.json"),
                base.join("netb/c2.x%2eeth0.json")
            ]
        );
        let read: Vec<Attachment> = files
            .iter()
            .map(|p| read_file(p).unwrap().unwrap())
            .collect();
        assert_eq!(read[1].ifname, "x.eth0");
        assert_eq!(read_file(&base.join("neta/gone.eth0.json")).unwrap(), None);
        assert!(record_files(&base.join("absent")).unwrap().is_empty());
        std::fs::remove_dir_all(base).unwrap();
    }

    /// The masquerade rules file sits beside the records without being one, and a plant under
    /// its name is replaced, never followed.
    #[test]
    fn masquerade_rules_are_stored_beside_the_records_and_are_no_record() {
        let base = tmp("masq");
        let records = Records::open(&base, "podnet").unwrap();
        assert_eq!(records.masquerade_rules("CNIB-0123").unwrap(), None);
        records
            .save_masquerade_rules("CNIB-0123", b"*nat\nCOMMIT\n")
            .unwrap();
        assert_eq!(
            records.masquerade_rules("CNIB-0123").unwrap().as_deref(),
            Some(&b"*nat\nCOMMIT\n"[..])
        );
        assert_eq!(records.masquerade_rules("CNIB6-0123").unwrap(), None);
        assert!(records.list().unwrap().is_empty());
        assert!(record_files(&base).unwrap().is_empty());

        let target = base.join("target");
        std::fs::write(&target, b"untouched").unwrap();
        let planted = base.join("podnet/CNIB6-0123.masquerade");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(records.masquerade_rules("CNIB6-0123").is_err());
        records.save_masquerade_rules("CNIB6-0123", b"x").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
        assert_eq!(
            records.masquerade_rules("CNIB6-0123").unwrap().as_deref(),
            Some(&b"x"[..])
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn temp_files_of_dead_writers_are_swept() {
        let base = tmp("sweep");
        let records = Records::open(&base, "podnet").unwrap();
        let dir = base.join("podnet");
        // PID 0 is never a process; our own PID is a live writer.
        let dead = dir.join(".c1.eth0.tmp.0");
        let live = dir.join(format!(".c2.eth0.tmp.{}", std::process::id()));
        let other = dir.join(".c3.eth0.tmp.0");
        for f in [&dead, &live, &other] {
            std::fs::write(f, b"{").unwrap();
        }
        records.sweep_temp_files(Some(("c1", "eth0")));
        assert!(!dead.exists() && other.exists());
        records.sweep_temp_files(None);
        assert!(!other.exists() && live.exists());
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn attachment_locks_are_independent_and_exclusive() {
        let base = tmp("locks");
        let mut one = Records::open(&base, "podnet").unwrap();
        one.lock(Lock::Network, LockKind::Shared).unwrap();
        one.lock(Lock::Attachment("c1", "eth0"), LockKind::Exclusive)
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let base2 = base.clone();
        let waiter = std::thread::spawn(move || {
            let mut two = Records::open(&base2, "podnet").unwrap();
            two.lock(Lock::Network, LockKind::Shared).unwrap();
            two.lock(Lock::Attachment("c2", "eth0"), LockKind::Exclusive)
                .unwrap();
            tx.send("other attachment").unwrap();
            two.lock(Lock::Attachment("c1", "eth0"), LockKind::Exclusive)
                .unwrap();
            tx.send("same attachment").unwrap();
        });
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(),
            "other attachment"
        );
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(one);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(),
            "same attachment"
        );
        waiter.join().unwrap();
        std::fs::remove_dir_all(base).unwrap();
    }
}
