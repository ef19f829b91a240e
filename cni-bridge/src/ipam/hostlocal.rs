//! The built-in allocator: host-local's configuration, allocation order and on-disk layout.
//!
//! Layout under `<dataDir>/<network>/` (interchangeable with host-local 1.1.1): one file per
//! reserved address, named by the address, created exclusively (written whole under a temporary
//! name, then hard-linked, so it is never seen empty), holding `containerID\r\nifname`;
//! `last_reserved_ip.<rangeSetIndex>` holding the last address handed out (allocation goes
//! round robin from there); and `lock`, `flock`ed around every operation so host-local and this
//! allocator interlock.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use nix::fcntl::Flock;
use nodenet::files::{self, PrivateDir};
use nodenet::Family;
use serde::Deserialize;
use serde_json::Value;

use super::Rewind;
use crate::error::{code, CniError, Result};
use crate::result::{Dns, IpConfig, RouteConf};
use crate::strict::object_only;

/// host-local's default `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const LOCK_FILE: &str = "lock";
/// Largest reservation file read (host-local's hold a container ID and an interface name).
const MAX_RESERVATION_BYTES: usize = 64 * 1024;
/// Largest `resolvConf` read.
const MAX_RESOLV_CONF_BYTES: usize = 64 * 1024;
/// Prefix of a reservation being written (`.reserving-<pid>`): not an address, so host-local and
/// [`Store::reservations`] never take it for one.
const RESERVING_PREFIX: &str = ".reserving-";

/// One range of a range set, canonicalized (defaults filled in as host-local does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

/// The `ipam` section for `cni-bridge-ipam`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// One address is allocated from each range set.
    pub range_sets: Vec<Vec<Range>>,
    pub routes: Vec<RouteConf>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase", remote = "Self")]
struct RawRange {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    range_start: Option<String>,
    #[serde(default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}
object_only!(RawRange);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(flatten)]
    legacy: RawRange,
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(default)]
    routes: Vec<RouteConf>,
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    resolv_conf: Option<String>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, format!("ipam: {}", msg.into()))
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(n: u128, family: Family) -> IpAddr {
    match family {
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
        Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
    }
}

fn parse_ip(s: &str, what: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| invalid(format!("{what} {s:?} is not an IP address")))
}

impl Range {
    fn parse(raw: &RawRange) -> Result<Range> {
        let subnet_s = raw
            .subnet
            .as_deref()
            .ok_or_else(|| invalid("a range has no subnet"))?;
        let subnet: IpNetwork = subnet_s
            .parse()
            .map_err(|e| invalid(format!("subnet {subnet_s:?}: {e}")))?;
        let bits = if subnet.is_ipv4() { 32 } else { 128 };
        if subnet.prefix() > bits - 2 {
            return Err(invalid(format!(
                "network {subnet} too small to allocate from"
            )));
        }
        if subnet.ip() != subnet.network() {
            return Err(invalid(format!(
                "network {subnet} has host bits set; for a mask of length {} the network address is {}",
                subnet.prefix(),
                subnet.network()
            )));
        }
        let family = Family::of_net(&subnet);
        let first = from_u128(to_u128(subnet.network()) + 1, family);
        let last = match subnet {
            IpNetwork::V4(n) => from_u128(u128::from(u32::from(n.broadcast())) - 1, Family::V4),
            IpNetwork::V6(n) => {
                let host_bits = 128 - u32::from(n.prefix());
                let all = if host_bits == 128 {
                    u128::MAX
                } else {
                    to_u128(subnet.network()) | ((1u128 << host_bits) - 1)
                };
                from_u128(all - 1, Family::V6)
            }
        };
        let in_subnet = |ip: IpAddr, what: &str| -> Result<IpAddr> {
            if Family::of(ip) != family || !subnet.contains(ip) {
                return Err(invalid(format!("{what} {ip} not in network {subnet}")));
            }
            Ok(ip)
        };
        let gateway = match raw.gateway.as_deref() {
            Some(g) if !g.is_empty() => {
                let ip = parse_ip(g, "gateway")?;
                if Family::of(ip) != family {
                    return Err(invalid(format!(
                        "gateway {ip} is not of the family of {subnet}"
                    )));
                }
                ip
            }
            _ => first,
        };
        let start = match raw.range_start.as_deref() {
            Some(s) if !s.is_empty() => in_subnet(parse_ip(s, "rangeStart")?, "rangeStart")?,
            _ => first,
        };
        let end = match raw.range_end.as_deref() {
            Some(s) if !s.is_empty() => in_subnet(parse_ip(s, "rangeEnd")?, "rangeEnd")?,
            _ => last,
        };
        if to_u128(start) > to_u128(end) {
            return Err(invalid(format!(
                "rangeStart {start} is after rangeEnd {end}"
            )));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    /// Whether `ip` is allocatable from this range (inside the subnet and start..=end).
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == Family::of_net(&self.subnet)
            && self.subnet.contains(ip)
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    fn overlaps(&self, other: &Range) -> bool {
        Family::of_net(&self.subnet) == Family::of_net(&other.subnet)
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }

    /// Number of allocatable addresses (the gateway excluded).
    fn size(&self) -> u128 {
        let n = to_u128(self.end) - to_u128(self.start) + 1;
        if self.contains(self.gateway) {
            n - 1
        } else {
            n
        }
    }
}

impl Config {
    /// Parses the `ipam` object (host-local's keys; `subnet`/`rangeStart`/`rangeEnd`/`gateway`
    /// at top level form a first range set, as in host-local).
    pub fn parse(ipam: &Value) -> Result<Config> {
        let raw: RawConfig = serde_json::from_value(ipam.clone())
            .map_err(|e| CniError::new(code::DECODE_FAILURE, format!("ipam: {e}")))?;
        let mut raw_sets = Vec::new();
        if raw.legacy.subnet.as_deref().is_some_and(|s| !s.is_empty()) {
            raw_sets.push(vec![raw.legacy.clone()]);
        }
        raw_sets.extend(raw.ranges);
        if raw_sets.is_empty() {
            return Err(invalid("no IP ranges specified (\"ranges\" or \"subnet\")"));
        }
        let mut range_sets: Vec<Vec<Range>> = Vec::new();
        for (i, raw_set) in raw_sets.iter().enumerate() {
            if raw_set.is_empty() {
                return Err(invalid(format!("range set {i} is empty")));
            }
            let set: Vec<Range> = raw_set.iter().map(Range::parse).collect::<Result<_>>()?;
            let family = Family::of_net(&set[0].subnet);
            if set.iter().any(|r| Family::of_net(&r.subnet) != family) {
                return Err(invalid(format!("range set {i} mixes address families")));
            }
            for (a, ra) in set.iter().enumerate() {
                for rb in &set[a + 1..] {
                    if ra.overlaps(rb) {
                        return Err(invalid(format!(
                            "range set {i}: {} overlaps with {}",
                            ra.subnet, rb.subnet
                        )));
                    }
                }
            }
            for (j, prev) in range_sets.iter().enumerate() {
                if prev.iter().any(|p| set.iter().any(|r| r.overlaps(p))) {
                    return Err(invalid(format!(
                        "range set {i} overlaps with range set {j}"
                    )));
                }
            }
            range_sets.push(set);
        }
        for (key, p) in [("dataDir", &raw.data_dir), ("resolvConf", &raw.resolv_conf)] {
            if p.as_deref().is_some_and(|p| p.contains('\0')) {
                return Err(invalid(format!("{key} contains a NUL character")));
            }
        }
        let data_dir = PathBuf::from(raw.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR));
        if !data_dir.is_absolute() {
            return Err(invalid(format!(
                "dataDir {:?} is not an absolute path",
                data_dir.display()
            )));
        }
        Ok(Config {
            range_sets,
            routes: raw.routes,
            data_dir,
            resolv_conf: raw.resolv_conf.filter(|s| !s.is_empty()).map(PathBuf::from),
        })
    }

    /// Every subnet of every range, in order.
    pub fn subnets(&self) -> Vec<IpNetwork> {
        self.range_sets.iter().flatten().map(|r| r.subnet).collect()
    }

    /// DNS settings read from `resolvConf`, as host-local returns them.
    pub fn dns(&self) -> Result<Dns> {
        let Some(path) = &self.resolv_conf else {
            return Ok(Dns::default());
        };
        let bytes = files::read_config_file(path, MAX_RESOLV_CONF_BYTES)
            .map_err(|e| CniError::new(code::IO_FAILURE, format!("ipam resolvConf: {e}")))?;
        Ok(parse_resolv_conf(&String::from_utf8_lossy(&bytes)))
    }
}

/// Parses `nameserver`, `domain`, `search` and `options` lines.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(words.next().map(str::to_string)),
            Some("domain") => dns.domain = words.next().unwrap_or_default().to_string(),
            Some("search") => dns.search = words.map(str::to_string).collect(),
            Some("options") => dns.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    dns
}

/// One reservation file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// The per-network store, locked for as long as it lives.
pub struct Store {
    dir: PrivateDir,
    _lock: Flock<File>,
}

fn owner_content(id: &str, ifname: &str) -> String {
    format!("{}\r\n{ifname}", id.trim())
}

/// (containerID, ifname) from a reservation file; old host-local files hold only the ID.
fn parse_owner(content: &str) -> (String, String) {
    let content = content.trim();
    let (id, ifname) = content.split_once("\r\n").unwrap_or((content, ""));
    (id.trim().to_string(), ifname.trim().to_string())
}

impl Store {
    /// Opens `<dataDir>/<network>` (created mode 0700 if absent; refused when it is a symlink or
    /// writable by others) and takes its lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        let dir = PrivateDir::create(&data_dir.join(network))?;
        let lock = dir.lock_file(LOCK_FILE)?.flock_exclusive()?;
        let store = Store { dir, _lock: lock };
        store.sweep_reserving();
        Ok(store)
    }

    /// Removes reservations being written by allocators that died: under the lock nobody else
    /// is writing one.
    fn sweep_reserving(&self) {
        let Ok(names) = self.dir.names() else {
            return;
        };
        for name in names.iter().filter(|n| n.starts_with(RESERVING_PREFIX)) {
            let _ = self.dir.remove(name);
        }
    }

    /// The owner of a reservation file: `None` when there is none. Anything but a small regular
    /// file under an address's name is refused (never followed, never read to its end).
    fn owner_of(&self, ip: IpAddr) -> Result<Option<(String, String)>> {
        let content = self.dir.read(&ip.to_string(), MAX_RESERVATION_BYTES)?;
        Ok(content.map(|c| parse_owner(&String::from_utf8_lossy(&c))))
    }

    /// Creates the reservation file for `ip`; `false` if taken.
    ///
    /// The file is written whole under a temporary name and then hard-linked to the address
    /// (which fails if it exists, like `O_EXCL`), so a reservation never exists without its
    /// owner, even if the plugin is killed half way; a DEL or GC of that owner finds it.
    /// An empty reservation file is an allocator (host-local, which creates and then writes)
    /// killed in between while holding this lock: nobody owns it, and it is taken over.
    fn reserve(
        &self,
        ip: IpAddr,
        id: &str,
        ifname: &str,
        set_index: usize,
        rewind: &mut Rewind,
    ) -> Result<bool> {
        let name = ip.to_string();
        match self.dir.read(&name, MAX_RESERVATION_BYTES) {
            Ok(Some(c)) if c.is_empty() => {
                log::warn!(
                    "{}: empty reservation (a killed allocator's); reclaimed",
                    self.dir.file_path(&name).display()
                );
                self.dir.remove(&name)?;
            }
            Ok(Some(_)) => return Ok(false),
            Ok(None) => {}
            // A symlink, FIFO, device or huge file under an address's name: not a reservation
            // we can trust or take over, so the address is not handed out.
            Err(e) => {
                log::warn!("{e}; address {ip} skipped");
                return Ok(false);
            }
        }
        let tmp = format!("{RESERVING_PREFIX}{}", std::process::id());
        if !self
            .dir
            .write_new(&name, &tmp, owner_content(id, ifname).as_bytes())?
        {
            return Ok(false);
        }
        let before = self.last_reserved(set_index);
        self.write_last_reserved(set_index, Some(ip))?;
        rewind.0.push((set_index, before, ip));
        Ok(true)
    }

    fn last_reserved_name(set_index: usize) -> String {
        format!("{LAST_RESERVED_PREFIX}{set_index}")
    }

    fn write_last_reserved(&self, set_index: usize, ip: Option<IpAddr>) -> Result<()> {
        let name = Self::last_reserved_name(set_index);
        match ip {
            Some(ip) => {
                let tmp = format!(".{name}.{}", std::process::id());
                self.dir
                    .write_replace(&name, &tmp, ip.to_string().as_bytes())?;
            }
            None => {
                self.dir.remove(&name)?;
            }
        }
        Ok(())
    }

    fn last_reserved(&self, set_index: usize) -> Option<IpAddr> {
        let name = Self::last_reserved_name(set_index);
        let content = self.dir.read(&name, MAX_RESERVATION_BYTES).ok()??;
        String::from_utf8_lossy(&content).trim().parse().ok()
    }

    /// Puts back the `last_reserved_ip` files a failed allocation advanced, unless another
    /// allocation moved them since (newest change first, so the oldest value wins).
    pub fn rewind(&self, rewind: &Rewind) -> Result<()> {
        for (set_index, before, wrote) in rewind.0.iter().rev() {
            if self.last_reserved(*set_index) == Some(*wrote) {
                self.write_last_reserved(*set_index, *before)?;
            }
        }
        Ok(())
    }

    /// Every reservation file (host-local's and ours). Files under an address's name that are
    /// not small regular files are skipped (and logged): they are nobody's reservation.
    pub fn reservations(&self) -> Result<Vec<Reservation>> {
        let mut out = Vec::new();
        for name in self.dir.names()? {
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            match self.owner_of(ip) {
                Ok(Some((container_id, ifname))) => out.push(Reservation {
                    ip,
                    container_id,
                    ifname,
                }),
                Ok(None) => {}
                Err(e) => log::warn!("{e}; not counted as a reservation"),
            }
        }
        out.sort_by_key(|r| (Family::of(r.ip), to_u128(r.ip)));
        Ok(out)
    }

    /// Releases `ip` if it is reserved for this attachment; `false` otherwise.
    pub fn release_ip(&self, ip: IpAddr, id: &str, ifname: &str) -> Result<bool> {
        match self.owner_of(ip) {
            Ok(Some(owner)) if owner == (id.trim().to_string(), ifname.to_string()) => {
                self.dir.remove(&ip.to_string())?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) => {
                log::warn!("{e}; not released");
                Ok(false)
            }
        }
    }

    /// Releases every address of this attachment (a directory walk, as host-local's DEL).
    pub fn release_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut released = Vec::new();
        for r in self.reservations()? {
            if r.container_id == id.trim()
                && r.ifname == ifname
                && self.release_ip(r.ip, id, ifname)?
            {
                released.push(r.ip);
            }
        }
        Ok(released)
    }

    /// Allocates one address from each range set, honouring requested addresses; all or
    /// nothing (also the round-robin position). `rewind` receives what a caller that fails
    /// later needs to put the position back.
    pub fn allocate(
        &self,
        cfg: &Config,
        id: &str,
        ifname: &str,
        requested: &[IpAddr],
        rewind: &mut Rewind,
    ) -> Result<Vec<IpConfig>> {
        let mut pending: Vec<IpAddr> = Vec::new();
        for ip in requested {
            if !pending.contains(ip) {
                pending.push(*ip);
            }
        }
        let mut got: Vec<IpConfig> = Vec::new();
        let mut advanced = Rewind::default();
        let outcome = (|| {
            for (i, set) in cfg.range_sets.iter().enumerate() {
                let req = pending
                    .iter()
                    .position(|ip| set.iter().any(|r| r.contains(*ip)))
                    .map(|p| pending.remove(p));
                got.push(self.allocate_from(set, i, id, ifname, req, &mut advanced)?);
            }
            if !pending.is_empty() {
                let list: Vec<String> = pending.iter().map(ToString::to_string).collect();
                return Err(CniError::new(
                    code::NO_ADDRESS,
                    format!(
                        "failed to allocate all requested IPs: {} (not inside any range)",
                        list.join(" ")
                    ),
                ));
            }
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                rewind.0.extend(advanced.0);
                Ok(got)
            }
            Err(e) => {
                for ip in &got {
                    let _ = self.release_ip(ip.address.ip(), id, ifname);
                }
                if let Err(re) = self.rewind(&advanced) {
                    log::warn!("putting back the round-robin position: {re}");
                }
                Err(e)
            }
        }
    }

    fn allocate_from(
        &self,
        set: &[Range],
        set_index: usize,
        id: &str,
        ifname: &str,
        requested: Option<IpAddr>,
        rewind: &mut Rewind,
    ) -> Result<IpConfig> {
        let set_name = || {
            set.iter()
                .map(|r| r.subnet.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let config = |ip: IpAddr, r: &Range| IpConfig {
            address: IpNetwork::new(ip, r.subnet.prefix()).expect("prefix of a valid subnet"),
            gateway: Some(r.gateway),
            interface: None,
        };
        if let Some(ip) = requested {
            let r = set
                .iter()
                .find(|r| r.contains(ip))
                .expect("requested IP was matched to this set");
            if ip == r.gateway {
                return Err(CniError::new(
                    code::NO_ADDRESS,
                    format!("requested IP {ip} is the subnet's gateway"),
                ));
            }
            if !self.reserve(ip, id, ifname, set_index, rewind)? {
                return Err(CniError::new(
                    code::NO_ADDRESS,
                    format!(
                        "requested IP address {ip} is not available in range set {}",
                        set_name()
                    ),
                ));
            }
            return Ok(config(ip, r));
        }
        for (ip, r) in RangeIter::new(set, self.last_reserved(set_index)) {
            if self.reserve(ip, id, ifname, set_index, rewind)? {
                return Ok(config(ip, r));
            }
        }
        Err(CniError::new(
            code::NO_ADDRESS,
            format!("no IP addresses available in range set: {}", set_name()),
        ))
    }

    /// Free addresses per range set (for STATUS).
    pub fn free_counts(&self, cfg: &Config) -> Result<Vec<u128>> {
        let taken = self.reservations()?;
        Ok(cfg
            .range_sets
            .iter()
            .map(|set| {
                let size: u128 = set.iter().map(Range::size).sum();
                let used = taken
                    .iter()
                    .filter(|t| set.iter().any(|r| r.contains(t.ip) && t.ip != r.gateway))
                    .count() as u128;
                size.saturating_sub(used)
            })
            .collect())
    }
}

/// host-local's iteration order: from the address after the last reserved one, through the
/// ranges of the set in order, wrapping once, skipping gateways.
struct RangeIter<'a> {
    set: &'a [Range],
    range: usize,
    cur: Option<u128>,
    start: Option<u128>,
}

impl<'a> RangeIter<'a> {
    fn new(set: &'a [Range], last: Option<IpAddr>) -> RangeIter<'a> {
        match last.and_then(|ip| set.iter().position(|r| r.contains(ip)).map(|i| (i, ip))) {
            Some((i, ip)) => RangeIter {
                set,
                range: i,
                cur: Some(to_u128(ip)),
                start: None,
            },
            None => RangeIter {
                set,
                range: 0,
                cur: None,
                start: Some(to_u128(set[0].start)),
            },
        }
    }
}

impl<'a> Iterator for RangeIter<'a> {
    type Item = (IpAddr, &'a Range);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let r = &self.set[self.range];
            let family = Family::of_net(&r.subnet);
            let next = match self.cur {
                None => {
                    let s = to_u128(r.start);
                    self.start = Some(s);
                    s
                }
                Some(c) if c == to_u128(r.end) => {
                    self.range = (self.range + 1) % self.set.len();
                    let s = to_u128(self.set[self.range].start);
                    if self.start == Some(s) {
                        return None;
                    }
                    s
                }
                Some(c) => c + 1,
            };
            let first_call = self.cur.is_none();
            self.cur = Some(next);
            if !first_call {
                match self.start {
                    None => self.start = Some(next),
                    Some(s) if s == next => return None,
                    Some(_) => {}
                }
            }
            let r = &self.set[self.range];
            let ip = from_u128(next, family);
            if ip == r.gateway {
                continue;
            }
            return Some((ip, r));
        }
    }
}

/// The built-in allocator bound to one network.
pub struct Builtin<'a> {
    pub cfg: &'a Config,
    pub network: &'a str,
}

impl super::Ipam for Builtin<'_> {
    fn add(&self, owner: super::Owner<'_>, requested: &[IpAddr]) -> Result<super::IpamResult> {
        let dns = self.cfg.dns()?;
        let store = Store::open(&self.cfg.data_dir, self.network)?;
        let mut rewind = Rewind::default();
        let ips = store.allocate(
            self.cfg,
            owner.container_id,
            owner.ifname,
            requested,
            &mut rewind,
        )?;
        Ok(super::IpamResult {
            ips,
            routes: self.cfg.routes.clone(),
            dns,
            rewind,
        })
    }

    fn del(&self, owner: super::Owner<'_>, known: &[IpAddr]) -> Result<()> {
        let store = Store::open(&self.cfg.data_dir, self.network)?;
        let mut released = 0;
        for ip in known {
            if store.release_ip(*ip, owner.container_id, owner.ifname)? {
                released += 1;
            }
        }
        // Without a record (or if it named nothing we held) fall back to host-local's walk.
        if released == 0 {
            store.release_by_id(owner.container_id, owner.ifname)?;
        }
        Ok(())
    }

    fn check(&self, owner: super::Owner<'_>, ips: &[IpAddr]) -> Result<()> {
        let store = Store::open(&self.cfg.data_dir, self.network)?;
        let held: Vec<IpAddr> = store
            .reservations()?
            .into_iter()
            .filter(|r| r.container_id == owner.container_id && r.ifname == owner.ifname)
            .map(|r| r.ip)
            .collect();
        for ip in ips {
            if !held.contains(ip) {
                return Err(CniError::new(
                    code::CHECK_MISMATCH,
                    format!(
                        "ipam: {ip} is not reserved for {}/{}",
                        owner.container_id, owner.ifname
                    ),
                ));
            }
        }
        Ok(())
    }

    fn gc(&self, valid: &[crate::config::GcAttachment]) -> Result<Vec<super::Released>> {
        let store = Store::open(&self.cfg.data_dir, self.network)?;
        let mut out = Vec::new();
        for r in store.reservations()? {
            let keep = valid
                .iter()
                .any(|v| v.container_id == r.container_id && v.ifname == r.ifname);
            if !keep && store.release_ip(r.ip, &r.container_id, &r.ifname)? {
                out.push(super::Released {
                    ip: r.ip,
                    container_id: r.container_id,
                    ifname: r.ifname,
                });
            }
        }
        Ok(out)
    }

    fn status(&self) -> Result<()> {
        let store = Store::open(&self.cfg.data_dir, self.network)?;
        for (i, free) in store.free_counts(self.cfg)?.into_iter().enumerate() {
            if free == 0 {
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!("no free address left in range set {i}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: Value) -> Result<Config> {
        Config::parse(&v)
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cnib-ipam-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_match_host_local() {
        let c = cfg(json!({"type": "cni-bridge-ipam", "subnet": "10.0.0.0/24"})).unwrap();
        let r = &c.range_sets[0][0];
        assert_eq!(r.start, ip("10.0.0.1"));
        assert_eq!(r.end, ip("10.0.0.254"));
        assert_eq!(r.gateway, ip("10.0.0.1"));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let c6 = cfg(json!({"ranges": [[{"subnet": "fd00::/120"}]]})).unwrap();
        assert_eq!(c6.range_sets[0][0].end, ip("fd00::fe"));
    }

    #[test]
    fn invalid_ranges_are_code_7() {
        for bad in [
            json!({}),
            json!({"subnet": "10.0.0.0/31"}),
            json!({"subnet": "10.0.0.5/24"}),
            json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}),
            json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.10"}),
            json!({"subnet": "nonsense"}),
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}),
            json!({"subnet": "10.0.0.0/24", "dataDir": "rel"}),
        ] {
            assert_eq!(cfg(bad.clone()).unwrap_err().code, 7, "{bad}");
        }
    }

    #[test]
    fn allocation_is_round_robin_and_skips_gateway() {
        let dir = tmp();
        let c = cfg(json!({"subnet": "10.0.0.0/29", "dataDir": dir})).unwrap();
        let store = Store::open(&c.data_dir, "net").unwrap();
        let a = store
            .allocate(&c, "c1", "eth0", &[], &mut Rewind::default())
            .unwrap();
        assert_eq!(a[0].address.to_string(), "10.0.0.2/29");
        assert_eq!(a[0].gateway, Some(ip("10.0.0.1")));
        let content = std::fs::read(dir.join("net/10.0.0.2")).unwrap();
        assert_eq!(content, b"c1\r\neth0");
        assert_eq!(
            std::fs::read_to_string(dir.join("net/last_reserved_ip.0")).unwrap(),
            "10.0.0.2"
        );
        let b = store
            .allocate(&c, "c2", "eth0", &[], &mut Rewind::default())
            .unwrap();
        assert_eq!(b[0].address.ip(), ip("10.0.0.3"));
        assert!(store.release_ip(ip("10.0.0.2"), "c1", "eth0").unwrap());
        // Round robin: continues after the last reserved, not at the freed one.
        let c3 = store
            .allocate(&c, "c3", "eth0", &[], &mut Rewind::default())
            .unwrap();
        assert_eq!(c3[0].address.ip(), ip("10.0.0.4"));
        // /29: .2-.6 usable; fill, then wrap to the freed .2, then exhaust.
        store
            .allocate(&c, "c4", "eth0", &[], &mut Rewind::default())
            .unwrap();
        store
            .allocate(&c, "c5", "eth0", &[], &mut Rewind::default())
            .unwrap();
        let wrapped = store
            .allocate(&c, "c6", "eth0", &[], &mut Rewind::default())
            .unwrap();
        assert_eq!(wrapped[0].address.ip(), ip("10.0.0.2"));
        let err = store
            .allocate(&c, "c7", "eth0", &[], &mut Rewind::default())
            .unwrap_err();
        assert_eq!(err.code, code::NO_ADDRESS);
        assert_eq!(store.free_counts(&c).unwrap(), vec![0]);
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// What an allocator killed half way leaves: an empty reservation (host-local creates, then
    /// writes) is taken over; a reservation of ours still being written is swept at the next
    /// lock and never counts as one.
    #[test]
    fn leftovers_of_a_killed_allocator_are_reclaimed() {
        let dir = tmp();
        let c = cfg(json!({"subnet": "10.0.0.0/29", "dataDir": dir})).unwrap();
        std::fs::create_dir_all(dir.join("net")).unwrap();
        std::fs::write(dir.join("net/10.0.0.2"), "").unwrap();
        std::fs::write(dir.join("net/.reserving-999999"), "dead\r\neth0").unwrap();
        let store = Store::open(&c.data_dir, "net").unwrap();
        assert!(!dir.join("net/.reserving-999999").exists());
        let a = store
            .allocate(&c, "c1", "eth0", &[], &mut Rewind::default())
            .unwrap();
        assert_eq!(a[0].address.ip(), ip("10.0.0.2"));
        assert_eq!(
            std::fs::read(dir.join("net/10.0.0.2")).unwrap(),
            b"c1\r\neth0"
        );
        let names: Vec<String> = std::fs::read_dir(dir.join("net"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert_eq!(names, Vec::<String>::new(), "no temporary file stays");
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn requested_addresses() {
        let dir = tmp();
        let c = cfg(json!({"subnet": "10.0.0.0/24", "dataDir": dir})).unwrap();
        let store = Store::open(&c.data_dir, "net").unwrap();
        let a = store
            .allocate(&c, "c1", "eth0", &[ip("10.0.0.11")], &mut Rewind::default())
            .unwrap();
        assert_eq!(a[0].address.to_string(), "10.0.0.11/24");
        for (req, why) in [
            ("10.0.0.11", "taken"),
            ("10.0.0.1", "gateway"),
            ("10.9.0.1", "outside"),
        ] {
            let e = store
                .allocate(&c, "c2", "eth0", &[ip(req)], &mut Rewind::default())
                .unwrap_err();
            assert_eq!(e.code, code::NO_ADDRESS, "{why}: {e}");
        }
        // Nothing left behind by the failures.
        let owners: Vec<_> = store
            .reservations()
            .unwrap()
            .into_iter()
            .map(|r| r.container_id)
            .collect();
        assert_eq!(owners, vec!["c1"]);
        assert_eq!(
            store.release_by_id("c1", "eth0").unwrap(),
            vec![ip("10.0.0.11")]
        );
        assert!(store.reservations().unwrap().is_empty());
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dual_stack_allocates_one_per_set_and_rolls_back() {
        let dir = tmp();
        let c = cfg(json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/126"}]], "dataDir": dir})).unwrap();
        let store = Store::open(&c.data_dir, "net").unwrap();
        let a = store
            .allocate(&c, "c1", "eth0", &[], &mut Rewind::default())
            .unwrap();
        assert_eq!(a[1].address.to_string(), "fd00::2/126");
        // The v6 set (.1 gateway, .2 taken) is now full: the v4 address must be rolled back,
        // and the round-robin position with it.
        let last = |i: usize| {
            std::fs::read_to_string(dir.join(format!("net/last_reserved_ip.{i}"))).unwrap()
        };
        let before = (last(0), last(1));
        let mut rewind = Rewind::default();
        let e = store
            .allocate(&c, "c2", "eth0", &[], &mut rewind)
            .unwrap_err();
        assert_eq!(e.code, code::NO_ADDRESS);
        assert_eq!(store.reservations().unwrap().len(), 2);
        assert_eq!((last(0), last(1)), before);
        assert!(rewind.0.is_empty(), "nothing left for the caller to rewind");
        // A caller failing later rewinds its own advance, not one made since by another.
        let mut mine = Rewind::default();
        store.release_ip(ip("fd00::2"), "c1", "eth0").unwrap();
        store.allocate(&c, "c3", "eth0", &[], &mut mine).unwrap();
        assert_eq!(last(0), "10.0.0.3");
        store.release_ip(ip("fd00::2"), "c3", "eth0").unwrap();
        store
            .allocate(&c, "c4", "eth0", &[], &mut Rewind::default())
            .unwrap();
        store.rewind(&mine).unwrap();
        assert_eq!(last(0), "10.0.0.4", "a later allocation's position stays");
        store.release_ip(ip("fd00::2"), "c4", "eth0").unwrap();
        let mut theirs = Rewind::default();
        store.allocate(&c, "c5", "eth0", &[], &mut theirs).unwrap();
        store.rewind(&theirs).unwrap();
        assert_eq!(last(0), "10.0.0.4", "its own advance is undone");
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn resolv_conf_parsing() {
        let d = parse_resolv_conf(
            "nameserver 10.96.0.10\nsearch a.svc b.svc\noptions ndots:5\ndomain x\n",
        );
        assert_eq!(d.nameservers, vec!["10.96.0.10"]);
        assert_eq!(d.search, vec!["a.svc", "b.svc"]);
        assert_eq!(d.options, vec!["ndots:5"]);
        assert_eq!(d.domain, "x");
    }
}
