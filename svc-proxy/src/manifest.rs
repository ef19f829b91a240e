//! Kubernetes manifests as users write them: `v1` `Service` and `discovery.k8s.io/v1`
//! `EndpointSlice` (and `v1` `List` of them), YAML or JSON, several documents per file. Decoded
//! into the k8s-openapi types (field paths from `serde_path_to_error`) and judged by
//! [`crate::validate`], like objects from the API; an error names the file, the document, the
//! object and the field.

use crate::objects::Object;
use crate::validate::{self, Filter, Verdict};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

/// Largest manifest file read (a 10,000-Service `List` is about 10 MiB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Deepest nesting of mappings and lists accepted; Kubernetes objects need about ten levels.
/// Checked before the YAML parser runs, whose cost grows with the square of the nesting.
pub const MAX_DEPTH: usize = 64;

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

type Result<T, E = ManifestError> = std::result::Result<T, E>;

/// Reads and validates one manifest file; all or nothing. Special files (a FIFO, a device) are
/// refused before they are opened, and at most [`MAX_FILE_BYTES`] are read.
pub fn load_file(path: &Path, filter: &Filter) -> Result<Vec<Object>> {
    let file = path.display().to_string();
    let read_err = |message: String| ManifestError::Read {
        file: file.clone(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| read_err(e.to_string()))?;
    if !meta.is_file() {
        return Err(read_err("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(read_err(format!(
            "{} bytes is more than the {MAX_FILE_BYTES} a manifest file may have",
            meta.len()
        )));
    }
    let f = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
    // The file may have grown since it was measured.
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| read_err(e.to_string()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(read_err(format!(
            "more than the {MAX_FILE_BYTES} bytes a manifest file may have"
        )));
    }
    parse(&file, &text, is_json(path), filter)
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
pub fn parse(file: &str, text: &str, json: bool, filter: &Filter) -> Result<Vec<Object>> {
    let docs = documents(text, json).map_err(|(document, message)| ManifestError::Syntax {
        file: file.to_string(),
        document,
        message,
    })?;
    let mut objects = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let at = Doc {
            file,
            document: i + 1,
            filter,
        };
        let mut found = Vec::new();
        at.object(doc, "", &mut found)?;
        for o in found {
            let id = o.reference().to_string();
            if let Some(first) = seen.insert(id.clone(), i + 1) {
                return Err(ManifestError::Duplicate {
                    file: file.to_string(),
                    object: id,
                    first,
                    second: i + 1,
                });
            }
            objects.push(o);
        }
    }
    Ok(objects)
}

/// Where in a file an object sits, for error messages.
struct Doc<'a> {
    file: &'a str,
    document: usize,
    filter: &'a Filter,
}

impl Doc<'_> {
    fn err(&self, object: &str, field: String, message: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_string(),
            document: self.document,
            object: object.to_string(),
            field,
            message: message.into(),
        }
    }

    /// One top-level document or `List` item; `prefix` is its path (`items[2].`).
    fn object(&self, v: Value, prefix: &str, out: &mut Vec<Object>) -> Result<()> {
        let Value::Object(m) = v else {
            return Err(self.err(
                "?",
                format!("{prefix}(document)"),
                format!("expected a mapping, found {}", kind(&v)),
            ));
        };
        let text = |key: &str| -> Result<&str> {
            match m.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s),
                None | Some(Value::Null) | Some(Value::String(_)) => {
                    Err(self.err("?", format!("{prefix}{key}"), "required"))
                }
                Some(other) => Err(self.err(
                    "?",
                    format!("{prefix}{key}"),
                    format!("expected a string, found {}", kind(other)),
                )),
            }
        };
        let kind_name = text("kind")?.to_string();
        let api = text("apiVersion")?;
        let want_api = match kind_name.as_str() {
            "Service" | "List" => "v1",
            "EndpointSlice" => "discovery.k8s.io/v1",
            other => {
                return Err(self.err(
                    "?",
                    format!("{prefix}kind"),
                    format!("unknown kind {other:?} (expected Service, EndpointSlice or List)"),
                ))
            }
        };
        if api != want_api {
            return Err(self.err(
                "?",
                format!("{prefix}apiVersion"),
                format!("{api:?} is not supported for {kind_name} (expected {want_api:?})"),
            ));
        }
        if kind_name == "List" {
            let items = match m.get("items") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a.clone(),
                Some(other) => {
                    return Err(self.err(
                        "?",
                        format!("{prefix}items"),
                        format!("expected a list, found {}", kind(other)),
                    ))
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                self.object(item, &format!("{prefix}items[{i}]."), out)?;
            }
            return Ok(());
        }
        let object = object_name(&kind_name, &m);
        let decoded = |e: serde_path_to_error::Error<serde_json::Error>| {
            let path = e.path().to_string();
            self.err(
                &object,
                format!("{prefix}{path}"),
                e.into_inner().to_string(),
            )
        };
        let judged =
            |e: validate::Invalid| self.err(&object, format!("{prefix}{}", e.field), e.message);
        let verdict = if kind_name == "Service" {
            let svc = serde_path_to_error::deserialize(Value::Object(m)).map_err(decoded)?;
            validate::service(&svc, self.filter)
                .map_err(judged)?
                .map(Object::Service)
        } else {
            let slice = serde_path_to_error::deserialize(Value::Object(m)).map_err(decoded)?;
            validate::endpoint_slice(&slice)
                .map_err(judged)?
                .map(Object::EndpointSlice)
        };
        match verdict {
            Verdict::Accept(o) => out.push(o),
            Verdict::Skip(why) => log::debug!(
                "{}: document {} ({object}): skipped: {why}",
                self.file,
                self.document
            ),
        }
        Ok(())
    }
}

impl<T> Verdict<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Verdict<U> {
        match self {
            Verdict::Accept(t) => Verdict::Accept(f(t)),
            Verdict::Skip(why) => Verdict::Skip(why),
        }
    }
}

/// `Service default/app` for error messages, from whatever the document's metadata says.
fn object_name(kind_name: &str, m: &Map<String, Value>) -> String {
    let meta = m.get("metadata").and_then(Value::as_object);
    let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    match get("name").filter(|n| !n.is_empty()) {
        Some(name) => format!(
            "{kind_name} {}/{name}",
            get("namespace")
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
        ),
        None => "?".to_string(),
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

/// The documents of a YAML or JSON text as plain values; an error gives the document (1-based)
/// and the reason. Nesting is bounded before the parser runs and duplicate mapping keys are
/// refused (YAML and JSON both say keys are unique; a silent last-wins hides mistakes).
fn documents(text: &str, json: bool) -> std::result::Result<Vec<Value>, (usize, String)> {
    if let Some((line, depth)) = too_deep(text) {
        return Err((
            1,
            format!("line {line}: nesting deeper than {MAX_DEPTH} levels ({depth}); not parsed"),
        ));
    }
    let mut docs = Vec::new();
    if json {
        for (i, v) in serde_json::Deserializer::from_str(text)
            .into_iter::<Strict>()
            .enumerate()
        {
            docs.push(v.map_err(|e| (i + 1, e.to_string()))?.0);
        }
    } else {
        for (i, d) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let v = Strict::deserialize_from(d).map_err(|e| (i + 1, e.to_string()))?;
            docs.push(v);
        }
    }
    Ok(docs)
}

/// A value decoded with unique mapping keys and bounded depth.
struct Strict(Value);

impl Strict {
    fn deserialize_from<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Value, D::Error> {
        Depth(0).deserialize(d)
    }
}

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Strict, D::Error> {
        Depth(0).deserialize(d).map(Strict)
    }
}

/// Decodes one value at nesting depth `.0`.
#[derive(Clone, Copy)]
struct Depth(usize);

impl<'de> DeserializeSeed<'de> for Depth {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Depth {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a number JSON can hold")))
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let inner = self.deeper::<A::Error>()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let inner = self.deeper::<A::Error>()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(inner)? {
            let key = match key {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(de::Error::custom(format!(
                        "a mapping key must be a string, found {}",
                        kind(&other)
                    )))
                }
            };
            let value = map.next_value_seed(inner)?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> std::result::Result<Value, A::Error> {
        Err(de::Error::custom("YAML tags (!tag) are not supported"))
    }
}

impl Depth {
    fn deeper<E: de::Error>(self) -> std::result::Result<Depth, E> {
        if self.0 >= MAX_DEPTH {
            Err(E::custom(format!("nesting deeper than {MAX_DEPTH} levels")))
        } else {
            Ok(Depth(self.0 + 1))
        }
    }
}

/// The first line (1-based) where flow collections (`[`, `{`) or compact block indicators
/// (`- - -`) nest deeper than [`MAX_DEPTH`], and that depth: a linear scan that keeps a
/// pathological input away from the parser. Quoted strings and comments are skipped; in block
/// context a bracket counts only where a flow collection can start (not inside a plain scalar).
fn too_deep(text: &str) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let bytes = text.as_bytes();
    let mut line = 1;
    let mut line_start = true;
    let mut compact = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' {
            line += 1;
            line_start = true;
            compact = 0;
            i += 1;
            continue;
        }
        match quote {
            Some(q) => {
                if b == b'\\' && q == b'"' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => {
                let prev = if i == 0 { b'\n' } else { bytes[i - 1] };
                let token_start = matches!(prev, b' ' | b'\t' | b'\n' | b',' | b':' | b'-');
                match b {
                    b'"' | b'\'' if token_start || depth > 0 => quote = Some(b),
                    b'#' if prev == b' ' || prev == b'\t' || prev == b'\n' => {
                        while i + 1 < bytes.len() && bytes[i + 1] != b'\n' {
                            i += 1;
                        }
                    }
                    b'[' | b'{' if depth > 0 || token_start => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Some((line, depth));
                        }
                    }
                    b']' | b'}' if depth > 0 => depth -= 1,
                    b'-' | b'?' if line_start && depth == 0 => {
                        let next = bytes.get(i + 1).copied().unwrap_or(b'\n');
                        if next == b' ' || next == b'\n' || next == b'\t' {
                            compact += 1;
                            if compact > MAX_DEPTH {
                                return Some((line, compact));
                            }
                        } else {
                            line_start = false;
                        }
                    }
                    b' ' | b'\t' => {}
                    _ => line_start = false,
                }
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{EndpointSlice, Service, ServicePort, ServiceType, SlicePort, TargetPort};
    use nodenet::Protocol;
    use std::net::IpAddr;

    const SCENARIO: &str = include_str!("../../conf/services/app-service.yaml");

    fn objects(text: &str) -> Result<Vec<Object>> {
        parse("t.yaml", text, false, &Filter::default())
    }

    fn one(text: &str) -> Object {
        let mut v = objects(text).unwrap();
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
        match objects(text) {
            Err(ManifestError::Invalid { field, message, .. }) => (field, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn ids(v: &[Object]) -> Vec<String> {
        v.iter().map(|o| o.reference().to_string()).collect()
    }

    #[test]
    fn the_scenario_service_verbatim() {
        assert_eq!(
            service(SCENARIO),
            Service {
                namespace: "default".into(),
                name: "app-service".into(),
                service_type: ServiceType::ClusterIP,
                cluster_ips: vec!["10.100.100.100".parse().unwrap()],
                external_ips: vec![],
                load_balancer_ips: vec![],
                load_balancer_source_ranges: vec![],
                selector: Some(BTreeMap::from([("component".into(), "app".into())])),
                ports: vec![ServicePort {
                    name: "".into(),
                    protocol: Protocol::Tcp,
                    port: 8080,
                    target_port: TargetPort::Number(8080),
                    node_port: None,
                }],
                affinity_timeout: None,
                scheduler: None,
                external_policy_local: false,
                internal_policy_local: false,
                health_check_node_port: None,
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
            s.ports
                .iter()
                .map(|p| (p.name.as_str(), p.protocol, p.port, p.target_port.clone()))
                .collect::<Vec<_>>(),
            vec![
                ("dns", Protocol::Udp, 53, TargetPort::Number(5353)),
                (
                    "dns-tcp",
                    Protocol::Tcp,
                    53,
                    TargetPort::Named("dns-port".into())
                ),
            ]
        );
        let s = service("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.0.0.1, sessionAffinity: ClientIP, ports: [{port: 80}]}");
        assert_eq!(s.affinity_timeout, Some(validate::DEFAULT_AFFINITY_TIMEOUT));
    }

    #[test]
    fn headless_and_external_name_services_are_skipped() {
        let v = objects("apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec: {clusterIP: None, selector: {a: b}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: e}\nspec: {type: ExternalName, externalName: x.example}").unwrap();
        assert!(v.is_empty(), "{v:?}");
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
        let EndpointSlice {
            service_name,
            ports,
            endpoints,
            ..
        } = e;
        assert_eq!(service_name, "app-service");
        assert_eq!(
            ports,
            vec![SlicePort {
                name: "".into(),
                protocol: Protocol::Tcp,
                port: 8080
            }]
        );
        let conds: Vec<(bool, bool, bool)> = endpoints
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

    /// FQDN slices are valid Kubernetes but carry nothing IPVS can forward to: skipped, like
    /// kube-proxy does, without failing the file.
    #[test]
    fn fqdn_endpoint_slices_are_skipped() {
        let yaml = format!("{SCENARIO}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: f, labels: {{kubernetes.io/service-name: app-service}}}}\naddressType: FQDN\nendpoints: [{{addresses: [db.example.com]}}]\n");
        assert_eq!(
            ids(&objects(&yaml).unwrap()),
            vec!["Service default/app-service"]
        );
    }

    #[test]
    fn multi_document_yaml_json_stream_and_list() {
        let yaml = format!("---\n{SCENARIO}---\napiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec: {{clusterIP: 10.0.0.2, ports: [{{port: 80}}]}}\n---\n");
        assert_eq!(
            ids(&objects(&yaml).unwrap()),
            vec!["Service default/app-service", "Service default/b"]
        );

        let json = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.0.0.1","ports":[{"port":80}]}}
{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"a-1","labels":{"kubernetes.io/service-name":"a"}},"addressType":"IPv4","ports":[{"port":8080}],"endpoints":[{"addresses":["10.0.0.11"]}]}]}"#;
        let v = parse("t.json", json, true, &Filter::default()).unwrap();
        assert_eq!(
            ids(&v),
            vec!["Service default/a", "EndpointSlice default/a-1"]
        );
    }

    const BASE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n";

    #[test]
    fn every_bad_input_names_its_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("spec: {clusterIP: 10.0.0.300, ports: [{port: 80}]}", "spec.clusterIP", "\"10.0.0.300\" is not an IP address"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 70000}]}", "spec.ports[0].port", "70000 is out of range 1-65535"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 0}]}", "spec.ports[0].port", "required (a port number 1-65535)"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{name: a}]}", "spec.ports[0].port", "required (a port number 1-65535)"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: '80'}]}", "spec.ports[0].port", "invalid type: string \"80\", expected i32"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80, targetPort: 70000}]}", "spec.ports[0].targetPort", "70000 is out of range 1-65535"),
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
            ("spec: {clusterIP: 127.0.0.1, ports: [{port: 80}]}", "spec.clusterIP", "127.0.0.1 is a loopback address, which cannot be a virtual service address"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80}], sessionAffinity: Sticky}", "spec.sessionAffinity", "unknown session affinity \"Sticky\" (expected None or ClientIP)"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80}], sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}}", "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "0 is out of range 1-86400"),
            ("spec: {type: Magic, clusterIP: 10.0.0.1, ports: [{port: 80}]}", "spec.type", "unknown Service type \"Magic\" (expected ClusterIP, NodePort, LoadBalancer or ExternalName)"),
            ("spec: {clusterIP: 10.0.0.1, externalTrafficPolicy: Nearby, ports: [{port: 80}]}", "spec.externalTrafficPolicy", "unknown traffic policy \"Nearby\" (expected Cluster or Local)"),
            ("spec: {clusterIP: 10.0.0.1, ports: {port: 80}}", "spec.ports", "invalid type: map, expected a sequence"),
            ("spec: {clusterIP: 10.0.0.1, selector: {app: 1}, ports: [{port: 80}]}", "spec.selector.app", "invalid type: integer `1`, expected a string"),
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
            let err = parse(file, text, false, &Filter::default()).unwrap_err();
            assert_eq!(err.to_string(), *want, "{text}");
        }
    }

    #[test]
    fn syntax_errors_name_the_document() {
        let err = objects(&format!("{SCENARIO}---\nkind: [unclosed\n")).unwrap_err();
        assert!(
            matches!(&err, ManifestError::Syntax { file, document: 2, .. } if file == "t.yaml"),
            "{err}"
        );
        let err = parse(
            "s.json",
            "{\"kind\": \"Service\",}",
            true,
            &Filter::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ManifestError::Syntax { document: 1, .. }),
            "{err}"
        );
    }

    /// A key given twice is an error in YAML and JSON alike, never a silent last-wins: anywhere
    /// in the object (metadata, spec, a port, labels), and whatever the values.
    #[test]
    fn duplicate_mapping_keys_are_refused() {
        let cases = [
            format!("{SCENARIO}  clusterIP: 10.0.0.9\n"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, name: t}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n".to_string(),
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, labels: {a: b, a: b}}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n".to_string(),
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80, port: 81}]}\n".to_string(),
        ];
        for text in &cases {
            let err = objects(text).unwrap_err();
            assert!(
                matches!(&err, ManifestError::Syntax { message, .. } if message.contains("duplicate key")),
                "{text}: {err}"
            );
        }
        let json = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.0.0.1","clusterIP":"10.0.0.2","ports":[{"port":80}]}}"#;
        let err = parse("t.json", json, true, &Filter::default()).unwrap_err();
        assert!(
            err.to_string().contains("duplicate key \"clusterIP\""),
            "{err}"
        );
    }

    /// Deep nesting is refused before the YAML parser runs (its cost grows with the square of
    /// the depth: 150,000 levels took a minute), in flow and in compact block form, YAML and
    /// JSON; ordinary brackets inside quoted or plain scalars do not count.
    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        for deep in [
            format!("{}{}", "[".repeat(150_000), "]".repeat(150_000)),
            format!("a: {}1{}", "{b: ".repeat(100), "}".repeat(100)),
            format!("k: {}{}", "[".repeat(150_000), "]".repeat(150_000)),
            format!("{}x\n", "- ".repeat(100_000)),
        ] {
            let started = std::time::Instant::now();
            let err = objects(&deep).unwrap_err();
            assert!(err.to_string().contains("nesting deeper than 64"), "{err}");
            // Not a timing assertion on the product: a guard that the scan, not the parser, ran.
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
        let err = parse(
            "t.json",
            &format!("{}{}", "[".repeat(70), "]".repeat(70)),
            true,
            &Filter::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nesting deeper than 64"), "{err}");
        let fine = format!(
            "{SCENARIO}  # a comment with [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nmetadata2: \"{}\"\nplain: a{}\n",
            "[".repeat(100),
            "[".repeat(100)
        );
        assert!(too_deep(&fine).is_none());
    }

    #[test]
    fn bad_endpoint_slices_name_their_field() {
        let base = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, labels: {kubernetes.io/service-name: s}}\n";
        let cases: &[(&str, &str, &str)] = &[
            ("addressType: Other", "addressType", "unsupported address type \"Other\" (expected IPv4, IPv6 or FQDN)"),
            ("endpoints: []", "addressType", "required"),
            ("addressType: IPv4\nendpoints: [{addresses: [\"fd00::1\"]}]", "endpoints[0].addresses[0]", "fd00::1 does not match addressType IPv4"),
            ("addressType: IPv4\nendpoints: [{addresses: []}]", "endpoints[0].addresses", "required (at least one address)"),
            ("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: yes-ish}}]", "endpoints[0].conditions.ready", "invalid type: string \"yes-ish\", expected a boolean"),
            ("addressType: IPv4\nports: [{port: 65536}]", "ports[0].port", "65536 is out of range 1-65535"),
            ("addressType: IPv4\nendpoints: [{addresses: [0.0.0.0]}]", "endpoints[0].addresses[0]", "0.0.0.0 is the unspecified address, which cannot be a real server"),
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
        let filter = Filter::default();
        for (text, is_json) in &samples {
            let bytes = text.as_bytes();
            for end in 0..bytes.len() {
                let cut = String::from_utf8_lossy(&bytes[..end]);
                parsed += usize::from(parse("t", &cut, *is_json, &filter).is_ok());
            }
            for _ in 0..3000 {
                let mut b = bytes.to_vec();
                for _ in 0..1 + next() % 4 {
                    let at = (next() % b.len() as u64) as usize;
                    b[at] = ALPHABET[(next() % ALPHABET.len() as u64) as usize];
                }
                parsed += usize::from(
                    parse("t", &String::from_utf8_lossy(&b), *is_json, &filter).is_ok(),
                );
            }
        }
        // Some mutations stay valid (a changed digit, a truncation at a document end).
        assert!(parsed > 0);
    }
}
