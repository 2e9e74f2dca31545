//! The cluster-file source's parser: a `kind: List` or a multi-document YAML of Namespace, Service,
//! `discovery.k8s.io/v1` EndpointSlice and Pod objects, as `kubectl get -o yaml` prints them, turned
//! into the compact [`model`](crate::model). Other kinds are skipped; a bad object is an error that
//! names the object and the field at fault, so an operator can fix the file from one log line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::model::{
    DnsPolicy, Endpoint, EndpointSlice, Namespace, Object, Pod, PodDnsConfig, PodPhase, Port, Protocol,
    Service, ServiceKind,
};

/// What went wrong with a cluster file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    /// The text is not YAML.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// One object is malformed: `object` says which one (position, kind, namespace/name) and
    /// `field` the path of the field inside it.
    #[error("{object}: {field}: {message}")]
    Object { object: String, field: String, message: String },
}

/// The parsed file: the objects nodedns uses and how many objects of other kinds were skipped.
#[derive(Debug, Default)]
pub struct ParsedFile {
    pub objects: Vec<Object>,
    pub skipped: usize,
}

/// Parses cluster-file text.
pub fn parse_cluster(text: &str) -> Result<ParsedFile, FileError> {
    let mut out = ParsedFile::default();
    // One document at a time: a cluster file of 100,000 pods held whole as JSON values would
    // cost twenty times its size.
    let mut reader = std::io::Cursor::new(text.as_bytes());
    let docs = serde_saphyr::read_with_options::<_, Value>(&mut reader, yaml_options(text.len()));
    for (d, doc) in docs.enumerate() {
        let doc = doc.map_err(|e| FileError::Yaml(e.to_string()))?;
        let doc_place = format!("document {}", d + 1);
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        if !kind.ends_with("List") {
            convert_item(&doc, &doc_place, &mut out)?;
            continue;
        }
        let items = match doc.get("items") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(FileError::Object {
                    object: format!("{doc_place} {kind}"),
                    field: "items".into(),
                    message: "expected a list of objects".into(),
                });
            }
        };
        for (i, item) in items.iter().enumerate() {
            // `kubectl get -o yaml` prints one List: name its items plainly.
            let place = if d == 0 { format!("items[{i}]") } else { format!("{doc_place} items[{i}]") };
            convert_item(item, &place, &mut out)?;
        }
    }
    Ok(out)
}

/// serde-saphyr's default budget (1,024 documents, 250,000 nodes) protects small config files;
/// a cluster file of 100,000 pods is millions of nodes. The limits here grow with the input (a YAML
/// node or document takes at least two bytes), while the alias limits that stop "billion laughs"
/// expansion stay at their defaults.
fn yaml_options(len: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_reader_input_bytes = None;
    budget.max_documents = budget.max_documents.max(len / 2 + 1);
    budget.max_nodes = budget.max_nodes.max(len / 2 + 1);
    budget.max_events = budget.max_events.max(len + 1);
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(len + 1);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

fn convert_item(item: &Value, place: &str, out: &mut ParsedFile) -> Result<(), FileError> {
    match convert_value(item, place)? {
        Some(object) => out.objects.push(object),
        None => out.skipped += 1,
    }
    Ok(())
}

/// Converts one API object, given as JSON (an item of a list file, or an object from a watch), to
/// the model. `place` names where it came from in errors. `None` for kinds DNS does not use.
pub fn convert_value(item: &Value, place: &str) -> Result<Option<Object>, FileError> {
    let kind = item.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = item.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let ns = item.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
    let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<no name>");
    let object = if kind == "Namespace" {
        format!("{place} {kind} {name}")
    } else {
        format!("{place} {kind} {ns}/{name}")
    };
    let err = |field: &str, message: String| FileError::Object {
        object: object.clone(),
        field: field.to_owned(),
        message,
    };
    let expected_api = match kind {
        "Namespace" | "Service" | "Pod" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        "" => return Err(err("kind", "missing".into())),
        _ => return Ok(None),
    };
    if api_version != expected_api {
        return Err(err(
            "apiVersion",
            format!("{kind} must be apiVersion {expected_api}, not {api_version:?}"),
        ));
    }
    let converted = match kind {
        "Namespace" => typed::<RawNamespace>(item).and_then(|r| r.convert()),
        "Service" => typed::<RawService>(item).and_then(|r| r.convert()),
        "EndpointSlice" => typed::<RawSlice>(item).and_then(|r| r.convert()),
        _ => typed::<RawPod>(item).and_then(|r| r.convert()),
    };
    converted.map(Some).map_err(|Invalid { field, message }| err(&field, message))
}

/// A field-level problem found while converting one object.
struct Invalid {
    field: String,
    message: String,
}

fn invalid(field: impl Into<String>, message: impl fmt::Display) -> Invalid {
    Invalid { field: field.into(), message: message.to_string() }
}

fn typed<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        invalid(if path == "." { "(object)".to_owned() } else { path }, e.into_inner())
    })
}

/// A DNS label as Kubernetes names are (RFC 1123): 1–63 of `[a-z0-9-]`, not starting or ending in
/// `-`. Upper case is accepted here and matched case-insensitively later.
fn check_label(field: &str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format_args!("{value:?} is not a DNS label (1-63 of a-z, 0-9, '-')")))
    }
}

fn parse_ip(field: &str, value: &str) -> Result<IpAddr, Invalid> {
    value.parse().map_err(|_| invalid(field, format_args!("{value:?} is not an IP address")))
}

fn parse_protocol(field: &str, value: Option<&str>) -> Result<Protocol, Invalid> {
    let value = value.unwrap_or("TCP");
    Protocol::from_k8s(value).ok_or_else(|| invalid(field, format_args!("{value:?} is not TCP, UDP or SCTP")))
}

fn parse_port(field: &str, port: i64) -> Result<u16, Invalid> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(field, format_args!("{port} is not a port number (1-65535)")))
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    deletion_timestamp: Option<String>,
}

impl Meta {
    fn name(&self) -> Result<String, Invalid> {
        let name = self.name.clone().ok_or_else(|| invalid("metadata.name", "missing"))?;
        if name.is_empty() {
            return Err(invalid("metadata.name", "empty"));
        }
        Ok(name)
    }

    fn namespace(&self) -> Result<String, Invalid> {
        let ns = self.namespace.clone().unwrap_or_else(|| "default".to_owned());
        check_label("metadata.namespace", &ns)?;
        Ok(ns)
    }
}

#[derive(Deserialize)]
struct RawNamespace {
    #[serde(default)]
    metadata: Meta,
}

impl RawNamespace {
    fn convert(self) -> Result<Object, Invalid> {
        let name = self.metadata.name()?;
        check_label("metadata.name", &name)?;
        Ok(Object::Namespace(Namespace { name }))
    }
}

#[derive(Deserialize)]
struct RawService {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: RawServiceSpec,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawServiceSpec {
    #[serde(rename = "type")]
    type_: Option<String>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Option<Vec<String>>,
    external_name: Option<String>,
    #[serde(default)]
    ports: Vec<RawPort>,
}

#[derive(Deserialize)]
struct RawPort {
    name: Option<String>,
    protocol: Option<String>,
    port: Option<i64>,
}

impl RawService {
    fn convert(self) -> Result<Object, Invalid> {
        let name = self.metadata.name()?;
        check_label("metadata.name", &name)?;
        let namespace = self.metadata.namespace()?;
        let spec = self.spec;
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            let target = non_empty(spec.external_name)
                .ok_or_else(|| invalid("spec.externalName", "missing for type ExternalName"))?;
            let bare = target.strip_suffix('.').unwrap_or(&target);
            if bare.is_empty() || bare.len() > 253 || bare.split('.').any(|l| l.is_empty() || l.len() > 63) {
                return Err(invalid("spec.externalName", format_args!("{target:?} is not a domain name")));
            }
            ServiceKind::ExternalName(target)
        } else {
            let (field, ips) = match (&spec.cluster_ips, &spec.cluster_ip) {
                (Some(ips), _) if !ips.is_empty() => ("spec.clusterIPs", ips.clone()),
                (_, Some(ip)) => ("spec.clusterIP", vec![ip.clone()]),
                _ => ("spec.clusterIP", Vec::new()),
            };
            if ips.first().is_some_and(|ip| ip == "None") {
                ServiceKind::Headless
            } else {
                let mut parsed = Vec::with_capacity(ips.len());
                for (i, ip) in ips.iter().enumerate().filter(|(_, ip)| !ip.is_empty()) {
                    let f =
                        if field == "spec.clusterIP" { field.to_owned() } else { format!("{field}[{i}]") };
                    parsed.push(parse_ip(&f, ip)?);
                }
                ServiceKind::ClusterIp(parsed)
            }
        };
        let mut ports = Vec::with_capacity(spec.ports.len());
        for (i, p) in spec.ports.into_iter().enumerate() {
            let number = p.port.ok_or_else(|| invalid(format!("spec.ports[{i}].port"), "missing"))?;
            ports.push(Port {
                protocol: parse_protocol(&format!("spec.ports[{i}].protocol"), p.protocol.as_deref())?,
                port: Some(parse_port(&format!("spec.ports[{i}].port"), number)?),
                name: non_empty(p.name),
            });
        }
        Ok(Object::Service(Service { namespace, name, kind, ports }))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSlice {
    #[serde(default)]
    metadata: Meta,
    address_type: Option<String>,
    #[serde(default)]
    ports: Option<Vec<RawPort>>,
    #[serde(default)]
    endpoints: Option<Vec<RawEndpoint>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    hostname: Option<String>,
    conditions: Option<RawConditions>,
    node_name: Option<String>,
    target_ref: Option<RawObjectRef>,
}

#[derive(Deserialize)]
struct RawConditions {
    ready: Option<bool>,
}

#[derive(Deserialize)]
struct RawObjectRef {
    kind: Option<String>,
    name: Option<String>,
}

impl RawSlice {
    fn convert(self) -> Result<Object, Invalid> {
        let name = self.metadata.name()?;
        let namespace = self.metadata.namespace()?;
        let service = self.metadata.labels.get("kubernetes.io/service-name").cloned();
        let address_type = self.address_type.unwrap_or_default();
        let wants_v6 = match address_type.as_str() {
            "IPv4" => Some(false),
            "IPv6" => Some(true),
            // FQDN slices are deprecated and carry no addresses DNS can serve.
            "FQDN" => None,
            other => {
                return Err(invalid("addressType", format_args!("{other:?} is not IPv4, IPv6 or FQDN")));
            }
        };
        let mut ports = Vec::new();
        for (i, p) in self.ports.unwrap_or_default().into_iter().enumerate() {
            ports.push(Port {
                protocol: parse_protocol(&format!("ports[{i}].protocol"), p.protocol.as_deref())?,
                port: p.port.map(|n| parse_port(&format!("ports[{i}].port"), n)).transpose()?,
                name: non_empty(p.name),
            });
        }
        let mut endpoints = Vec::new();
        for (i, e) in self.endpoints.unwrap_or_default().into_iter().enumerate() {
            let Some(wants_v6) = wants_v6 else { break };
            let mut addresses = Vec::with_capacity(e.addresses.len());
            for (j, a) in e.addresses.iter().enumerate() {
                let field = format!("endpoints[{i}].addresses[{j}]");
                let ip = parse_ip(&field, a)?;
                if ip.is_ipv6() != wants_v6 {
                    return Err(invalid(
                        field,
                        format_args!("{a} does not match addressType {address_type}"),
                    ));
                }
                addresses.push(ip);
            }
            let hostname = non_empty(e.hostname);
            if let Some(h) = &hostname {
                check_label(&format!("endpoints[{i}].hostname"), h)?;
            }
            endpoints.push(Endpoint {
                addresses,
                hostname,
                ready: e.conditions.and_then(|c| c.ready).unwrap_or(true),
                node_name: non_empty(e.node_name),
                target_pod: e
                    .target_ref
                    .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
                    .and_then(|r| non_empty(r.name)),
            });
        }
        Ok(Object::EndpointSlice(EndpointSlice { namespace, name, service, ports, endpoints }))
    }
}

#[derive(Deserialize)]
struct RawPod {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: RawPodSpec,
    #[serde(default)]
    status: RawPodStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPodSpec {
    node_name: Option<String>,
    hostname: Option<String>,
    subdomain: Option<String>,
    host_network: Option<bool>,
    dns_policy: Option<String>,
    dns_config: Option<RawDnsConfig>,
}

#[derive(Deserialize, Default)]
struct RawDnsConfig {
    #[serde(default)]
    nameservers: Vec<String>,
    #[serde(default)]
    searches: Vec<String>,
    #[serde(default)]
    options: Vec<RawDnsOption>,
}

#[derive(Deserialize)]
struct RawDnsOption {
    name: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawPodStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<RawPodIp>>,
}

#[derive(Deserialize)]
struct RawPodIp {
    ip: Option<String>,
}

impl RawPod {
    fn convert(self) -> Result<Object, Invalid> {
        let name = self.metadata.name()?;
        let namespace = self.metadata.namespace()?;
        let status = self.status;
        let mut ips = Vec::new();
        match &status.pod_ips {
            Some(list) if !list.is_empty() => {
                for (i, entry) in list.iter().enumerate() {
                    if let Some(ip) = entry.ip.as_deref().filter(|s| !s.is_empty()) {
                        ips.push(parse_ip(&format!("status.podIPs[{i}].ip"), ip)?);
                    }
                }
            }
            _ => {
                if let Some(ip) = status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
                    ips.push(parse_ip("status.podIP", ip)?);
                }
            }
        }
        let phase = match status.phase.as_deref().unwrap_or("Pending") {
            "Pending" => PodPhase::Pending,
            "Running" => PodPhase::Running,
            "Succeeded" => PodPhase::Succeeded,
            "Failed" => PodPhase::Failed,
            "Unknown" => PodPhase::Unknown,
            other => {
                return Err(invalid("status.phase", format_args!("{other:?} is not a pod phase")));
            }
        };
        let spec = self.spec;
        let dns_policy = match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
            "ClusterFirst" => DnsPolicy::ClusterFirst,
            "ClusterFirstWithHostNet" => DnsPolicy::ClusterFirstWithHostNet,
            "Default" => DnsPolicy::Default,
            "None" => DnsPolicy::None,
            other => {
                return Err(invalid("spec.dnsPolicy", format_args!("{other:?} is not a DNS policy")));
            }
        };
        let dns_config = spec.dns_config.map(|c| PodDnsConfig {
            nameservers: c.nameservers,
            searches: c.searches,
            options: c.options.into_iter().filter_map(|o| o.name.map(|n| (n, o.value))).collect(),
        });
        Ok(Object::Pod(Pod {
            namespace,
            name,
            ips,
            phase,
            node_name: non_empty(spec.node_name),
            hostname: non_empty(spec.hostname),
            subdomain: non_empty(spec.subdomain),
            host_network: spec.host_network.unwrap_or(false),
            dns_policy,
            dns_config,
            terminating: self.metadata.deletion_timestamp.is_some(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_multi_document_forms_give_the_same_objects() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s, namespace: a}\n  spec: {clusterIP: 10.0.0.1, ports: [{name: http, port: 80}]}\n";
        let docs = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {clusterIP: 10.0.0.1, ports: [{name: http, port: 80}]}\n";
        let a = parse_cluster(list).map_err(|e| e.to_string()).unwrap();
        let b = parse_cluster(docs).map_err(|e| e.to_string()).unwrap();
        assert_eq!(a.objects, b.objects);
        assert_eq!(a.objects.len(), 2);
        let Object::Service(s) = &a.objects[1] else { panic!("not a service: {:?}", a.objects[1]) };
        assert_eq!(s.kind, ServiceKind::ClusterIp(vec!["10.0.0.1".parse().unwrap()]));
        assert_eq!(s.ports[0].protocol, Protocol::Tcp, "protocol defaults to TCP");
    }

    #[test]
    fn errors_name_the_object_and_field() {
        let cases: &[(&str, &str)] = &[
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {clusterIPs: [10.0.0.1, 10.0.0.300]}\n",
                "document 1 Service a/s: spec.clusterIPs[1]: \"10.0.0.300\" is not an IP address",
            ),
            (
                "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: ok}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s, namespace: a}\n  spec: {ports: [{port: 99999}]}\n",
                "items[1] Service a/s: spec.ports[0].port: 99999 is not a port number (1-65535)",
            ),
            (
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, namespace: a}\naddressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]\n",
                "document 1 EndpointSlice a/e: endpoints[0].addresses[0]: fd00::1 does not match addressType IPv4",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nspec: {hostNetwork: maybe}\n",
                "document 1 Pod a/p: spec.hostNetwork: invalid type: string \"maybe\", expected a boolean",
            ),
            (
                "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: e, namespace: a}\n",
                "document 1 EndpointSlice a/e: apiVersion: EndpointSlice must be apiVersion discovery.k8s.io/v1, not \"discovery.k8s.io/v1beta1\"",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name, namespace: a}\n",
                "document 1 Service a/Bad_Name: metadata.name: \"Bad_Name\" is not a DNS label (1-63 of a-z, 0-9, '-')",
            ),
        ];
        for (text, want) in cases {
            let got = parse_cluster(text).map(|_| ()).map_err(|e| e.to_string());
            assert_eq!(got, Err((*want).to_owned()), "for {text}");
        }
    }

    #[test]
    fn yaml_syntax_errors_and_other_kinds() {
        assert!(matches!(parse_cluster("a: [b\n"), Err(FileError::Yaml(_))));
        let parsed = parse_cluster("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n")
            .map_err(|e| e.to_string())
            .unwrap();
        assert_eq!((parsed.objects.len(), parsed.skipped), (0, 1));
    }

    #[test]
    fn pod_fields_and_slice_readiness() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a, deletionTimestamp: '2026-01-01T00:00:00Z'}\nspec: {nodeName: n1, hostNetwork: true, dnsPolicy: None, dnsConfig: {searches: [x.y], options: [{name: ndots, value: '2'}]}}\nstatus: {phase: Running, podIP: 10.1.0.1, podIPs: [{ip: 10.1.0.1}, {ip: 'fd00::1'}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, namespace: a, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints: [{addresses: [10.1.0.1], conditions: {}}, {addresses: [10.1.0.2], conditions: {ready: false}}]\n";
        let parsed = parse_cluster(text).map_err(|e| e.to_string()).unwrap();
        let Object::Pod(p) = &parsed.objects[0] else { panic!() };
        assert_eq!(p.ips.len(), 2);
        assert!(p.host_network && p.terminating);
        assert_eq!(p.dns_policy, DnsPolicy::None);
        assert_eq!(p.dns_config.as_ref().unwrap().options, vec![("ndots".to_owned(), Some("2".to_owned()))]);
        let Object::EndpointSlice(s) = &parsed.objects[1] else { panic!() };
        assert_eq!(s.service.as_deref(), Some("s"));
        assert_eq!(s.endpoints.iter().map(|e| e.ready).collect::<Vec<_>>(), vec![true, false]);
    }
}
