//! Name rewrites, as CoreDNS's `rewrite name exact|suffix FROM TO` with `answer auto`: a query for
//! a matching name is resolved as the rewritten name, and the answer goes back to the client under
//! the name it asked, so clients never see the rewritten one.
//!
//! Sans-IO: rules from their flag text, the rewritten name of a question, and the answer turned
//! back. The request path asks [`Rewrites::target`] for every query (a length check when there
//! are no rules); only rewritten queries pay for the rest.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use nodedns_common::config::{ConfigError, invalid};

use crate::config::domain;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The name itself.
    Exact,
    /// The name and every name under it.
    Suffix,
}

/// One rule; names lower case and absolute (`old.example.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub kind: Kind,
    pub from: String,
    pub to: String,
}

/// Parses `exact:FROM=TO` or `suffix:.FROM=.TO` (the dots of a suffix are optional: a suffix
/// always matches whole labels, so `suffix:old.example=new.example` does not touch
/// `bold.example`).
pub fn parse_rule(text: &str) -> Result<Rule, ConfigError> {
    let usage = || invalid("rewrite", format!("{text:?} is not exact:FROM=TO or suffix:.FROM=.TO"));
    let (kind, rest) = text.split_once(':').ok_or_else(usage)?;
    let kind = match kind {
        "exact" => Kind::Exact,
        "suffix" => Kind::Suffix,
        _ => return Err(usage()),
    };
    let (from, to) = rest.split_once('=').ok_or_else(usage)?;
    // A suffix's leading dot only says "whole labels", which every rule means.
    let name = |n: &str| domain("rewrite", n.strip_prefix('.').unwrap_or(n));
    let rule = Rule { kind, from: name(from)?, to: name(to)? };
    if rule.from == rule.to {
        return Err(invalid("rewrite", format!("{text:?} rewrites a name to itself")));
    }
    Ok(rule)
}

/// As the flag is written: `exact:FROM=TO`, `suffix:.FROM=.TO`.
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Kind::Exact => write!(f, "exact:{}={}", self.from, self.to),
            Kind::Suffix => write!(f, "suffix:.{}=.{}", self.from, self.to),
        }
    }
}

/// Whether `name` (lower case, absolute) is `zone` or under it.
fn under(name: &str, zone: &str) -> bool {
    name.len() == zone.len() && name == zone
        || name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes()[name.len() - zone.len() - 1] == b'.'
}

/// The rules in the order given: the first that matches a name applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrites {
    rules: Vec<Rule>,
}

impl Rewrites {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The name to resolve instead of `qname` (lower case, absolute), if a rule matches.
    pub fn target(&self, qname: &str) -> Option<String> {
        self.rules.iter().find_map(|rule| match rule.kind {
            Kind::Exact if qname == rule.from => Some(rule.to.clone()),
            Kind::Suffix if under(qname, &rule.from) => {
                Some(format!("{}{}", &qname[..qname.len() - rule.from.len()], rule.to))
            }
            _ => None,
        })
    }
}

/// The rules in force in a running server, swapped whole by a config reload. Asking costs one
/// relaxed load while there are none, so every query can ask.
#[derive(Debug, Default)]
pub struct LiveRewrites {
    rules: ArcSwap<Rewrites>,
    any: AtomicBool,
}

impl LiveRewrites {
    pub fn new(rules: Rewrites) -> Self {
        let live = Self::default();
        live.set(rules);
        live
    }

    /// The rules from now on (a config reload).
    pub fn set(&self, rules: Rewrites) {
        self.any.store(!rules.is_empty(), Ordering::Relaxed);
        self.rules.store(Arc::new(rules));
    }

    /// Whether there is any rule (check before making the name to ask [`LiveRewrites::target`]).
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// [`Rewrites::target`] with the rules in force.
    pub fn target(&self, qname: &str) -> Option<String> {
        if !self.any() {
            return None;
        }
        self.rules.load().target(qname)
    }
}

/// The answer to the query for `target` as the answer to `query` (the client's packet): the
/// client's question, and the answer records owned by `target` owned by the asked name
/// (`answer auto`), in the client's spelling (0x20 case randomisation must round-trip). The rest
/// of a CNAME chain keeps its names, so each CNAME still points at the next record's owner.
/// `limit`: the most bytes the client takes (UDP); a longer answer goes back truncated (TC, no
/// records) so the client retries over TCP. `None` when either message does not parse.
pub fn answer_as_asked(response: &[u8], query: &[u8], target: &str, limit: usize) -> Option<Vec<u8>> {
    let asked = Message::from_vec(query).ok()?;
    let question = asked.queries.first()?.clone();
    let mut msg = Message::from_vec(response).ok()?;
    let target = Name::from_ascii(target).ok()?;
    for record in &mut msg.answers {
        if record.name == target {
            record.name = question.name.clone();
        }
    }
    msg.queries = vec![question];
    let mut out = msg.to_vec().ok()?;
    if out.len() > limit {
        msg.answers.clear();
        msg.authorities.clear();
        msg.additionals.clear();
        msg.metadata.truncation = true;
        out = msg.to_vec().ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::{RData, Record, RecordType};

    #[test]
    fn rules_parse_and_bad_ones_name_the_flag() {
        assert_eq!(
            parse_rule("exact:Old.Example=new.example.").unwrap(),
            Rule { kind: Kind::Exact, from: "old.example.".into(), to: "new.example.".into() }
        );
        assert_eq!(parse_rule("suffix:.corp.local=.corp.example.com").unwrap().to, "corp.example.com.");
        for bad in ["exact:a", "prefix:a=b", "exact:a..b=c", "suffix:=b", "exact:a=a.", "a=b"] {
            let err = parse_rule(bad).unwrap_err().to_string();
            assert!(err.starts_with("rewrite: "), "{bad}: {err}");
        }
    }

    #[test]
    fn exact_matches_one_name_and_suffix_whole_labels() {
        let r = Rewrites::new(vec![
            parse_rule("exact:db.example=db.ns1.svc.cluster.local").unwrap(),
            parse_rule("suffix:.corp.local=.corp.example.com").unwrap(),
        ]);
        assert_eq!(r.target("db.example.").unwrap(), "db.ns1.svc.cluster.local.");
        assert_eq!(r.target("x.db.example."), None);
        assert_eq!(r.target("a.b.corp.local.").unwrap(), "a.b.corp.example.com.");
        assert_eq!(r.target("corp.local.").unwrap(), "corp.example.com.");
        assert_eq!(r.target("xcorp.local."), None, "a suffix matches whole labels");
        assert!(Rewrites::default().target("db.example.").is_none());
    }

    fn a(name: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            30,
            RData::A(A::from(std::net::Ipv4Addr::from(ip))),
        )
    }

    #[test]
    fn the_answer_carries_the_asked_name() {
        let mut query = Message::query();
        query.metadata.id = 77;
        query.add_query(Query::query(Name::from_ascii("DB.example.").unwrap(), RecordType::A));
        let query = query.to_vec().unwrap();
        let mut response = Message::query();
        response.metadata.id = 77;
        response
            .add_query(Query::query(Name::from_ascii("db.ns1.svc.cluster.local.").unwrap(), RecordType::A));
        let cname = Record::from_rdata(
            Name::from_ascii("db.ns1.svc.cluster.local.").unwrap(),
            30,
            RData::CNAME(CNAME(Name::from_ascii("db-0.db.ns1.svc.cluster.local.").unwrap())),
        );
        response.add_answer(cname);
        response.add_answer(a("db-0.db.ns1.svc.cluster.local.", [10, 1, 0, 3]));
        let response = response.to_vec().unwrap();
        let target = "db.ns1.svc.cluster.local.";
        let out = Message::from_vec(&answer_as_asked(&response, &query, target, 512).unwrap()).unwrap();
        assert_eq!(out.metadata.id, 77);
        assert_eq!(out.queries[0].name.to_ascii(), "DB.example.", "the client's spelling");
        assert_eq!(out.answers[0].name.to_ascii(), "DB.example.");
        // The chain goes on as the servers gave it: the CNAME's target owns the address.
        assert_eq!(out.answers[1].name.to_ascii(), "db-0.db.ns1.svc.cluster.local.");

        // Too long for the client's UDP limit: truncated, so it retries over TCP.
        let cut = Message::from_vec(&answer_as_asked(&response, &query, target, 40).unwrap()).unwrap();
        assert!(cut.metadata.truncation && cut.answers.is_empty());
        assert!(answer_as_asked(&[1, 2, 3], &query, target, 512).is_none());
    }
}
