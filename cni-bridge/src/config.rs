//! The network configuration on stdin: the reference `bridge` plugin's keys with their meaning,
//! plus `stateDir` and `logFile`. Decoding errors are code 6, invalid values code 7, known keys
//! set to values we do not implement code 2 (naming the key).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::env::{check_identifier, check_ifname};
use crate::error::{code, CniError, Result};
use crate::ipam::hostlocal;
use crate::result::Dns;
use crate::strict::object_only;
use crate::version::Version;

/// `ipam.type` that selects the built-in, host-local-compatible allocator.
pub const BUILTIN_IPAM: &str = "cni-bridge-ipam";
/// Largest config accepted on stdin: far above any real one, small enough to hold.
pub const MAX_STDIN: usize = 16 << 20;
/// The reference plugin's default bridge name.
pub const DEFAULT_BRIDGE: &str = "cni0";

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    bridge: Option<String>,
    is_gateway: Option<bool>,
    is_default_gateway: Option<bool>,
    force_address: Option<bool>,
    ip_masq: Option<bool>,
    ip_masq_backend: Option<String>,
    #[serde(rename = "nonMasqueradeCIDRs")]
    non_masquerade_cidrs: Option<Vec<String>>,
    mtu: Option<u32>,
    hairpin_mode: Option<bool>,
    promisc_mode: Option<bool>,
    vlan: Option<u32>,
    vlan_trunk: Option<Vec<Value>>,
    preserve_default_vlan: Option<bool>,
    macspoofchk: Option<bool>,
    enabledad: Option<bool>,
    disable_container_interface: Option<bool>,
    port_isolation: Option<bool>,
    dns: Option<Dns>,
    ipam: Option<Value>,
    args: Option<RawArgs>,
    runtime_config: Option<RawRuntimeConfig>,
    prev_result: Option<Value>,
    state_dir: Option<String>,
    log_file: Option<String>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<GcAttachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<GcAttachment>>,
}

#[derive(Deserialize, Default)]
#[serde(remote = "Self")]
struct RawArgs {
    #[serde(default)]
    cni: Option<RawCniArgs>,
}
object_only!(RawArgs);

#[derive(Deserialize, Default)]
#[serde(remote = "Self")]
struct RawCniArgs {
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    labels: Vec<Label>,
    #[serde(default)]
    mac: Option<String>,
}
object_only!(RawCniArgs);

#[derive(Deserialize)]
#[serde(remote = "Self")]
struct Label {
    key: String,
    value: String,
}
object_only!(Label);

#[derive(Deserialize, Default)]
#[serde(remote = "Self")]
struct RawRuntimeConfig {
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    mac: Option<String>,
}
object_only!(RawRuntimeConfig);

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(remote = "Self")]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}
object_only!(GcAttachment);

/// How addresses are obtained.
#[derive(Debug, Clone)]
pub enum IpamConf {
    /// `"ipam": {}`: layer 2 only, no addresses.
    None,
    /// `cni-bridge-ipam`: the built-in allocator.
    Builtin(hostlocal::Config),
    /// Any other `type`: that binary on `CNI_PATH`.
    Delegated { plugin: String },
}

impl IpamConf {
    /// The name recorded in attachment records.
    pub fn type_name(&self) -> &str {
        match self {
            IpamConf::None => "",
            IpamConf::Builtin(_) => BUILTIN_IPAM,
            IpamConf::Delegated { plugin } => plugin,
        }
    }
}

/// A validated network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    /// `nonMasqueradeCIDRs`: destinations exempt from masquerade besides the network's own
    /// subnets (the cluster's pod CIDRs), in config order, each once, without host bits.
    pub non_masquerade: Vec<IpNetwork>,
    /// 0: kernel default.
    pub mtu: u32,
    pub hairpin: bool,
    pub promisc: bool,
    pub enable_dad: bool,
    pub port_isolation: bool,
    pub dns: Dns,
    pub ipam: IpamConf,
    /// From `args.cni.ips` and `runtimeConfig.ips`.
    pub requested_ips: Vec<IpAddr>,
    /// From `args.cni.mac` / `runtimeConfig.mac` (the latter wins).
    pub mac: Option<[u8; 6]>,
    /// From `args.cni.labels`.
    pub labels: BTreeMap<String, String>,
    pub prev_result: Option<Value>,
    pub state_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    /// GC's keep-list (`cni.dev/valid-attachments`, else `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// Stdin as received, for delegation.
    pub raw: Value,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

fn unsupported(key: &str, value: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::UNSUPPORTED_FIELD,
        format!("config key {key:?} = {value} is not supported by cni-bridge"),
    )
}

/// Parses a requested address: `10.0.0.5` or `10.0.0.5/24` (the prefix is ignored, as
/// host-local does).
pub fn parse_requested_ip(s: &str) -> Result<IpAddr> {
    let ip = s.split('/').next().unwrap_or("");
    ip.parse()
        .map_err(|_| invalid(format!("requested IP {s:?} is not an IP address")))
}

/// Parses `nonMasqueradeCIDRs`: every entry a network in CIDR notation (either family) without
/// host bits, none listed twice. A typo here would masquerade (or exempt) traffic the operator
/// did not mean to, so nothing is guessed: a bare address, a prefix with host bits set or a
/// repeated entry is refused, naming the key and the entry.
pub fn parse_non_masquerade(list: &[String]) -> Result<Vec<IpNetwork>> {
    let key = "nonMasqueradeCIDRs";
    let mut out: Vec<IpNetwork> = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let entry = format!("config key \"{key}\" entry {i} ({s:?})");
        let Some((_, prefix)) = s.split_once('/') else {
            return Err(invalid(format!(
                "{entry} is not a network in CIDR notation (address/prefix length)"
            )));
        };
        // `ipnetwork` reads a missing or empty prefix as a host route; insist on digits.
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!(
                "{entry} has no valid prefix length after '/'"
            )));
        }
        let net: IpNetwork = s
            .parse()
            .map_err(|e| invalid(format!("{entry} is not a network: {e}")))?;
        if net.ip() != net.network() {
            return Err(invalid(format!(
                "{entry} has host bits set: the network of that prefix is {}/{}",
                net.network(),
                net.prefix()
            )));
        }
        if let Some(j) = out.iter().position(|n| *n == net) {
            return Err(invalid(format!("{entry} repeats entry {j} ({net})")));
        }
        out.push(net);
    }
    Ok(out)
}

/// Stdin, decoded once: the bytes are dropped as soon as they are parsed, and the one parsed
/// value is what the config is read from and what a delegated plugin is given.
pub enum Stdin {
    Json(Value),
    /// Not JSON, or too large: the message says which.
    Invalid(String),
}

impl Stdin {
    /// Reads stdin (at most [`MAX_STDIN`] bytes) and parses it.
    pub fn read(input: impl std::io::Read) -> std::result::Result<Stdin, CniError> {
        use std::io::Read;
        let mut bytes = Vec::new();
        input
            .take(MAX_STDIN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CniError::new(code::IO_FAILURE, format!("reading stdin: {e}")))?;
        if bytes.len() > MAX_STDIN {
            return Ok(Stdin::Invalid(format!(
                "config on stdin is larger than {} MiB",
                MAX_STDIN >> 20
            )));
        }
        Ok(Stdin::from_bytes(&bytes))
    }

    /// Parses stdin's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Stdin {
        match serde_json::from_slice(bytes) {
            Ok(v) => Stdin::Json(v),
            Err(e) => Stdin::Invalid(format!("config is not valid JSON: {e}")),
        }
    }

    /// The `cniVersion` of a config, for messages printed before the config is validated.
    pub fn version(&self) -> Option<&str> {
        match self {
            Stdin::Json(v) => v.get("cniVersion")?.as_str(),
            Stdin::Invalid(_) => None,
        }
    }
}

/// Refuses a path with a NUL in it (the kernel would cut it there).
fn check_path(key: &str, p: &str) -> Result<()> {
    if p.contains('\0') {
        return Err(invalid(format!(
            "config key {key:?} contains a NUL character"
        )));
    }
    Ok(())
}

impl NetConf {
    /// Decodes and validates stdin's bytes (for tests; the binary reads [`Stdin`]).
    #[cfg(test)]
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        NetConf::from_stdin(Stdin::from_bytes(stdin))
    }

    /// Decodes and validates the config.
    pub fn from_stdin(stdin: Stdin) -> Result<NetConf> {
        let raw_value = match stdin {
            Stdin::Json(v) => v,
            Stdin::Invalid(msg) => return Err(CniError::new(code::DECODE_FAILURE, msg)),
        };
        if !raw_value.is_object() {
            return Err(CniError::new(
                code::DECODE_FAILURE,
                "config is not a JSON object",
            ));
        }
        // The path names the offending key (e.g. `ipam.ranges[0][0].subnet`), not just the type.
        let raw: RawConf = serde_path_to_error::deserialize(&raw_value).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("config key \"{}\": {}", e.path(), e.inner()),
            )
        })?;
        let version = Version::parse(raw.cni_version.as_deref().unwrap_or(""))?;

        let name = raw.name.unwrap_or_default();
        if name.is_empty() {
            return Err(invalid("config key \"name\" (network name) is missing"));
        }
        check_identifier(&name).map_err(|m| invalid(format!("network name {m}")))?;
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        check_ifname(&bridge).map_err(|m| invalid(format!("config key \"bridge\": {m}")))?;

        if let Some(v) = raw.vlan.filter(|v| *v != 0) {
            return Err(unsupported("vlan", v));
        }
        if let Some(t) = raw.vlan_trunk.filter(|t| !t.is_empty()) {
            return Err(unsupported("vlanTrunk", Value::Array(t)));
        }
        // Only meaningful together with VLANs, which are refused above.
        let _ = raw.preserve_default_vlan;
        if raw.macspoofchk == Some(true) {
            return Err(unsupported("macspoofchk", true));
        }
        if raw.disable_container_interface == Some(true) {
            return Err(unsupported("disableContainerInterface", true));
        }
        if let Some(b) = raw
            .ip_masq_backend
            .filter(|b| !b.is_empty() && b != "iptables")
        {
            return Err(unsupported("ipMasqBackend", format!("{b:?}")));
        }
        let hairpin = raw.hairpin_mode.unwrap_or(false);
        let promisc = raw.promisc_mode.unwrap_or(false);
        if hairpin && promisc {
            return Err(invalid(
                "cannot set hairpinMode and promiscMode at the same time",
            ));
        }
        let mtu = raw.mtu.unwrap_or(0);
        if mtu != 0 && !(68..=65535).contains(&mtu) {
            return Err(invalid(format!(
                "config key \"mtu\" = {mtu} is outside 68..65535"
            )));
        }
        let is_default_gateway = raw.is_default_gateway.unwrap_or(false);
        let non_masquerade =
            parse_non_masquerade(raw.non_masquerade_cidrs.as_deref().unwrap_or_default())?;

        let ipam = match raw.ipam {
            None | Some(Value::Null) => IpamConf::None,
            Some(Value::Object(ref m)) if m.is_empty() => IpamConf::None,
            Some(Value::Object(ref m)) => match m.get("type") {
                Some(Value::String(t)) if t == BUILTIN_IPAM => {
                    IpamConf::Builtin(hostlocal::Config::parse(&Value::Object(m.clone()))?)
                }
                Some(Value::String(t)) if check_identifier(t).is_ok() => {
                    IpamConf::Delegated { plugin: t.clone() }
                }
                Some(t) => {
                    return Err(invalid(format!("ipam.type {t} is not a valid plugin name")))
                }
                None => return Err(invalid("ipam.type is missing")),
            },
            Some(other) => {
                return Err(CniError::new(
                    code::DECODE_FAILURE,
                    format!("config key \"ipam\" must be an object, got {other}"),
                ))
            }
        };

        let cni_args = raw.args.and_then(|a| a.cni).unwrap_or_default();
        let runtime = raw.runtime_config.unwrap_or_default();
        let mut requested_ips = Vec::new();
        for s in cni_args.ips.iter().chain(runtime.ips.iter()) {
            requested_ips.push(parse_requested_ip(s)?);
        }
        let mut mac = None;
        for m in [cni_args.mac.as_deref(), runtime.mac.as_deref()]
            .into_iter()
            .flatten()
            .filter(|m| !m.is_empty())
        {
            mac = Some(parse_mac_arg(m)?);
        }
        let labels = cni_args
            .labels
            .into_iter()
            .map(|l| (l.key, l.value))
            .collect();

        for (key, p) in [("stateDir", &raw.state_dir), ("logFile", &raw.log_file)] {
            if let Some(p) = p {
                check_path(key, p)?;
            }
        }
        let state_dir = PathBuf::from(
            raw.state_dir
                .as_deref()
                .unwrap_or(nodenet::attachment::DEFAULT_STATE_DIR),
        );
        if !state_dir.is_absolute() {
            return Err(invalid(format!(
                "config key \"stateDir\" = {:?} is not an absolute path",
                state_dir.display()
            )));
        }
        let log_file = raw.log_file.filter(|f| !f.is_empty()).map(PathBuf::from);

        Ok(NetConf {
            version,
            name,
            bridge,
            is_gateway: raw.is_gateway.unwrap_or(false) || is_default_gateway,
            is_default_gateway,
            force_address: raw.force_address.unwrap_or(false),
            ip_masq: raw.ip_masq.unwrap_or(false),
            non_masquerade,
            mtu,
            hairpin,
            promisc,
            enable_dad: raw.enabledad.unwrap_or(false),
            port_isolation: raw.port_isolation.unwrap_or(false),
            dns: raw.dns.unwrap_or_default(),
            ipam,
            requested_ips,
            mac,
            labels,
            prev_result: raw.prev_result,
            state_dir,
            log_file,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
            raw: raw_value,
        })
    }
}

/// Parses a requested MAC (`args.cni.mac`, `runtimeConfig.mac`, `CNI_ARGS MAC=`).
pub fn parse_mac_arg(s: &str) -> Result<[u8; 6]> {
    let mac = nodenet::link::parse_mac(s)
        .ok_or_else(|| invalid(format!("MAC address {s:?} is not aa:bb:cc:dd:ee:ff")))?;
    if mac[0] & 1 == 1 {
        return Err(invalid(format!("MAC address {s:?} is a multicast address")));
    }
    if mac == [0; 6] {
        return Err(invalid(format!("MAC address {s:?} is all zeros")));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf> {
        NetConf::parse(v.to_string().as_bytes())
    }

    fn base() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "podnet",
            "type": "cni-bridge",
            "bridge": "bridge_home",
            "isDefaultGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {"type": "cni-bridge-ipam", "subnet": "10.0.0.0/24", "gateway": "10.0.0.1"}
        })
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    #[test]
    fn scenario_config_parses_with_defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.bridge, "bridge_home");
        assert!(c.is_gateway, "isDefaultGateway implies isGateway");
        assert!(c.ip_masq && c.hairpin && !c.promisc && !c.enable_dad);
        assert_eq!(c.mtu, 0);
        assert_eq!(
            c.state_dir,
            PathBuf::from(nodenet::attachment::DEFAULT_STATE_DIR)
        );
        assert!(matches!(c.ipam, IpamConf::Builtin(_)));
        let mut v = base();
        v.as_object_mut().unwrap().remove("bridge");
        assert_eq!(parse(v).unwrap().bridge, "cni0");
    }

    #[test]
    fn ipam_kinds() {
        assert!(matches!(
            parse(with("ipam", json!({}))).unwrap().ipam,
            IpamConf::None
        ));
        match parse(with(
            "ipam",
            json!({"type": "host-local", "subnet": "10.0.0.0/24"}),
        ))
        .unwrap()
        .ipam
        {
            IpamConf::Delegated { plugin } => assert_eq!(plugin, "host-local"),
            other => panic!("{other:?}"),
        }
        for bad in [
            json!({"type": "../bin/sh"}),
            json!({"subnet": "10.0.0.0/24"}),
        ] {
            assert_eq!(parse(with("ipam", bad)).unwrap_err().code, 7);
        }
    }

    #[test]
    fn unimplemented_keys_are_code_2_naming_the_key() {
        for (key, value) in [
            ("vlan", json!(100)),
            ("vlanTrunk", json!([{"id": 5}])),
            ("macspoofchk", json!(true)),
            ("disableContainerInterface", json!(true)),
            ("ipMasqBackend", json!("nftables")),
        ] {
            let err = parse(with(key, value)).unwrap_err();
            assert_eq!(err.code, 2, "{key}");
            assert!(err.msg.contains(key), "{}", err.msg);
        }
        for (key, value) in [
            ("vlan", json!(0)),
            ("vlanTrunk", json!([])),
            ("macspoofchk", json!(false)),
            ("preserveDefaultVlan", json!(false)),
            ("ipMasqBackend", json!("iptables")),
        ] {
            assert!(parse(with(key, value)).is_ok(), "{key}");
        }
    }

    #[test]
    fn invalid_values_are_code_7() {
        let cases = [
            with("name", json!("")),
            with("name", json!("../x")),
            with("bridge", json!("a-bridge-name-too-long")),
            with("bridge", json!("br/0")),
            with("bridge", json!("br\u{0}x")),
            with("bridge", json!("br\u{e0}")),
            with("stateDir", json!("/var/lib/x\u{0}y")),
            with("runtimeConfig", json!({"mac": "00:00:00:00:00:00"})),
            with("args", json!({"cni": {"mac": "00-00-00-00-00-00"}})),
            with("mtu", json!(10)),
            with("promiscMode", json!(true)),
            with("stateDir", json!("relative")),
            with("args", json!({"cni": {"ips": ["10.0.0.300"]}})),
            with("runtimeConfig", json!({"mac": "zz"})),
        ];
        for c in cases {
            assert_eq!(parse(c.clone()).unwrap_err().code, 7, "{c}");
        }
    }

    #[test]
    fn non_masquerade_cidrs_of_both_families_keep_their_order() {
        assert!(parse(base()).unwrap().non_masquerade.is_empty());
        let c = parse(with(
            "nonMasqueradeCIDRs",
            json!([
                "10.244.0.0/16",
                "fd00:10:244::/56",
                "192.168.0.0/16",
                "0.0.0.0/0"
            ]),
        ))
        .unwrap();
        let want: Vec<IpNetwork> = [
            "10.244.0.0/16",
            "fd00:10:244::/56",
            "192.168.0.0/16",
            "0.0.0.0/0",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(c.non_masquerade, want);
        assert!(parse(with("nonMasqueradeCIDRs", json!([])))
            .unwrap()
            .non_masquerade
            .is_empty());
    }

    /// Every bad entry is code 7 naming the key and the entry; a wrongly typed list is code 6.
    #[test]
    fn bad_non_masquerade_cidrs_are_refused_naming_the_entry() {
        for (list, entry, why) in [
            (json!(["10.244.0.0"]), "10.244.0.0", "CIDR notation"),
            (json!(["10.244.0.0/"]), "10.244.0.0/", "prefix length"),
            (json!(["10.244.0.0/x"]), "10.244.0.0/x", "prefix length"),
            (json!(["10.244.0.0/33"]), "10.244.0.0/33", "not a network"),
            (json!(["banana/8"]), "banana/8", "not a network"),
            (json!([""]), "", "CIDR notation"),
            (json!([" 10.0.0.0/8"]), " 10.0.0.0/8", "not a network"),
            (
                json!(["10.244.1.0/16"]),
                "10.244.1.0/16",
                "host bits set: the network of that prefix is 10.244.0.0/16",
            ),
            (json!(["fd00::1/64"]), "fd00::1/64", "host bits set"),
            (
                json!(["10.244.0.0/16", "fd00::/8", "10.244.0.0/16"]),
                "10.244.0.0/16",
                "entry 2 (\"10.244.0.0/16\") repeats entry 0",
            ),
        ] {
            let err = parse(with("nonMasqueradeCIDRs", list.clone())).unwrap_err();
            assert_eq!(err.code, 7, "{list}: {err}");
            assert!(err.msg.contains("nonMasqueradeCIDRs"), "{}", err.msg);
            assert!(err.msg.contains(&format!("{entry:?}")), "{}", err.msg);
            assert!(err.msg.contains(why), "{list}: {}", err.msg);
        }
        for bad in [
            json!("10.244.0.0/16"),
            json!([16]),
            json!({"a": "10.0.0.0/8"}),
        ] {
            let err = parse(with("nonMasqueradeCIDRs", bad.clone())).unwrap_err();
            assert_eq!(err.code, 6, "{bad}: {err}");
            assert!(err.msg.contains("nonMasqueradeCIDRs"), "{}", err.msg);
        }
    }

    /// A struct-valued key given as an array would otherwise be read by field position.
    #[test]
    fn struct_valued_keys_take_objects_only() {
        for (key, value) in [
            ("dns", json!([["9.9.9.9"], "x"])),
            ("args", json!([{"ips": ["10.0.0.7"]}])),
            ("args", json!({"cni": [["10.0.0.7"]]})),
            ("args", json!({"cni": {"labels": [["component", "app"]]}})),
            ("runtimeConfig", json!([["10.0.0.8"]])),
            ("cni.dev/valid-attachments", json!([["c1", "eth0"]])),
            (
                "ipam",
                json!({"type": "cni-bridge-ipam", "ranges": [[["10.0.0.0/24"]]]}),
            ),
            (
                "ipam",
                json!({"type": "cni-bridge-ipam", "subnet": "10.0.0.0/24", "routes": [["0.0.0.0/0"]]}),
            ),
        ] {
            let err = parse(with(key, value.clone())).unwrap_err();
            assert_eq!(err.code, 6, "{key} = {value}: {err}");
            assert!(err.msg.contains("object"), "{key}: {}", err.msg);
        }
        let ok = parse(with("dns", json!({"nameservers": ["9.9.9.9"]}))).unwrap();
        assert_eq!(ok.dns.nameservers, vec!["9.9.9.9"]);
    }

    #[test]
    fn decoding_failures_are_code_6() {
        assert_eq!(NetConf::parse(b"{nope").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, 6);
        assert_eq!(parse(with("mtu", json!("big"))).unwrap_err().code, 6);
        assert_eq!(parse(with("ipMasq", json!("yes"))).unwrap_err().code, 6);
    }

    #[test]
    fn version_errors_are_code_1() {
        assert_eq!(
            parse(with("cniVersion", json!("0.2.0"))).unwrap_err().code,
            1
        );
        let mut v = base();
        v.as_object_mut().unwrap().remove("cniVersion");
        assert_eq!(parse(v).unwrap_err().code, 1);
    }

    #[test]
    fn args_and_runtime_config() {
        let mut v = base();
        v["args"] = json!({"cni": {"ips": ["10.0.0.7/24"], "labels": [{"key": "component", "value": "app"}], "mac": "0a:00:00:00:00:01"}});
        v["runtimeConfig"] = json!({"mac": "0a:00:00:00:00:02", "ips": ["10.0.0.8"]});
        v["cni.dev/attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
        let c = parse(v).unwrap();
        assert_eq!(
            c.requested_ips,
            vec![
                "10.0.0.7".parse::<IpAddr>().unwrap(),
                "10.0.0.8".parse().unwrap()
            ]
        );
        assert_eq!(c.labels.get("component").map(String::as_str), Some("app"));
        assert_eq!(c.mac, Some([0x0a, 0, 0, 0, 0, 2]));
        assert_eq!(c.valid_attachments.unwrap().len(), 1);
    }
}
