//! kube-proxy's configuration file (`--config`, a `KubeProxyConfiguration` of
//! `kubeproxy.config.k8s.io/v1alpha1`) read field by field: each field svc-proxy implements
//! maps to its setting; a field with no effect in kube-proxy's IPVS mode is accepted as
//! kube-proxy accepts it; any other field set to a non-default value is an error naming it, so
//! nothing an operator wrote is silently ignored. Durations are Go's (`30s`, `1m30s`, `500ms`).

use serde_json::Value;
use std::time::Duration;

/// What a configuration file sets (each `None`: not set, or set to kube-proxy's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSettings {
    pub kubeconfig: Option<String>,
    pub hostname_override: Option<String>,
    pub bind_address: Option<String>,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub bind_address_hard_fail: Option<bool>,
    pub cluster_cidr: Option<String>,
    pub scheduler: Option<String>,
    pub sync_period: Option<Duration>,
    pub min_sync_period: Option<Duration>,
    pub oom_score_adj: Option<i32>,
    /// `logging.verbosity`.
    pub verbosity: Option<u32>,
    pub masquerade_all: Option<bool>,
    pub strict_arp: Option<bool>,
    pub exclude_cidrs: Vec<String>,
    pub nodeport_addresses: Vec<String>,
    pub tcp_timeout: Option<Duration>,
    pub tcp_fin_timeout: Option<Duration>,
    pub udp_timeout: Option<Duration>,
}

/// Why a configuration file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Read { file: String, message: String },
    #[error("{file}: {field}: {message}")]
    Field {
        file: String,
        field: String,
        message: String,
    },
}

/// How svc-proxy treats one field.
enum Rule {
    /// Mapped to a setting of ours by the parser below.
    Supported,
    /// No effect in kube-proxy's IPVS mode on Linux; accepted whatever its value.
    Ignored(&'static str),
    /// Not implemented: accepted only at its default (the values listed, or the zero value).
    DefaultOnly(&'static [&'static str], &'static str),
    /// A nested object whose fields have rules of their own.
    Object,
}

/// The rule for each field path (the whole v1alpha1 schema of Kubernetes 1.37).
fn rule(path: &str) -> Option<Rule> {
    use Rule::*;
    Some(match path {
        "apiVersion" | "kind" => Supported,
        "featureGates" => DefaultOnly(&[], "feature gates are not supported"),
        "clientConnection" | "iptables" | "ipvs" | "nftables" | "winkernel" | "conntrack"
        | "detectLocal" | "logging" | "logging.options" | "logging.options.json"
        | "logging.options.text" => Object,
        "clientConnection.kubeconfig" => Supported,
        "clientConnection.acceptContentTypes" | "clientConnection.contentType" => {
            Ignored("svc-proxy talks JSON to the API server")
        }
        "clientConnection.qps" | "clientConnection.burst" => {
            Ignored("svc-proxy makes one list and one watch per resource; no client-side rate limit applies")
        }
        "hostnameOverride" | "bindAddress" | "healthzBindAddress" | "metricsBindAddress"
        | "bindAddressHardFail" | "clusterCIDR" | "mode" | "oomScoreAdj" => Supported,
        "enableProfiling" => DefaultOnly(&["false"], "svc-proxy serves no profiling endpoints"),
        "showHiddenMetricsForVersion" => DefaultOnly(&[], "svc-proxy has no hidden metrics"),
        "iptables.masqueradeAll" => Supported,
        "iptables.masqueradeBit" => DefaultOnly(&["14"], "svc-proxy's masquerade mark is bit 14 (0x4000), as kube-proxy's default"),
        "iptables.localhostNodePorts" | "iptables.syncPeriod" | "iptables.minSyncPeriod" => {
            Ignored("an iptables-mode setting, which IPVS mode does not use")
        }
        "ipvs.syncPeriod" | "ipvs.minSyncPeriod" | "ipvs.scheduler" | "ipvs.excludeCIDRs"
        | "ipvs.strictARP" | "ipvs.tcpTimeout" | "ipvs.tcpFinTimeout" | "ipvs.udpTimeout" => {
            Supported
        }
        p if p.starts_with("nftables.") => Ignored("an nftables-mode setting, which IPVS mode does not use"),
        p if p.starts_with("winkernel.") => Ignored("a Windows setting"),
        "windowsRunAsService" => Ignored("a Windows setting"),
        "detectLocalMode" => DefaultOnly(&["ClusterCIDR"], "local traffic is detected by --cluster-cidr only"),
        "detectLocal.bridgeInterface" | "detectLocal.interfaceNamePrefix" => {
            DefaultOnly(&[], "local traffic is detected by --cluster-cidr only")
        }
        "nodePortAddresses" => Supported,
        "conntrack.maxPerCore" => DefaultOnly(&["32768"], "svc-proxy leaves the conntrack table size to the node's sysctls"),
        "conntrack.min" => DefaultOnly(&["131072"], "svc-proxy leaves the conntrack table size to the node's sysctls"),
        "conntrack.tcpEstablishedTimeout" => DefaultOnly(&["24h0m0s", "24h"], "svc-proxy leaves conntrack timeouts to the node's sysctls"),
        "conntrack.tcpCloseWaitTimeout" => DefaultOnly(&["1h0m0s", "1h"], "svc-proxy leaves conntrack timeouts to the node's sysctls"),
        "conntrack.tcpBeLiberal" => DefaultOnly(&["false"], "svc-proxy leaves conntrack settings to the node's sysctls"),
        "conntrack.udpTimeout" | "conntrack.udpStreamTimeout" => {
            DefaultOnly(&["0s"], "svc-proxy leaves conntrack timeouts to the node's sysctls")
        }
        "configSyncPeriod" => Ignored("svc-proxy's watchers need no informer resync; the kernel resync is ipvs.syncPeriod"),
        "portRange" => Ignored("unused by kube-proxy since the userspace mode was removed"),
        "logging.verbosity" => Supported,
        "logging.format" => DefaultOnly(&["text"], "svc-proxy logs text lines"),
        "logging.flushFrequency" | "logging.options.json.infoBufferSize"
        | "logging.options.text.infoBufferSize" | "logging.options.json.splitStream"
        | "logging.options.text.splitStream" | "logging.vmodule" => {
            Ignored("klog tuning, which svc-proxy's logger does not have")
        }
        _ => return None,
    })
}

/// Whether `v` is the zero value of its type (what a generated config writes for "unset").
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || parse_go_duration(s) == Ok(Duration::ZERO),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses and judges a configuration file's text (`file` names it in errors).
pub fn parse(file: &str, text: &str) -> Result<FileSettings, ConfigError> {
    let read = |message: String| ConfigError::Read {
        file: file.to_string(),
        message,
    };
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| read(e.to_string()))?;
    let Value::Object(top) = &doc else {
        return Err(read("expected a KubeProxyConfiguration mapping".into()));
    };
    let field = |field: &str, message: String| ConfigError::Field {
        file: file.to_string(),
        field: field.to_string(),
        message,
    };
    match top.get("kind").and_then(Value::as_str) {
        Some("KubeProxyConfiguration") => {}
        other => {
            return Err(field(
                "kind",
                format!("{other:?} is not KubeProxyConfiguration"),
            ))
        }
    }
    match top.get("apiVersion").and_then(Value::as_str) {
        Some("kubeproxy.config.k8s.io/v1alpha1") => {}
        other => {
            return Err(field(
                "apiVersion",
                format!(
                    "{other:?} is not supported (expected \"kubeproxy.config.k8s.io/v1alpha1\")"
                ),
            ))
        }
    }
    check_fields(&doc, "", &field)?;

    let get = |path: &str| -> Option<&Value> {
        let mut v = &doc;
        for part in path.split('.') {
            v = v.get(part)?;
        }
        (!is_zero(v)).then_some(v)
    };
    let string = |path: &str| -> Result<Option<String>, ConfigError> {
        match get(path) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(other) => Err(field(path, format!("expected a string, found {other}"))),
        }
    };
    let duration = |path: &str| -> Result<Option<Duration>, ConfigError> {
        match string(path)? {
            None => Ok(None),
            Some(s) => parse_go_duration(&s).map(Some).map_err(|e| field(path, e)),
        }
    };
    let mode = string("mode")?;
    if let Some(m) = mode.as_deref().filter(|m| *m != "ipvs") {
        return Err(field(
            "mode",
            format!("{m:?}: svc-proxy is an IPVS proxy (mode must be \"ipvs\" or empty)"),
        ));
    }
    let strings = |path: &str| -> Result<Vec<String>, ConfigError> {
        match get(path) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.trim().to_string()),
                    other => Err(field(
                        path,
                        format!("expected a list of strings, found {other}"),
                    )),
                })
                .collect(),
            Some(other) => Err(field(path, format!("expected a list, found {other}"))),
        }
    };
    let flag = |path: &str| -> Result<Option<bool>, ConfigError> {
        match get(path) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(field(
                path,
                format!("expected true or false, found {other}"),
            )),
        }
    };
    let number = |path: &str| -> Result<Option<i64>, ConfigError> {
        match get(path) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| field(path, format!("{n} is not a whole number"))),
            Some(other) => Err(field(path, format!("expected a number, found {other}"))),
        }
    };
    Ok(FileSettings {
        kubeconfig: string("clientConnection.kubeconfig")?,
        hostname_override: string("hostnameOverride")?,
        bind_address: string("bindAddress")?,
        healthz_bind_address: string("healthzBindAddress")?,
        metrics_bind_address: string("metricsBindAddress")?,
        bind_address_hard_fail: get("bindAddressHardFail").map(|v| v == &Value::Bool(true)),
        cluster_cidr: string("clusterCIDR")?,
        scheduler: string("ipvs.scheduler")?,
        sync_period: duration("ipvs.syncPeriod")?,
        min_sync_period: duration("ipvs.minSyncPeriod")?,
        oom_score_adj: number("oomScoreAdj")?
            .map(|n| {
                i32::try_from(n)
                    .ok()
                    .filter(|n| (-1000..=1000).contains(n))
                    .ok_or_else(|| field("oomScoreAdj", format!("{n} is out of range -1000..1000")))
            })
            .transpose()?,
        verbosity: number("logging.verbosity")?
            .map(|n| {
                u32::try_from(n).map_err(|_| field("logging.verbosity", format!("{n} is negative")))
            })
            .transpose()?,
        masquerade_all: flag("iptables.masqueradeAll")?,
        strict_arp: flag("ipvs.strictARP")?,
        exclude_cidrs: strings("ipvs.excludeCIDRs")?,
        nodeport_addresses: strings("nodePortAddresses")?,
        tcp_timeout: duration("ipvs.tcpTimeout")?,
        tcp_fin_timeout: duration("ipvs.tcpFinTimeout")?,
        udp_timeout: duration("ipvs.udpTimeout")?,
    })
}

/// Walks every field: unknown ones and unimplemented ones set to non-default values are errors.
fn check_fields(
    v: &Value,
    prefix: &str,
    field: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let Value::Object(m) = v else {
        return Ok(());
    };
    for (k, v) in m {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match rule(&path) {
            None => {
                return Err(field(
                    &path,
                    "unknown field (not part of KubeProxyConfiguration v1alpha1)".into(),
                ))
            }
            Some(Rule::Supported) => {}
            Some(Rule::Ignored(why)) => {
                if !is_zero(v) {
                    log::info!("--config: {path}: {} has no effect ({why})", show(v));
                }
            }
            Some(Rule::Object) => check_fields(v, &path, field)?,
            Some(Rule::DefaultOnly(defaults, why)) => {
                let shown = show(v);
                if !is_zero(v) && !defaults.contains(&shown.as_str()) {
                    return Err(field(
                        &path,
                        format!(
                            "{shown} is not supported ({why}); remove it or set it to its default"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Go's `time.ParseDuration` format (`300ms`, `1.5h`, `2h45m`, `0`), plus plain seconds
/// (`30`) as svc-proxy accepted before.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 30s, 1m30s, 500ms)");
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map(Duration::from_secs).map_err(|_| bad());
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * unit;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `kube-proxy --write-config-to` and kubeadm produce: every field present, most at
    /// their zero values.
    const GENERATED: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 1s
  scheduler: wrr
  strictARP: false
  syncPeriod: 15s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ipvs
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

    #[test]
    fn a_generated_ipvs_configuration_maps_to_our_settings() {
        let s = parse("c.yaml", GENERATED).unwrap();
        assert_eq!(
            s,
            FileSettings {
                kubeconfig: Some("/var/lib/kube-proxy/kubeconfig.conf".into()),
                bind_address: Some("0.0.0.0".into()),
                cluster_cidr: Some("10.244.0.0/16".into()),
                scheduler: Some("wrr".into()),
                sync_period: Some(Duration::from_secs(15)),
                min_sync_period: Some(Duration::from_secs(1)),
                ..Default::default()
            }
        );
    }

    #[test]
    fn another_mode_or_an_unimplemented_field_is_refused_by_name() {
        let cases = [
            ("mode: ipvs", "mode: iptables", "c.yaml: mode: \"iptables\": svc-proxy is an IPVS proxy (mode must be \"ipvs\" or empty)"),
            ("  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs", "  masqueradeBit: 15\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs", "c.yaml: iptables.masqueradeBit: 15 is not supported (svc-proxy's masquerade mark is bit 14 (0x4000), as kube-proxy's default); remove it or set it to its default"),
            ("detectLocalMode: \"\"", "detectLocalMode: InterfaceNamePrefix", "c.yaml: detectLocalMode: InterfaceNamePrefix is not supported (local traffic is detected by --cluster-cidr only); remove it or set it to its default"),
            ("enableProfiling: false", "enableProfiling: true", "c.yaml: enableProfiling: true is not supported (svc-proxy serves no profiling endpoints); remove it or set it to its default"),
            ("portRange: \"\"", "portRnage: \"\"", "c.yaml: portRnage: unknown field (not part of KubeProxyConfiguration v1alpha1)"),
            ("  maxPerCore: null", "  maxPerCore: 65536", "c.yaml: conntrack.maxPerCore: 65536 is not supported (svc-proxy leaves the conntrack table size to the node's sysctls); remove it or set it to its default"),
            ("  syncPeriod: 15s", "  syncPeriod: soon", "c.yaml: ipvs.syncPeriod: \"soon\" is not a duration (e.g. 30s, 1m30s, 500ms)"),
        ];
        for (from, to, want) in cases {
            let text = GENERATED.replacen(from, to, 1);
            assert_ne!(text, GENERATED, "{from}");
            assert_eq!(parse("c.yaml", &text).unwrap_err().to_string(), want);
        }
        // Defaults written out explicitly are accepted; so are iptables-mode settings.
        let explicit = GENERATED
            .replace("  maxPerCore: null", "  maxPerCore: 32768")
            .replace(
                "  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs",
                "  masqueradeBit: 14\n  minSyncPeriod: 1s\n  syncPeriod: 30s\nipvs",
            );
        assert!(parse("c.yaml", &explicit).is_ok());
        let wrong_kind =
            GENERATED.replace("kind: KubeProxyConfiguration", "kind: KubeletConfiguration");
        assert_eq!(
            parse("c.yaml", &wrong_kind).unwrap_err().to_string(),
            "c.yaml: kind: Some(\"KubeletConfiguration\") is not KubeProxyConfiguration"
        );
    }

    #[test]
    fn the_ipvs_and_node_port_settings_map_too() {
        let text = GENERATED
            .replace("  strictARP: false", "  strictARP: true")
            .replace("  excludeCIDRs: null", "  excludeCIDRs: [192.0.2.0/24]")
            .replace("  tcpTimeout: 0s", "  tcpTimeout: 15m")
            .replace("  udpTimeout: 0s\nkind", "  udpTimeout: 30s\nkind")
            .replace(
                "nodePortAddresses: null",
                "nodePortAddresses: [primary, 10.0.0.0/8]",
            )
            .replace(
                "  masqueradeAll: false\n  masqueradeBit",
                "  masqueradeAll: true\n  masqueradeBit",
            );
        let s = parse("c.yaml", &text).unwrap();
        assert_eq!(s.strict_arp, Some(true));
        assert_eq!(s.masquerade_all, Some(true));
        assert_eq!(s.exclude_cidrs, vec!["192.0.2.0/24".to_string()]);
        assert_eq!(
            s.nodeport_addresses,
            vec!["primary".to_string(), "10.0.0.0/8".to_string()]
        );
        assert_eq!(s.tcp_timeout, Some(Duration::from_secs(900)));
        assert_eq!(s.udp_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.tcp_fin_timeout, None);
    }

    #[test]
    fn go_durations() {
        for (s, secs) in [
            ("30s", 30.0),
            ("1m30s", 90.0),
            ("500ms", 0.5),
            ("1.5h", 5400.0),
            ("0s", 0.0),
            ("0", 0.0),
            ("45", 45.0),
            ("2h45m", 9900.0),
        ] {
            assert_eq!(
                parse_go_duration(s),
                Ok(Duration::from_secs_f64(secs)),
                "{s}"
            );
        }
        for s in ["", "s", "1x", "m5", "-1s", "1.2.3s"] {
            assert!(parse_go_duration(s).is_err(), "{s}");
        }
    }
}
