//! The conformance corpus (`../shared/conformance/cases.yaml`) and a checker that applies the
//! runner semantics of its README to a real response: rcode, byte-for-byte question echo, the
//! answer as a multiset with `*` wildcards, the authority SOA, AA, letter case, CNAME order, and
//! (as warnings) the additional section.

use std::path::Path;

use anyhow::Context;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Corpus {
    pub defaults: Defaults,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
pub struct Defaults {
    pub zone: String,
    pub ttl: u32,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
pub struct Mode {
    pub pods: Option<String>,
    pub autopath: Option<OnOff>,
}

/// `'on'`/`'off'` (quoted) or a YAML 1.1 boolean.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OnOff {
    Bool(bool),
    Text(String),
}

impl OnOff {
    pub fn is_on(&self) -> bool {
        match self {
            OnOff::Bool(b) => *b,
            OnOff::Text(s) => matches!(s.as_str(), "on" | "true" | "yes"),
        }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Clone)]
pub struct Tail {
    pub qname: String,
    pub qtype: String,
}

#[derive(Debug, Deserialize, Clone)]
pub struct Case {
    pub id: String,
    #[serde(default)]
    pub area: String,
    pub level: Option<String>,
    #[serde(default)]
    pub description: String,
    pub qname: String,
    pub qtype: String,
    pub mode: Option<Mode>,
    pub source_ip: Option<String>,
    pub transport: Option<String>,
    pub rcode: OneOrMany,
    #[serde(default)]
    pub answer: Vec<String>,
    pub upstream_tail: Option<Tail>,
    pub authority: Option<String>,
    #[serde(default)]
    pub additional: Vec<String>,
    #[serde(default)]
    pub preserve_case: bool,
    #[serde(default)]
    pub requires: Vec<String>,
}

/// A case's configuration after defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub pods: String,
    pub autopath: bool,
    pub tcp: bool,
    pub must: bool,
}

impl Corpus {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn effective(&self, case: &Case) -> Effective {
        let d = &self.defaults.mode;
        let m = case.mode.clone().unwrap_or_default();
        Effective {
            pods: m.pods.or(d.pods.clone()).unwrap_or_else(|| "verified".into()),
            autopath: m.autopath.or(d.autopath.clone()).is_some_and(|a| a.is_on()),
            tcp: case.transport.as_deref() == Some("tcp"),
            must: case.level.as_deref().or(self.defaults.level.as_deref()).unwrap_or("must") == "must",
        }
    }
}

/// The verdict on one response.
#[derive(Debug, Default)]
pub struct Verdict {
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
}

fn rcode_name(r: ResponseCode) -> String {
    match r {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("{other:?}").to_uppercase(),
    }
}

/// Presentation tokens of a record: owner, TTL, class, type, rdata fields.
pub fn present(r: &Record) -> Vec<String> {
    let mut t = vec![r.name.to_ascii(), r.ttl.to_string(), "IN".into(), r.record_type().to_string()];
    match &r.data {
        RData::A(a) => t.push(a.0.to_string()),
        RData::AAAA(a) => t.push(a.0.to_string()),
        RData::CNAME(n) => t.push(n.0.to_ascii()),
        RData::PTR(n) => t.push(n.0.to_ascii()),
        RData::NS(n) => t.push(n.0.to_ascii()),
        RData::SRV(s) => {
            t.extend([s.priority.to_string(), s.weight.to_string(), s.port.to_string(), s.target.to_ascii()])
        }
        RData::TXT(txt) => {
            t.extend(txt.txt_data.iter().map(|d| format!("\"{}\"", String::from_utf8_lossy(d))))
        }
        RData::SOA(s) => t.extend([
            s.mname.to_ascii(),
            s.rname.to_ascii(),
            s.serial.to_string(),
            s.refresh.to_string(),
            s.retry.to_string(),
            s.expire.to_string(),
            s.minimum.to_string(),
        ]),
        other => t.push(other.to_string()),
    }
    t
}

fn is_name_field(rtype: &str, i: usize) -> bool {
    // Token index within rdata that holds a domain name.
    matches!((rtype, i), ("CNAME" | "PTR" | "NS", 0) | ("SRV", 3) | ("SOA", 0 | 1))
}

/// Whether `got` matches the expected presentation line `want`.
fn matches(want: &str, got: &[String], exact_owner: Option<&str>) -> bool {
    let w: Vec<&str> = want.split_whitespace().collect();
    if w.len() != got.len() || w.len() < 4 {
        return false;
    }
    let rtype = w[3];
    w.iter().zip(got).enumerate().all(|(i, (w, g))| {
        if *w == "*" {
            return true;
        }
        match i {
            0 => match exact_owner {
                Some(exact) if g.eq_ignore_ascii_case(exact) => g == exact,
                _ => w.eq_ignore_ascii_case(g),
            },
            2 | 3 => w.eq_ignore_ascii_case(g),
            i if i >= 4 && is_name_field(rtype, i - 4) => w.eq_ignore_ascii_case(g),
            _ => w == g,
        }
    })
}

/// Matches expected lines against records as a multiset; returns what is missing and unexpected.
fn multiset(want: &[String], got: &[Record], exact_owner: Option<&str>) -> (Vec<String>, Vec<String>) {
    let mut pool: Vec<Option<Vec<String>>> = got.iter().map(|r| Some(present(r))).collect();
    let mut missing = Vec::new();
    for w in want {
        match pool.iter_mut().find(|g| g.as_ref().is_some_and(|g| matches(w, g, exact_owner))) {
            Some(slot) => *slot = None,
            None => missing.push(w.clone()),
        }
    }
    let extra = pool.into_iter().flatten().map(|g| g.join(" ")).collect();
    (missing, extra)
}

/// Checks a response against a case (the query's question is `question` bytes from offset 12).
pub fn check(case: &Case, query: &[u8], question_len: usize, response: &[u8]) -> Verdict {
    let mut v = Verdict::default();
    let msg = match Message::from_vec(response) {
        Ok(m) => m,
        Err(e) => {
            v.failures.push(format!("response does not parse: {e}"));
            return v;
        }
    };
    let got_rcode = rcode_name(msg.metadata.response_code);
    let wanted: Vec<String> = match &case.rcode {
        OneOrMany::One(r) => vec![r.clone()],
        OneOrMany::Many(rs) => rs.clone(),
    };
    if !wanted.iter().any(|w| w.eq_ignore_ascii_case(&got_rcode)) {
        v.failures.push(format!("rcode {got_rcode}, want {}", wanted.join("|")));
    }
    let q_end = 12 + question_len;
    if response.len() < q_end || query.len() < q_end || response[12..q_end] != query[12..q_end] {
        v.failures.push("question not echoed byte for byte".into());
    }
    if case.upstream_tail.is_none() && got_rcode != "REFUSED" && !msg.metadata.authoritative {
        v.failures.push("AA not set on an answer from the served zones".into());
    }
    // Answer section.
    let exact = case.preserve_case.then_some(case.qname.as_str());
    if case.upstream_tail.is_some() {
        let n = case.answer.len();
        let head = &msg.answers[..n.min(msg.answers.len())];
        let (missing, extra) = multiset(&case.answer, head, exact);
        if !missing.is_empty() || !extra.is_empty() {
            v.failures.push(format!("answer head: missing {missing:?}, unexpected {extra:?}"));
        }
        if msg.answers.len() <= n {
            v.failures.push("no records after the CNAME from the upstream".into());
        }
    } else {
        let (missing, extra) = multiset(&case.answer, &msg.answers, exact);
        if !missing.is_empty() {
            v.failures.push(format!("answer missing {missing:?}"));
        }
        if !extra.is_empty() {
            v.failures.push(format!("answer has unexpected {extra:?}"));
        }
    }
    // A CNAME must come before the records owned by its target.
    for (i, r) in msg.answers.iter().enumerate() {
        if let RData::CNAME(target) = &r.data
            && msg.answers[..i].iter().any(|e| e.name == target.0)
        {
            v.failures.push(format!("records of {} come before the CNAME to it", target.0));
        }
    }
    if let Some(auth) = &case.authority {
        let zone = auth.strip_prefix("SOA ").unwrap_or(auth).trim();
        let ok = msg.authorities.len() == 1
            && msg.authorities[0].record_type() == RecordType::SOA
            && msg.authorities[0].name.to_ascii().eq_ignore_ascii_case(zone);
        if !ok {
            let got: Vec<String> = msg.authorities.iter().map(|r| present(r).join(" ")).collect();
            v.failures.push(format!("authority {got:?}, want exactly the SOA of {zone}"));
        }
    }
    if !case.additional.is_empty() {
        let (missing, _) = multiset(&case.additional, &msg.additionals, None);
        if !missing.is_empty() {
            v.warnings.push(format!("additional missing {missing:?}"));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_and_case_rules() {
        let got: Vec<String> =
            "_http._tcp.Svc1.testns. 5 IN SRV 0 100 80 SVC1.testns.".split(' ').map(String::from).collect();
        assert!(matches("_http._tcp.svc1.testns. 5 IN SRV * * 80 svc1.testns.", &got, None));
        assert!(!matches("_http._tcp.svc1.testns. 5 IN SRV * * 8080 svc1.testns.", &got, None));
        assert!(!matches("_http._tcp.svc1.testns. 6 IN SRV * * 80 svc1.testns.", &got, None));
        let a: Vec<String> = "SvC1.x. 5 IN A 10.0.0.1".split(' ').map(String::from).collect();
        assert!(matches("svc1.x. 5 IN A 10.0.0.1", &a, Some("SvC1.x.")));
        assert!(!matches("svc1.x. 5 IN A 10.0.0.1", &a, Some("SVC1.x.")), "preserve_case compares exactly");
    }
}
