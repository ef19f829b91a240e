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

    /// The directory, for messages.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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
        if let Ok(Some(other)) = self.read_named(&name) {
            if other.network == self.network
                && !other.is_named(&att.network, &att.container_id, &att.ifname)
                && legacy_file_name(&other.container_id, &other.ifname) == name
            {
                self.write(&other)?;
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
