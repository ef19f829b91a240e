//! Taking a node over from kube-proxy's IPVS mode: `svc-proxy remove-kube-proxy-leftovers`.
//!
//! svc-proxy started with `--dummy kube-ipvs0` adopts kube-proxy's VIPs and virtual services
//! (they are its own by the ownership rule: a virtual service is ours iff its address is on our
//! dummy device), so open connections survive the switch. What kube-proxy made and svc-proxy does
//! not use stays behind: its iptables chains and the jumps to them (both families) and its
//! ipsets. This module removes exactly those, by kube-proxy's own names (kubernetes
//! `pkg/proxy/ipvs/proxier.go` and `ipset.go`, v1.37), and nothing else: not the IPVS services,
//! not `kube-ipvs0`, not kubelet's `KUBE-KUBELET-CANARY` or any other chain that merely starts
//! with `KUBE-`. It refuses while kube-proxy still runs in this network namespace (it would put
//! everything back at its next sync), and it is idempotent.
//!
//! The chains go through `iptables-save` and one `iptables-restore --noflush` per table
//! (`nodenet::iptables`; atomic: a table is cleaned entirely or not at all); the sets are
//! destroyed over netlink (`nodenet::ipset`).

use nodenet::ipset::Ipset;
use nodenet::iptables::{Iptables, IptablesError};
use nodenet::Family;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// kube-proxy's IPVS-mode chains, per table (`iptablesCleanupChains` in proxier.go).
pub const KUBE_PROXY_CHAINS: &[(&str, &[&str])] = &[
    (
        "nat",
        &[
            "KUBE-SERVICES",
            "KUBE-POSTROUTING",
            "KUBE-NODE-PORT",
            "KUBE-LOAD-BALANCER",
            "KUBE-MARK-MASQ",
        ],
    ),
    (
        "filter",
        &[
            "KUBE-FORWARD",
            "KUBE-NODE-PORT",
            "KUBE-PROXY-FIREWALL",
            "KUBE-SOURCE-RANGES-FIREWALL",
            "KUBE-IPVS-FILTER",
            "KUBE-IPVS-OUT-FILTER",
        ],
    ),
];

/// kube-proxy's IPVS-mode ipsets (ipset.go); each also exists as an IPv6 copy (see
/// [`kube_proxy_sets`]).
pub const KUBE_PROXY_SETS: &[&str] = &[
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
];

/// The ports kube-proxy serves by default: healthz (`--healthz-bind-address`) and metrics.
pub const KUBE_PROXY_PORTS: &[(u16, &str)] = &[(10256, "healthz"), (10249, "metrics")];

/// The chains every table starts with; kube-proxy's jumps to its own chains live in these.
const BUILTIN_CHAINS: &[&str] = &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Why the leftovers were not (all) removed.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error(
        "kube-proxy is still running in this network namespace (pid {pid}): stop it first (it \
         would recreate its chains and sets at its next sync)"
    )]
    KubeProxyRunning { pid: i32 },
    #[error(
        "TCP port {port} (kube-proxy's {what} port) is served in this network namespace by a \
         process this command cannot see, most likely kube-proxy in another PID namespace: stop \
         kube-proxy first, or run this command where the process is visible (on the host, or in \
         a pod with hostPID)"
    )]
    UnseenListener { port: u16, what: &'static str },
    #[error(
        "{program}: {table} chain {chain} is referenced from chain {from}, which is not \
         kube-proxy's (`{rule}`): leaving the {table} table's leftovers in place"
    )]
    ForeignReference {
        program: &'static str,
        table: String,
        chain: String,
        from: String,
        rule: String,
    },
    #[error("reading {path}: {source}")]
    Proc {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Iptables(#[from] IptablesError),
    #[error("{program}-save -t {table}: cannot parse its output: {detail}")]
    Parse {
        program: &'static str,
        table: &'static str,
        detail: String,
    },
    #[error("ipset {set} is still in use (a rule that is not kube-proxy's matches it?): {source}")]
    SetInUse {
        set: String,
        source: nodenet::ipset::Error,
    },
    #[error(transparent)]
    Ipset(#[from] nodenet::ipset::Error),
}

type Result<T> = std::result::Result<T, TakeoverError>;

/// Every set name kube-proxy may have created: each of [`KUBE_PROXY_SETS`], and its IPv6 copy,
/// which kube-proxy names `KUBE-6-...` cut to ipset's 31 characters (`NewIPSet`).
pub fn kube_proxy_sets() -> Vec<String> {
    let mut out: Vec<String> = KUBE_PROXY_SETS.iter().map(|s| s.to_string()).collect();
    for s in KUBE_PROXY_SETS {
        let v6 = s.replacen("KUBE-", "KUBE-6-", 1);
        out.push(v6.chars().take(31).collect());
    }
    out
}

/// One table of an `iptables-save` listing: its chains and its rules (`-A CHAIN ...` lines as
/// saved, which `iptables-restore` reads back).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SavedTable {
    pub chains: BTreeSet<String>,
    pub rules: Vec<SavedRule>,
}

/// One rule of a saved table.
#[derive(Debug, PartialEq, Eq)]
pub struct SavedRule {
    pub chain: String,
    /// The rule's words after `-A CHAIN`, as saved (quoted strings kept quoted).
    pub spec: String,
    /// The chain it jumps (`-j`) or goes (`-g`) to, if any.
    pub target: Option<String>,
}

/// Parses `iptables-save` output into its tables.
pub fn parse_save(text: &str) -> std::result::Result<BTreeMap<String, SavedTable>, String> {
    let mut tables = BTreeMap::new();
    let mut current: Option<(String, SavedTable)> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            if let Some((t, table)) = current.replace((name.to_string(), SavedTable::default())) {
                tables.insert(t, table);
            }
            continue;
        }
        let Some((_, table)) = current.as_mut() else {
            return Err(format!("line {}: {line:?} outside a table", n + 1));
        };
        if line == "COMMIT" {
            let (t, table) = current.take().expect("inside a table");
            tables.insert(t, table);
        } else if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or_default();
            table.chains.insert(chain.to_string());
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            let words = split_words(spec).map_err(|e| format!("line {}: {e}", n + 1))?;
            let target = words
                .windows(2)
                .find(|w| matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto"))
                .map(|w| w[1].clone());
            table.rules.push(SavedRule {
                chain: chain.to_string(),
                spec: spec.to_string(),
                target,
            });
        } else {
            return Err(format!("line {}: unexpected {line:?}", n + 1));
        }
    }
    if let Some((t, _)) = current {
        return Err(format!("table {t} has no COMMIT"));
    }
    Ok(tables)
}

/// Splits a saved rule into words the way iptables-restore does: blanks separate, double
/// quotes group (with `\"` inside).
fn split_words(spec: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(format!("unterminated quote in {spec:?}"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// What to remove from one table: kube-proxy's jumps from the built-in chains, then its chains.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TablePlan {
    /// `(chain, spec)` of each jump to delete.
    pub jumps: Vec<(String, String)>,
    /// kube-proxy's chains present in the table, flushed and then deleted.
    pub chains: Vec<String>,
}

impl TablePlan {
    pub fn is_empty(&self) -> bool {
        self.jumps.is_empty() && self.chains.is_empty()
    }

    /// The `iptables-restore --noflush` input that carries the plan out, for `table`.
    pub fn restore_script(&self, table: &str) -> String {
        let mut s = format!("*{table}\n");
        for (chain, spec) in &self.jumps {
            s.push_str(&format!("-D {chain} {spec}\n"));
        }
        for c in &self.chains {
            s.push_str(&format!("-F {c}\n"));
        }
        for c in &self.chains {
            s.push_str(&format!("-X {c}\n"));
        }
        s.push_str("COMMIT\n");
        s
    }
}

/// Selects kube-proxy's leftovers in one saved table: its chains by their exact names, and the
/// rules of the built-in chains that jump to them. A kube-proxy chain referenced from a chain
/// that is neither built in nor kube-proxy's is somebody else's dependency: the table is left
/// alone (`Err` names the rule).
pub fn plan_table(
    name: &str,
    table: &SavedTable,
) -> std::result::Result<TablePlan, (String, String, String)> {
    let ours: BTreeSet<&str> = KUBE_PROXY_CHAINS
        .iter()
        .filter(|(t, _)| *t == name)
        .flat_map(|(_, chains)| chains.iter().copied())
        .collect();
    let mut plan = TablePlan::default();
    for rule in &table.rules {
        let Some(target) = rule.target.as_deref().filter(|t| ours.contains(t)) else {
            continue;
        };
        if BUILTIN_CHAINS.contains(&rule.chain.as_str()) {
            plan.jumps.push((rule.chain.clone(), rule.spec.clone()));
        } else if !ours.contains(rule.chain.as_str()) {
            return Err((
                target.to_string(),
                rule.chain.clone(),
                format!("-A {} {}", rule.chain, rule.spec),
            ));
        }
    }
    // In kube-proxy's own order (proxier.go), so a dry run reads like its cleanup.
    for (_, chains) in KUBE_PROXY_CHAINS.iter().filter(|(t, _)| *t == name) {
        for c in chains.iter().filter(|c| table.chains.contains(**c)) {
            plan.chains.push(c.to_string());
        }
    }
    Ok(plan)
}

/// What was (or, in a dry run, would be) removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Lines like `iptables -t nat -D PREROUTING ...`, `ip6tables -t filter -X KUBE-FORWARD`.
    pub rules: Vec<String>,
    pub sets: Vec<String>,
}

/// Refuses while kube-proxy runs here; then removes its chains, jumps and sets (or, with
/// `dry_run`, only lists them). Runs in the calling thread's network namespace.
pub fn remove_leftovers(dry_run: bool) -> Result<Removed> {
    refuse_if_kube_proxy_runs()?;
    let mut removed = Removed::default();
    let mut first_error = None;
    for family in [Family::V4, Family::V6] {
        let ipt = Iptables::new(family);
        let tool = ipt.command();
        for (name, _) in KUBE_PROXY_CHAINS {
            let text = ipt.save(name)?;
            let tables = parse_save(&text).map_err(|detail| TakeoverError::Parse {
                program: tool,
                table: name,
                detail,
            })?;
            let Some(table) = tables.get(*name) else {
                continue;
            };
            let plan = match plan_table(name, table) {
                Ok(p) if p.is_empty() => continue,
                Ok(p) => p,
                Err((chain, from, rule)) => {
                    let e = TakeoverError::ForeignReference {
                        program: tool,
                        table: name.to_string(),
                        chain,
                        from,
                        rule,
                    };
                    log::error!("{e}");
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            if !dry_run {
                if let Err(e) = ipt.restore(&plan.restore_script(name)) {
                    let e = TakeoverError::from(e);
                    log::error!("{e}");
                    first_error.get_or_insert(e);
                    continue;
                }
            }
            for (chain, spec) in &plan.jumps {
                removed
                    .rules
                    .push(format!("{tool} -t {name} -D {chain} {spec}"));
            }
            for c in &plan.chains {
                removed.rules.push(format!("{tool} -t {name} -X {c}"));
            }
        }
    }
    // After the rules: a set that a rule still matches cannot be destroyed.
    let ipset = Ipset::open()?;
    for set in kube_proxy_sets() {
        let present = if dry_run {
            ipset.info(&set)?.is_some()
        } else {
            match ipset.destroy(&set) {
                Ok(present) => present,
                Err(e) if e.is_busy() => {
                    let e = TakeoverError::SetInUse { set, source: e };
                    log::error!("{e}");
                    first_error.get_or_insert(e);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        };
        if present {
            removed.sets.push(set);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// kube-proxy counts as running when a process of this network namespace is kube-proxy, or when
/// kube-proxy's healthz or metrics port is served by a process that cannot be seen from here
/// (kube-proxy in another PID namespace: a DaemonSet pod without hostPID sees only its own
/// processes, but the network namespace's sockets all the same).
fn refuse_if_kube_proxy_runs() -> Result<()> {
    let ours = netns_inode(Path::new("/proc/self/ns/net"))?;
    let mut sockets = BTreeSet::new();
    let proc_dir = std::fs::read_dir("/proc").map_err(|source| TakeoverError::Proc {
        path: "/proc".into(),
        source,
    })?;
    for entry in proc_dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        // A process that exits meanwhile, or a kernel thread, has nothing to say.
        let Ok(inode) = netns_inode(&dir.join("ns/net")) else {
            continue;
        };
        if inode != ours {
            continue;
        }
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        if is_kube_proxy(&comm, &cmdline) {
            return Err(TakeoverError::KubeProxyRunning { pid });
        }
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                if let Some(inode) = std::fs::read_link(fd.path())
                    .ok()
                    .and_then(|l| socket_inode(&l.to_string_lossy()))
                {
                    sockets.insert(inode);
                }
            }
        }
    }
    for path in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            // No IPv6 in this kernel.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(TakeoverError::Proc {
                    path: path.into(),
                    source,
                })
            }
        };
        for (port, inode) in tcp_listeners(&text) {
            let Some((_, what)) = KUBE_PROXY_PORTS.iter().find(|(p, _)| *p == port) else {
                continue;
            };
            if !sockets.contains(&inode) {
                return Err(TakeoverError::UnseenListener { port, what });
            }
        }
    }
    Ok(())
}

fn netns_inode(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| TakeoverError::Proc {
            path: path.display().to_string(),
            source,
        })
}

/// Whether a process is kube-proxy, by its command name or its program's file name (hyperkube
/// style `hyperkube kube-proxy` included).
pub fn is_kube_proxy(comm: &str, cmdline: &[u8]) -> bool {
    if comm.trim_end() == "kube-proxy" {
        return true;
    }
    let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
    let program = args.next().unwrap_or_default();
    let base = |s: &str| s.rsplit('/').next().unwrap_or_default().to_string();
    match base(&program).as_str() {
        "kube-proxy" => true,
        "hyperkube" => args.next().is_some_and(|a| a == "kube-proxy"),
        _ => false,
    }
}

/// The inode of a `socket:[N]` fd link.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `(local port, socket inode)` of every listening socket in a `/proc/net/tcp[6]` table.
pub fn tcp_listeners(text: &str) -> Vec<(u16, u64)> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != LISTEN {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            let inode = f[9].parse().ok()?;
            Some((port, inode))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kube-proxy v1.37.2 --proxy-mode=ipvs left in a node namespace (iptables-save in the
    /// test VM), with kubelet's canary chain and a rule of the operator's own beside it.
    const KUBE_PROXY_NAT: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT
-A INPUT -j KUBE-FIREWALL
-A INPUT -p tcp --dport 22 -m comment --comment "ssh -j KUBE-FORWARD, a \"quoted\" word" -j ACCEPT
-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable
-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
-A KUBE-SOURCE-RANGES-FIREWALL -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:SVCPROXY-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -j SVCPROXY-POSTROUTING
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A SVCPROXY-POSTROUTING -m set --match-set SVCPROXY-LOOP-BACK dst,dst,src -j MASQUERADE
COMMIT
"#;

    #[test]
    fn selects_kube_proxys_chains_and_jumps_and_nothing_else() {
        let tables = parse_save(KUBE_PROXY_NAT).unwrap();
        let nat = plan_table("nat", &tables["nat"]).unwrap();
        assert_eq!(
            nat.jumps,
            vec![
                (
                    "PREROUTING".into(),
                    r#"-m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.into()
                ),
                (
                    "OUTPUT".into(),
                    r#"-m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.into()
                ),
                (
                    "POSTROUTING".into(),
                    r#"-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#
                        .into()
                ),
            ]
        );
        // kubelet's canary and svc-proxy's chain stay.
        assert_eq!(
            nat.chains,
            [
                "KUBE-SERVICES",
                "KUBE-POSTROUTING",
                "KUBE-NODE-PORT",
                "KUBE-LOAD-BALANCER",
                "KUBE-MARK-MASQ"
            ]
        );
        let filter = plan_table("filter", &tables["filter"]).unwrap();
        assert_eq!(
            filter
                .jumps
                .iter()
                .map(|(c, s)| format!("{c} {s}"))
                .collect::<Vec<_>>(),
            [
                r#"INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER"#,
                r#"INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL"#,
                r#"INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT"#,
                r#"FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL"#,
                r#"FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD"#,
                r#"OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER"#,
            ]
        );
        // KUBE-FIREWALL is kubelet's (older kubelets), not kube-proxy's; the ssh rule only
        // mentions KUBE-FORWARD inside its comment.
        assert_eq!(
            filter.chains,
            [
                "KUBE-FORWARD",
                "KUBE-NODE-PORT",
                "KUBE-PROXY-FIREWALL",
                "KUBE-SOURCE-RANGES-FIREWALL",
                "KUBE-IPVS-FILTER",
                "KUBE-IPVS-OUT-FILTER"
            ]
        );
        assert!(!tables.contains_key("raw"));
        assert!(plan_table("mangle", &tables["mangle"]).unwrap().is_empty());
    }

    #[test]
    fn the_restore_script_deletes_jumps_then_flushes_then_deletes_chains() {
        let tables = parse_save(KUBE_PROXY_NAT).unwrap();
        let script = plan_table("nat", &tables["nat"])
            .unwrap()
            .restore_script("nat");
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(
            lines[1],
            r#"-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#
        );
        assert_eq!(lines[4], "-F KUBE-SERVICES");
        assert_eq!(lines[9], "-X KUBE-SERVICES");
        assert_eq!(lines.last(), Some(&"COMMIT"));
        assert_eq!(lines.len(), 1 + 3 + 5 + 5 + 1);
    }

    #[test]
    fn a_chain_someone_else_jumps_to_keeps_its_table() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:MY-CHAIN - [0:0]\n\
                    -A PREROUTING -j KUBE-SERVICES\n-A MY-CHAIN -p tcp -j KUBE-SERVICES\nCOMMIT\n";
        let tables = parse_save(save).unwrap();
        let (chain, from, rule) = plan_table("nat", &tables["nat"]).unwrap_err();
        assert_eq!(
            (chain.as_str(), from.as_str(), rule.as_str()),
            (
                "KUBE-SERVICES",
                "MY-CHAIN",
                "-A MY-CHAIN -p tcp -j KUBE-SERVICES"
            )
        );
    }

    #[test]
    fn nothing_left_is_an_empty_plan() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n\
                    *filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";
        let tables = parse_save(save).unwrap();
        assert!(plan_table("nat", &tables["nat"]).unwrap().is_empty());
        assert!(plan_table("filter", &tables["filter"]).unwrap().is_empty());
        assert_eq!(parse_save("").unwrap(), BTreeMap::new());
    }

    #[test]
    fn malformed_saves_are_refused() {
        assert!(parse_save("-A INPUT -j ACCEPT\n").is_err());
        assert!(parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n").is_err());
        assert!(parse_save("*nat\n-A INPUT -m comment --comment \"open\nCOMMIT\n").is_err());
    }

    #[test]
    fn quoted_words_are_one_word() {
        assert_eq!(
            split_words(r#"-m comment --comment "a \"b\" -j X" -j  Y"#).unwrap(),
            ["-m", "comment", "--comment", r#"a "b" -j X"#, "-j", "Y"]
        );
        assert_eq!(split_words(r#"--comment """#).unwrap(), ["--comment", ""]);
    }

    #[test]
    fn kube_proxy_set_names_include_the_truncated_ipv6_ones() {
        let sets = kube_proxy_sets();
        assert_eq!(sets.len(), 2 * KUBE_PROXY_SETS.len());
        assert!(sets.iter().all(|s| s.len() <= 31 && s.starts_with("KUBE-")));
        // As kube-proxy v1.37.2 created them in the test VM (ipset save).
        for name in [
            "KUBE-LOOP-BACK",
            "KUBE-6-LOOP-BACK",
            "KUBE-6-LOAD-BALANCER-SOURCE-CID",
            "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS",
            "KUBE-6-IPVS-IPS",
        ] {
            assert!(sets.iter().any(|s| s == name), "{name} missing");
        }
        assert!(!sets.iter().any(|s| s.starts_with("SVCPROXY")));
    }

    #[test]
    fn kube_proxy_is_told_by_name_or_program() {
        assert!(is_kube_proxy("kube-proxy\n", b""));
        assert!(is_kube_proxy(
            "exe\n",
            b"/usr/local/bin/kube-proxy\0--config=/var/lib/kube-proxy/config.conf\0"
        ));
        assert!(is_kube_proxy(
            "hyperkube\n",
            b"/hyperkube\0kube-proxy\0--v=2\0"
        ));
        assert!(!is_kube_proxy("hyperkube\n", b"/hyperkube\0kubelet\0"));
        assert!(!is_kube_proxy(
            "svc-proxy\n",
            b"/usr/bin/svc-proxy\0--dummy\0kube-ipvs0\0"
        ));
        assert!(!is_kube_proxy("bash\n", b"bash\0-c\0echo kube-proxy\0"));
    }

    #[test]
    fn listening_sockets_come_from_proc_net_tcp() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:2809 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 40113 1 0000000000000000 100 0 0 10 0\n\
   1: 00000000:2810 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 40112 1 0000000000000000 100 0 0 10 0\n\
   2: 0100007F:2810 0100007F:B5E2 01 00000000:00000000 00:00000000 00000000     0        0 40999 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(tcp_listeners(tcp), [(10249, 40113), (10256, 40112)]);
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000000000000:2810 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51234 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(tcp_listeners(tcp6), [(10256, 51234)]);
        assert_eq!(socket_inode("socket:[40113]"), Some(40113));
        assert_eq!(socket_inode("pipe:[40113]"), None);
    }
}
