//! Kubernetes manifests as users write them: `v1` `Service` and `discovery.k8s.io/v1`
//! `EndpointSlice` (and `v1` `List` of them), YAML or JSON, several documents per file.
//! Everything is validated here; an error names the file, the document, the object and the field.

use nodenet::Protocol;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

/// Annotation that picks the IPVS scheduler of one Service (kube-proxy has one for all).
pub const SCHEDULER_ANNOTATION: &str = "svc-proxy/scheduler";
/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Schedulers the Debian kernel ships (`ip_vs_<name>` modules).
pub const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
];
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// Why a manifest file was rejected (nothing from it is applied).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("{file}: {message}")]
    Read { file: String, message: String },
    #[error("{file}: document {document}: {message}")]
    Syntax {
        file: String,
        document: usize,
        message: String,
    },
    #[error("{file}: document {document} ({object}): {field}: {message}")]
    Invalid {
        file: String,
        document: usize,
        object: String,
        field: String,
        message: String,
    },
    #[error("{file}: {object} defined twice (documents {first} and {second})")]
    Duplicate {
        file: String,
        object: String,
        first: usize,
        second: usize,
    },
}

/// A `Service`, reduced to what svc-proxy programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `spec.clusterIPs` (or `spec.clusterIP`); empty for headless and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    /// `spec.selector`; `None` when absent or empty (endpoints then come from EndpointSlices only).
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePort>,
    /// Persistence timeout when `sessionAffinity: ClientIP`.
    pub affinity_timeout: Option<u32>,
    /// From the [`SCHEDULER_ANNOTATION`] annotation.
    pub scheduler: Option<String>,
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `name`, "" when unnamed; EndpointSlice ports are matched by it.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// `targetPort`, defaulting to `port`.
    pub target_port: TargetPort,
}

/// A Service port's `targetPort`. EndpointSlices carry the real port, so it matters only for
/// endpoints taken from attachment records, where a named port cannot be resolved (the records
/// do not list container ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name (`IANA_SVC_NAME`).
    Named(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Named(name) => write!(f, "{name:?}"),
        }
    }
}

/// Kubernetes' `IANA_SVC_NAME`: 1-15 lowercase letters, digits and inner single hyphens, with at
/// least one letter.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// An `EndpointSlice`, reduced to what svc-proxy programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// From the `kubernetes.io/service-name` label.
    pub service_name: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One entry of an EndpointSlice's `endpoints`, with its conditions defaulted the way Kubernetes
/// defines them (unknown `ready` means ready; unknown `serving` means `ready`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// A parsed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
}

impl Object {
    /// `Service ns/name` or `EndpointSlice ns/name`.
    pub fn id(&self) -> String {
        match self {
            Object::Service(s) => format!("Service {}/{}", s.namespace, s.name),
            Object::EndpointSlice(e) => format!("EndpointSlice {}/{}", e.namespace, e.name),
        }
    }
}

/// Reads and validates one manifest file; all or nothing.
pub fn load_file(path: &Path) -> Result<Vec<Object>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Read {
        file: path.display().to_string(),
        message: e.to_string(),
    })?;
    parse(&path.display().to_string(), &text, is_json(path))
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Whether a directory entry is a manifest file (`*.yaml`, `*.yml`, `*.json`, not hidden).
pub fn is_manifest_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    !hidden && matches!(ext.as_deref(), Some("yaml" | "yml" | "json"))
}

/// Parses the documents of one file (`file` names it in errors).
pub fn parse(file: &str, text: &str, json: bool) -> Result<Vec<Object>, ManifestError> {
    let syntax = |document: usize, e: &dyn std::fmt::Display| ManifestError::Syntax {
        file: file.to_string(),
        document,
        message: e.to_string(),
    };
    let mut docs = Vec::new();
    if json {
        for (i, v) in serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .enumerate()
        {
            docs.push(v.map_err(|e| syntax(i + 1, &e))?);
        }
    } else {
        for (i, d) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            docs.push(Value::deserialize(d).map_err(|e| syntax(i + 1, &e))?);
        }
    }
    let mut objects = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, doc) in docs.iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let ctx = Ctx {
            file,
            document: i + 1,
            object: String::new(),
            path: String::new(),
        };
        let mut found = Vec::new();
        object(&ctx, doc, &mut found)?;
        for o in found {
            if let Some(first) = seen.insert(o.id(), i + 1) {
                return Err(ManifestError::Duplicate {
                    file: file.to_string(),
                    object: o.id(),
                    first,
                    second: i + 1,
                });
            }
            objects.push(o);
        }
    }
    Ok(objects)
}

/// Where in the file a value sits, for error messages.
#[derive(Clone)]
struct Ctx<'a> {
    file: &'a str,
    document: usize,
    /// `Service default/app-service` once known.
    object: String,
    /// Field path prefix, e.g. `items[2].`.
    path: String,
}

type Result<T, E = ManifestError> = std::result::Result<T, E>;

impl Ctx<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_string(),
            document: self.document,
            object: if self.object.is_empty() {
                "?".into()
            } else {
                self.object.clone()
            },
            field: format!("{}{}", self.path, field),
            message: message.into(),
        }
    }

    fn map<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Map<String, Value>> {
        v.as_object()
            .ok_or_else(|| self.err(field, format!("expected a mapping, found {}", kind(v))))
    }

    /// The member `key` of `m`, `None` when absent or null.
    fn opt<'v>(m: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
        m.get(key).filter(|v| !v.is_null())
    }

    fn opt_str<'v>(
        &self,
        m: &'v Map<String, Value>,
        field: &str,
        key: &str,
    ) -> Result<Option<&'v str>> {
        match Self::opt(m, key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(
                &join(field, key),
                format!("expected a string, found {}", kind(v)),
            )),
        }
    }

    fn req_str<'v>(&self, m: &'v Map<String, Value>, field: &str, key: &str) -> Result<&'v str> {
        match self.opt_str(m, field, key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.err(&join(field, key), "required")),
        }
    }

    fn opt_bool(&self, m: &Map<String, Value>, field: &str, key: &str) -> Result<Option<bool>> {
        match Self::opt(m, key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(
                &join(field, key),
                format!("expected true or false, found {}", kind(v)),
            )),
        }
    }

    fn opt_list<'v>(
        &self,
        m: &'v Map<String, Value>,
        field: &str,
        key: &str,
    ) -> Result<&'v [Value]> {
        match Self::opt(m, key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(self.err(
                &join(field, key),
                format!("expected a list, found {}", kind(v)),
            )),
        }
    }

    fn ip(&self, v: &Value, field: &str) -> Result<IpAddr> {
        let s = v
            .as_str()
            .ok_or_else(|| self.err(field, format!("expected an IP address, found {}", kind(v))))?;
        s.parse()
            .map_err(|_| self.err(field, format!("{s:?} is not an IP address")))
    }

    fn port(&self, v: &Value, field: &str) -> Result<u16> {
        let n = match v {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
        .ok_or_else(|| self.err(field, format!("expected a port number, found {}", show(v))))?;
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| self.err(field, format!("{n} is out of range 1-65535")))
    }

    fn protocol(&self, m: &Map<String, Value>, field: &str) -> Result<Protocol> {
        match self.opt_str(m, field, "protocol")? {
            None => Ok(Protocol::Tcp),
            Some(p @ ("TCP" | "UDP" | "SCTP")) => Ok(p.parse().expect("listed protocol")),
            Some(p) => Err(self.err(
                &join(field, "protocol"),
                format!("unknown protocol {p:?} (expected TCP, UDP or SCTP)"),
            )),
        }
    }

    fn string_map(
        &self,
        m: &Map<String, Value>,
        field: &str,
        key: &str,
    ) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        if let Some(v) = Self::opt(m, key) {
            let f = join(field, key);
            for (k, v) in self.map(v, &f)? {
                let s = v.as_str().ok_or_else(|| {
                    self.err(
                        &format!("{f}.{k}"),
                        format!("expected a string, found {}", kind(v)),
                    )
                })?;
                out.insert(k.clone(), s.to_string());
            }
        }
        Ok(out)
    }
}

fn join(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_string()
    } else {
        format!("{field}.{key}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        other => kind(other).to_string(),
    }
}

/// One top-level document or `List` item.
fn object(ctx: &Ctx<'_>, v: &Value, out: &mut Vec<Object>) -> Result<()> {
    let m = ctx.map(v, "(document)")?;
    let kind_name = ctx.req_str(m, "", "kind")?;
    let api = ctx.req_str(m, "", "apiVersion")?;
    let want_api = match kind_name {
        "Service" | "List" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        other => {
            return Err(ctx.err(
                "kind",
                format!("unknown kind {other:?} (expected Service, EndpointSlice or List)"),
            ))
        }
    };
    if api != want_api {
        return Err(ctx.err(
            "apiVersion",
            format!("{api:?} is not supported for {kind_name} (expected {want_api:?})"),
        ));
    }
    if kind_name == "List" {
        for (i, item) in ctx.opt_list(m, "", "items")?.iter().enumerate() {
            let item_ctx = Ctx {
                path: format!("{}items[{i}].", ctx.path),
                ..ctx.clone()
            };
            object(&item_ctx, item, out)?;
        }
        return Ok(());
    }
    let meta = Ctx::opt(m, "metadata").ok_or_else(|| ctx.err("metadata.name", "required"))?;
    let meta = ctx.map(meta, "metadata")?;
    let name = ctx.req_str(meta, "metadata", "name")?.to_string();
    let namespace = ctx
        .opt_str(meta, "metadata", "namespace")?
        .unwrap_or("default")
        .to_string();
    let ctx = Ctx {
        object: format!("{kind_name} {namespace}/{name}"),
        ..ctx.clone()
    };
    if kind_name == "Service" {
        out.push(Object::Service(service(&ctx, m, meta, namespace, name)?));
    } else if let Some(slice) = endpoint_slice(&ctx, m, meta, namespace, name)? {
        out.push(Object::EndpointSlice(slice));
    }
    Ok(())
}

fn service(
    ctx: &Ctx<'_>,
    m: &Map<String, Value>,
    meta: &Map<String, Value>,
    namespace: String,
    name: String,
) -> Result<Service> {
    let annotations = ctx.string_map(meta, "metadata", "annotations")?;
    let scheduler = match annotations.get(SCHEDULER_ANNOTATION) {
        None => None,
        Some(s) if SCHEDULERS.contains(&s.as_str()) => Some(s.clone()),
        Some(s) => {
            return Err(ctx.err(
                &format!("metadata.annotations.{SCHEDULER_ANNOTATION}"),
                format!(
                    "unknown IPVS scheduler {s:?} (expected one of {})",
                    SCHEDULERS.join(", ")
                ),
            ))
        }
    };
    let empty = Map::new();
    let spec = match Ctx::opt(m, "spec") {
        Some(v) => ctx.map(v, "spec")?,
        None => &empty,
    };
    let svc_type = ctx.opt_str(spec, "spec", "type")?.unwrap_or("ClusterIP");
    if !matches!(
        svc_type,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(ctx.err(
            "spec.type",
            format!("unknown Service type {svc_type:?} (expected ClusterIP, NodePort, LoadBalancer or ExternalName)"),
        ));
    }
    let selector = ctx.string_map(spec, "spec", "selector")?;
    let selector = (!selector.is_empty()).then_some(selector);

    let mut cluster_ips = Vec::new();
    let cluster_ip = ctx.opt_str(spec, "spec", "clusterIP")?;
    let listed = ctx.opt_list(spec, "spec", "clusterIPs")?;
    let headless = cluster_ip == Some("None") || svc_type == "ExternalName";
    if !headless {
        for (i, v) in listed.iter().enumerate() {
            let ip = ctx.ip(v, &format!("spec.clusterIPs[{i}]"))?;
            if cluster_ips
                .iter()
                .any(|c: &IpAddr| c.is_ipv4() == ip.is_ipv4())
            {
                return Err(ctx.err(
                    &format!("spec.clusterIPs[{i}]"),
                    "at most one address per IP family",
                ));
            }
            cluster_ips.push(ip);
        }
        match cluster_ip {
            Some(s) => {
                let ip = ctx.ip(&Value::String(s.to_string()), "spec.clusterIP")?;
                match cluster_ips.first() {
                    None => cluster_ips.push(ip),
                    Some(first) if *first == ip => {}
                    Some(first) => {
                        return Err(ctx.err(
                            "spec.clusterIP",
                            format!("{ip} differs from spec.clusterIPs[0] {first}"),
                        ))
                    }
                }
            }
            None if cluster_ips.is_empty() => {
                return Err(ctx.err(
                    "spec.clusterIP",
                    "required (svc-proxy does not allocate cluster IPs)",
                ))
            }
            None => {}
        }
    }
    let mut external_ips = Vec::new();
    for (i, v) in ctx
        .opt_list(spec, "spec", "externalIPs")?
        .iter()
        .enumerate()
    {
        external_ips.push(ctx.ip(v, &format!("spec.externalIPs[{i}]"))?);
    }

    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, v) in ctx.opt_list(spec, "spec", "ports")?.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let p = ctx.map(v, &field)?;
        let port_name = ctx.opt_str(p, &field, "name")?.unwrap_or("").to_string();
        let protocol = ctx.protocol(p, &field)?;
        let port = ctx.port(
            Ctx::opt(p, "port").ok_or_else(|| ctx.err(&join(&field, "port"), "required"))?,
            &join(&field, "port"),
        )?;
        let target_field = join(&field, "targetPort");
        let target_port = match Ctx::opt(p, "targetPort") {
            None => TargetPort::Number(port),
            Some(Value::String(s)) => match s.parse::<i64>() {
                Ok(n) => TargetPort::Number(ctx.port(&Value::from(n), &target_field)?),
                Err(_) if is_port_name(s) => TargetPort::Named(s.clone()),
                Err(_) => {
                    return Err(ctx.err(
                        &target_field,
                        format!(
                            "{s:?} is neither a port number nor a port name (1-15 lowercase \
                             letters, digits and inner hyphens)"
                        ),
                    ))
                }
            },
            Some(v) => TargetPort::Number(ctx.port(v, &target_field)?),
        };
        if let Some(j) = ports
            .iter()
            .position(|q| q.port == port && q.protocol == protocol)
        {
            return Err(ctx.err(
                &join(&field, "port"),
                format!(
                    "duplicate port {port}/{} (also spec.ports[{j}])",
                    protocol.as_str().to_uppercase()
                ),
            ));
        }
        if !ports.is_empty() {
            let unnamed = if port_name.is_empty() {
                Some(i)
            } else {
                ports.iter().position(|q| q.name.is_empty())
            };
            if let Some(j) = unnamed {
                return Err(ctx.err(
                    &format!("spec.ports[{j}].name"),
                    "required when a Service has more than one port",
                ));
            }
        }
        if let Some(j) = ports.iter().position(|q| q.name == port_name) {
            return Err(ctx.err(
                &join(&field, "name"),
                format!("duplicate port name {port_name:?} (also spec.ports[{j}])"),
            ));
        }
        ports.push(ServicePort {
            name: port_name,
            protocol,
            port,
            target_port,
        });
    }
    if ports.is_empty() && !headless {
        return Err(ctx.err("spec.ports", "required (at least one port)"));
    }

    let affinity_timeout = match ctx
        .opt_str(spec, "spec", "sessionAffinity")?
        .unwrap_or("None")
    {
        "None" => None,
        "ClientIP" => Some(affinity_timeout(ctx, spec)?),
        other => {
            return Err(ctx.err(
                "spec.sessionAffinity",
                format!("unknown session affinity {other:?} (expected None or ClientIP)"),
            ))
        }
    };
    Ok(Service {
        namespace,
        name,
        cluster_ips,
        external_ips: if headless { Vec::new() } else { external_ips },
        selector,
        ports,
        affinity_timeout,
        scheduler,
    })
}

fn affinity_timeout(ctx: &Ctx<'_>, spec: &Map<String, Value>) -> Result<u32> {
    let field = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
    let v = Ctx::opt(spec, "sessionAffinityConfig")
        .and_then(|c| c.get("clientIP"))
        .and_then(|c| c.get("timeoutSeconds"))
        .filter(|v| !v.is_null());
    match v {
        None => Ok(DEFAULT_AFFINITY_TIMEOUT),
        Some(v) => match v.as_i64() {
            Some(n) if (1..=86400).contains(&n) => Ok(n as u32),
            Some(n) => Err(ctx.err(field, format!("{n} is out of range 1-86400"))),
            None => Err(ctx.err(
                field,
                format!("expected a number of seconds, found {}", show(v)),
            )),
        },
    }
}

fn endpoint_slice(
    ctx: &Ctx<'_>,
    m: &Map<String, Value>,
    meta: &Map<String, Value>,
    namespace: String,
    name: String,
) -> Result<Option<EndpointSlice>> {
    let labels = ctx.string_map(meta, "metadata", "labels")?;
    let service_name = labels
        .get(SERVICE_NAME_LABEL)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ctx.err(
                &format!("metadata.labels.{SERVICE_NAME_LABEL}"),
                "required (names the Service)",
            )
        })?
        .clone();
    let address_type = ctx.req_str(m, "", "addressType")?;
    let want_v4 = match address_type {
        "IPv4" => true,
        "IPv6" => false,
        // Valid Kubernetes (deprecated), but nothing IPVS can forward to: kube-proxy skips
        // these too, as if they were absent.
        "FQDN" => {
            log::warn!(
                "{}",
                ctx.err("addressType", "FQDN is not supported; the slice is ignored")
            );
            return Ok(None);
        }
        other => {
            return Err(ctx.err(
                "addressType",
                format!("unsupported address type {other:?} (expected IPv4, IPv6 or FQDN)"),
            ))
        }
    };
    let mut ports: Vec<SlicePort> = Vec::new();
    for (i, v) in ctx.opt_list(m, "", "ports")?.iter().enumerate() {
        let field = format!("ports[{i}]");
        let p = ctx.map(v, &field)?;
        let port_name = ctx.opt_str(p, &field, "name")?.unwrap_or("").to_string();
        let protocol = ctx.protocol(p, &field)?;
        let port = ctx.port(
            Ctx::opt(p, "port").ok_or_else(|| ctx.err(&join(&field, "port"), "required"))?,
            &join(&field, "port"),
        )?;
        if let Some(j) = ports
            .iter()
            .position(|q| q.name == port_name && q.protocol == protocol)
        {
            return Err(ctx.err(
                &join(&field, "name"),
                format!("duplicate port name {port_name:?} (also ports[{j}])"),
            ));
        }
        ports.push(SlicePort {
            name: port_name,
            protocol,
            port,
        });
    }
    let mut endpoints = Vec::new();
    for (i, v) in ctx.opt_list(m, "", "endpoints")?.iter().enumerate() {
        let field = format!("endpoints[{i}]");
        let e = ctx.map(v, &field)?;
        let mut addresses = Vec::new();
        for (j, a) in ctx.opt_list(e, &field, "addresses")?.iter().enumerate() {
            let f = format!("{field}.addresses[{j}]");
            let ip = ctx.ip(a, &f)?;
            if ip.is_ipv4() != want_v4 {
                return Err(ctx.err(
                    &f,
                    format!("{ip} does not match addressType {address_type}"),
                ));
            }
            addresses.push(ip);
        }
        if addresses.is_empty() {
            return Err(ctx.err(
                &join(&field, "addresses"),
                "required (at least one address)",
            ));
        }
        let empty = Map::new();
        let cf = join(&field, "conditions");
        let conditions = match Ctx::opt(e, "conditions") {
            Some(c) => ctx.map(c, &cf)?,
            None => &empty,
        };
        let ready = ctx.opt_bool(conditions, &cf, "ready")?.unwrap_or(true);
        let serving = ctx.opt_bool(conditions, &cf, "serving")?.unwrap_or(ready);
        let terminating = ctx
            .opt_bool(conditions, &cf, "terminating")?
            .unwrap_or(false);
        endpoints.push(Endpoint {
            addresses,
            ready,
            serving,
            terminating,
        });
    }
    Ok(Some(EndpointSlice {
        namespace,
        name,
        service_name,
        ports,
        endpoints,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIO: &str = include_str!("../../conf/services/app-service.yaml");

    fn one(text: &str) -> Object {
        let mut v = parse("t.yaml", text, false).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn service(text: &str) -> Service {
        match one(text) {
            Object::Service(s) => s,
            other => panic!("not a Service: {other:?}"),
        }
    }

    fn invalid(text: &str) -> (String, String) {
        match parse("t.yaml", text, false) {
            Err(ManifestError::Invalid { field, message, .. }) => (field, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn the_scenario_service_verbatim() {
        assert_eq!(
            service(SCENARIO),
            Service {
                namespace: "default".into(),
                name: "app-service".into(),
                cluster_ips: vec!["10.100.100.100".parse().unwrap()],
                external_ips: vec![],
                selector: Some(BTreeMap::from([("component".into(), "app".into())])),
                ports: vec![ServicePort {
                    name: "".into(),
                    protocol: Protocol::Tcp,
                    port: 8080,
                    target_port: TargetPort::Number(8080)
                }],
                affinity_timeout: None,
                scheduler: None,
            }
        );
    }

    #[test]
    fn full_service_with_affinity_external_ips_udp_and_scheduler() {
        let s = service(
            r#"
apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: kube-system
  annotations: {svc-proxy/scheduler: wlc}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00::10"]
  externalIPs: [192.0.2.1]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports:
    - {name: dns, protocol: UDP, port: 53, targetPort: "5353"}
    - {name: dns-tcp, protocol: TCP, port: 53, targetPort: dns-port}
"#,
        );
        assert_eq!(s.namespace, "kube-system");
        assert_eq!(
            s.cluster_ips,
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::10".parse().unwrap()
            ]
        );
        assert_eq!(s.external_ips, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.affinity_timeout, Some(600));
        assert_eq!(s.scheduler.as_deref(), Some("wlc"));
        assert_eq!(
            s.ports,
            vec![
                ServicePort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    target_port: TargetPort::Number(5353)
                },
                ServicePort {
                    name: "dns-tcp".into(),
                    protocol: Protocol::Tcp,
                    port: 53,
                    target_port: TargetPort::Named("dns-port".into())
                },
            ]
        );
        let s = service("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.0.0.1, sessionAffinity: ClientIP, ports: [{port: 80}]}");
        assert_eq!(s.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
    }

    #[test]
    fn headless_and_external_name_services_program_nothing() {
        let s = service("apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec: {clusterIP: None, selector: {a: b}}");
        assert!(s.cluster_ips.is_empty() && s.ports.is_empty());
        let s = service("apiVersion: v1\nkind: Service\nmetadata: {name: e}\nspec: {type: ExternalName, externalName: x.example}");
        assert!(s.cluster_ips.is_empty());
    }

    #[test]
    fn endpoint_slice_conditions_default_as_kubernetes_defines_them() {
        let o = one(r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-abc
  labels: {kubernetes.io/service-name: app-service}
addressType: IPv4
ports: [{name: "", protocol: TCP, port: 8080}]
endpoints:
  - addresses: [10.0.0.11]
  - addresses: [10.0.0.21]
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.0.0.31]
    conditions: {ready: false}
"#);
        let Object::EndpointSlice(e) = o else {
            panic!("not a slice")
        };
        assert_eq!(e.service_name, "app-service");
        assert_eq!(
            e.ports,
            vec![SlicePort {
                name: "".into(),
                protocol: Protocol::Tcp,
                port: 8080
            }]
        );
        let conds: Vec<(bool, bool, bool)> = e
            .endpoints
            .iter()
            .map(|x| (x.ready, x.serving, x.terminating))
            .collect();
        assert_eq!(
            conds,
            vec![
                (true, true, false),
                (false, true, true),
                (false, false, false)
            ]
        );
    }

    /// FQDN slices are valid Kubernetes but carry nothing IPVS can forward to: skipped (logged),
    /// like kube-proxy does, without failing the file.
    #[test]
    fn fqdn_endpoint_slices_are_skipped() {
        let yaml = format!("{SCENARIO}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: f, labels: {{kubernetes.io/service-name: app-service}}}}\naddressType: FQDN\nendpoints: [{{addresses: [db.example.com]}}]\n");
        let v = parse("t.yaml", &yaml, false).unwrap();
        assert_eq!(
            v.iter().map(Object::id).collect::<Vec<_>>(),
            vec!["Service default/app-service"]
        );
    }

    #[test]
    fn multi_document_yaml_json_stream_and_list() {
        let yaml = format!("---\n{SCENARIO}---\napiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec: {{clusterIP: 10.0.0.2, ports: [{{port: 80}}]}}\n---\n");
        let v = parse("t.yaml", &yaml, false).unwrap();
        assert_eq!(
            v.iter().map(Object::id).collect::<Vec<_>>(),
            vec!["Service default/app-service", "Service default/b"]
        );

        let json = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.0.0.1","ports":[{"port":80}]}}
{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"a-1","labels":{"kubernetes.io/service-name":"a"}},"addressType":"IPv4","ports":[{"port":8080}],"endpoints":[{"addresses":["10.0.0.11"]}]}]}"#;
        let v = parse("t.json", json, true).unwrap();
        assert_eq!(
            v.iter().map(Object::id).collect::<Vec<_>>(),
            vec!["Service default/a", "EndpointSlice default/a-1"]
        );
    }

    const BASE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n";

    #[test]
    fn every_bad_input_names_its_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("spec: {clusterIP: 10.0.0.300, ports: [{port: 80}]}", "spec.clusterIP", "\"10.0.0.300\" is not an IP address"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 70000}]}", "spec.ports[0].port", "70000 is out of range 1-65535"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 0}]}", "spec.ports[0].port", "0 is out of range 1-65535"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: '80'}]}", "spec.ports[0].port", "expected a port number, found \"80\""),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80, targetPort: 0}]}", "spec.ports[0].targetPort", "0 is out of range 1-65535"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80, targetPort: Web_Port}]}", "spec.ports[0].targetPort", "\"Web_Port\" is neither a port number nor a port name (1-15 lowercase letters, digits and inner hyphens)"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80, protocol: ICMP}]}", "spec.ports[0].protocol", "unknown protocol \"ICMP\" (expected TCP, UDP or SCTP)"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80, protocol: tcp}]}", "spec.ports[0].protocol", "unknown protocol \"tcp\" (expected TCP, UDP or SCTP)"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{name: a, port: 80}, {name: b, port: 80}]}", "spec.ports[1].port", "duplicate port 80/TCP (also spec.ports[0])"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{name: a, port: 80}, {name: a, port: 81}]}", "spec.ports[1].name", "duplicate port name \"a\" (also spec.ports[0])"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80}, {port: 81}]}", "spec.ports[1].name", "required when a Service has more than one port"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80}, {name: b, port: 81}]}", "spec.ports[0].name", "required when a Service has more than one port"),
            ("spec: {clusterIP: 10.0.0.1}", "spec.ports", "required (at least one port)"),
            ("spec: {ports: [{port: 80}]}", "spec.clusterIP", "required (svc-proxy does not allocate cluster IPs)"),
            ("spec: {clusterIP: 10.0.0.1, clusterIPs: [10.0.0.2], ports: [{port: 80}]}", "spec.clusterIP", "10.0.0.1 differs from spec.clusterIPs[0] 10.0.0.2"),
            ("spec: {clusterIP: 10.0.0.1, externalIPs: [nope], ports: [{port: 80}]}", "spec.externalIPs[0]", "\"nope\" is not an IP address"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80}], sessionAffinity: Sticky}", "spec.sessionAffinity", "unknown session affinity \"Sticky\" (expected None or ClientIP)"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80}], sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}}", "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "0 is out of range 1-86400"),
            ("spec: {type: Magic, clusterIP: 10.0.0.1, ports: [{port: 80}]}", "spec.type", "unknown Service type \"Magic\" (expected ClusterIP, NodePort, LoadBalancer or ExternalName)"),
            ("spec: {clusterIP: 10.0.0.1, ports: {port: 80}}", "spec.ports", "expected a list, found a mapping"),
            ("spec: {clusterIP: 10.0.0.1, selector: {app: 1}, ports: [{port: 80}]}", "spec.selector.app", "expected a string, found a number"),
        ];
        for (spec, field, message) in cases {
            let (f, m) = invalid(&format!("{BASE}{spec}"));
            assert_eq!((f.as_str(), m.as_str()), (*field, *message), "{spec}");
        }
        let (f, m) = invalid("apiVersion: v1\nkind: Service\nmetadata: {name: s, annotations: {svc-proxy/scheduler: fastest}}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}");
        assert_eq!(f, "metadata.annotations.svc-proxy/scheduler");
        assert!(m.starts_with("unknown IPVS scheduler \"fastest\""), "{m}");
    }

    #[test]
    fn bad_objects_and_kinds_are_reported_with_file_document_and_object() {
        let two_docs = format!(
            "{SCENARIO}---\n{BASE}spec: {{clusterIP: 10.0.0.1, ports: [{{port: 99999}}]}}\n"
        );
        let twice = format!("{SCENARIO}---\n{SCENARIO}");
        let cases: &[(&str, &str, &str)] = &[
            (
                "dir/app.yaml",
                &two_docs,
                "dir/app.yaml: document 2 (Service default/s): spec.ports[0].port: 99999 is out of range 1-65535",
            ),
            (
                "d.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
                "d.yaml: document 1 (?): kind: unknown kind \"Deployment\" (expected Service, EndpointSlice or List)",
            ),
            (
                "d.yaml",
                "apiVersion: v2\nkind: Service\nmetadata: {name: x}\n",
                "d.yaml: document 1 (?): apiVersion: \"v2\" is not supported for Service (expected \"v1\")",
            ),
            (
                "d.yaml",
                "apiVersion: v1\nkind: Service\nmetadata: {}\n",
                "d.yaml: document 1 (?): metadata.name: required",
            ),
            (
                "d.yaml",
                "- 1\n- 2\n",
                "d.yaml: document 1 (?): (document): expected a mapping, found a list",
            ),
            (
                "d.yaml",
                &twice,
                "d.yaml: Service default/app-service defined twice (documents 1 and 2)",
            ),
            (
                "l.yaml",
                "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: s}, spec: {clusterIP: x, ports: [{port: 1}]}}\n",
                "l.yaml: document 1 (Service default/s): items[0].spec.clusterIP: \"x\" is not an IP address",
            ),
        ];
        for (file, text, want) in cases {
            let err = parse(file, text, false).unwrap_err();
            assert_eq!(err.to_string(), *want, "{text}");
        }
    }

    #[test]
    fn syntax_errors_name_the_document() {
        let err = parse(
            "s.yaml",
            &format!("{SCENARIO}---\nkind: [unclosed\n"),
            false,
        )
        .unwrap_err();
        assert!(
            matches!(&err, ManifestError::Syntax { file, document: 2, .. } if file == "s.yaml"),
            "{err}"
        );
        let err = parse("s.json", "{\"kind\": \"Service\",}", true).unwrap_err();
        assert!(
            matches!(&err, ManifestError::Syntax { document: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn bad_endpoint_slices_name_their_field() {
        let base = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, labels: {kubernetes.io/service-name: s}}\n";
        let cases: &[(&str, &str, &str)] = &[
            ("addressType: Other", "addressType", "unsupported address type \"Other\" (expected IPv4, IPv6 or FQDN)"),
            ("addressType: IPv4\nendpoints: [{addresses: [\"fd00::1\"]}]", "endpoints[0].addresses[0]", "fd00::1 does not match addressType IPv4"),
            ("addressType: IPv4\nendpoints: [{addresses: []}]", "endpoints[0].addresses", "required (at least one address)"),
            ("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: yes-ish}}]", "endpoints[0].conditions.ready", "expected true or false, found a string"),
            ("addressType: IPv4\nports: [{port: 65536}]", "ports[0].port", "65536 is out of range 1-65535"),
        ];
        for (rest, field, message) in cases {
            let (f, m) = invalid(&format!("{base}{rest}\n"));
            assert_eq!((f.as_str(), m.as_str()), (*field, *message), "{rest}");
        }
        let (f, m) = invalid("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv4\n");
        assert_eq!(
            (f.as_str(), m.as_str()),
            (
                "metadata.labels.kubernetes.io/service-name",
                "required (names the Service)"
            )
        );
    }

    /// Every truncation and thousands of byte mutations of valid manifests (YAML and JSON): the
    /// parser returns objects or an error, never panics. Inputs come from users; a panic would
    /// stop the daemon.
    #[test]
    fn mangled_input_never_panics() {
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a-1, labels: {kubernetes.io/service-name: app-service}}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n- addresses: [10.0.0.11]\n  conditions: {ready: false, serving: true, terminating: true}\n";
        let json = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.0.0.1","sessionAffinity":"ClientIP","ports":[{"port":80,"protocol":"UDP"}]}}]}"#;
        let samples = [
            (format!("{SCENARIO}---\n{slice}"), false),
            (json.to_string(), true),
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const ALPHABET: &[u8] = b"{}[]:,-\"' \n0123456789.xZ";
        let mut parsed = 0;
        for (text, is_json) in &samples {
            let bytes = text.as_bytes();
            for end in 0..bytes.len() {
                let cut = String::from_utf8_lossy(&bytes[..end]);
                parsed += usize::from(parse("t", &cut, *is_json).is_ok());
            }
            for _ in 0..3000 {
                let mut b = bytes.to_vec();
                for _ in 0..1 + next() % 4 {
                    let at = (next() % b.len() as u64) as usize;
                    b[at] = ALPHABET[(next() % ALPHABET.len() as u64) as usize];
                }
                parsed += usize::from(parse("t", &String::from_utf8_lossy(&b), *is_json).is_ok());
            }
        }
        // Some mutations stay valid (a changed digit, a truncation at a document end).
        assert!(parsed > 0);
    }
}
