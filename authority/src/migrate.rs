//! `nodedns-authority migrate`: reads what a cluster's DNS runs on now, a CoreDNS Corefile (the
//! `coredns` ConfigMap's, or NodeLocal DNSCache's `node-local-dns`) and a kube-dns ConfigMap
//! (`stubDomains`, `upstreamNameservers`), and prints the nodedns settings that do the same: YAML
//! for the agent and for the authority, each key under a comment naming the line it came from,
//! then what nodedns does by itself and what it cannot carry over, and why. The lists are YAML
//! comments, so the whole output stays valid YAML that an operator reviews and pastes into the
//! `nodedns-config` ConfigMap.
//!
//! The Corefile parser reads the part of Caddy's syntax Corefiles use: server blocks
//! `zone[:port]... {`, one directive per line with its arguments, nested `{ }` option blocks,
//! `#` comments and `"quoted"` arguments. It reads and never runs anything: `import` and the
//! environment's `{$VAR}` are named in the output, not expanded.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Parser;
use ipnet::IpNet;

/// The command line of `nodedns-authority migrate` (`main` picks it when the first argument is
/// `migrate`, so the server's flags stay as they are).
#[derive(Debug, Parser)]
#[command(name = "nodedns-authority", version)]
pub struct MigrateCli {
    #[command(subcommand)]
    pub command: MigrateCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum MigrateCommand {
    /// Print the nodedns agent and authority settings equivalent to a CoreDNS Corefile and/or a
    /// kube-dns ConfigMap, and name what cannot be carried over.
    Migrate(MigrateArgs),
}

/// At least one of the two files is needed; `main` says so as it does for any bad flag.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MigrateArgs {
    /// A CoreDNS or NodeLocal DNSCache Corefile, or the ConfigMap holding it as `data.Corefile`
    /// (`kubectl get configmap coredns -o yaml`); `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub corefile: Option<PathBuf>,
    /// A kube-dns ConfigMap (YAML with `data.stubDomains` and `data.upstreamNameservers` as JSON
    /// strings), or its bare data map; its stub domains add to the Corefile's.
    #[arg(long, value_name = "FILE")]
    pub kube_dns_configmap: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Syntax { path: String, line: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A Corefile that cannot be read, at its line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// A server block: `keys... { directives }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBlock {
    /// As written: `cluster.local:53`, `.`, `dns://.:53`, `(snippet)`.
    pub keys: Vec<String>,
    pub line: usize,
    pub directives: Vec<Directive>,
}

/// One line of a block: a plugin with its arguments and the options of its own `{ }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub line: usize,
    pub block: Vec<Directive>,
}

/// Blocks nested deeper than this are refused (Corefiles use two levels; this bounds recursion).
const MAX_DEPTH: usize = 16;

struct Token {
    text: String,
    line: usize,
    quoted: bool,
}

fn is_open(t: &Token) -> bool {
    !t.quoted && t.text == "{"
}

fn is_close(t: &Token) -> bool {
    !t.quoted && t.text == "}"
}

fn syntax(line: usize, message: impl Into<String>) -> SyntaxError {
    SyntaxError { line, message: message.into() }
}

/// Splits the text into the tokens of each non-empty line. A `#` starting a token starts a
/// comment; a `"` starting one quotes up to the next unescaped `"` on that line.
fn tokenize(text: &str) -> Result<Vec<Vec<Token>>, SyntaxError> {
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let mut tokens = Vec::new();
        let mut chars = raw.chars().peekable();
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            match chars.peek() {
                None | Some('#') => break,
                Some('"') => {
                    chars.next();
                    let mut text = String::new();
                    loop {
                        match chars.next() {
                            None => return Err(syntax(line, "unterminated quoted argument")),
                            Some('"') => break,
                            Some('\\') if chars.peek() == Some(&'"') => {
                                chars.next();
                                text.push('"');
                            }
                            Some(c) => text.push(c),
                        }
                    }
                    tokens.push(Token { text, line, quoted: true });
                }
                Some(_) => {
                    let mut text = String::new();
                    while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                        text.push(c);
                    }
                    tokens.push(Token { text, line, quoted: false });
                }
            }
        }
        if !tokens.is_empty() {
            lines.push(tokens);
        }
    }
    Ok(lines)
}

/// A line's words without a final `{`, and whether it opens a block. Braces anywhere else are an
/// error, as in CoreDNS: a block starts at the end of a line and ends on a line of its own.
fn split_open(line: &[Token]) -> Result<(&[Token], bool), SyntaxError> {
    let opens = line.last().is_some_and(is_open);
    let words = if opens { &line[..line.len() - 1] } else { line };
    if let Some(t) = words.iter().find(|t| is_open(t) || is_close(t)) {
        return Err(syntax(
            t.line,
            format!("unexpected `{}`: `{{` ends a line and `}}` stands on its own", t.text),
        ));
    }
    Ok((words, opens))
}

/// Parses Corefile text into its server blocks.
pub fn parse_corefile(text: &str) -> Result<Vec<ServerBlock>, SyntaxError> {
    let lines = tokenize(text)?;
    let mut blocks = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    let mut first = 0;
    let mut i = 0;
    while let Some(line) = lines.get(i) {
        i += 1;
        let Some(head) = line.first() else { continue };
        if is_close(head) {
            return Err(syntax(head.line, "`}` with no block to close"));
        }
        if keys.is_empty() {
            first = head.line;
        }
        let (words, opens) = split_open(line)?;
        // Keys may be separated by spaces or commas, and a trailing comma continues them on the
        // next line.
        keys.extend(
            words.iter().flat_map(|w| w.text.split(',')).filter(|k| !k.is_empty()).map(str::to_owned),
        );
        if opens {
            if keys.is_empty() {
                return Err(syntax(head.line, "`{` with no server block keys before it"));
            }
            let directives = parse_body(&lines, &mut i, head.line, 1)?;
            blocks.push(ServerBlock { keys: std::mem::take(&mut keys), line: first, directives });
        } else if !words.last().is_some_and(|w| w.text.ends_with(',')) {
            return Err(syntax(
                head.line,
                format!("expected `{{` after the server block keys {:?}", keys.join(" ")),
            ));
        }
    }
    if !keys.is_empty() {
        return Err(syntax(first, "server block keys with no `{` block"));
    }
    Ok(blocks)
}

fn parse_body(
    lines: &[Vec<Token>],
    i: &mut usize,
    opened: usize,
    depth: usize,
) -> Result<Vec<Directive>, SyntaxError> {
    if depth > MAX_DEPTH {
        return Err(syntax(opened, format!("blocks nested deeper than {MAX_DEPTH}")));
    }
    let mut out = Vec::new();
    while let Some(line) = lines.get(*i) {
        *i += 1;
        let Some(head) = line.first() else { continue };
        if is_close(head) {
            if let Some(extra) = line.get(1) {
                return Err(syntax(extra.line, format!("unexpected {:?} after `}}`", extra.text)));
            }
            return Ok(out);
        }
        let (words, opens) = split_open(line)?;
        let Some((name, args)) = words.split_first() else {
            return Err(syntax(head.line, "`{` with no directive before it"));
        };
        let block = if opens { parse_body(lines, i, head.line, depth + 1)? } else { Vec::new() };
        out.push(Directive {
            name: name.text.clone(),
            args: args.iter().map(|t| t.text.clone()).collect(),
            line: head.line,
            block,
        });
    }
    Err(syntax(opened, "`{` opened here is never closed"))
}

/// What a kube-dns ConfigMap says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeDns {
    /// Zone (as written) to servers (`ip` or `ip:port`, as written).
    pub stub_domains: BTreeMap<String, Vec<String>>,
    pub upstream_nameservers: Vec<String>,
    /// Keys nodedns has no use for (`federations`, anything unknown).
    pub other_keys: Vec<String>,
}

/// Reads a kube-dns ConfigMap: the whole object, or its `data` map alone. The values of
/// `stubDomains` and `upstreamNameservers` are JSON text in a ConfigMap; a hand-written data map
/// may give them as YAML structures instead.
pub fn parse_kube_dns(text: &str) -> Result<KubeDns, String> {
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| e.to_string().replace('\n', " "))?;
    let data = match value.get("data") {
        Some(data) => data,
        None if value.get("kind").is_some() => return Err("the ConfigMap has no data".into()),
        None => &value,
    };
    let data = data.as_object().ok_or("data is not a map")?;
    let mut out = KubeDns::default();
    for (key, value) in data {
        // A ConfigMap value is a string of JSON; a bare YAML map may hold the structure itself.
        let parsed = match value {
            serde_json::Value::String(s) if s.trim().is_empty() => continue,
            serde_json::Value::String(s) => {
                serde_json::from_str(s).map_err(|e| format!("data.{key}: not JSON: {e}"))?
            }
            other => other.clone(),
        };
        match key.as_str() {
            "stubDomains" => {
                let map = parsed.as_object().ok_or("data.stubDomains: not a map of domain to servers")?;
                for (zone, servers) in map {
                    let servers = strings(servers)
                        .ok_or_else(|| format!("data.stubDomains.{zone}: not a list of servers"))?;
                    out.stub_domains.insert(zone.clone(), servers);
                }
            }
            "upstreamNameservers" => {
                out.upstream_nameservers =
                    strings(&parsed).ok_or("data.upstreamNameservers: not a list of servers")?;
            }
            _ => out.other_keys.push(key.clone()),
        }
    }
    Ok(out)
}

fn strings(value: &serde_json::Value) -> Option<Vec<String>> {
    value.as_array()?.iter().map(|v| v.as_str().map(str::to_owned)).collect()
}

/// Runs the subcommand: reads the files and returns the text to print.
pub fn run(args: &MigrateArgs) -> Result<String, MigrateError> {
    let mut sources = Vec::new();
    let corefile = match &args.corefile {
        Some(path) => {
            let (label, text) = read_corefile(path)?;
            let blocks = parse_corefile(&text).map_err(|e| MigrateError::Syntax {
                path: label.clone(),
                line: e.line,
                message: e.message,
            })?;
            sources.push(format!("Corefile {label}"));
            Some((short(path), blocks))
        }
        None => None,
    };
    let kube_dns = match &args.kube_dns_configmap {
        Some(path) => {
            let text = read(path)?;
            let parsed = parse_kube_dns(&text)
                .map_err(|message| MigrateError::Invalid { path: path.display().to_string(), message })?;
            sources.push(format!("kube-dns ConfigMap {}", path.display()));
            Some((short(path), parsed))
        }
        None => None,
    };
    let mut m = Migration::default();
    if let Some((_, k)) = &kube_dns {
        m.kube_upstreams = Some(k.upstream_nameservers.clone());
    }
    if let Some((label, blocks)) = &corefile {
        m.corefile(label, blocks);
    }
    if let Some((label, k)) = &kube_dns {
        m.kube_dns(label, k);
    }
    Ok(m.render(&sources.join(" and ")))
}

/// A file name for the comments (the error messages keep the path as given).
fn short(path: &Path) -> String {
    if path == Path::new("-") {
        return "stdin".into();
    }
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn read(path: &Path) -> Result<String, MigrateError> {
    let err = |source| MigrateError::Read { path: path.display().to_string(), source };
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(err)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(err)
}

/// The Corefile text of FILE: the file itself, or `data.Corefile` of the ConfigMap it holds.
fn read_corefile(path: &Path) -> Result<(String, String), MigrateError> {
    let text = read(path)?;
    let label = if path == Path::new("-") { "stdin".to_owned() } else { path.display().to_string() };
    let first =
        text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or_default();
    let looks_yaml = ["apiVersion:", "kind:", "metadata:", "data:"].iter().any(|p| first.starts_with(p));
    if !looks_yaml {
        return Ok((label, text));
    }
    let value: serde_json::Value = serde_saphyr::from_str(&text).map_err(|e| MigrateError::Invalid {
        path: label.clone(),
        message: e.to_string().replace('\n', " "),
    })?;
    let Some(corefile) = value.get("data").and_then(|d| d.get("Corefile")).and_then(|c| c.as_str()) else {
        return Err(MigrateError::Invalid {
            path: label,
            message: "a ConfigMap without data.Corefile".into(),
        });
    };
    // Line numbers should be the file's: when the Corefile is a block scalar whose first line is
    // the one after `Corefile: |`, blank lines in front make the parser count from there.
    let offset = text.lines().position(|l| {
        l.trim_start().strip_prefix("Corefile:").is_some_and(|rest| rest.trim_start().starts_with('|'))
    });
    let first_line = corefile.lines().next().unwrap_or_default().trim();
    match offset {
        Some(at) if text.lines().nth(at + 1).is_some_and(|l| l.trim() == first_line) => {
            Ok((label, format!("{}{corefile}", "\n".repeat(at + 1))))
        }
        _ => Ok((format!("{label} (data.Corefile)"), corefile.to_owned())),
    }
}

/// The address node-cache binds when `__PILLAR__LOCAL__DNS__` is left as it is.
const NODELOCAL_ADDRESS: &str = "169.254.20.10";
/// Where the authority finds the custom-records key of the `nodedns-config` ConfigMap.
const CUSTOM_RECORDS_PATH: &str = "/etc/nodedns/custom-records.zone";
const CUSTOM_RECORDS_KEY: &str = "custom-records.zone";

const UPSTREAM_PLACEHOLDER: &str = "__PILLAR__UPSTREAM__SERVERS__";
/// node-cache's `kube-dns-upstream` ClusterIP (the cluster DNS behind the node cache).
const CLUSTER_DNS_PLACEHOLDER: &str = "__PILLAR__CLUSTER__DNS__";
/// The kube-dns ClusterIP that node-cache also binds in iptables mode.
const DNS_SERVER_PLACEHOLDER: &str = "__PILLAR__DNS__SERVER__";
const LOCAL_DNS_PLACEHOLDER: &str = "__PILLAR__LOCAL__DNS__";

fn is_domain_placeholder(text: &str) -> bool {
    let bare = text.trim_end_matches('.');
    bare == "__PILLAR__DNS__DOMAIN__" || bare == "__DNS__DOMAIN__"
}

/// A zone as the output compares them: lower case, absolute; a domain placeholder is
/// `cluster.local.` (what the install substitutes by default).
fn zone(text: &str) -> String {
    if is_domain_placeholder(text) {
        return "cluster.local.".into();
    }
    let bare = text.trim_end_matches('.').to_ascii_lowercase();
    if bare.is_empty() { ".".into() } else { format!("{bare}.") }
}

/// A zone as the agent's flags take it (no trailing dot).
fn bare(zone: &str) -> &str {
    if zone == "." { zone } else { zone.trim_end_matches('.') }
}

fn is_reverse_root(zone: &str) -> bool {
    zone == "in-addr.arpa." || zone == "ip6.arpa."
}

/// A server key: scheme, zone and port.
struct Key {
    scheme: String,
    zone: String,
    port: Option<u16>,
}

fn parse_key(text: &str) -> Result<Key, String> {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("dns".to_owned(), text),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, Some(port.parse::<u16>().map_err(|_| format!("port {port} is out of range"))?))
        }
        Some((host, "")) => (host, None),
        _ => (rest, None),
    };
    Ok(Key { scheme, zone: zone(host), port })
}

/// A server address as `forward`, `bind` and kube-dns write them: `ip`, `ip:port`, `[v6]:port`,
/// optionally `dns://` in front; a port-less address means 53.
fn server(text: &str) -> Option<SocketAddr> {
    let text = text.strip_prefix("dns://").unwrap_or(text);
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// The network a reverse zone covers (`10.in-addr.arpa.` is 10.0.0.0/8), on an octet or nibble
/// boundary; `None` for anything else.
fn reverse_zone_net(zone: &str) -> Option<IpNet> {
    if let Some(labels) = zone.strip_suffix(".in-addr.arpa.") {
        let octets: Vec<u8> = labels.split('.').rev().map(|l| l.parse().ok()).collect::<Option<_>>()?;
        if octets.is_empty() || octets.len() > 4 {
            return None;
        }
        let mut addr = [0u8; 4];
        addr[..octets.len()].copy_from_slice(&octets);
        let prefix = u8::try_from(octets.len() * 8).ok()?;
        return IpNet::new(IpAddr::V4(Ipv4Addr::from(addr)), prefix).ok();
    }
    let labels = zone.strip_suffix(".ip6.arpa.")?;
    let nibbles: Vec<u8> = labels
        .split('.')
        .rev()
        .map(|l| if l.len() == 1 { u8::from_str_radix(l, 16).ok() } else { None })
        .collect::<Option<_>>()?;
    if nibbles.is_empty() || nibbles.len() > 32 {
        return None;
    }
    let mut addr = [0u8; 16];
    for (i, n) in nibbles.iter().enumerate() {
        addr[i / 2] |= if i % 2 == 0 { n << 4 } else { *n };
    }
    let prefix = u8::try_from(nibbles.len() * 4).ok()?;
    IpNet::new(IpAddr::V6(Ipv6Addr::from(addr)), prefix).ok()
}

/// A Go duration (`5s`, `1m30s`, `1h`, `500ms`) or bare seconds, in seconds.
fn duration(text: &str) -> Option<f64> {
    if let Ok(secs) = text.parse::<f64>() {
        return (secs >= 0.0).then_some(secs);
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    (!text.is_empty()).then_some(total)
}

/// Seconds as the config files write them: whole numbers plainly.
fn seconds_text(secs: f64) -> String {
    if secs.fract() == 0.0 && secs < 1e15 { format!("{}", secs as u64) } else { format!("{secs}") }
}

/// A YAML double-quoted scalar.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One key of an output document.
struct Entry {
    key: &'static str,
    /// YAML text of the value (a scalar), or of each list item.
    values: Vec<String>,
    list: bool,
    notes: Vec<String>,
}

#[derive(Default)]
struct Doc {
    entries: Vec<Entry>,
    /// Said at the end of the document, with no key.
    comments: Vec<String>,
}

impl Doc {
    /// Sets a scalar key. When another source set it to something else first, that first value
    /// stays and is returned, for the caller to name.
    fn set(&mut self, key: &'static str, value: String, note: String) -> Result<(), String> {
        if let Some(e) = self.entries.iter_mut().find(|e| e.key == key) {
            return if e.values.first() == Some(&value) { Ok(()) } else { Err(e.values.join(", ")) };
        }
        self.entries.push(Entry { key, values: vec![value], list: false, notes: vec![note] });
        Ok(())
    }

    /// Adds an item to a list key (once).
    fn push(&mut self, key: &'static str, value: String, note: String) {
        let index = match self.entries.iter().position(|e| e.key == key) {
            Some(index) => index,
            None => {
                self.entries.push(Entry { key, values: Vec::new(), list: true, notes: Vec::new() });
                self.entries.len() - 1
            }
        };
        // A value given again (the same `bind` in every block) keeps its first note.
        let e = &mut self.entries[index];
        if !e.values.contains(&value) {
            e.values.push(value);
            if !e.notes.contains(&note) {
                e.notes.push(note);
            }
        }
    }

    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|e| e.key == key)
    }
}

/// A line of the closing lists: what, where, why.
struct Note {
    what: String,
    at: String,
    why: String,
}

/// Which of the two documents a key goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Agent,
    Authority,
}

/// What is known about the cluster domain and the cluster DNS before the blocks are walked.
#[derive(Default)]
struct Cluster {
    /// Absolute, lower case.
    domain: Option<String>,
    /// Where it came from, for its comment.
    from: String,
    /// Forward targets that mean "the cluster DNS" (node-cache's placeholders and whatever the
    /// cluster domain's block forwards to).
    dns_targets: Vec<String>,
}

impl Cluster {
    fn find(label: &str, blocks: &[ServerBlock]) -> Self {
        let mut out = Cluster {
            dns_targets: vec![CLUSTER_DNS_PLACEHOLDER.into(), DNS_SERVER_PLACEHOLDER.into()],
            ..Cluster::default()
        };
        // The kubernetes plugin's first forward zone, where there is one.
        for block in blocks {
            for d in block.directives.iter().filter(|d| d.name == "kubernetes") {
                let zones: Vec<&String> =
                    if d.args.is_empty() { block.keys.iter().collect() } else { d.args.iter().collect() };
                let key_zone = |z: &String| {
                    if d.args.is_empty() { parse_key(z).ok().map(|k| k.zone) } else { Some(zone(z)) }
                };
                if let Some((raw, z)) = zones
                    .iter()
                    .filter_map(|z| key_zone(z).map(|k| (*z, k)))
                    .find(|(_, z)| !z.ends_with(".arpa.") && z != ".")
                {
                    out.from = format!("`kubernetes {}` ({label}:{})", d.args.join(" "), d.line);
                    if is_domain_placeholder(raw.split(':').next().unwrap_or(raw)) {
                        out.from.push_str(&format!(": {raw} is a placeholder, taken as cluster.local"));
                    }
                    out.domain = Some(z);
                    return out;
                }
            }
        }
        // A node cache: the block that forwards to the cluster DNS, or that forwards where the
        // in-addr.arpa block does (node-cache's Corefile after the install substituted it).
        let forwards = |b: &ServerBlock| -> Vec<String> {
            b.directives
                .iter()
                .filter(|d| d.name == "forward")
                .flat_map(|d| d.args.iter().skip(1).cloned())
                .collect()
        };
        let reverse_targets: Vec<String> = blocks
            .iter()
            .filter(|b| b.keys.iter().any(|k| parse_key(k).is_ok_and(|k| is_reverse_root(&k.zone))))
            .flat_map(forwards)
            .collect();
        for block in blocks {
            let targets = forwards(block);
            if targets.is_empty() {
                continue;
            }
            let to_cluster = targets.iter().any(|t| t == CLUSTER_DNS_PLACEHOLDER)
                || targets.iter().all(|t| reverse_targets.contains(t));
            let Some((raw, key)) = block
                .keys
                .iter()
                .filter_map(|k| parse_key(k).ok().map(|key| (k, key)))
                .find(|(_, k)| k.zone != "." && !k.zone.ends_with(".arpa."))
            else {
                continue;
            };
            if to_cluster {
                out.from =
                    format!("the {raw} block that forwards to the cluster DNS ({label}:{})", block.line);
                if is_domain_placeholder(raw.split(':').next().unwrap_or(raw)) {
                    out.from.push_str(", a placeholder taken as cluster.local");
                }
                out.domain = Some(key.zone);
                out.dns_targets.extend(targets);
                return out;
            }
        }
        out
    }

    fn is_cluster_zone(&self, zone: &str) -> bool {
        is_reverse_root(zone)
            || self.domain.as_deref().is_some_and(|d| zone == d || zone.ends_with(&format!(".{d}")))
    }
}

/// The settings worked out so far.
#[derive(Default)]
struct Migration {
    agent: Doc,
    authority: Doc,
    /// custom-records text (zone-file lines) made from `hosts` entries.
    records: Vec<String>,
    builtin: Vec<Note>,
    dropped: Vec<Note>,
    /// The kube-dns ConfigMap's upstreamNameservers, for node-cache's upstream placeholder; taken
    /// (set to `None`) once used or once the Corefile's own upstreams win.
    kube_upstreams: Option<Vec<String>>,
    /// Stub zones and where each came from, so the ConfigMap cannot add a second entry.
    stub_zones: BTreeMap<String, String>,
    /// The upstreams were decided by the Corefile (`forward .` to addresses or a file).
    corefile_upstreams: Option<String>,
}

/// The context of one server block.
struct BlockCtx {
    label: String,
    zones: Vec<String>,
    port: u16,
    /// Every zone is the cluster domain or a reverse root: the agent sends all of it to the
    /// authority.
    cluster_only: bool,
    /// The block has the kubernetes plugin: it is the cluster DNS itself (what the authority is).
    kubernetes: bool,
}

impl BlockCtx {
    fn at(&self, line: usize) -> String {
        format!("{}:{line}", self.label)
    }
}

fn directive_text(d: &Directive) -> String {
    if d.args.is_empty() { d.name.clone() } else { format!("{} {}", d.name, d.args.join(" ")) }
}

/// Plugins nodedns has nothing for, and why.
fn unsupported_plugin(name: &str) -> &'static str {
    match name {
        "dnssec" | "sign" => "nodedns does not sign answers (DNSSEC)",
        "template" => {
            "answers made from a regular expression are not supported; fixed records can go in `custom-records`"
        }
        "etcd" => "SkyDNS-style records from etcd are not supported",
        "k8s_external" => {
            "names for LoadBalancer and external IPs outside the cluster domain are not supported"
        }
        "view" | "acl" => "per-client answers and query filters are not supported",
        "bufsize" => "the authority and the agent advertise an EDNS payload of 1232 bytes, not tunable",
        "tls" => "serving DNS over TLS is not supported",
        "secondary" | "auto" => "zone transfers into nodedns are not supported",
        "route53" | "azure" | "clouddns" | "grpc" => "another record source is not supported",
        "any" | "minimal" | "nsid" | "chaos" | "whoami" | "local" | "dns64" | "geoip" | "metadata"
        | "header" | "cancel" | "timeouts" | "trace" | "debug" | "pprof" | "erratic" | "root" | "on"
        | "multisocket" | "shed" | "tsig" | "nomad" => "no nodedns equivalent",
        _ => "not a plugin nodedns knows of; no nodedns equivalent",
    }
}

impl Migration {
    fn builtin(&mut self, what: impl Into<String>, at: impl Into<String>, why: impl Into<String>) {
        self.builtin.push(Note { what: what.into(), at: at.into(), why: why.into() });
    }

    fn drop(&mut self, what: impl Into<String>, at: impl Into<String>, why: impl Into<String>) {
        self.dropped.push(Note { what: what.into(), at: at.into(), why: why.into() });
    }

    fn doc(&mut self, target: Target) -> &mut Doc {
        match target {
            Target::Agent => &mut self.agent,
            Target::Authority => &mut self.authority,
        }
    }

    /// Sets a scalar key; a conflicting second value is listed as not carried over.
    fn set(&mut self, target: Target, key: &'static str, value: String, what: &str, at: &str, note: String) {
        if let Err(kept) = self.doc(target).set(key, value.clone(), note) {
            let side = if target == Target::Agent { "agent" } else { "authority" };
            self.drop(what, at, format!("the {side} has one `{key}`: kept {kept}, not {value}"));
        }
    }

    fn corefile(&mut self, label: &str, blocks: &[ServerBlock]) {
        let cluster = Cluster::find(label, blocks);
        if let Some(domain) = cluster.domain.clone() {
            let note = format!("From {}.", cluster.from);
            for target in [Target::Agent, Target::Authority] {
                self.doc(target).set("cluster-domain", quote(bare(&domain)), note.clone()).ok();
            }
        }
        let has_autopath = blocks.iter().flat_map(|b| &b.directives).any(|d| d.name == "autopath");
        // The `.` blocks first: where the agent has one setting for what CoreDNS set per block
        // (the cache's TTLs), the one for most names wins.
        let mut ordered: Vec<&ServerBlock> = blocks.iter().collect();
        ordered.sort_by_key(|b| !b.keys.iter().any(|k| parse_key(k).is_ok_and(|k| k.zone == ".")));
        for block in ordered {
            self.block(label, block, &cluster);
        }
        if !has_autopath {
            self.builtin(
                "autopath",
                format!("not in {label}"),
                "the agent answers its pods' search-list expansions itself (`autopath`, on by default); `autopath: false` leaves the walk to each pod",
            );
        }
    }

    fn block(&mut self, label: &str, block: &ServerBlock, cluster: &Cluster) {
        let at = format!("{label}:{}", block.line);
        let keys = block.keys.join(" ");
        if block.keys.first().is_some_and(|k| k.starts_with('(')) {
            self.drop(
                format!("snippet {keys}"),
                at,
                "snippets and `import` are not read: paste the snippet where it is imported and run again",
            );
            return;
        }
        let mut zones = Vec::new();
        let mut port = 53;
        for key in &block.keys {
            match parse_key(key) {
                Ok(k) if k.scheme != "dns" => {
                    let why = format!(
                        "serving DNS over {}:// is not supported: nodedns serves plain DNS over UDP and TCP",
                        k.scheme
                    );
                    self.drop(format!("server block {keys}"), at, why);
                    return;
                }
                Ok(k) => {
                    port = k.port.unwrap_or(53);
                    zones.push(k.zone);
                }
                Err(why) => {
                    self.drop(format!("server block {keys}"), at, why);
                    return;
                }
            }
        }
        let ctx = BlockCtx {
            label: label.to_owned(),
            cluster_only: zones.iter().all(|z| cluster.is_cluster_zone(z)),
            kubernetes: block.directives.iter().any(|d| d.name == "kubernetes"),
            zones,
            port,
        };
        let binds = block.directives.iter().any(|d| d.name == "bind");
        if port != 53 && !binds {
            self.drop(
                format!("port {port} of {keys}"),
                &at,
                "the agent listens on `listen` (default 169.254.20.10:53) and the authority on `dns-listen`; set those",
            );
        }
        for d in &block.directives {
            self.directive(d, &ctx, cluster);
        }
    }

    fn directive(&mut self, d: &Directive, ctx: &BlockCtx, cluster: &Cluster) {
        let at = ctx.at(d.line);
        let what = format!("`{}`", directive_text(d));
        let env = d.args.iter().chain(d.block.iter().flat_map(|o| o.args.iter().chain([&o.name])));
        if env.clone().any(|a| a.contains("{$")) {
            self.drop(what, at, "an environment placeholder `{$VAR}`: put in its value and run again");
            return;
        }
        match d.name.as_str() {
            "kubernetes" => self.kubernetes(d, ctx),
            "forward" | "proxy" => self.forward(d, ctx, cluster),
            "cache" => self.cache(d, ctx),
            "hosts" => self.hosts(d, ctx),
            "file" => self.drop(
                what,
                at,
                "zone files are not served as such: copy its records into the authority's custom-records file (zone-file text; names outside the cluster domain need their zone's SOA or $ORIGIN)",
            ),
            "rewrite" => self.rewrite(d, ctx),
            "log" => {
                let note = format!("From {what} ({at}).");
                self.set(Target::Agent, "log-queries", "true".into(), &what, &at, note.clone());
                if ctx.kubernetes {
                    self.set(Target::Authority, "log-queries", "true".into(), &what, &at, note);
                }
                if !d.args.is_empty() || !d.block.is_empty() {
                    self.drop(
                        format!("{what} names, format or classes"),
                        at,
                        "`log-queries` logs one line for every answer, with a fixed format",
                    );
                }
            }
            "errors" => {
                self.builtin(what, &at, "both binaries log errors with their cause");
                for o in &d.block {
                    self.drop(format!("`errors` option `{}`", directive_text(o)), ctx.at(o.line), "not tunable");
                }
            }
            "health" => {
                self.builtin(what, &at, "/health on the admin listeners (`admin-listen`: the authority's :9153, the agent's :9254)");
                for o in &d.block {
                    self.health_option(o, ctx);
                }
            }
            "ready" => self.builtin(what, at, "/ready on the admin listeners: the authority is ready with a complete cluster list, the agent with a stream or cached answers"),
            "prometheus" => self.builtin(what, at, "/metrics on the admin listeners (the authority's :9153, the agent's :9254), with CoreDNS's metric names where the meaning is the same"),
            "reload" => self.builtin(what, at, "both binaries re-read their mounted config file when it changes, and on SIGHUP"),
            "loop" => self.builtin(what, at, "the agent refuses an upstream that is its own address and probes for loops every 10 minutes, without crash-looping"),
            "loadbalance" => self.builtin(what, at, "A, AAAA, MX and SRV answers are rotated by default (`no-rotate` turns it off)"),
            "autopath" => self.builtin(
                what,
                at,
                "the agent answers its pods' search-list expansions itself (`autopath`, on by default), whatever `pods` says, and behind the node cache too",
            ),
            "bind" => self.bind(d, ctx),
            "transfer" => self.transfer(d, ctx),
            "import" => self.drop(what, at, "`import` is not read: paste the imported text in its place and run again"),
            name => self.drop(what, at, unsupported_plugin(name)),
        }
    }

    fn health_option(&mut self, o: &Directive, ctx: &BlockCtx) {
        let at = ctx.at(o.line);
        let what = format!("`health` option `{}`", directive_text(o));
        match (o.name.as_str(), o.args.first().and_then(|a| duration(a))) {
            ("lameduck", Some(secs)) if ctx.kubernetes => {
                let note = format!("From `lameduck {}` ({at}): answers go on this long after SIGTERM, /ready false.", o.args.join(" "));
                self.set(Target::Authority, "lameduck", seconds_text(secs), &what, &at, note);
            }
            ("lameduck", Some(_)) => self.builtin(what, at, "the agent stops reading and drains its queries on SIGTERM (the next agent already listens beside it)"),
            _ => self.drop(what, at, "not supported"),
        }
    }

    fn kubernetes(&mut self, d: &Directive, ctx: &BlockCtx) {
        let at = ctx.at(d.line);
        let zones: Vec<String> =
            if d.args.is_empty() { ctx.zones.clone() } else { d.args.iter().map(|a| zone(a)).collect() };
        let mut cluster_seen = false;
        for z in &zones {
            if is_reverse_root(z) {
                self.builtin(
                    format!("`kubernetes` zone {z}"),
                    &at,
                    "the authority answers PTR queries for cluster addresses (the /16 or /64 around each; `reverse-cidr` fixes the ranges)",
                );
            } else if z.ends_with(".arpa.") {
                match reverse_zone_net(z) {
                    Some(net) => self.authority.push(
                        "reverse-cidr",
                        quote(&net.to_string()),
                        format!("From the reverse zones of `kubernetes` ({at})."),
                    ),
                    None => self.drop(
                        format!("`kubernetes` zone {z}"),
                        &at,
                        "not a reverse zone on an octet or nibble boundary",
                    ),
                }
            } else if !cluster_seen && z != "." {
                cluster_seen = true;
            } else {
                self.drop(
                    format!("`kubernetes` zone {z}"),
                    &at,
                    "the authority serves one cluster domain (`cluster-domain`)",
                );
            }
        }
        let mut pods_given = false;
        for o in &d.block {
            let at = ctx.at(o.line);
            let what = format!("`kubernetes` option `{}`", directive_text(o));
            let from = format!("From `{}` ({at}).", directive_text(o));
            match (o.name.as_str(), o.args.as_slice()) {
                ("pods", [mode]) => {
                    pods_given = true;
                    self.pods(mode, &what, &at);
                }
                ("ttl", [n]) => match n.parse::<u32>() {
                    Ok(ttl) if ttl <= crate::config::MAX_TTL => self.set(Target::Authority, "ttl", ttl.to_string(), &what, &at, from),
                    _ => self.drop(what, at, format!("not a TTL of 0 to {} seconds", crate::config::MAX_TTL)),
                },
                ("endpoint_pod_names", []) => self.set(
                    Target::Authority,
                    "endpoint-pod-names",
                    "true".into(),
                    &what,
                    &at,
                    format!("{from} Endpoint names are the pod's name where the endpoint has no hostname."),
                ),
                ("namespaces", names) if !names.is_empty() => {
                    for ns in names {
                        self.authority.push("namespace", quote(ns), from.clone());
                    }
                }
                ("labels", words) if !words.is_empty() => {
                    self.set(Target::Authority, "label-selector", quote(&words.join(" ")), &what, &at, from)
                }
                ("fallthrough", zones) => {
                    let zones: Vec<String> = zones.iter().map(|z| zone(z)).collect();
                    if !zones.is_empty() && zones.iter().all(|z| z.ends_with(".arpa.")) {
                        self.builtin(what, at, "reverse names outside the cluster's addresses are not the authority's: the agent sends them to the upstreams");
                    } else {
                        self.drop(what, at, "the authority answers all of the cluster domain: a name it does not know is NXDOMAIN, not passed on");
                    }
                }
                ("kubeconfig", [file, rest @ ..]) => {
                    self.set(Target::Authority, "kubeconfig", quote(file), &what, &at, from);
                    if !rest.is_empty() {
                        self.drop(format!("{what}: context"), at, "the authority uses the kubeconfig's current context");
                    }
                }
                ("endpoint", _) => self.drop(what, at, "the authority reaches the API with its in-cluster config, or a kubeconfig (`kubeconfig`)"),
                ("tls", _) => self.drop(what, at, "client certificates for the API go in a kubeconfig (`kubeconfig`)"),
                ("namespace_labels", _) => self.drop(what, at, "namespaces are chosen by name (`namespace`), not by label"),
                ("noendpoints", _) => self.drop(what, at, "endpoint records cannot be turned off"),
                ("ignore", _) => self.drop(what, at, "a service without ready endpoints keeps answering with its cluster IP"),
                ("multicluster", _) => self.drop(what, at, "multi-cluster (MCS) zones are not supported"),
                ("zonal", _) => self.drop(what, at, "topology-zone names are not supported"),
                ("startup_timeout", _) => self.builtin(what, at, "until its first complete list the authority is not ready and answers SERVFAIL (never NXDOMAIN) for its zones"),
                _ => self.drop(what, at, "not supported"),
            }
        }
        if !pods_given {
            let note = format!(
                "`kubernetes` ({at}) gives no `pods`, so CoreDNS answered no pod names (its default, disabled); nodedns's default is `verified`."
            );
            self.set(Target::Authority, "pods", quote("disabled"), "`kubernetes` (pods)", &at, note);
        }
    }

    /// `pods MODE`. nodedns defaults to `verified` where the stock CoreDNS Corefile says
    /// `insecure`: the output keeps nodedns's default and says what that changes.
    fn pods(&mut self, mode: &str, what: &str, at: &str) {
        match mode {
            "insecure" => {
                let note = format!(
                    "The Corefile says `pods insecure` ({at}); nodedns defaults to `pods verified`: a-b-c-d.<ns>.pod.<zone> then answers only for the address of an existing pod (Running or Pending) in that namespace, and NXDOMAIN for any other address. Set `pods: insecure` to keep answering every dashed address, as CoreDNS did."
                );
                self.set(Target::Authority, "pods", quote("verified"), what, at, note);
            }
            "verified" | "disabled" => {
                self.set(
                    Target::Authority,
                    "pods",
                    quote(mode),
                    what,
                    at,
                    format!("From `pods {mode}` ({at})."),
                );
            }
            _ => self.drop(what, at, "not a pods mode (disabled, insecure, verified)"),
        }
    }

    fn forward(&mut self, d: &Directive, ctx: &BlockCtx, cluster: &Cluster) {
        let at = ctx.at(d.line);
        let what = format!("`{}`", directive_text(d));
        let Some((from, targets)) = d.args.split_first().filter(|(_, t)| !t.is_empty()) else {
            self.drop(what, at, "`forward FROM TO...` needs a zone and a destination");
            return;
        };
        if d.name == "proxy" {
            self.drop(&what, &at, "`proxy` is the old name of `forward`; read as `forward`");
        }
        let from_zone = zone(from);
        let zones: Vec<String> = if from_zone == "." { ctx.zones.clone() } else { vec![from_zone] };
        let to_cluster = targets.iter().all(|t| cluster.dns_targets.contains(t));
        if to_cluster || zones.iter().all(|z| cluster.is_cluster_zone(z)) {
            self.builtin(
                &what,
                &at,
                "the agent sends the cluster domain and the authority's reverse zones to the authority over its gRPC stream (`authority`); no kube-dns-upstream Service is needed",
            );
            for o in &d.block {
                if o.name == "force_tcp" {
                    self.builtin(
                        format!("`forward` option `{}`", directive_text(o)),
                        ctx.at(o.line),
                        "the gRPC stream to the authority runs over TCP",
                    );
                } else {
                    self.forward_option(o, ctx);
                }
            }
            return;
        }
        let mut addrs = Vec::new();
        let mut files = Vec::new();
        for t in targets {
            if t == UPSTREAM_PLACEHOLDER {
                match self.kube_upstreams.take().filter(|u| !u.is_empty()) {
                    Some(upstreams) => {
                        self.builtin(
                            t.clone(),
                            &at,
                            "node-cache fills it from the kube-dns ConfigMap's upstreamNameservers, which are used here",
                        );
                        for u in upstreams {
                            match server(&u) {
                                Some(a) => addrs.push(a),
                                None => {
                                    self.drop(format!("upstreamNameservers {u:?}"), &at, "not an address")
                                }
                            }
                        }
                    }
                    None => files.push("/etc/resolv.conf".to_owned()),
                }
            } else if t.starts_with('/') {
                files.push(t.clone());
            } else if let Some(a) = server(t) {
                addrs.push(a);
            } else if let Some((scheme, _)) = t.split_once("://") {
                self.drop(
                    format!("`forward` to {t}"),
                    &at,
                    format!("{scheme}:// upstreams (DNS over TLS or HTTPS) are not supported"),
                );
            } else {
                self.drop(format!("`forward` to {t}"), &at, "not an address or a resolv.conf path");
            }
        }
        let note = format!("From {what} ({at}).");
        if zones.iter().any(|z| z == ".") {
            self.corefile_upstreams = Some(at.clone());
            for a in &addrs {
                for target in [Target::Agent, Target::Authority] {
                    self.doc(target).push("upstream", quote(&a.to_string()), note.clone());
                }
            }
            for f in &files {
                let mut note = note.clone();
                if targets.iter().any(|t| t == UPSTREAM_PLACEHOLDER) {
                    note = format!(
                        "From {what} ({at}): without a kube-dns ConfigMap's upstreamNameservers node-cache uses /etc/resolv.conf, the node's (dnsPolicy: Default)."
                    );
                }
                self.set(Target::Agent, "resolv-conf", quote(f), &what, &at, note);
                // The authority's pod runs with the cluster's DNS in its resolv.conf, which is
                // the authority itself once it serves the kube-dns ClusterIP: it needs addresses.
                self.authority.comments.push(format!(
                    "{what} ({at}): the authority's own /etc/resolv.conf names the cluster DNS (itself, with components/kube-dns), so it gets no `resolv-conf`; to forward names outside the cluster for pods that ask it directly, give it `upstream` addresses (the node's resolvers)."
                ));
            }
            if !addrs.is_empty() && !files.is_empty() {
                self.drop(format!("{what}: the file"), &at, "`upstream` and `resolv-conf` do not mix: the addresses win and the file gives only search domains");
            }
        } else {
            if !files.is_empty() {
                self.drop(
                    format!("{what}: the file"),
                    &at,
                    "a stub domain takes addresses, not a resolv.conf: list its nameservers",
                );
            }
            if !addrs.is_empty() {
                let servers = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
                for z in &zones {
                    self.stub(z, &servers, &at);
                }
            }
        }
        for o in &d.block {
            self.forward_option(o, ctx);
        }
    }

    fn stub(&mut self, zone: &str, servers: &str, at: &str) {
        if let Some(first) = self.stub_zones.get(zone) {
            let why = format!("{} already goes to the servers from {first}", bare(zone));
            self.drop(format!("stub domain {}={servers}", bare(zone)), at, why);
            return;
        }
        self.stub_zones.insert(zone.to_owned(), at.to_owned());
        for target in [Target::Agent, Target::Authority] {
            let value = quote(&format!("{}={servers}", bare(zone)));
            self.doc(target).push("stub-domain", value, format!("Stub domains from {at}."));
        }
    }

    fn forward_option(&mut self, o: &Directive, ctx: &BlockCtx) {
        let what = format!("`forward` option `{}`", directive_text(o));
        let at = ctx.at(o.line);
        let why = match o.name.as_str() {
            "prefer_udp" => {
                self.builtin(
                    what,
                    at,
                    "the agent asks over UDP and retries over TCP when the answer is truncated",
                );
                return;
            }
            "policy" if o.args.first().is_some_and(|p| p == "sequential") => {
                self.builtin(
                    what,
                    at,
                    "the agent tries its upstreams in the order given (one marked down, last)",
                );
                return;
            }
            "force_tcp" => {
                "the agent asks upstreams over UDP and retries over TCP only when the answer is truncated"
            }
            "policy" => "the agent tries its upstreams in the order given, one that failed 3 times last",
            "max_fails" => "an upstream is marked down after 3 failures (fixed)",
            "health_check" => "upstreams are marked down by failed queries and tried again last, not probed",
            "expire" => "the agent keeps no pooled upstream connections (UDP from a fresh port per query)",
            "max_concurrent" => "no cap on concurrent forwarded queries",
            "tls" | "tls_servername" => "DNS over TLS upstreams are not supported",
            "except" => "zones cannot be excluded from forwarding",
            "next" | "failover" => "an upstream's answer is passed on whatever its rcode",
            "max_connect_attempts" | "failfast_all_unhealthy_upstreams" => {
                "not tunable: `timeout` bounds each miss, failover included"
            }
            _ => "not supported",
        };
        self.drop(what, at, why);
    }

    fn cache(&mut self, d: &Directive, ctx: &BlockCtx) {
        let at = ctx.at(d.line);
        let what = format!("`{}`", directive_text(d));
        if ctx.cluster_only {
            self.builtin(
                what,
                at,
                "cluster answers come from the authority's stream and stay cached in the agent until a change notice evicts them",
            );
            return;
        }
        // `cache TTL` caps both kinds of answer unless `success` or `denial` gives its own.
        let ttl = d.args.first().and_then(|a| a.parse::<u32>().ok());
        let option_ttl = |kind: &str| {
            d.block.iter().any(|o| o.name == kind && o.args.get(1).is_some_and(|t| t.parse::<u32>().is_ok()))
        };
        if let Some(ttl) = ttl {
            let from = format!("From {what} ({at}).");
            for (key, kind) in [("max-ttl", "success"), ("max-negative-ttl", "denial")] {
                if !option_ttl(kind) {
                    self.set(Target::Agent, key, ttl.to_string(), &what, &at, from.clone());
                }
            }
        }
        if d.args.len() > usize::from(ttl.is_some()) {
            self.drop(format!("{what}: zones"), &at, "the agent caches every answer, not only some zones'");
        }
        let mut serve_stale = false;
        for o in &d.block {
            let at = ctx.at(o.line);
            let what = format!("`cache` option `{}`", directive_text(o));
            let from = format!("From `{}` ({at}).", directive_text(o));
            let nums: Vec<Option<u32>> = o.args.iter().map(|a| a.parse().ok()).collect();
            match (o.name.as_str(), nums.as_slice()) {
                ("success" | "denial", [Some(_), ttls @ ..])
                    if ttls.iter().all(Option::is_some) && ttls.len() <= 2 =>
                {
                    let max_key = if o.name == "success" { "max-ttl" } else { "max-negative-ttl" };
                    if let Some(Some(ttl)) = ttls.first() {
                        self.set(Target::Agent, max_key, ttl.to_string(), &what, &at, from.clone());
                    }
                    if let Some(Some(min)) = ttls.get(1) {
                        if o.name == "success" {
                            self.set(Target::Agent, "min-ttl", min.to_string(), &what, &at, from.clone());
                        } else {
                            self.drop(format!("{what}: MINTTL"), &at, "one `min-ttl` holds for every answer");
                        }
                    }
                    self.drop(
                        format!("{what}: capacity"),
                        &at,
                        "counted in entries; the agent's cache is bounded in bytes (`cache-bytes`, default 32 MiB)",
                    );
                }
                ("prefetch", _) => self.builtin(
                    what,
                    at,
                    "always on: an answer asked 3 times is refreshed in the last tenth of its TTL",
                ),
                ("serve_stale", _) => {
                    serve_stale = true;
                    match o.args.first().map_or(Some(3600.0), |d| duration(d)) {
                        Some(secs) => {
                            self.set(Target::Agent, "stale-for", seconds_text(secs), &what, &at, from)
                        }
                        None => self.drop(&what, &at, "not a duration"),
                    }
                    if o.args.get(1).is_some_and(|policy| policy != "verify") {
                        self.drop(
                            format!("{what}: policy"),
                            at,
                            "stale answers are served only when the source cannot answer (CoreDNS `verify`)",
                        );
                    }
                }
                ("servfail", _) => self.drop(what, at, "not tunable"),
                ("disable", _) => self.drop(what, at, "caching cannot be turned off for one kind of answer"),
                ("keepttl", _) => self.drop(what, at, "cached answers are served with their remaining TTL"),
                _ => self.drop(what, at, "not supported"),
            }
        }
        if !serve_stale && !self.agent.has("stale-for") {
            self.builtin(
                format!("{what} without serve_stale"),
                at,
                "the agent serves expired answers (TTL 30) for up to `stale-for` (default 3600) when the source cannot answer; `stale-for: 0` turns that off",
            );
        }
    }

    fn hosts(&mut self, d: &Directive, ctx: &BlockCtx) {
        let at = ctx.at(d.line);
        let what = format!("`{}`", directive_text(d));
        let mut ttl = 3600u32;
        let mut entries = Vec::new();
        for o in &d.block {
            let o_at = ctx.at(o.line);
            let o_what = format!("`hosts` option `{}`", directive_text(o));
            if let Ok(ip) = o.name.parse::<IpAddr>() {
                entries.push((ip, o.args.clone(), o_at));
                continue;
            }
            match (o.name.as_str(), o.args.as_slice()) {
                ("ttl", [n]) => match n.parse() {
                    Ok(n) => ttl = n,
                    Err(_) => self.drop(o_what, o_at, "not a number of seconds"),
                },
                ("no_reverse", _) => {}
                ("reload", _) => self.builtin(o_what, o_at, "the authority re-reads its custom-records file when it changes"),
                ("fallthrough", _) => {
                    self.builtin(o_what, o_at, "other names in a zone of the custom records are NXDOMAIN; names outside them go on as before")
                }
                _ => self.drop(o_what, o_at, "not supported"),
            }
        }
        match d.args.first() {
            Some(file) => self.drop(
                format!("{what}: the file {file}"),
                &at,
                "convert the entries you need into lines of the custom-records document below (`NAME. TTL IN A ADDRESS`)",
            ),
            None if entries.is_empty() => self.drop(
                &what,
                &at,
                "it reads the CoreDNS container's /etc/hosts: put the names you rely on in the authority's custom-records file",
            ),
            None => {}
        }
        for (ip, names, o_at) in entries {
            let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
            for name in &names {
                let name = zone(name);
                if name == "." {
                    continue;
                }
                // Each name is a zone's apex of its own, so the authority claims exactly the
                // names the hosts entries gave (names inside the cluster domain need none).
                self.records.push(format!("; {o_at}"));
                self.records.push(format!("$ORIGIN {name}"));
                self.records.push(format!("@ {ttl} IN {rtype} {ip}"));
            }
        }
        if !self.records.is_empty() {
            self.set(
                Target::Authority,
                "custom-records",
                quote(CUSTOM_RECORDS_PATH),
                &what,
                &at,
                format!("The inline entries of {what} ({at}): the custom-records document below."),
            );
        }
    }

    fn rewrite(&mut self, d: &Directive, ctx: &BlockCtx) {
        let at = ctx.at(d.line);
        let what = format!("`{}`", directive_text(d));
        let mut args = d.args.as_slice();
        if let Some((first, rest)) = args.split_first()
            && (first == "continue" || first == "stop")
        {
            args = rest;
        }
        let (kind, from, to, rest) = match args {
            [field, kind, from, to, rest @ ..]
                if field == "name"
                    && ["exact", "prefix", "suffix", "substring", "regex"].contains(&kind.as_str()) =>
            {
                (kind.as_str(), from, to, rest)
            }
            [field, from, to, rest @ ..] if field == "name" => ("exact", from, to, rest),
            [field, ..] if field != "name" => {
                self.drop(what, at, format!("only names are rewritten, not the {field}"));
                return;
            }
            _ => {
                self.drop(what, at, "not a `rewrite name [exact|suffix] FROM TO`");
                return;
            }
        };
        let rule = match kind {
            "exact" => format!("exact:{}={}", bare(&zone(from)), bare(&zone(to))),
            "suffix" => format!("suffix:{from}={to}"),
            _ => {
                self.drop(what, at, format!("only exact and suffix name rewrites are supported, not {kind}"));
                return;
            }
        };
        let note = format!(
            "Name rewrites from {at}: the first rule that matches applies, to every query the agent answers (a suffix matches whole labels)."
        );
        self.agent.push("rewrite", quote(&rule), note);
        if !rest.is_empty() {
            self.builtin(
                format!("{what}: `{}`", rest.join(" ")),
                at,
                "the agent writes the asked name back into the answer itself",
            );
        }
    }

    fn bind(&mut self, d: &Directive, ctx: &BlockCtx) {
        let at = ctx.at(d.line);
        for a in &d.args {
            let what = format!("`bind {a}`");
            let ip = match a.as_str() {
                LOCAL_DNS_PLACEHOLDER => NODELOCAL_ADDRESS.parse::<IpAddr>().ok(),
                DNS_SERVER_PLACEHOLDER => {
                    self.builtin(
                        what,
                        &at,
                        "node-cache's second address, the kube-dns ClusterIP (iptables mode): add manifests/components/nodelocal-ip, which puts it in the agent's --listen",
                    );
                    continue;
                }
                other => other.parse::<IpAddr>().ok(),
            };
            match ip {
                Some(ip) => {
                    let mut note = format!(
                        "From `bind` ({at}); the DaemonSet's --listen flag wins over this key (manifests/agent.yaml): keep them equal."
                    );
                    if a == LOCAL_DNS_PLACEHOLDER {
                        note.push_str(&format!(" {LOCAL_DNS_PLACEHOLDER} taken as {NODELOCAL_ADDRESS}, node-cache's usual -localip."));
                    }
                    self.agent.push("listen", quote(&SocketAddr::new(ip, ctx.port).to_string()), note);
                }
                None => {
                    self.drop(what, &at, "the agent listens on addresses (`listen`), not interface names")
                }
            }
        }
        for o in &d.block {
            self.drop(format!("`bind` option `{}`", directive_text(o)), ctx.at(o.line), "not supported");
        }
    }

    fn transfer(&mut self, d: &Directive, ctx: &BlockCtx) {
        let at = ctx.at(d.line);
        for o in &d.block {
            let what = format!("`transfer` option `{}`", directive_text(o));
            if o.name != "to" {
                self.drop(what, ctx.at(o.line), "not supported");
                continue;
            }
            for to in &o.args {
                let nets: Vec<String> = if to == "*" {
                    vec!["0.0.0.0/0".into(), "::/0".into()]
                } else if let Some(a) = server(to) {
                    vec![IpNet::from(a.ip()).to_string()]
                } else {
                    self.drop(format!("{what}: {to}"), ctx.at(o.line), "not an address");
                    continue;
                };
                for net in nets {
                    self.authority.push(
                        "transfer-from",
                        quote(&net),
                        format!("From `transfer` ({at}): AXFR over TCP."),
                    );
                }
            }
        }
    }

    fn kube_dns(&mut self, label: &str, k: &KubeDns) {
        for (z, servers) in &k.stub_domains {
            let at = format!("{label} stubDomains");
            let mut addrs = Vec::new();
            for s in servers {
                match server(s) {
                    Some(a) => addrs.push(a.to_string()),
                    None => self.drop(format!("stubDomains {z}: {s:?}"), &at, "not an address"),
                }
            }
            if !addrs.is_empty() {
                self.stub(&zone(z), &addrs.join(","), &at);
            }
        }
        let at = format!("{label} upstreamNameservers");
        if let Some(upstreams) = self.kube_upstreams.take().filter(|u| !u.is_empty()) {
            if let Some(forward) = self.corefile_upstreams.clone() {
                self.drop(
                    format!("upstreamNameservers {}", upstreams.join(", ")),
                    at,
                    format!("the Corefile's `forward .` ({forward}) decides the upstreams (CoreDNS does not read this ConfigMap)"),
                );
            } else {
                for u in &upstreams {
                    match server(u) {
                        Some(a) => {
                            for target in [Target::Agent, Target::Authority] {
                                self.doc(target).push(
                                    "upstream",
                                    quote(&a.to_string()),
                                    format!("From {at}."),
                                );
                            }
                        }
                        None => self.drop(format!("upstreamNameservers {u:?}"), &at, "not an address"),
                    }
                }
            }
        }
        for key in &k.other_keys {
            let why = if key == "federations" {
                "kube-dns federation names are retired; not supported"
            } else {
                "not a kube-dns key nodedns knows of"
            };
            self.drop(format!("data.{key}"), label, why);
        }
    }

    fn render(&mut self, sources: &str) -> String {
        for target in [Target::Agent, Target::Authority] {
            let doc = self.doc(target);
            if !doc.has("cluster-domain") {
                let note = "The default; the sources do not name the cluster domain.".to_owned();
                doc.entries.insert(
                    0,
                    Entry {
                        key: "cluster-domain",
                        values: vec![quote("cluster.local")],
                        list: false,
                        notes: vec![note],
                    },
                );
            }
        }
        let mut out = String::new();
        comment(&mut out, "", &format!("nodedns settings from {sources}, by `nodedns-authority migrate`."));
        comment(
            &mut out,
            "",
            "Review every key and the two lists at the end, then put the first document in the nodedns-config ConfigMap (manifests/config.yaml) as agent.yaml and the second as authority.yaml.",
        );
        out.push_str("---\n# agent: nodedns-config agent.yaml (nodedns-agent, on every node)\n");
        render_doc(&mut out, &self.agent);
        out.push_str("---\n# authority: nodedns-config authority.yaml (nodedns-authority)\n");
        render_doc(&mut out, &self.authority);
        if !self.records.is_empty() {
            out.push_str("---\n");
            comment(
                &mut out,
                "",
                &format!(
                    "custom records: add this key to the nodedns-config ConfigMap's data; the authority reads it as {CUSTOM_RECORDS_PATH} (its `custom-records`). Each name outside the cluster domain is a zone of its own ($ORIGIN), answered by the authority."
                ),
            );
            out.push_str(&format!("{CUSTOM_RECORDS_KEY}: |\n"));
            for line in &self.records {
                out.push_str(&format!("  {line}\n"));
            }
        }
        out.push_str("#\n# Done by nodedns itself, no key needed:\n");
        render_notes(&mut out, &self.builtin);
        out.push_str("#\n# Not carried over:\n");
        render_notes(&mut out, &self.dropped);
        out
    }
}

/// Appends `text` as `#` comment lines of at most about 100 columns; `indent` follows the `#`
/// on continuation lines.
fn comment(out: &mut String, indent: &str, text: &str) {
    const WIDTH: usize = 100;
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > WIDTH && line.len() > 1 + indent.len() {
            out.push_str(&line);
            out.push('\n');
            line = format!("#{indent}");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

fn render_doc(out: &mut String, doc: &Doc) {
    for e in &doc.entries {
        for note in &e.notes {
            comment(out, "", note);
        }
        if e.list {
            out.push_str(&format!("{}:\n", e.key));
            for v in &e.values {
                out.push_str(&format!("  - {v}\n"));
            }
        } else {
            out.push_str(&format!("{}: {}\n", e.key, e.values.first().map_or("", String::as_str)));
        }
    }
    for c in &doc.comments {
        comment(out, "", c);
    }
}

/// Orders `file:line` places: by file, then line number (a place without one first).
fn place_key(place: &str) -> (&str, usize) {
    match place.rsplit_once(':') {
        Some((file, line)) => (file, line.parse().unwrap_or(0)),
        None => (place, 0),
    }
}

/// The notes, one line per thing and reason: the same plugin in several blocks (node-cache's
/// `errors`, `reload`, `loop` in each) is one line naming all its places.
fn render_notes(out: &mut String, notes: &[Note]) {
    if notes.is_empty() {
        out.push_str("# - nothing\n");
    }
    let mut merged: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for n in notes {
        match merged.iter_mut().find(|(what, why, _)| *what == n.what && *why == n.why) {
            Some((_, _, places)) => places.push(&n.at),
            None => merged.push((&n.what, &n.why, vec![&n.at])),
        }
    }
    // In the order of the files' lines, whatever order the blocks were read in.
    for (_, _, places) in &mut merged {
        places.sort_by_key(|p| place_key(p));
    }
    merged.sort_by_key(|(_, _, places)| places.first().map(|p| place_key(p)));
    for (what, why, places) in merged {
        // `file:13, 28, 39`: the file named once.
        let mut text = String::new();
        let mut file = None;
        for place in places {
            let (f, line) = place.rsplit_once(':').unwrap_or((place, ""));
            if !text.is_empty() {
                text.push_str(", ");
            }
            if file == Some(f) && !line.is_empty() {
                text.push_str(line);
            } else {
                text.push_str(place);
                file = Some(f);
            }
        }
        comment(out, "  ", &format!("- {what} ({text}): {why}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(blocks: &[ServerBlock]) -> Vec<Vec<&str>> {
        blocks.iter().map(|b| b.directives.iter().map(|d| d.name.as_str()).collect()).collect()
    }

    #[test]
    fn blocks_directives_nested_options_comments_and_quotes() {
        let text = r#"
# the cluster's DNS
cluster.local:53 in-addr.arpa, ip6.arpa {   # keys by space or comma
    errors
    kubernetes cluster.local {
        pods insecure
        labels "tier in (web, api)"   # quoted: one argument
    }
    hosts {
        10.0.0.1 "db.corp.example"
    }
}
.:53 {
    forward . 10.0.0.2 "say \"hi\"" {
        max_concurrent 1000
    }
}
"#;
        let blocks = parse_corefile(text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].keys, ["cluster.local:53", "in-addr.arpa", "ip6.arpa"]);
        assert_eq!(blocks[0].line, 3);
        assert_eq!(names(&blocks), [vec!["errors", "kubernetes", "hosts"], vec!["forward"]]);
        let k = &blocks[0].directives[1];
        assert_eq!((k.args.as_slice(), k.line), (&["cluster.local".to_owned()][..], 5));
        assert_eq!(k.block[1].args, ["tier in (web, api)"]);
        assert_eq!(blocks[0].directives[2].block[0].args, ["db.corp.example"]);
        let f = &blocks[1].directives[0];
        assert_eq!(f.args, [".", "10.0.0.2", "say \"hi\""]);
        assert_eq!((f.block[0].name.as_str(), f.block[0].line), ("max_concurrent", 15));
        // A `#` inside a word is part of it; `{$VAR}` is a word, not a block.
        let blocks = parse_corefile(".:53 {\n  forward . {$UPSTREAM} a#b\n}\n").unwrap();
        assert_eq!(blocks[0].directives[0].args, [".", "{$UPSTREAM}", "a#b"]);
        // Keys continued after a trailing comma.
        let blocks = parse_corefile("a.example,\nb.example {\n}\n").unwrap();
        assert_eq!(
            (blocks[0].keys.as_slice(), blocks[0].line),
            (&["a.example".to_owned(), "b.example".to_owned()][..], 1)
        );
    }

    #[test]
    fn bad_input_is_an_error_at_its_line() {
        for (text, line, message) in [
            (".:53 {\n  errors\n", 1, "never closed"),
            (".:53 {\n  cache {\n    success 10\n}\n", 1, "never closed"),
            (".:53 {\n}\n}\n", 3, "no block to close"),
            (".:53\n  errors\n", 1, "expected `{`"),
            (".:53 {\n  health { lameduck 5s }\n}\n", 2, "unexpected `{`"),
            (".:53 {\n  forward . \"10.0.0.1\n}\n", 2, "unterminated"),
            (".:53 {\n  {\n  }\n}\n", 2, "no directive"),
            ("{\n}\n", 1, "no server block keys"),
            (".:53 {\n} errors\n", 2, "after `}`"),
            ("a.example,\n", 1, "no `{` block"),
        ] {
            let err = parse_corefile(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.message.contains(message), "{text:?}: {err}");
        }
        let deep = format!(".:53 {{\n{}{}}}\n", "a {\n".repeat(40), "}\n".repeat(40));
        assert!(parse_corefile(&deep).unwrap_err().message.contains("nested deeper"));
    }

    #[test]
    fn keys_addresses_durations_and_reverse_zones() {
        let k = parse_key("Cluster.Local.:5353").unwrap();
        assert_eq!((k.scheme.as_str(), k.zone.as_str(), k.port), ("dns", "cluster.local.", Some(5353)));
        let k = parse_key("tls://.:853").unwrap();
        assert_eq!((k.scheme.as_str(), k.zone.as_str()), ("tls", "."));
        assert_eq!(parse_key("__PILLAR__DNS__DOMAIN__:53").unwrap().zone, "cluster.local.");
        assert!(parse_key(".:99999").is_err());
        assert_eq!(server("10.0.0.2"), Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(server("dns://[fd00::1]:5353"), Some("[fd00::1]:5353".parse().unwrap()));
        assert_eq!(server("fd00::1"), Some("[fd00::1]:53".parse().unwrap()));
        assert_eq!(server("/etc/resolv.conf"), None);
        assert_eq!(duration("5s"), Some(5.0));
        assert_eq!(duration("1h30m"), Some(5400.0));
        assert_eq!(duration("250ms"), Some(0.25));
        assert_eq!(duration("5 parsecs"), None);
        assert_eq!(duration("s"), None);
        assert_eq!(reverse_zone_net("10.in-addr.arpa."), Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(reverse_zone_net("1.168.192.in-addr.arpa."), Some("192.168.1.0/24".parse().unwrap()));
        assert_eq!(reverse_zone_net("d.f.ip6.arpa."), Some("fd00::/8".parse().unwrap()));
        assert_eq!(reverse_zone_net("300.in-addr.arpa."), None);
    }

    fn migrate(text: &str) -> String {
        let mut m = Migration::default();
        m.corefile("Corefile", &parse_corefile(text).unwrap());
        m.render("test")
    }

    #[test]
    fn a_rendered_nodelocal_corefile_keeps_its_cluster_blocks_off_the_stub_domains() {
        // node-cache's Corefile once the install (IPVS mode) and node-cache filled it in; a stub
        // block before `.` must not decide the agent's cache TTLs.
        let out = migrate(
            "consul.local:53 {\n cache 5\n forward . 10.150.0.1\n}\n\
             cluster.local:53 {\n cache 30\n bind 169.254.20.10 10.96.0.10\n forward . 10.96.0.20 {\n  force_tcp\n }\n}\n\
             in-addr.arpa:53 {\n bind 169.254.20.10 10.96.0.10\n forward . 10.96.0.20 {\n  force_tcp\n }\n}\n\
             .:53 {\n cache 30\n bind 169.254.20.10 10.96.0.10\n forward . 10.0.0.2\n}\n",
        );
        let agent = format!("{}\n", out.split("\n---\n").nth(1).unwrap());
        assert!(agent.contains("\ncluster-domain: \"cluster.local\"\n"), "{agent}");
        assert!(agent.contains("\nlisten:\n  - \"169.254.20.10:53\"\n  - \"10.96.0.10:53\"\n"), "{agent}");
        assert!(agent.contains("\nstub-domain:\n  - \"consul.local=10.150.0.1:53\"\n"), "{agent}");
        assert!(!agent.contains("cluster.local=") && !agent.contains("in-addr.arpa="), "{agent}");
        assert!(
            agent.contains("\nupstream:\n  - \"10.0.0.2:53\"\n") && agent.contains("\nmax-ttl: 30\n"),
            "{agent}"
        );
        assert!(out.contains("`cache 5` (Corefile:2): the agent has one `max-ttl`: kept 30, not 5"), "{out}");
    }

    #[test]
    fn kube_dns_data_as_json_strings_or_yaml() {
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kube-dns}\ndata:\n  stubDomains: |\n    {\"acme.local\": [\"1.2.3.4\"]}\n  upstreamNameservers: '[\"8.8.8.8\"]'\n  federations: '{\"f\": \"example.com\"}'\n";
        let k = parse_kube_dns(cm).unwrap();
        assert_eq!(k.stub_domains["acme.local"], ["1.2.3.4"]);
        assert_eq!(k.upstream_nameservers, ["8.8.8.8"]);
        assert_eq!(k.other_keys, ["federations"]);
        let bare = parse_kube_dns("stubDomains:\n  corp.example: [10.1.0.53]\n").unwrap();
        assert_eq!(bare.stub_domains["corp.example"], ["10.1.0.53"]);
        let err = parse_kube_dns("data:\n  stubDomains: '{not json'\n").unwrap_err();
        assert!(err.contains("data.stubDomains"), "{err}");
        assert!(parse_kube_dns("data:\n  upstreamNameservers: '{\"a\": 1}'\n").is_err());
        assert!(parse_kube_dns("kind: ConfigMap\n").is_err());
    }
}
