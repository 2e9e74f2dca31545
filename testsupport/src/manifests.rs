//! The deployment manifests (`manifests/`) as data, for the tests that hold them against the
//! binaries: a plain YAML [`Value`] (the agent's tests must not link a Kubernetes crate), the
//! kustomize subset the manifests use ([`build`]: resources, components, JSON 6902 patches; anything
//! else is an error rather than silently ignored), what kubelet does to a pod's arguments and
//! files ([`PodView`]: `$(VAR)` expansion with the Services' variables, ConfigMap volumes written
//! out), and the flags a binary's `--help` lists ([`help_flags`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// One YAML node. Maps keep their keys sorted, which is all equality needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

static NULL: Value = Value::Null;

impl Value {
    /// The node at a JSON pointer (RFC 6901: `/spec/template`, `~1` for `/`, `~0` for `~`).
    pub fn pointer(&self, pointer: &str) -> Option<&Value> {
        let mut node = self;
        for token in tokens(pointer) {
            node = match node {
                Value::Map(m) => m.get(&token)?,
                Value::Seq(s) => s.get(token.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The node at `pointer`, or Null.
    pub fn at(&self, pointer: &str) -> &Value {
        self.pointer(pointer).unwrap_or(&NULL)
    }

    pub fn as_str(&self) -> Option<&str> {
        if let Value::Str(s) = self { Some(s) } else { None }
    }

    pub fn as_i64(&self) -> Option<i64> {
        if let Value::Int(n) = self { Some(*n) } else { None }
    }

    pub fn as_bool(&self) -> Option<bool> {
        if let Value::Bool(b) = self { Some(*b) } else { None }
    }

    /// The items of a sequence; empty for anything else (a missing list is an empty list).
    pub fn items(&self) -> &[Value] {
        if let Value::Seq(s) = self { s } else { &[] }
    }

    /// The entries of a map; empty for anything else.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Value)> {
        let map = if let Value::Map(m) = self { Some(m) } else { None };
        map.into_iter().flatten()
    }

    /// `self.at(pointer)` as a string, or "".
    pub fn str_at(&self, pointer: &str) -> &str {
        self.at(pointer).as_str().unwrap_or_default()
    }

    pub fn kind(&self) -> &str {
        self.str_at("/kind")
    }

    pub fn name(&self) -> &str {
        self.str_at("/metadata/name")
    }
}

fn tokens(pointer: &str) -> impl Iterator<Item = String> + '_ {
    pointer.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~"))
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
                i64::try_from(v).map(Value::Int).map_err(E::custom)
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                Value::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Value::Seq(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.insert(k.clone(), v).is_some() {
                        return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                    }
                }
                Ok(Value::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(n) => s.serialize_i64(*n),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(v) => s.serialize_str(v),
            Value::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// `manifests/` in this checkout.
pub fn manifests_dir() -> PathBuf {
    crate::workspace_path("manifests")
}

/// Every `.yaml`/`.yml` file under `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("reading a directory").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The documents of a YAML file (empty documents skipped).
pub fn read_documents(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_documents(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The documents of YAML text (empty documents skipped).
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().filter(|d| *d != Value::Null).collect())
}

/// What `kustomize build DIR` gives, for the subset of kustomize the manifests use: `resources`
/// (files and directories), `components` and `patches` holding JSON 6902 operations (`add`,
/// `replace`, `remove`, `test`) with a `target` kind and name. Any other field, a patch that
/// matches no object, or a failing `test` is an error.
pub fn build(dir: &Path) -> Result<Vec<Value>, String> {
    let k = kustomization(dir, "Kustomization")?;
    let mut objects = Vec::new();
    for resource in k.at("/resources").items() {
        let path = dir.join(resource.as_str().ok_or("a resource is not a string")?);
        if path.is_dir() {
            objects.extend(build(&path)?);
        } else {
            objects.extend(read_documents(&path)?);
        }
    }
    for component in k.at("/components").items() {
        let path = dir.join(component.as_str().ok_or("a component is not a string")?);
        apply_component(&mut objects, &path)?;
    }
    apply_patches(&mut objects, &k, dir)?;
    Ok(objects)
}

/// `build(base)` with `components` added, as an operator's overlay listing them would.
pub fn build_with(base: &Path, components: &[PathBuf]) -> Result<Vec<Value>, String> {
    let mut objects = build(base)?;
    for c in components {
        apply_component(&mut objects, c)?;
    }
    Ok(objects)
}

/// The component directories under `manifests/components/`, sorted.
pub fn components() -> Vec<PathBuf> {
    let dir = manifests_dir().join("components");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.map(|e| e.expect("reading a directory").path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Every build the manifests offer: the base, the base with each component, and with all of them.
pub fn all_builds() -> Vec<(String, Vec<Value>)> {
    let base = manifests_dir();
    let mut out = vec![("base".to_owned(), build(&base).unwrap_or_else(|e| panic!("base: {e}")))];
    let components = components();
    for c in &components {
        let label = format!("base + {}", c.file_name().unwrap_or_default().to_string_lossy());
        let objects = build_with(&base, std::slice::from_ref(c)).unwrap_or_else(|e| panic!("{label}: {e}"));
        out.push((label, objects));
    }
    if components.len() > 1 {
        let objects = build_with(&base, &components).unwrap_or_else(|e| panic!("all components: {e}"));
        out.push(("base + all components".to_owned(), objects));
    }
    out
}

fn kustomization(dir: &Path, kind: &str) -> Result<Value, String> {
    let path = dir.join("kustomization.yaml");
    let docs = read_documents(&path)?;
    let [k] = docs.as_slice() else { return Err(format!("{}: not one document", path.display())) };
    if k.kind() != kind {
        return Err(format!("{}: kind {:?}, expected {kind}", path.display(), k.kind()));
    }
    for (key, _) in k.entries() {
        if !["apiVersion", "kind", "resources", "components", "patches"].contains(&key.as_str()) {
            return Err(format!(
                "{}: `{key}` is outside the kustomize subset the manifest tests understand (testsupport::manifests)",
                path.display()
            ));
        }
    }
    Ok(k.clone())
}

fn apply_component(objects: &mut Vec<Value>, dir: &Path) -> Result<(), String> {
    let c = kustomization(dir, "Component")?;
    for resource in c.at("/resources").items() {
        objects.extend(read_documents(&dir.join(resource.as_str().ok_or("a resource is not a string")?))?);
    }
    apply_patches(objects, &c, dir)
}

fn apply_patches(objects: &mut [Value], k: &Value, dir: &Path) -> Result<(), String> {
    for patch in k.at("/patches").items() {
        let kind = patch.str_at("/target/kind");
        let name = patch.str_at("/target/name");
        let text = match (patch.at("/patch"), patch.at("/path")) {
            (Value::Str(text), Value::Null) => text.clone(),
            (Value::Null, Value::Str(file)) => {
                std::fs::read_to_string(dir.join(file)).map_err(|e| format!("{file}: {e}"))?
            }
            _ => return Err(format!("{}: a patch needs `patch` or `path`", dir.display())),
        };
        let ops = match parse_documents(&text)?.as_slice() {
            [Value::Seq(ops)] => ops.clone(),
            _ => return Err(format!("{}: only JSON 6902 patches (a list of operations)", dir.display())),
        };
        let mut matched = 0;
        for object in objects.iter_mut().filter(|o| o.kind() == kind && o.name() == name) {
            matched += 1;
            for op in &ops {
                json_patch(object, op).map_err(|e| format!("{}: {kind}/{name}: {e}", dir.display()))?;
            }
        }
        if matched == 0 {
            return Err(format!("{}: the patch target {kind}/{name} matches nothing", dir.display()));
        }
    }
    Ok(())
}

/// One RFC 6902 operation.
fn json_patch(doc: &mut Value, op: &Value) -> Result<(), String> {
    let path = op.str_at("/path");
    let value = op.pointer("/value").cloned();
    let (parent, last) = path.rsplit_once('/').ok_or_else(|| format!("bad path {path:?}"))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let kind = op.str_at("/op");
    if kind == "test" {
        return match doc.pointer(path) {
            Some(v) if Some(v) == value.as_ref() => Ok(()),
            other => Err(format!("test {path}: found {other:?}, expected {value:?}")),
        };
    }
    let mut node = doc;
    for token in tokens(parent) {
        node = match node {
            Value::Map(m) => m.get_mut(&token),
            Value::Seq(s) => token.parse::<usize>().ok().and_then(|i| s.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("{path}: {parent} does not exist"))?;
    }
    match (kind, node) {
        ("add", Value::Map(m)) => {
            m.insert(last, value.ok_or("add without a value")?);
        }
        ("add", Value::Seq(s)) => {
            let v = value.ok_or("add without a value")?;
            if last == "-" {
                s.push(v);
            } else {
                let i = last
                    .parse::<usize>()
                    .ok()
                    .filter(|i| *i <= s.len())
                    .ok_or(format!("{path}: bad index"))?;
                s.insert(i, v);
            }
        }
        ("replace", Value::Map(m)) if m.contains_key(&last) => {
            m.insert(last, value.ok_or("replace without a value")?);
        }
        ("replace", Value::Seq(s)) => {
            let slot =
                last.parse::<usize>().ok().and_then(|i| s.get_mut(i)).ok_or(format!("{path}: bad index"))?;
            *slot = value.ok_or("replace without a value")?;
        }
        ("remove", Value::Map(m)) if m.contains_key(&last) => {
            m.remove(&last);
        }
        ("remove", Value::Seq(s)) => {
            let i =
                last.parse::<usize>().ok().filter(|i| *i < s.len()).ok_or(format!("{path}: bad index"))?;
            s.remove(i);
        }
        (kind, _) => return Err(format!("cannot {kind} {path}")),
    }
    Ok(())
}

/// The object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o.kind() == kind && o.name() == name)
}

/// A flag as `--help` lists it (clap's layout).
#[derive(Debug, Clone)]
pub struct Flag {
    pub name: String,
    /// The `[env: NAME=]` it reads.
    pub env: Option<String>,
    /// The `[default: ...]` text.
    pub default: Option<String>,
}

/// The flags of a `--help` text, without `help` and `version`.
pub fn help_flags(help: &str) -> BTreeMap<String, Flag> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        let t = t.strip_prefix("-h, ").or_else(|| t.strip_prefix("-V, ")).unwrap_or(t);
        if let Some(rest) = t.strip_prefix("--") {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(rest.len());
            entries.push((rest[..end].to_owned(), rest[end..].to_owned()));
        } else if let Some((_, text)) = entries.last_mut() {
            text.push(' ');
            text.push_str(t);
        }
    }
    let bracket = |text: &str, tag: &str| {
        let start = text.find(tag)? + tag.len();
        Some(text[start..].split(']').next()?.to_owned())
    };
    entries
        .into_iter()
        .filter(|(name, _)| name != "help" && name != "version")
        .map(|(name, text)| {
            let env = bracket(&text, "[env: ").map(|e| e.trim_end_matches('=').to_owned());
            let default = bracket(&text, "[default: ");
            (name.clone(), Flag { name, env, default })
        })
        .collect()
}

/// The last number in a flag's default (`0.0.0.0:9153` and `the first listen IP, port 9254`).
pub fn default_port(flag: &Flag) -> Option<u16> {
    let text = flag.default.as_deref()?;
    let digits: String = text.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

/// `--name=value` → (`name`, Some(`value`)); `--name` → (`name`, None); anything else → None.
pub fn split_flag(arg: &str) -> Option<(&str, Option<&str>)> {
    let rest = arg.strip_prefix("--")?;
    Some(match rest.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (rest, None),
    })
}

/// The port of `ADDR:PORT` (`[::]:53` too).
pub fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// The host of `ADDR:PORT`, without IPv6 brackets.
pub fn host_of(addr: &str) -> Option<&str> {
    Some(addr.rsplit_once(':')?.0.trim_start_matches('[').trim_end_matches(']'))
}

/// The variables kubelet gives containers for a Service with a cluster IP (none for headless
/// Services): `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT NAME>]` and the Docker-link style
/// `<NAME>_PORT...`. A Service without `clusterIP` gets `fake_ip`, as the cluster would give one.
pub fn service_env(service: &Value, fake_ip: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let ip = match service.at("/spec/clusterIP") {
        Value::Str(ip) if ip == "None" || ip.is_empty() => return env,
        Value::Str(ip) => ip.clone(),
        _ => fake_ip.to_owned(),
    };
    let prefix = service.name().to_ascii_uppercase().replace('-', "_");
    env.insert(format!("{prefix}_SERVICE_HOST"), ip.clone());
    for (i, port) in service.at("/spec/ports").items().iter().enumerate() {
        let number = port.at("/port").as_i64().unwrap_or_default().to_string();
        let proto = port.at("/protocol").as_str().unwrap_or("TCP").to_owned();
        if i == 0 {
            env.insert(format!("{prefix}_SERVICE_PORT"), number.clone());
            env.insert(format!("{prefix}_PORT"), format!("{}://{ip}:{number}", proto.to_ascii_lowercase()));
        }
        if let Some(name) = port.at("/name").as_str() {
            env.insert(
                format!("{prefix}_SERVICE_PORT_{}", name.to_ascii_uppercase().replace('-', "_")),
                number.clone(),
            );
        }
        let link = format!("{prefix}_PORT_{number}_{proto}");
        env.insert(link.clone(), format!("{}://{ip}:{number}", proto.to_ascii_lowercase()));
        env.insert(format!("{link}_PROTO"), proto.to_ascii_lowercase());
        env.insert(format!("{link}_PORT"), number.clone());
        env.insert(format!("{link}_ADDR"), ip.clone());
    }
    env
}

/// A workload's first container as kubelet would start it.
pub struct PodView<'a> {
    pub workload: &'a Value,
    pub container: &'a Value,
    /// The container's environment: its `env` (a `fieldRef` becomes `<fieldPath>-value`) and,
    /// unless `enableServiceLinks: false`, the variables of the Services of its namespace.
    pub env: BTreeMap<String, String>,
}

impl<'a> PodView<'a> {
    pub fn new(objects: &'a [Value], workload: &'a Value) -> Self {
        let spec = workload.at("/spec/template/spec");
        let container = spec.at("/containers/0");
        let mut env = BTreeMap::new();
        if spec.at("/enableServiceLinks").as_bool() != Some(false) {
            let namespace = workload.str_at("/metadata/namespace");
            let services = objects
                .iter()
                .filter(|o| o.kind() == "Service" && o.str_at("/metadata/namespace") == namespace);
            for (i, service) in services.enumerate() {
                env.extend(service_env(service, &format!("10.96.0.{}", 100 + i)));
            }
        }
        for var in container.at("/env").items() {
            let value = match (var.at("/value"), var.str_at("/valueFrom/fieldRef/fieldPath")) {
                (Value::Str(v), _) => v.clone(),
                (_, path) if !path.is_empty() => format!("{path}-value"),
                _ => continue,
            };
            env.insert(var.str_at("/name").to_owned(), value);
        }
        PodView { workload, container, env }
    }

    /// The container's arguments with `$(VAR)` expanded as kubelet does; a reference to a
    /// variable the container will not have is an error (kubelet would leave it as text).
    pub fn args(&self) -> Result<Vec<String>, String> {
        self.container
            .at("/args")
            .items()
            .iter()
            .map(|a| self.expand(a.as_str().unwrap_or_default()))
            .collect()
    }

    fn expand(&self, text: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('$') {
                out.push('$');
                rest = r;
            } else if let Some(r) = rest.strip_prefix('(') {
                let (name, after) = r.split_once(')').ok_or_else(|| format!("unclosed $( in {text:?}"))?;
                let value =
                    self.env.get(name).ok_or_else(|| format!("{text:?}: the container has no {name}"))?;
                out.push_str(value);
                rest = after;
            } else {
                out.push('$');
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Writes the ConfigMap volumes the container mounts under `dir` as kubelet would (one file per
    /// key) and returns (mount path, directory written) pairs. A missing ConfigMap or key, or a
    /// `subPath` mount (kubelet never updates those), is an error.
    pub fn write_config_maps(&self, objects: &[Value], dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
        let mut out = Vec::new();
        let namespace = self.workload.str_at("/metadata/namespace");
        for mount in self.container.at("/volumeMounts").items() {
            let volume = self
                .workload
                .at("/spec/template/spec/volumes")
                .items()
                .iter()
                .find(|v| v.str_at("/name") == mount.str_at("/name"))
                .ok_or_else(|| format!("volume {} is not declared", mount.str_at("/name")))?;
            let cm_name = volume.str_at("/configMap/name");
            if cm_name.is_empty() {
                continue;
            }
            if mount.pointer("/subPath").is_some() {
                return Err(format!(
                    "{} mounts ConfigMap {cm_name} with subPath: kubelet never updates it",
                    self.workload.name()
                ));
            }
            let cm = objects
                .iter()
                .find(|o| {
                    o.kind() == "ConfigMap"
                        && o.name() == cm_name
                        && o.str_at("/metadata/namespace") == namespace
                })
                .ok_or_else(|| format!("ConfigMap {cm_name} is not in the manifests"))?;
            let target = dir.join(mount.str_at("/name"));
            std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
            for (key, value) in cm.at("/data").entries() {
                std::fs::write(target.join(key), value.as_str().unwrap_or_default())
                    .map_err(|e| e.to_string())?;
            }
            out.push((mount.str_at("/mountPath").trim_end_matches('/').to_owned(), target));
        }
        Ok(out)
    }
}

/// `path` with a mount path prefix replaced by the directory [`PodView::write_config_maps`] wrote,
/// or None when no mount holds it.
pub fn local_path(path: &str, mounts: &[(String, PathBuf)]) -> Option<PathBuf> {
    mounts.iter().find_map(|(mount, dir)| path.strip_prefix(&format!("{mount}/")).map(|rel| dir.join(rel)))
}

/// The keys of a binary's YAML config text (which must be a map).
pub fn config_keys(text: &str) -> Result<Vec<String>, String> {
    match parse_documents(text)?.as_slice() {
        [] => Ok(Vec::new()),
        [Value::Map(m)] => Ok(m.keys().cloned().collect()),
        _ => Err("the config file is not one YAML map".into()),
    }
}

/// Whether a label selector's `matchLabels` (or a Service's `selector`) select these labels.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let mut any = false;
    for (k, v) in selector.entries() {
        any = true;
        if labels.at(&format!("/{}", k.replace('~', "~0").replace('/', "~1"))) != v {
            return false;
        }
    }
    any
}
