//! The compact cluster model: only the fields of Namespaces, Services, EndpointSlices and Pods that
//! DNS needs. Every source (the cluster file here, the Kubernetes watcher in the authority) converts
//! API objects into these types as they arrive, so the rest of the API object is dropped at once.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// `(namespace, name)` of a namespaced object.
pub type ObjectKey = (String, String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The SRV label of the protocol (RFC 2782 `_Proto`), lower case.
    pub fn srv_label(self) -> &'static str {
        match self {
            Self::Tcp => "_tcp",
            Self::Udp => "_udp",
            Self::Sctp => "_sctp",
        }
    }
}

/// A port of a Service or an EndpointSlice. Slices may leave the number out ("all ports").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// A Service with one or more cluster IPs (ClusterIP, NodePort, LoadBalancer).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`.
    Headless,
    /// `type: ExternalName`, with the target as written (a trailing dot is allowed).
    ExternalName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    pub hostname: Option<String>,
    /// `conditions.ready` true or absent (the EndpointSlice API documents absent as ready).
    pub ready: bool,
    pub node_name: Option<String>,
    /// `targetRef.name` when the target is a Pod.
    pub target_pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label: the only link between a slice and its Service.
    pub service: Option<String>,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsPolicy {
    #[default]
    ClusterFirst,
    ClusterFirstWithHostNet,
    Default,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodDnsConfig {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `(name, value)` pairs, e.g. `("ndots", Some("2"))`.
    pub options: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// `status.podIPs` (falling back to `status.podIP`), primary first.
    pub ips: Vec<IpAddr>,
    pub phase: PodPhase,
    pub node_name: Option<String>,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    pub host_network: bool,
    pub dns_policy: DnsPolicy,
    pub dns_config: Option<PodDnsConfig>,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
}

impl Pod {
    /// Whether the pod counts as present for `pods verified`: CoreDNS's pod watch leaves out the
    /// phases Succeeded, Failed and Unknown (a completed Job pod still reports its old IP).
    pub fn is_present(&self) -> bool {
        matches!(self.phase, PodPhase::Pending | PodPhase::Running)
    }
}

/// One cluster object of a kind DNS cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Namespace,
    Service,
    EndpointSlice,
    Pod,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
        }
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Pod(_) => Kind::Pod,
        }
    }
}

/// The whole cluster as DNS sees it. Sources apply objects to it; the index is built from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub namespaces: BTreeMap<String, Namespace>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub pods: BTreeMap<ObjectKey, Pod>,
}

impl ClusterState {
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut state = Self::default();
        for object in objects {
            state.apply(object);
        }
        state
    }

    /// Adds or replaces an object.
    pub fn apply(&mut self, object: Object) {
        match object {
            Object::Namespace(ns) => {
                self.namespaces.insert(ns.name.clone(), ns);
            }
            Object::Service(s) => {
                self.services.insert((s.namespace.clone(), s.name.clone()), s);
            }
            Object::EndpointSlice(s) => {
                self.slices.insert((s.namespace.clone(), s.name.clone()), s);
            }
            Object::Pod(p) => {
                self.pods.insert((p.namespace.clone(), p.name.clone()), p);
            }
        }
    }

    /// Removes an object; `namespace` is ignored for Namespaces. Returns whether it existed.
    pub fn remove(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_owned(), name.to_owned());
        match kind {
            Kind::Namespace => self.namespaces.remove(name).is_some(),
            Kind::Service => self.services.remove(&key).is_some(),
            Kind::EndpointSlice => self.slices.remove(&key).is_some(),
            Kind::Pod => self.pods.remove(&key).is_some(),
        }
    }

    /// Keeps only the objects of `kind` whose namespace satisfies `keep` (for Namespaces, their
    /// name); objects of other kinds are untouched. A relist of one kind uses it to drop what it
    /// no longer lists.
    pub fn retain_kind(&mut self, kind: Kind, keep: impl Fn(&str) -> bool) {
        match kind {
            Kind::Namespace => self.namespaces.retain(|name, _| keep(name)),
            Kind::Service => self.services.retain(|(ns, _), _| keep(ns)),
            Kind::EndpointSlice => self.slices.retain(|(ns, _), _| keep(ns)),
            Kind::Pod => self.pods.retain(|(ns, _), _| keep(ns)),
        }
    }

    /// Whether the state holds `object` exactly as it is.
    pub fn holds(&self, object: &Object) -> bool {
        let key = |ns: &str, name: &str| (ns.to_owned(), name.to_owned());
        match object {
            Object::Namespace(n) => self.namespaces.get(&n.name) == Some(n),
            Object::Service(s) => self.services.get(&key(&s.namespace, &s.name)) == Some(s),
            Object::EndpointSlice(s) => self.slices.get(&key(&s.namespace, &s.name)) == Some(s),
            Object::Pod(p) => self.pods.get(&key(&p.namespace, &p.name)) == Some(p),
        }
    }

    /// `(namespace, name)` of every object of `kind` (namespace `""` for Namespaces).
    pub fn keys(&self, kind: Kind) -> Box<dyn Iterator<Item = (&str, &str)> + '_> {
        fn namespaced((ns, name): &ObjectKey) -> (&str, &str) {
            (ns, name)
        }
        match kind {
            Kind::Namespace => Box::new(self.namespaces.keys().map(|n| ("", n.as_str()))),
            Kind::Service => Box::new(self.services.keys().map(namespaced)),
            Kind::EndpointSlice => Box::new(self.slices.keys().map(namespaced)),
            Kind::Pod => Box::new(self.pods.keys().map(namespaced)),
        }
    }

    /// Number of stored objects per kind, in the order Namespace, Service, EndpointSlice, Pod.
    pub fn counts(&self) -> [(Kind, usize); 4] {
        [
            (Kind::Namespace, self.namespaces.len()),
            (Kind::Service, self.services.len()),
            (Kind::EndpointSlice, self.slices.len()),
            (Kind::Pod, self.pods.len()),
        ]
    }
}
