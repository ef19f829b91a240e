//! The `CNI_*` environment, read once and validated before anything reaches a path or the kernel.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{code, CniError, Result};

/// The verbs of CNI 1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("unknown CNI_COMMAND: {other}"),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Whether the verb names one attachment (container ID + interface).
    fn per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The validated environment of one invocation.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    /// Empty for GC, STATUS and VERSION.
    pub container_id: String,
    /// `None` when `CNI_NETNS` is unset or empty (allowed for DEL).
    pub netns: Option<PathBuf>,
    /// Empty for GC, STATUS and VERSION.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
    /// Raw `CNI_ARGS`, passed on unchanged to a delegated IPAM plugin.
    pub args_raw: String,
    /// `CNI_PATH` split on `:`.
    pub path: Vec<PathBuf>,
}

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const MAX_IFNAME: usize = 15;

/// Longest container ID or network name: container runtimes use 64 characters; the bound
/// keeps every file named from one (records, their temporary files) within `NAME_MAX`.
pub const MAX_IDENTIFIER: usize = 128;

/// What libcni accepts for container IDs and network names, `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, at
/// most [`MAX_IDENTIFIER`] characters; the error says which rule broke.
pub fn check_identifier(s: &str) -> std::result::Result<(), String> {
    let mut chars = s.chars();
    let well_formed = match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {
            chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        }
        _ => false,
    };
    if !well_formed {
        return Err(format!(
            "{s:?} has characters other than letters, digits, '_', '.', '-' (or does not start with a letter or digit)"
        ));
    }
    if s.len() > MAX_IDENTIFIER {
        return Err(format!(
            "of {} characters is longer than {MAX_IDENTIFIER}",
            s.len()
        ));
    }
    Ok(())
}

/// Checks an interface name: 1-15 printable ASCII characters (what every tool handles; the
/// kernel itself also takes bytes it then refuses or truncates, such as NUL), not `.` or `..`,
/// without `/` or `:`. The error says which rule broke.
pub fn check_ifname(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "interface name {name:?} contains {c:?}: only printable ASCII without spaces is allowed"
        ));
    }
    if name.len() > MAX_IFNAME {
        return Err(format!(
            "interface name {name:?} is longer than {MAX_IFNAME} characters"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if name.chars().any(|c| c == '/' || c == ':') {
        return Err(format!("interface name {name:?} contains '/' or ':'"));
    }
    Ok(())
}

/// Parses `CNI_ARGS` (`K=V;K=V`).
pub fn parse_args(raw: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            ));
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

impl Env {
    /// Reads and validates the environment through `get` (the process environment in `main`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let missing = |name: &str| {
            CniError::new(
                code::INVALID_ENV,
                format!("required environment variable {name} is missing"),
            )
        };
        let command = Command::parse(&get("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND"))?)?;
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: BTreeMap::new(),
            args_raw: String::new(),
            path: Vec::new(),
        };
        if command == Command::Version {
            return Ok(env);
        }
        // Optional per the spec: only a delegated IPAM plugin needs it (checked where it is used).
        env.path = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        env.args_raw = get("CNI_ARGS").unwrap_or_default();
        env.args = parse_args(&env.args_raw)?;
        if !command.per_attachment() {
            return Ok(env);
        }
        let id = get("CNI_CONTAINERID")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing("CNI_CONTAINERID"))?;
        check_identifier(&id)
            .map_err(|m| CniError::new(code::INVALID_ENV, format!("CNI_CONTAINERID {m}")))?;
        env.container_id = id;
        let ifname = get("CNI_IFNAME")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing("CNI_IFNAME"))?;
        check_ifname(&ifname)
            .map_err(|m| CniError::new(code::INVALID_ENV, format!("CNI_IFNAME: {m}")))?;
        env.ifname = ifname;
        env.netns = get("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        if env.netns.is_none() && command != Command::Del {
            return Err(missing("CNI_NETNS"));
        }
        if let Some(ns) = &env.netns {
            if !ns.is_absolute() {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_NETNS {} is not an absolute path", ns.display()),
                ));
            }
        }
        Ok(env)
    }

    /// A value from `CNI_ARGS`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = ADD
            .iter()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        v.extend(over.iter().filter(|(_, val)| *val != "<unset>"));
        v
    }

    #[test]
    fn full_add_environment_parses() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path.len(), 2);
        assert_eq!(e.arg("K8S_POD_NAME"), Some("web"));
    }

    #[test]
    fn bad_environment_is_code_4() {
        let cases: &[&[(&str, &str)]] = &[
            &[("CNI_COMMAND", "<unset>")],
            &[("CNI_COMMAND", "FROB")],
            &[("CNI_CONTAINERID", "<unset>")],
            &[("CNI_CONTAINERID", "../etc")],
            &[("CNI_CONTAINERID", "a/b")],
            &[("CNI_IFNAME", "<unset>")],
            &[("CNI_IFNAME", "a-very-long-ifname0")],
            &[("CNI_IFNAME", "..")],
            &[("CNI_IFNAME", "et/h0")],
            &[("CNI_NETNS", "<unset>")],
            &[("CNI_NETNS", "relative/ns")],
            &[("CNI_ARGS", "novalue")],
        ];
        for case in cases {
            let err = env(&with(case)).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{case:?}: {err}");
        }
    }

    #[test]
    fn cni_path_is_optional() {
        for cmd in ["ADD", "DEL", "CHECK"] {
            let e = env(&with(&[("CNI_COMMAND", cmd), ("CNI_PATH", "<unset>")])).unwrap();
            assert!(e.path.is_empty());
        }
    }

    #[test]
    fn del_allows_empty_netns() {
        let e = env(&with(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")])).unwrap();
        assert!(e.netns.is_none());
    }

    #[test]
    fn gc_and_status_need_no_attachment() {
        for cmd in ["GC", "STATUS"] {
            let e = env(&[("CNI_COMMAND", cmd), ("CNI_PATH", "/usr/lib/cni")]).unwrap();
            assert!(e.container_id.is_empty());
        }
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn identifiers_follow_libcni() {
        assert!(check_identifier("default-web.1_x").is_ok());
        assert!(check_identifier(&"a".repeat(MAX_IDENTIFIER)).is_ok());
        for bad in ["", ".", "..", "-a", "a b", "a/b", "ä", "a%b", "a\0b"] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }

    /// Caught before anything happens, with the code for a bad environment (not 5 after IPAM
    /// ran, not 100 from the kernel).
    #[test]
    fn over_long_ids_and_non_ascii_ifnames_are_code_4() {
        let cases: &[(&str, String)] = &[
            ("CNI_CONTAINERID", "c".repeat(300)),
            ("CNI_CONTAINERID", "c".repeat(MAX_IDENTIFIER + 1)),
            ("CNI_IFNAME", "eth\u{e0}".to_string()),
            ("CNI_IFNAME", "n\u{e4}t".to_string()),
            ("CNI_IFNAME", "eth\u{7f}".to_string()),
            ("CNI_IFNAME", "eth\t0".to_string()),
        ];
        for (key, value) in cases {
            let mut vars: Vec<(&str, &str)> =
                ADD.iter().filter(|(k, _)| k != key).copied().collect();
            vars.push((key, value));
            let err = env(&vars).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{key}={value:?}: {err}");
        }
    }
}
